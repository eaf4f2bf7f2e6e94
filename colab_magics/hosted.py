"""The one adapter for calls that exist only on hosted notebooks (Google Colab, Kaggle).

Everything else in colab_magics talks to these functions, never to `google.colab` or
`kaggle_secrets` directly, so the logic around them can be tested with stand-in modules. Each
function turns the real modules' exceptions (googlecolab/colabtools `google/colab/errors.py`,
`userdata.py`, `_message.py`; Kaggle/docker-python `patches/kaggle_web_client.py`,
`kaggle_secrets.py`) into a None ("not available") or one ColabMagicsError line, by class.
"""

from __future__ import annotations

import logging
import json
import os
import sys

from colab_magics.errors import AuthError, do

log = logging.getLogger(__name__)



def _kaggle_addon_missing() -> AuthError:
    return AuthError("Kaggle's Google Cloud Services integration is not attached to this notebook: open "
                     "Add-ons → Google Cloud Services, link your account with Cloud Storage selected, then run ",
                     do("auth"), " again (or use  ", do("auth", "PROJECT", key_file="KEY.json"), ")")


PROXY_TIMEOUT = 10.0  # seconds to wait for the Colab frontend to answer eval_js


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def in_kaggle() -> bool:
    """True inside a Kaggle kernel."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or "kaggle_secrets" in sys.modules


# --- Colab ------------------------------------------------------------------------------------
def colab_adc_path() -> str:
    """Where Colab's `authenticate_user` writes the user's credentials (as its `_get_adc_path`)."""
    return os.path.join(os.environ.get("DATALAB_ROOT", "/"), "content/.adc/", "adc.json")


def colab_authenticate_user(project: str | None = None) -> None:
    """Colab's own sign-in; afterwards Application Default Credentials are the user's.

    With a project, Colab also makes it gcloud's and the quota project (`project_id=`).
    """
    from google.colab import auth, errors  # type: ignore[import-not-found]

    if not _colab_user_credentials() and not colab_frontend_answers():
        # authenticate_user asks the frontend with no timeout: without one it would wait forever
        raise AuthError(f"no Colab frontend answered within {PROXY_TIMEOUT:.0f} s, so Colab cannot show its "
                        "sign-in (a runtime driven from VS Code or a script?): use ",
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


def _colab_user_credentials() -> bool:
    """Colab's sign-in already left the user's credentials (then it returns without asking anyone)."""
    try:
        with open(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or colab_adc_path()) as fh:
            return json.load(fh).get("type") == "authorized_user"
    except (OSError, ValueError, AttributeError):
        return False


def colab_frontend_answers(timeout: float = PROXY_TIMEOUT) -> bool:
    """True when a Colab frontend (the browser tab) answers a trivial eval_js within `timeout`."""
    from google.colab import errors  # type: ignore[import-not-found]
    from google.colab.output import eval_js  # type: ignore[import-not-found]

    try:
        return eval_js("1", timeout_sec=timeout) is not None
    except errors.Error:  # the frontend answered, with an error: it is there
        return True


def colab_serve_port(port: int, path: str = "/", height: int = 800) -> None:
    """Show a local port inside the Colab output area, proxied privately for the signed-in user."""
    from google.colab import output  # type: ignore[import-not-found]

    output.serve_kernel_port_as_iframe(port, path=path, height=height)


def colab_proxy_url(port: int, timeout: float = PROXY_TIMEOUT) -> str | None:
    """The https URL Colab's proxy gives a local port, or None when no frontend answers in time.

    `eval_js` returns None at its timeout (a runtime driven from VS Code or a script has no Colab
    frontend) and raises MessageError when the frontend reports an error.
    """
    from google.colab import errors  # type: ignore[import-not-found]
    from google.colab.output import eval_js  # type: ignore[import-not-found]

    try:
        url = eval_js(f"google.colab.kernel.proxyPort({int(port)})", timeout_sec=timeout)
    except errors.Error as exc:  # _message.MessageError: the frontend answered with an error
        log.info("Colab frontend could not proxy port %d: %s", port, exc)
        return None
    return str(url) if url else None


# --- Kaggle -----------------------------------------------------------------------------------
def kaggle_gcs_credentials():
    """Credentials of Kaggle's Google Cloud Services integration, checked to give a token now.

    AuthError (one line) when the add-on is not attached, the kernel has no user-secrets token,
    or the token cannot be fetched (internet off is Kaggle's default).
    """
    from google.auth.exceptions import RefreshError
    from google.auth.transport.requests import Request
    from kaggle_gcp import KaggleKernelCredentials, get_integrations  # type: ignore[import-not-found]
    from kaggle_secrets import GcpTarget  # type: ignore[import-not-found]

    if not get_integrations().has_gcs():
        raise _kaggle_addon_missing()
    credentials = KaggleKernelCredentials(target=GcpTarget.GCS)
    try:
        credentials.refresh(Request())
    except RefreshError as exc:
        cause = exc.__cause__
        if isinstance(cause, ConnectionError):
            raise AuthError("Kaggle's Google Cloud integration needs the internet: turn on Internet in "
                            "the notebook's settings, then run ", do("auth"), " again") from None
        raise AuthError(f"Kaggle's Google Cloud integration gave no token ({cause or exc}): re-link "
                        f"your account under Add-ons → Google Cloud Services") from None
    return credentials


# --- secrets ------------------------------------------------------------------------------------
def secret(name: str) -> str | None:
    """A user secret from Colab's or Kaggle's secret store; None when absent, not granted or unreachable."""
    if in_colab():
        return _colab_secret(name)
    if in_kaggle():
        return _kaggle_secret(name)
    return None


def _colab_secret(name: str) -> str | None:
    try:
        from google.colab import errors, userdata  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return userdata.get(name)
    except userdata.NotebookAccessError:
        log.info("Colab secret %s exists but this notebook has no access to it (toggle it in Secrets)", name)
    except errors.Error as exc:  # SecretNotFoundError, TimeoutException (no frontend), MessageError
        log.info("Colab secret %s is not available: %s", name, type(exc).__name__)
    return None


def _kaggle_secret(name: str) -> str | None:
    try:
        from kaggle_secrets import BackendError, CredentialError, UserSecretsClient, ValidationError  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return UserSecretsClient().get_secret(name)
    except CredentialError:
        log.info("Kaggle secret %s is not available: not attached to this notebook (Add-ons → Secrets)", name)
    except ConnectionError:  # kaggle_web_client raises the built-in one when the internet is off
        log.info("Kaggle secret %s is not available: Kaggle secrets need Internet on in the settings", name)
    except (BackendError, ValidationError) as exc:
        log.info("Kaggle secret %s is not available: %s", name, type(exc).__name__)
    return None
