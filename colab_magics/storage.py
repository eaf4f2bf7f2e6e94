"""Cloud Storage plumbing: gs:// URLs, error translation, streamed uploads and downloads.

Streaming plumbing (the upload pipe, the checksumming tee, progress bars) lives in `transfer`.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from colab_magics import session
from colab_magics.errors import (
    ArchiveNotFound,
    BucketNotFound,
    InvalidBucketURL,
    PermissionDenied,
    StorageError,
    StorageUnreachable,
    Param,
    do,
)
from colab_magics.settings import DEFAULTS

RETRY_DEADLINE = DEFAULTS.retry_deadline  # seconds a request keeps retrying (`settings.retry_deadline`)
MAX_REQUEST_TIMEOUT = 60.0  # the library's own per-request default, kept as an upper bound

# Cloud Storage's naming rules (cloud.google.com/storage/docs/buckets#naming, .../objects#naming),
# always applied with re.fullmatch: `$` would also match before a trailing newline.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_IP_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
MAX_OBJECT_NAME = 1024  # bytes of UTF-8


@dataclass(frozen=True)
class GcsPath:
    """A bucket and an object name or prefix (no leading or trailing slash)."""

    bucket: str
    path: str = ""

    def __post_init__(self):
        # every name we build (a parsed URL, a child such as PREFIX/RUN.STEP.zip) is checked here
        check_bucket_name(self.bucket)
        if self.path:
            check_object_name(self.path)

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.path}" if self.path else f"gs://{self.bucket}"

    def child(self, name: str) -> "GcsPath":
        return GcsPath(self.bucket, f"{self.path}/{name}" if self.path else name)

    @property
    def parent(self) -> "GcsPath":
        """The prefix holding this object (the bucket itself at the top)."""
        return GcsPath(self.bucket, self.path.rpartition("/")[0])

    def __str__(self) -> str:
        return self.url


def parse_url(url: str) -> GcsPath:
    """`gs://bucket/prefix`, `bucket/prefix` or a bare bucket name → GcsPath (names checked as Cloud
    Storage checks them: nothing is trimmed, so a stray newline is an error, not a different name)."""
    text = str(url)
    if text.startswith("gs://"):
        text = text[5:]
    elif "://" in text:
        raise InvalidBucketURL(f"{_shown(str(url))} is not a gs:// URL: write gs://BUCKET or gs://BUCKET/PREFIX")
    bucket, _, path = text.partition("/")
    check_bucket_name(bucket)
    path = path.strip("/")
    if path and any(segment in ("", ".", "..") for segment in path.split("/")):
        raise InvalidBucketURL(f"{_shown(str(url))} has an empty, '.' or '..' segment in its object path: "
                               "write gs://BUCKET/PREFIX with plain names between the slashes")
    return GcsPath(bucket, path)


def check_bucket_name(name: str) -> str:
    """Raise InvalidBucketURL unless `name` follows GCS bucket naming rules."""
    rule = "use 3-63 lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
    if not name:
        raise InvalidBucketURL(f"no bucket name given: {rule}")
    too_long = len(name) > 222 or any(len(part) > 63 for part in name.split(".")) or (
        "." not in name and len(name) > 63
    )
    if not _BUCKET_RE.fullmatch(name) or too_long or ".." in name:
        raise InvalidBucketURL(f"bucket {_shown(name)} is not a valid name: {rule}")
    if _IP_RE.fullmatch(name) or name.startswith("goog") or "google" in name:
        raise InvalidBucketURL(
            f"bucket {_shown(name)} is not a valid name: no IP addresses, no 'goog' prefix, no 'google'"
        )
    return name


def check_object_name(name: str) -> str:
    """Raise InvalidBucketURL unless Cloud Storage accepts `name` as an object name (or prefix):
    valid UTF-8 of at most 1 024 bytes, no carriage return, line feed or NUL, not '.' or '..'."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a command line's undecodable bytes arrive as lone surrogates
        raise InvalidBucketURL(f"object name {_shown(name)} is not valid UTF-8: retype it") from None
    if "\r" in name or "\n" in name:
        raise InvalidBucketURL(f"object name {_shown(name)} has a line break (CR or LF), which Cloud Storage "
                               "refuses: remove it")
    if "\0" in name:
        raise InvalidBucketURL(f"object name {_shown(name)} has a NUL character, which Cloud Storage refuses: "
                               "remove it")
    if size > MAX_OBJECT_NAME:
        raise InvalidBucketURL(f"object name {_shown(name)} is {size} bytes in UTF-8, over Cloud Storage's "
                               f"{MAX_OBJECT_NAME}: use a shorter prefix or run name")
    if name in (".", ".."):
        raise InvalidBucketURL(f"object name {name!r} is not allowed by Cloud Storage: use a plain name")
    return name


def _shown(name: str, limit: int = 80) -> str:
    """A name as a message shows it: repr (so a newline is \\n, on one line), cut to `limit` characters."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-1]}"


@contextlib.contextmanager
def translated_errors(target: GcsPath | str, action: str, *, bucket=None):
    """Turn library and network errors into one-line ColabMagicsErrors naming what to do.

    A 404 on an object is told apart from a missing bucket (by the answer's words where GCS gives
    them, else by asking whether `bucket` exists).
    """
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc
    import requests

    try:
        yield
    except gexc.NotFound as exc:
        if _object_missing(target, exc, bucket):
            raise ArchiveNotFound(f"{target} no longer exists (deleted meanwhile?): ",
                                  do("list", target.parent.url), " shows what is there") from None
        raise BucketNotFound(_not_found_message(target, exc)) from None
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        raise PermissionDenied(
            f"permission denied to {action} {target}: the credentials in use ({_identity()}) lack "
            "access; grant them a Storage role or run  ", do("auth"), "  with other credentials"
        ) from exc
    except (requests.ConnectionError, requests.Timeout, auth_exc.TransportError) as exc:
        raise StorageUnreachable(
            f"could not {action} {target}: {_endpoint()} does not answer "
            "(for the local emulator run  ", do("auth", emulator=True), "  again)"
        ) from exc
    except gexc.RetryError as exc:
        status = response_status(exc.cause)
        if status in ("HTTP 429", "HTTP 503"):  # answered, but refused: a rate or quota limit
            raise StorageError(
                f"could not {action} {target}: {_endpoint()} kept refusing with {status} (a rate or quota limit) "
                "after retrying; try again later, or with fewer ", Param("streams")
            ) from exc
        raise StorageUnreachable(
            f"could not {action} {target}: {_endpoint()} does not answer after retrying "
            f"({type(exc.cause).__name__}); check the network, or run  ", do("auth", emulator=True), "  again"
        ) from exc
    except gexc.GoogleAPICallError as exc:
        raise StorageError(f"could not {action} {target}: {exc.message or exc}") from exc
    except auth_exc.RefreshError as exc:
        raise PermissionDenied(f"could not {action} {target}: credentials expired, run  ", do("auth"),
                               "  again") from exc


def _object_missing(target, exc, bucket) -> bool:
    """Whether a 404 about `target` means its object is missing, its bucket being there."""
    if not isinstance(target, GcsPath) or not target.path:
        return False
    url = getattr(getattr(getattr(exc, "response", None), "request", None), "url", "") or ""
    if "/o/" not in url and "/o/" not in str(exc):
        return False  # a bucket-level request (get bucket, list): the bucket is what is missing
    text = str(exc).lower()
    if "bucket does not exist" in text:  # GCS's words for a missing bucket
        return False
    if "no such object" in text or bucket is None:  # GCS's words for a missing object
        return True
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import TransportError
    import requests

    try:
        return bool(bucket.exists(retry=None, timeout=EXISTS_CHECK_DEADLINE))
    except (GoogleAPICallError, TransportError, requests.RequestException):
        return True  # the first error is the one to report; this only chooses its words


def media_errors() -> tuple[type[Exception], type[Exception]]:
    """google-cloud-storage's DataCorruption and InvalidResponse classes (3.x; google-resumable-media's in 2.x)."""
    try:
        from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
    except ImportError:  # google-cloud-storage 2.x
        from google.resumable_media.common import DataCorruption, InvalidResponse
    return DataCorruption, InvalidResponse


def response_status(exc) -> str:
    """'HTTP 503' from a library exception carrying the response, else its class name."""
    code = getattr(getattr(exc, "response", None), "status_code", None)
    return f"HTTP {code}" if code is not None else type(exc).__name__


def _not_found_message(target, exc) -> str:
    bucket = target.bucket if isinstance(target, GcsPath) else str(target)
    return f"bucket gs://{bucket} does not exist: create it (gcloud storage buckets create gs://{bucket}) or check the name"


def _endpoint() -> str:
    host = session.current().emulator_host
    return f"the storage emulator at {host}" if host else "Cloud Storage"


def _identity() -> str:
    auth = session.current().auth
    return getattr(auth, "identity", "unknown")


def retry_policy(deadline: float):
    """The library's default retry policy, with a total deadline in seconds."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(deadline) if hasattr(DEFAULT_RETRY, "with_timeout") else DEFAULT_RETRY.with_deadline(deadline)


def request_options(deadline: float) -> dict:
    """`retry=` and `timeout=` for one library call, so it ends within `deadline` seconds of the
    endpoint going silent — pass them to every call: `blob.exists(**request_options(d))`.

    The library retries until its retry deadline, but starts a last attempt just before it, and an
    attempt waits up to its own timeout (60 s by default, per request) on an endpoint that accepts
    and never answers. So the deadline is split: half for each attempt's timeout (at most 60 s,
    applied to connecting and to each socket read/write, so a big chunk streams as long as bytes
    move), the rest for retrying. A call that makes several requests (a resumable upload's chunks,
    a listing's pages) applies both to each request: a healthy long transfer is never cut, a
    stalled one ends within `deadline`.
    """
    deadline = max(float(deadline), 0.1)
    timeout = min(deadline / 2, MAX_REQUEST_TIMEOUT)
    return {"retry": retry_policy(deadline - timeout), "timeout": timeout}


EXISTS_CHECK_DEADLINE = 15.0  # a first request to a dead endpoint should fail fast, not in minutes


def bucket_exists(client, location: GcsPath, deadline: float = EXISTS_CHECK_DEADLINE) -> bool:
    """Whether the bucket exists (one request, at most min(`deadline`, 15 s) against a silent endpoint)."""
    with translated_errors(location, "reach"):
        return client.bucket(location.bucket).exists(**request_options(min(deadline, EXISTS_CHECK_DEADLINE)))


def require_bucket(client, location: GcsPath, deadline: float = EXISTS_CHECK_DEADLINE):
    """The bucket object, after checking it exists (one request), else BucketNotFound."""
    if not bucket_exists(client, location, deadline):
        raise BucketNotFound(_not_found_message(location, None))
    return client.bucket(location.bucket)
