"""Which credentials and which project the other magics use.

Order: the local emulator (`STORAGE_EMULATOR_HOST`, or `emulator=True` which starts the bundled one)
→ a service-account key file → Colab's user sign-in (Kaggle's GCS integration on Kaggle) →
Application Default Credentials.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from colab_magics import emulator as emulator_mod
from colab_magics import hosted
from colab_magics.errors import AuthError, NoCredentials, hint

log = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
EMULATOR_PROJECT = emulator_mod.PROJECT


def no_credentials_help() -> str:
    return (
        f"no Google Cloud credentials found: use  {hint('gcs_auth', '--emulator')}  for the local emulator, "
        f"{hint('gcs_auth', 'PROJECT', '--key-file', 'KEY.json')}  for a service account, or run "
        f"gcloud auth application-default login  (in Colab, {hint('gcs_auth', 'PROJECT')} signs you in)"
    )


@dataclass(frozen=True)
class AuthInfo:
    """The credentials in use and whom they belong to."""

    method: str  # "emulator", "service-account", "colab", "kaggle" or "adc"
    identity: str
    project: str | None
    credentials: object = field(repr=False, compare=False, default=None)
    emulator_host: str | None = None
    emulator_started: bool = False
    key_file: str | None = None  # for tools that take a key path (rclone, gcsfuse); never its content


def authenticate(
    project: str | None = None,
    *,
    key_file: str | os.PathLike | None = None,
    emulator: bool = False,
    emulator_root: str | os.PathLike | None = None,
) -> AuthInfo:
    """Find credentials in the documented order and return who and which project they are."""
    if emulator or os.environ.get("STORAGE_EMULATOR_HOST"):
        return _emulator_auth(project, start=emulator, root=emulator_root)
    key_file = key_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file:
        return _key_file_auth(Path(key_file).expanduser(), project)
    if hosted.in_colab():
        hosted.colab_authenticate_user()
        return _adc_auth(project, method="colab")
    if hosted.in_kaggle():
        credentials = hosted.kaggle_gcs_credentials()
        return AuthInfo("kaggle", "Kaggle Google Cloud integration", project or _env_project(), credentials)
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
    from colab_magics import session

    info = authenticate(project, key_file=key_file, emulator=emulator, emulator_root=emulator_root)
    session.current().set_auth(info)
    if info.project and info.method != "emulator":
        set_gcloud_project(info.project)
    return info


def make_client(info: AuthInfo):
    """A storage client for `info` (anonymous against the emulator)."""
    from google.cloud import storage

    if info.method == "emulator":
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=info.project or EMULATOR_PROJECT, credentials=AnonymousCredentials())
    return storage.Client(project=info.project, credentials=info.credentials)


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


def _env_project() -> str | None:
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")


def _emulator_auth(project: str | None, *, start: bool, root) -> AuthInfo:
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    started = False
    if start and not (host and emulator_mod.answers(host)):
        running = emulator_mod.ensure_running(root)
        host, started = running.host, running.started
        os.environ["STORAGE_EMULATOR_HOST"] = host
    from google.auth.credentials import AnonymousCredentials

    return AuthInfo(
        method="emulator",
        identity=f"anonymous (local emulator at {host})",
        project=project or _env_project() or EMULATOR_PROJECT,
        credentials=AnonymousCredentials(),
        emulator_host=host,
        emulator_started=started,
    )


def _key_file_auth(path: Path, project: str | None) -> AuthInfo:
    if not path.is_file():
        raise AuthError(f"service-account key file {path} not found: check the path")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        raise AuthError(f"{path} is not a JSON key file: download a key for a service account") from None
    if info.get("type") != "service_account":
        raise AuthError(
            f"{path} is not a service-account key (type {info.get('type')!r}): "
            "create one under IAM → Service accounts → Keys"
        )
    from google.oauth2 import service_account

    try:
        credentials = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    except (ValueError, KeyError):
        raise AuthError(f"{path} is not a usable service-account key: download a new key") from None
    return AuthInfo(
        "service-account",
        info.get("client_email", "service account"),
        project or info.get("project_id") or _env_project(),
        credentials,
        key_file=str(path),
    )


def _adc_auth(project: str | None, *, method: str) -> AuthInfo:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, default_project = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError:
        raise NoCredentials(no_credentials_help()) from None
    identity = getattr(credentials, "service_account_email", None) or "your Google account"
    return AuthInfo(method, identity, project or default_project or _env_project(), credentials)
