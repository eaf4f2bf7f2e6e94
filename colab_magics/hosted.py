"""The one adapter for calls that exist only on hosted notebooks (Google Colab, Kaggle).

Everything else in colab_magics talks to these functions, never to `google.colab` or
`kaggle_secrets` directly, so the logic around them can be tested with stand-in modules. Each
function turns the real modules' exceptions (googlecolab/colabtools `google/colab/errors.py`,
`_ipython.py`, `_message.py`, `output/_js.py`, `userdata.py`, `auth.py`; Kaggle/docker-python
`patches/kaggle_web_client.py`, `kaggle_secrets.py`, `kaggle_gcp.py`) into a None ("not
available") or one ColabMagicsError line, by class.

Two facts of the real modules shape this file. Colab reaches its frontend (the browser tab) only
through the notebook's kernel, `get_ipython().kernel`: in any other process — `!colab-magics …` in
a cell is a subprocess of the kernel — every request raises AttributeError, so "not the kernel" is
"no frontend". Kaggle's web client catches URLError before HTTPError, so every HTTP error (a 403
when an add-on or a secret was detached, a 500 of Kaggle's) arrives as the built-in ConnectionError,
like an internet that is off: the HTTPError further down the exception chain tells them apart.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from colab_magics.errors import AuthError, do

log = logging.getLogger(__name__)

PROXY_TIMEOUT = 10.0  # seconds to wait for the Colab frontend to answer eval_js
GCLOUD_SDK = "Google Cloud SDK"  # Kaggle's add-on names, as its Add-ons menu shows them
CLOUD_SERVICES = "Google Cloud Services"


def in_colab() -> bool:
    """True inside a Google Colab runtime (its kernel, or a process the kernel started)."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def in_kaggle() -> bool:
    """True inside a Kaggle kernel."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or "kaggle_secrets" in sys.modules


def in_notebook_kernel() -> bool:
    """Whether this process is a notebook's kernel, the only one that can reach Colab's frontend:
    the same test colabtools makes (`_ipython.in_ipython`: the shell has a `kernel`)."""
    from IPython import get_ipython

    return hasattr(get_ipython(), "kernel")


NOT_THE_KERNEL = ("this process is not the notebook's kernel (a ! shell command?), so no Colab frontend "
                  "can answer it")


def colab_no_frontend(waited: float) -> str:
    """Why no Colab frontend answered, in plain words: this is not the kernel, or nobody answered."""
    if not in_notebook_kernel():
        return NOT_THE_KERNEL
    return f"no Colab frontend answered within {waited:.0f} s (a runtime driven from VS Code or a script?)"


# --- Colab ------------------------------------------------------------------------------------
def colab_adc_path() -> str:
    """Where Colab's `authenticate_user` writes the user's credentials (as its `_get_adc_path`)."""
    return os.path.join(os.environ.get("DATALAB_ROOT", "/"), "content/.adc/", "adc.json")


def colab_user_credentials() -> bool:
    """Colab's sign-in already left the user's credentials in a file (then it returns without asking
    anyone, from any process)."""
    try:
        with open(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or colab_adc_path()) as fh:
            return json.load(fh).get("type") == "authorized_user"
    except (OSError, ValueError, AttributeError):
        return False


def colab_sign_in_from_a_shell() -> AuthError:
    """The error for a process that is not the kernel and finds no sign-in of the notebook's."""
    return AuthError("Colab's sign-in can only be shown by the notebook, and ", NOT_THE_KERNEL,
                     ": sign in from a notebook cell first, or use ", do("auth", "PROJECT", key_file="KEY.json"))


def colab_authenticate_user(project: str | None = None) -> None:
    """Colab's own sign-in; afterwards Application Default Credentials are the user's.

    With a project, Colab also makes it gcloud's and the quota project (`project_id=`).
    """
    from google.colab import auth, errors  # type: ignore[import-not-found]

    if not colab_user_credentials() and not colab_frontend_answers():
        # authenticate_user asks the frontend with no timeout: without one it would wait forever
        if not in_notebook_kernel():
            raise colab_sign_in_from_a_shell()
        raise AuthError(f"{colab_no_frontend(PROXY_TIMEOUT)}, so Colab cannot show its sign-in: use ",
                        do("auth", "PROJECT", key_file="KEY.json"), ", or gcloud auth application-default login")
    try:
        if project:
            auth.authenticate_user(project_id=project)
        else:
            auth.authenticate_user()
    except errors.AuthorizationError as exc:
        raise AuthError(f"Colab sign-in failed ({exc}): run ", do("auth"), " again and allow access, or use ",
                        do("auth", "PROJECT", key_file="KEY.json")) from None
    except NotImplementedError:
        raise AuthError("Colab's sign-in is not available on this runtime (a managed runtime): use ",
                        do("auth", "PROJECT", key_file="KEY.json"), " with a service-account key") from None


def colab_frontend_answers(timeout: float = PROXY_TIMEOUT) -> bool:
    """True when a Colab frontend (the browser tab) answers a trivial eval_js within `timeout`;
    False at once in a process that is not the kernel."""
    if not in_notebook_kernel():
        return False
    from google.colab import errors  # type: ignore[import-not-found]
    from google.colab.output import eval_js  # type: ignore[import-not-found]

    try:
        return eval_js("1", timeout_sec=timeout) is not None
    except errors.Error:  # the frontend answered, with an error: it is there
        return True


def colab_serve_port(port: int, path: str = "/", height: int = 800) -> bool:
    """Show a local port inside the Colab output area, proxied privately for the signed-in user.
    False (nothing shown) in a process that is not the kernel: there is no output area to show it in
    (the real call would print the Javascript object's repr there)."""
    if not in_notebook_kernel():
        return False
    from google.colab import output  # type: ignore[import-not-found]

    output.serve_kernel_port_as_iframe(port, path=path, height=height)
    return True


def colab_proxy_url(port: int, timeout: float = PROXY_TIMEOUT) -> str | None:
    """The https URL Colab's proxy gives a local port, or None when no frontend answers in time.

    `eval_js` returns None at its timeout (a runtime driven from VS Code has no Colab frontend),
    raises MessageError when the frontend reports an error, and AttributeError in a process that is
    not the kernel (asked first, so that is None at once).
    """
    if not in_notebook_kernel():
        return None
    from google.colab import errors  # type: ignore[import-not-found]
    from google.colab.output import eval_js  # type: ignore[import-not-found]

    try:
        url = eval_js(f"google.colab.kernel.proxyPort({int(port)})", timeout_sec=timeout)
    except errors.Error as exc:  # _message.MessageError: the frontend answered with an error
        log.info("Colab frontend could not proxy port %d: %s", port, exc)
        return None
    return str(url) if url else None


# --- Kaggle: why a request to Kaggle's backend failed ---------------------------------------------
@dataclass(frozen=True)
class KaggleFailure:
    """What lies under a failure of Kaggle's web client: an HTTP status, no internet, no token."""

    status: int | None = None  # the HTTP status Kaggle's backend answered
    offline: bool = False  # the backend could not be reached (Internet off: Kaggle's default)
    no_token: bool = False  # the session has no KAGGLE_USER_SECRETS_TOKEN (CredentialError)

    @property
    def refused(self) -> bool:
        return self.status in (401, 403)

    @property
    def kaggles_side(self) -> bool:
        return self.status is not None and self.status >= 500


def kaggle_failure(exc: BaseException) -> KaggleFailure:
    """Read the cause of a Kaggle web-client failure down its exception chain.

    `kaggle_web_client.make_post_request` catches URLError before HTTPError, so a 403 or a 500 is
    raised as ConnectionError from the HTTPError (and `KaggleKernelCredentials.refresh` wraps that in
    RefreshError): the status is on `exc.__cause__` or `exc.__cause__.__cause__`, not on `exc`.
    """
    from kaggle_web_client import CredentialError  # type: ignore[import-not-found]

    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for link in chain:
        if isinstance(link, urllib.error.HTTPError):
            return KaggleFailure(status=link.code)
    if any(isinstance(link, CredentialError) for link in chain):
        return KaggleFailure(no_token=True)
    if any(isinstance(link, (urllib.error.URLError, TimeoutError, ConnectionError)) for link in chain):
        return KaggleFailure(offline=True)
    return KaggleFailure()


def _kaggle_addon_error(addon: str, failure: KaggleFailure, detail: str = "no credentials") -> AuthError:
    """One line for a Kaggle add-on whose credentials could not be fetched, by what lies under it."""
    if failure.offline:
        return AuthError(f"Kaggle's {addon} add-on needs the internet: turn on Internet in the notebook's "
                         "settings (Kaggle's default is off), then run ", do("auth"), " again")
    if failure.refused:
        return AuthError(f"Kaggle refused the {addon} add-on's credentials (HTTP {failure.status}): attach it "
                         f"again or re-link your account under Add-ons → {addon}, then run ", do("auth"), " again")
    if failure.kaggles_side:
        return AuthError(f"Kaggle's service failed (HTTP {failure.status}) while fetching the {addon} add-on's "
                         "credentials: that is on Kaggle's side, run ", do("auth"), " again in a minute")
    if failure.no_token:
        return AuthError(f"this Kaggle session has no user-secrets token, so the {addon} add-on cannot be asked: "
                         "restart the session, or use ", do("auth", "PROJECT", key_file="KEY.json"))
    said = f"HTTP {failure.status}" if failure.status else detail
    return AuthError(f"Kaggle's {addon} add-on gave no credentials ({said}): re-link your account under "
                     f"Add-ons → {addon}, then run ", do("auth"), " again")


def kaggle_no_addon() -> AuthError:
    return AuthError(f"no Google Cloud add-on is attached to this Kaggle notebook: open Add-ons → {CLOUD_SERVICES} "
                     f"(link your account with Cloud Storage selected) or Add-ons → {GCLOUD_SDK}, then run ",
                     do("auth"), " again (or use  ", do("auth", "PROJECT", key_file="KEY.json"), ")")


# --- Kaggle: the Google Cloud add-ons -------------------------------------------------------------
def kaggle_gcs_attached() -> bool:
    """Whether the Google Cloud Services add-on is attached with Cloud Storage selected."""
    from kaggle_gcp import get_integrations  # type: ignore[import-not-found]

    return get_integrations().has_gcs()


def kaggle_gcs_credentials():
    """Credentials of Kaggle's Google Cloud Services add-on, checked to give a token now.

    AuthError (one line, by cause) when the add-on is not attached, the kernel has no user-secrets
    token, Kaggle refuses (403: detached or unlinked), fails (5xx) or cannot be reached (Internet off).
    The token is fetched as `KaggleKernelCredentials.refresh` does, without its prints: they say
    "ensure internet is on" for every one of those causes.
    """
    from kaggle_gcp import KaggleKernelCredentials  # type: ignore[import-not-found]
    from kaggle_secrets import GcpTarget, UserSecretsClient  # type: ignore[import-not-found]
    from kaggle_web_client import BackendError, CredentialError  # type: ignore[import-not-found]

    if not kaggle_gcs_attached():
        raise kaggle_no_addon()
    credentials = KaggleKernelCredentials(target=GcpTarget.GCS)
    try:
        credentials.token, credentials.expiry = UserSecretsClient()._get_gcs_access_token()
    except (ConnectionError, CredentialError, BackendError) as exc:
        raise _kaggle_addon_error(CLOUD_SERVICES, kaggle_failure(exc)) from None
    return credentials


def kaggle_gcloud_sdk_file() -> Path | None:
    """The credentials of Kaggle's Google Cloud SDK add-on (`UserSecretsClient.get_gcloud_credential`,
    what `set_gcloud_credentials` hands to gcloud), written to a private file (0600 in a 0700
    directory, as mount tools take a file); None when that add-on is not attached.
    AuthError (one line, by cause) when Kaggle refuses, fails or cannot be reached."""
    from kaggle_secrets import NotFoundError, UserSecretsClient  # type: ignore[import-not-found]
    from kaggle_web_client import BackendError, CredentialError  # type: ignore[import-not-found]

    try:
        credential = UserSecretsClient().get_gcloud_credential()
    except NotFoundError:
        return None
    except (ConnectionError, CredentialError, BackendError) as exc:
        raise _kaggle_addon_error(GCLOUD_SDK, kaggle_failure(exc), type(exc).__name__) from None
    folder = Path(tempfile.mkdtemp(prefix="colab-magics-kaggle-"))  # mode 0700
    path = folder / "gcloud_credential.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(credential)
    return path


# --- secrets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Secret:
    """A notebook secret as looked up: its value, or why it could not be read (None: simply not there)."""

    name: str
    value: str | None = field(default=None, repr=False)
    problem: str | None = None


def secret(name: str) -> str | None:
    """A user secret from Colab's or Kaggle's secret store; None when absent, not granted or unreachable."""
    return read_secret(name).value


def read_secret(name: str) -> Secret:
    """A user secret from Colab's or Kaggle's secret store, with the reason when it could not be read
    (not granted, no kernel, Kaggle refused or failed, no internet); never raises for those."""
    if in_colab():
        found = _colab_secret(name)
    elif in_kaggle():
        found = _kaggle_secret(name)
    else:
        return Secret(name)
    if found.problem is not None:
        log.info("secret %s is not available: %s", name, found.problem)
    return found


def _colab_secret(name: str) -> Secret:
    try:
        from google.colab import errors, userdata  # type: ignore[import-not-found]
    except ImportError:
        return Secret(name)
    if not in_notebook_kernel():  # userdata.get would raise AttributeError
        return Secret(name, problem=f"Colab secrets can be read only by the notebook's kernel, and {NOT_THE_KERNEL}: "
                                    f"put it in the environment from a cell first (os.environ[{name!r}] = "
                                    f"userdata.get({name!r}))")
    try:
        return Secret(name, userdata.get(name))
    except userdata.NotebookAccessError:
        return Secret(name, problem=f"this notebook has no access to Colab secret {name}: turn on its "
                                    "notebook access in the Secrets panel")
    except userdata.SecretNotFoundError:
        return Secret(name)
    except errors.Error as exc:  # TimeoutException (no frontend answered), MessageError
        return Secret(name, problem=f"Colab secret {name} could not be read ({type(exc).__name__}): "
                                    f"{colab_no_frontend(10)}")


def _kaggle_secret(name: str) -> Secret:
    try:
        from kaggle_secrets import BackendError, CredentialError, UserSecretsClient, ValidationError  # type: ignore[import-not-found]
    except ImportError:
        return Secret(name)
    try:
        return Secret(name, UserSecretsClient().get_secret(name))
    except (BackendError, ValidationError):  # no secret of that label attached to this notebook
        return Secret(name)
    except (ConnectionError, CredentialError) as exc:
        failure = kaggle_failure(exc)
    if failure.refused:
        problem = (f"Kaggle refused secret {name} (HTTP {failure.status}): attach it to this notebook again "
                   "under Add-ons → Secrets")
    elif failure.kaggles_side:
        problem = f"Kaggle's service failed (HTTP {failure.status}) reading secret {name}: try again in a minute"
    elif failure.offline:
        problem = f"Kaggle secret {name} needs the internet: turn on Internet in the notebook's settings"
    elif failure.no_token:
        problem = f"this Kaggle session has no user-secrets token, so secret {name} cannot be read"
    else:
        problem = f"Kaggle secret {name} could not be read (HTTP {failure.status})"
    return Secret(name, problem=problem)
