"""The one adapter for calls that exist only on hosted notebooks (Google Colab, Kaggle).

Everything else in colab_magics talks to these functions, never to `google.colab` or
`kaggle_secrets` directly, so the logic around them can be tested with stand-in modules.
"""

from __future__ import annotations

import os
import sys


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def in_kaggle() -> bool:
    """True inside a Kaggle kernel."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or "kaggle_secrets" in sys.modules


def colab_authenticate_user() -> None:
    """Colab's own sign-in flow; afterwards Application Default Credentials work."""
    from google.colab import auth  # type: ignore[import-not-found]

    auth.authenticate_user()


def kaggle_gcs_credentials():
    """Credentials of Kaggle's Google Cloud Services integration (Add-ons → Google Cloud)."""
    from kaggle_gcp import KaggleKernelCredentials  # type: ignore[import-not-found]
    from kaggle_secrets import GcpTarget  # type: ignore[import-not-found]

    return KaggleKernelCredentials(target=GcpTarget.GCS)


def secret(name: str) -> str | None:
    """A user secret from Colab's or Kaggle's secret store, or None when absent or not granted."""
    if in_colab():
        try:
            from google.colab import userdata  # type: ignore[import-not-found]
        except ImportError:
            return None
        try:
            return userdata.get(name)
        except Exception as exc:  # userdata raises SecretNotFoundError / NotebookAccessError
            if type(exc).__name__ in {"SecretNotFoundError", "NotebookAccessError", "TimeoutException"}:
                return None
            raise
    if in_kaggle():
        try:
            from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]
        except ImportError:
            return None
        try:
            return UserSecretsClient().get_secret(name)
        except Exception as exc:  # Kaggle raises BackendError for a missing secret
            if type(exc).__name__ in {"BackendError", "ValidationError"}:
                return None
            raise
    return None


def colab_serve_port(port: int, path: str = "/", height: int = 800) -> None:
    """Show a local port inside the Colab output area, proxied privately for the signed-in user."""
    from google.colab import output  # type: ignore[import-not-found]

    output.serve_kernel_port_as_iframe(port, path=path, height=height)


def colab_proxy_url(port: int) -> str:
    """The private https URL Colab's proxy gives a local port (opens in the user's browser only)."""
    from google.colab.output import eval_js  # type: ignore[import-not-found]

    return eval_js(f"google.colab.kernel.proxyPort({int(port)})")
