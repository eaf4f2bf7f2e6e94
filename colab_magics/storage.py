"""Cloud Storage plumbing: gs:// URLs, error translation, streamed uploads and downloads.

Uploads go through the library's resumable upload (its retry policy, crc32c sent with the final
chunk and checked), fed by `ChunkPipe` so an archive written by another thread is uploaded as it is
made: no temporary file, and at most two chunks in memory.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from collections import deque
from dataclasses import dataclass

from colab_magics.errors import (
    BucketNotFound,
    InvalidBucketURL,
    PermissionDenied,
    StorageError,
    StorageUnreachable,
)

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 100 * MiB  # the library's own default; the emulator is much slower with less

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_IP_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


@dataclass(frozen=True)
class GcsPath:
    """A bucket and an object name or prefix (no leading or trailing slash)."""

    bucket: str
    path: str = ""

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.path}" if self.path else f"gs://{self.bucket}"

    def child(self, name: str) -> "GcsPath":
        return GcsPath(self.bucket, f"{self.path}/{name}" if self.path else name)

    def __str__(self) -> str:
        return self.url


def parse_url(url: str) -> GcsPath:
    """`gs://bucket/prefix`, `bucket/prefix` or a bare bucket name → GcsPath (names checked)."""
    text = str(url).strip()
    if text.startswith("gs://"):
        text = text[5:]
    elif "://" in text:
        raise InvalidBucketURL(f"{url!r} is not a gs:// URL: write gs://BUCKET or gs://BUCKET/PREFIX")
    bucket, _, path = text.partition("/")
    check_bucket_name(bucket)
    return GcsPath(bucket, path.strip("/"))


def check_bucket_name(name: str) -> str:
    """Raise InvalidBucketURL unless `name` follows GCS bucket naming rules."""
    rule = "use 3-63 lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
    if not name:
        raise InvalidBucketURL(f"no bucket name given: {rule}")
    too_long = len(name) > 222 or any(len(part) > 63 for part in name.split(".")) or (
        "." not in name and len(name) > 63
    )
    if not _BUCKET_RE.match(name) or too_long or ".." in name:
        raise InvalidBucketURL(f"bucket {name!r} is not a valid name: {rule}")
    if _IP_RE.match(name) or name.startswith("goog") or "google" in name:
        raise InvalidBucketURL(
            f"bucket {name!r} is not a valid name: no IP addresses, no 'goog' prefix, no 'google'"
        )
    return name


@contextlib.contextmanager
def translated_errors(target: GcsPath | str, action: str):
    """Turn library and network errors into one-line ColabMagicsErrors naming what to do."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc
    import requests

    try:
        yield
    except gexc.NotFound as exc:
        raise BucketNotFound(_not_found_message(target, exc)) from None
    except (gexc.Forbidden, gexc.Unauthorized) as exc:
        raise PermissionDenied(
            f"permission denied to {action} {target}: the credentials in use ({_identity()}) lack "
            f"access; grant them a Storage role or run %gcs_auth with other credentials"
        ) from exc
    except (requests.ConnectionError, requests.Timeout, auth_exc.TransportError) as exc:
        raise StorageUnreachable(
            f"could not {action} {target}: {_endpoint()} does not answer "
            "(for the local emulator run  %gcs_auth --emulator  again)"
        ) from exc
    except gexc.RetryError as exc:
        raise StorageUnreachable(
            f"could not {action} {target}: {_endpoint()} does not answer after retrying "
            f"({type(exc.cause).__name__}); check the network, or run  %gcs_auth --emulator  again"
        ) from exc
    except gexc.GoogleAPICallError as exc:
        raise StorageError(f"could not {action} {target}: {exc.message or exc}") from exc
    except auth_exc.RefreshError as exc:
        raise PermissionDenied(f"could not {action} {target}: credentials expired, run %gcs_auth again") from exc


def _not_found_message(target, exc) -> str:
    bucket = target.bucket if isinstance(target, GcsPath) else str(target)
    return f"bucket gs://{bucket} does not exist: create it (gcloud storage buckets create gs://{bucket}) or check the name"


def _endpoint() -> str:
    import os

    host = os.environ.get("STORAGE_EMULATOR_HOST")
    return f"the storage emulator at {host}" if host else "Cloud Storage"


def _identity() -> str:
    from colab_magics import session

    auth = session.current().auth
    return getattr(auth, "identity", "unknown")


def retry_policy(deadline: float):
    """The library's default retry policy, with a total deadline in seconds."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(deadline) if hasattr(DEFAULT_RETRY, "with_timeout") else DEFAULT_RETRY.with_deadline(deadline)


EXISTS_CHECK_DEADLINE = 15.0  # a first request to a dead endpoint should fail fast, not in minutes


def require_bucket(client, location: GcsPath, deadline: float = EXISTS_CHECK_DEADLINE):
    """The bucket object, after checking it exists (one request), else BucketNotFound."""
    bucket = client.bucket(location.bucket)
    with translated_errors(location, "reach"):
        if not bucket.exists(retry=retry_policy(min(deadline, EXISTS_CHECK_DEADLINE))):
            raise BucketNotFound(_not_found_message(location, None))
    return bucket


class ChunkPipe(io.RawIOBase):
    """Bytes written by one thread, read in whole chunks by `Blob.upload_from_file` in another.

    The writer cuts its bytes into `chunk_size` pieces; at most `slots` pieces exist in the pipe at
    once, so memory is bounded whatever the archive size. One slot by default: the library keeps the
    chunk it sent last alive (its last response holds the request body) while it reads and sends the
    next, so a second slot filled ahead would be a third chunk in memory (1.4x the RSS of a raw
    upload, benchmarks/bench_storage.py) for a speed-up lost in the upload's own time. The reader may
    seek back within the last chunk it read, which is what the library's resumable-upload recovery
    needs.
    """

    def __init__(self, chunk_size: int, slots: int = 1):
        self._chunk_size = chunk_size
        self._slots = threading.Semaphore(slots)
        self._ready: deque = deque()
        self._cond = threading.Condition()
        self._fill: io.BytesIO | None = None
        self._closed_by_writer = False
        self._writer_error: BaseException | None = None
        self._cancelled = False
        self._pos = 0  # reader position
        self._current = b""  # last chunk handed to the reader
        self._current_start = 0
        self.bytes_written = 0
        self.writer = _PipeWriter(self)

    # writer side ---------------------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        while view:
            if self._cancelled:
                raise _Cancelled()
            if self._fill is None:
                self._acquire_slot()
                self._fill = io.BytesIO()
            room = self._chunk_size - self._fill.tell()
            self._fill.write(view[:room])
            view = view[room:]
            if self._fill.tell() == self._chunk_size:
                self._hand_over()
        self.bytes_written += size
        return size

    def finish_writing(self, error: BaseException | None = None) -> None:
        """Called by the writer when done (or failed): the reader sees EOF (or the error)."""
        if self._fill is not None and error is None:
            self._hand_over()
        with self._cond:
            self._closed_by_writer = True
            self._writer_error = error
            self._cond.notify_all()

    def cancel(self) -> None:
        """Called by the reader when the upload failed: the writer stops at its next write."""
        self._cancelled = True
        self._slots.release()
        with self._cond:
            self._ready.clear()
            self._cond.notify_all()

    def _acquire_slot(self) -> None:
        while not self._slots.acquire(timeout=0.5):
            if self._cancelled:
                raise _Cancelled()
        if self._cancelled:
            raise _Cancelled()

    def _hand_over(self) -> None:
        chunk = self._fill.getvalue()  # shares the buffer: no copy
        self._fill = None
        with self._cond:
            self._ready.append(chunk)
            self._cond.notify_all()

    # reader side ---------------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or not (self._current_start <= offset <= self._current_start + len(self._current)):
            raise io.UnsupportedOperation("ChunkPipe can only seek within the last chunk read")
        self._pos = offset
        return self._pos

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes; short only at the end of the stream (the library takes a short read as EOF).

        Aligned reads of a whole chunk return the chunk itself (no copy); a read that starts inside a
        chunk, after a recovery seek, is completed from the next one.
        """
        pieces = []
        wanted = size
        while wanted != 0:
            end_of_current = self._current_start + len(self._current)
            if self._pos >= end_of_current:
                chunk = self._next_chunk()
                if chunk is None:
                    break
                self._current_start, self._current = self._pos, chunk
                continue
            start = self._pos - self._current_start
            piece = self._current[start : start + wanted] if wanted >= 0 else self._current[start:]
            self._pos += len(piece)
            pieces.append(piece)
            if wanted >= 0:
                wanted -= len(piece)
            else:
                break
        if len(pieces) == 1:
            return pieces[0]  # a whole-chunk slice is the chunk itself: no copy
        return b"".join(pieces)

    def _next_chunk(self) -> bytes | None:
        with self._cond:
            if self._current:  # the reader has moved past it: free its slot before waiting,
                self._current = b""  # or a writer holding the only slot could never hand over
                self._slots.release()
            while not self._ready and not self._closed_by_writer:
                self._cond.wait()
            if self._ready:
                return self._ready.popleft()
            if self._writer_error is not None:
                raise self._writer_error
            return None


class _PipeWriter(io.RawIOBase):
    """The writing end of a ChunkPipe: `tell()` counts bytes written, as zipfile expects."""

    def __init__(self, pipe: ChunkPipe):
        self._pipe = pipe

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._pipe.write(data)

    def tell(self) -> int:
        return self._pipe.bytes_written


class _Cancelled(Exception):
    """The upload side gave up; the writer thread unwinds quietly."""
