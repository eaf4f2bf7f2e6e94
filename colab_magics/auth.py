"""Which credentials, which endpoint and which project the other magics use.

Explicit beats implicit. Order: `--key-file` (a credentials file of any type google-auth reads) or
`--emulator` (the bundled local emulator) → an externally set `STORAGE_EMULATOR_HOST` →
`GOOGLE_APPLICATION_CREDENTIALS` → Colab's sign-in (from a process that is not the notebook's kernel:
what a sign-in in the notebook left) → on Kaggle its Google Cloud Services add-on (Cloud Storage
selected), else its Google Cloud SDK add-on → Application Default Credentials. The emulator's address
lives in the returned `AuthInfo` (and the session), never in `os.environ`, so a later
`%gcs_auth PROJECT --key-file K` really leaves it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from colab_magics import emulator as emulator_mod
from colab_magics import hosted, session
from colab_magics.errors import AuthError, NoCredentials, Param, check_argument, do, first_line

log = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
EMULATOR_PROJECT = emulator_mod.PROJECT
GCS_ENDPOINT = "https://storage.googleapis.com"
METADATA_TIMEOUT = 2.0  # seconds to ask the metadata server whose VM service account this is
_TYPES_BY_MODULE = {  # credential classes of google.auth.default() → the file "type" they come from
    "google.oauth2.service_account": "service_account",
    "google.oauth2.credentials": "authorized_user",
    "google.auth.identity_pool": "external_account",
    "google.auth.aws": "external_account",
    "google.auth.pluggable": "external_account",
    "google.auth.external_account_authorized_user": "external_account_authorized_user",
    "google.auth.impersonated_credentials": "impersonated_service_account",
    "google.auth.compute_engine.credentials": "compute_engine",
}


def no_credentials() -> NoCredentials:
    return NoCredentials(
        "no Google Cloud credentials found: use  ", do("auth", emulator=True), "  for the local emulator, ",
        do("auth", "PROJECT", key_file="KEY.json"), "  for a service account, or run "
        "gcloud auth application-default login  (in Colab, ", do("auth", "PROJECT"), " signs you in)"
    )


@dataclass(frozen=True)
class AuthInfo:
    """The credentials in use, whom they belong to, and where requests go."""

    method: str  # "emulator", "service-account" or "key-file" (a file), "colab", "kaggle", "kaggle-sdk" or "adc"
    identity: str
    project: str | None
    credentials: object = field(repr=False, compare=False, default=None)
    emulator_host: str | None = None  # the emulator's URL when method == "emulator"
    emulator_started: bool = False
    key_file: str | None = None  # for tools that take a key path (rclone, gcsfuse); never its content
    credential_type: str | None = None  # "service_account", "authorized_user", "external_account", …


def authenticate(
    project: str | None = None,
    *,
    key_file: str | os.PathLike | None = None,
    emulator: bool = False,
    emulator_root: str | os.PathLike | None = None,
) -> AuthInfo:
    """Find credentials in the documented order and return who they are and where requests go."""
    if key_file and emulator:
        raise AuthError(Param("key_file"), " and ", Param("emulator", True), " contradict each other: pass one of them")
    if key_file:
        return _file_auth(Path(key_file).expanduser(), project)
    if emulator:
        return _emulator_auth(project, start=True, root=emulator_root)
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return _emulator_auth(project, start=False, root=None)
    env_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if hosted.in_colab() and (not env_file or env_file == hosted.colab_adc_path()):
        return _colab_auth(project)
    if env_file:
        return _file_auth(Path(env_file).expanduser(), project)
    if hosted.in_kaggle():
        return _kaggle_auth(project)
    return _adc_auth(project, method="adc")


def sign_in(
    project: str | None = None,
    *,
    key_file: str | os.PathLike | None = None,
    emulator: bool = False,
    emulator_root: str | os.PathLike | None = None,
) -> AuthInfo:
    """`%gcs_auth`, `gcloud_auth()` and `colab-magics auth`: authenticate, make the result the
    session's credentials and (not for the emulator) the gcloud CLI's default project."""
    info = authenticate(project, key_file=key_file, emulator=emulator, emulator_root=emulator_root)
    session.current().set_auth(info)
    if info.project and info.method != "emulator":
        set_gcloud_project(info.project)
    return info


def storage_client(within=None):
    """The google-cloud-storage client of a session (the current one by default) for its credentials,
    made on first use; with no credentials chosen yet, they are found in the documented order."""
    within = within or session.current()
    with within.lock:
        if within.client is None:
            if within.auth is None:
                within.auth = authenticate()
            within.client = make_client(within.auth)
        return within.client


def use_project(project: str | None, call: str = "project") -> None:
    """colab_utils' functions took a project: authenticate with it unless credentials were chosen already."""
    check_argument(call, "project", project, (str, type(None)), "a project id (str)")
    current = session.current()
    if project and current.auth is None:
        current.set_auth(authenticate(project))


def make_client(info: AuthInfo):
    """A storage client for `info`: its endpoint is explicit, whatever STORAGE_EMULATOR_HOST says."""
    from google.cloud import storage

    if info.method == "emulator":
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=info.project or EMULATOR_PROJECT, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": info.emulator_host})
    # The library itself would send these credentials to an emulator named in the environment.
    options = {"api_endpoint": GCS_ENDPOINT} if os.environ.get("STORAGE_EMULATOR_HOST") else None
    return storage.Client(project=info.project, credentials=info.credentials, client_options=options)


def set_gcloud_project(project: str) -> bool:
    """Make `project` the gcloud CLI's default when that CLI is installed; True if it was set."""
    gcloud = shutil.which("gcloud")
    if not gcloud or not project:
        return False
    try:
        result = subprocess.run(
            [gcloud, "config", "set", "project", project],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        )
    except subprocess.TimeoutExpired:
        log.warning("gcloud config set project timed out")
        return False
    if result.returncode != 0:
        log.warning("gcloud config set project failed: %s", result.stderr.decode(errors="replace")[-300:])
    return result.returncode == 0


def identity_of(credentials, credential_type: str | None = None) -> str:
    """Whom `credentials` act as, in words: a service-account e-mail, or "your Google account (TYPE)"."""
    kind = credential_type or credential_type_of(credentials)
    if kind == "compute_engine":
        return _metadata_email() or "the VM's service account"
    email = getattr(credentials, "service_account_email", None)
    if email and email != "default":
        return str(email)
    if kind in ("authorized_user", "external_account_authorized_user"):
        account = getattr(credentials, "account", None)
        return f"your Google account ({account or kind})"
    if kind == "external_account":
        return "a workload-identity federation principal (external_account)"
    return f"your Google account ({kind or type(credentials).__name__})"


def credential_type_of(credentials) -> str | None:
    """The credentials file "type" a google-auth credentials object comes from."""
    return _TYPES_BY_MODULE.get(type(credentials).__module__)


def _env_project() -> str | None:
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")


def _emulator_auth(project: str | None, *, start: bool, root) -> AuthInfo:
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    started = False
    if start and not (host and emulator_mod.answers(host)):
        running = emulator_mod.ensure_running(root)
        host, started = running.host, running.started
    from google.auth.credentials import AnonymousCredentials

    return AuthInfo(
        method="emulator",
        identity=f"anonymous (local emulator at {host})",
        project=project or _env_project() or EMULATOR_PROJECT,
        credentials=AnonymousCredentials(),
        emulator_host=host.rstrip("/"),
        emulator_started=started,
    )


def _file_auth(path: Path, project: str | None) -> AuthInfo:
    """Credentials from a file of any type google-auth reads (as google.auth.default would)."""
    import google.auth
    from google.auth import exceptions

    if not path.is_file():
        raise AuthError(f"credentials file {path} not found: check the path")
    try:
        kind = json.loads(path.read_text()).get("type")
    except (OSError, ValueError, AttributeError):
        raise AuthError(f"{path} is not a JSON credentials file: download a service-account key "
                        f"(IAM → Service accounts → Keys)") from None
    try:
        with warnings.catch_warnings():
            # google-auth warns about files from untrusted sources; this one is the user's own choice.
            warnings.simplefilter("ignore", DeprecationWarning)
            credentials, file_project = google.auth.load_credentials_from_file(str(path), scopes=SCOPES)
    except exceptions.DefaultCredentialsError as exc:
        raise AuthError(
            f"{path} is not a credentials file google-auth can use (type {kind!r}): use a "
            f"service-account key, gcloud's application_default_credentials.json or a "
            f"workload-identity configuration ({first_line(exc)})"
        ) from None
    except (exceptions.RefreshError, exceptions.TransportError) as exc:  # external_account asks STS at once
        raise AuthError(f"the {kind} credentials in {path} could not get a token: "
                        f"{first_line(exc)}") from None
    quota_project = getattr(credentials, "quota_project_id", None)
    return AuthInfo(
        "service-account" if kind == "service_account" else "key-file",
        identity_of(credentials, kind),
        project or file_project or quota_project or _env_project(),
        credentials,
        key_file=str(path),
        credential_type=kind,
    )


def _colab_auth(project: str | None) -> AuthInfo:
    """Colab's sign-in, in the notebook's kernel; in any other process (`!colab-magics …`) it cannot be
    shown, so the credentials a sign-in in the notebook left are used, checked to give a token now."""
    if hosted.in_notebook_kernel() or hosted.colab_user_credentials():
        hosted.colab_authenticate_user(project)  # returns at once when its credentials are valid
        return _adc_auth(project, method="colab")
    from google.auth.exceptions import RefreshError, TransportError

    try:
        info = _adc_auth(project, method="colab")  # Colab's sign-in serves them from the metadata server
        _check_token(info.credentials)
    except (NoCredentials, RefreshError, TransportError):
        raise hosted.colab_sign_in_from_a_shell() from None
    return info


def _kaggle_auth(project: str | None) -> AuthInfo:
    """Kaggle's Google Cloud Services add-on when attached (Cloud Storage selected), else its Google
    Cloud SDK add-on (the user's own credentials, which mount tools can use too)."""
    if hosted.kaggle_gcs_attached():
        return AuthInfo("kaggle", "your Google account (Kaggle's Google Cloud Services integration)",
                        project or _env_project(), hosted.kaggle_gcs_credentials())
    path = hosted.kaggle_gcloud_sdk_file()
    if path is None:
        raise hosted.kaggle_no_addon()
    info = _file_auth(path, project)
    return replace(info, method="kaggle-sdk")


TOKEN_CHECK_TIMEOUT = 15.0  # seconds one token request may take when credentials are checked up front


def _check_token(credentials) -> None:
    """Ask for a token now (each request bounded), so credentials that cannot give one fail here."""
    import functools

    from google.auth.transport.requests import Request

    credentials.refresh(functools.partial(Request(), timeout=TOKEN_CHECK_TIMEOUT))


def _adc_auth(project: str | None, *, method: str) -> AuthInfo:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, default_project = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError:
        raise no_credentials() from None
    kind = credential_type_of(credentials)
    return AuthInfo(method, identity_of(credentials, kind), project or default_project or _env_project(),
                    credentials, credential_type=kind)


def _metadata_email() -> str | None:
    """The VM's default service account e-mail from the metadata server, or None (bounded wait)."""
    host = os.environ.get("GCE_METADATA_HOST") or "metadata.google.internal"
    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/instance/service-accounts/default/email",
        headers={"Metadata-Flavor": "Google"},
    )
    try:
        with urllib.request.urlopen(request, timeout=METADATA_TIMEOUT) as response:
            return response.read().decode().strip() or None
    except (OSError, ValueError):
        return None

