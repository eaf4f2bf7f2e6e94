"""Fixtures that make this machine look like a Colab runtime or a Kaggle kernel.

The stand-in modules live in tests/standins/hosted/ (each cites the upstream file it reproduces);
the fixtures put that directory on sys.path, import them, and remove them again afterwards.
Kaggle's backend is a local HTTP server that answers the two requests the real client makes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
HOSTED = Path(__file__).parent / "standins" / "hosted"
STANDIN_MODULES = ("google.colab", "kaggle_secrets", "kaggle_gcp", "kaggle_web_client")


def _forget_standins() -> None:
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in STANDIN_MODULES):
            del sys.modules[name]


@pytest.fixture()
def standins_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HOSTED))
    _forget_standins()
    yield
    _forget_standins()


def _evaluate_in_the_browser(request):
    """What the Colab tab answers to eval_js: a proxy URL for proxyPort(P), else the literal's value."""
    script = request["script"]
    if script.startswith("google.colab.kernel.proxyPort("):
        return "https://standin-{}.colab.example/".format(script.split("(")[1].split(")")[0])
    return json.loads(script)


class StandinKernel:
    """What the Colab modules use of ipykernel's kernel (`get_ipython().kernel`): the shell's parent
    header and the kernel app (`.parent`). A shell without one is a process that is not the kernel."""

    def __init__(self):
        self.shell = SimpleNamespace(parent_header={})
        self.parent = SimpleNamespace(kernel=self)


@pytest.fixture()
def colab(standins_path, shell, monkeypatch, tmp_path):
    """A Colab runtime whose frontend answers: proxyPort, secrets, sign-in (all adjustable); this
    process is its notebook's kernel (the shell has a `kernel`, as ipykernel's has)."""
    import google.colab
    from google.colab import _message

    monkeypatch.setattr(shell, "kernel", StandinKernel(), raising=False)

    monkeypatch.setenv("COLAB_RELEASE_TAG", "standin")
    monkeypatch.setenv("DATALAB_ROOT", str(tmp_path / "datalab"))
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT",
                 "GOOGLE_CLOUD_QUOTA_PROJECT", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    secrets: dict[str, tuple[str, bool]] = {}  # name → (value, notebook has access)

    def get_secret(request):
        found = secrets.get(request["key"])
        return {"exists": found is not None, "access": bool(found and found[1]),
                "payload": found[0] if found else ""}

    _message.frontend = {
        "cell_javascript_eval": _evaluate_in_the_browser,
        "GetSecret": get_secret,
        "request_auth": lambda request: True,
    }
    _message.requests.clear()
    google.colab.secrets = secrets
    yield google.colab
    _message.frontend = None


GCLOUD_SDK_LABEL = "__gcloud_sdk_auth__"  # the secret Kaggle's "Google Cloud SDK" add-on attaches


@dataclass
class KaggleBackend:
    """What the local 'Kaggle backend' answers; tests change these fields."""

    url: str
    secrets: dict[str, str] = field(default_factory=dict)
    gcs_token: str | None = "ya29.standin-kaggle-token"
    requests: list[tuple[str, dict]] = field(default_factory=list)
    status: int = 200  # another status (403, 500, 503) answers every request with that HTTP error
    monkeypatch: object = field(default=None, repr=False)

    def attach_gcloud_sdk(self, credential: dict) -> None:
        """Attach the "Google Cloud SDK" add-on: its credential is a secret with Kaggle's own label."""
        self.secrets[GCLOUD_SDK_LABEL] = json.dumps(credential)

    def internet_off(self) -> None:
        """Internet off (Kaggle's default): the backend cannot be reached (nothing listens there)."""
        self.monkeypatch.setenv("KAGGLE_URL_BASE", f"http://127.0.0.1:{free_port()}")


@pytest.fixture()
def kaggle(standins_path, monkeypatch):
    """A Kaggle kernel with internet on, talking to a local backend; no add-on attached."""
    backend = KaggleBackend(url="", monkeypatch=monkeypatch)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            backend.requests.append((self.path, body))
            if backend.status != 200:
                return self.reply(backend.status, {"error": "standin failure"})
            if self.headers.get("X-Kaggle-Authorization") != "Bearer standin-jwt":
                return self.reply(403, {})
            if self.path == "/requests/GetUserSecretByLabelRequest":
                label = body["Label"]
                if label in backend.secrets:
                    return self.reply(200, {"wasSuccessful": True, "result": {"secret": backend.secrets[label]}})
                return self.reply(200, {"wasSuccessful": False, "errors": ["No user secrets exist for kernel"]})
            if self.path == "/requests/GetUserSecretRequest" and backend.gcs_token:
                return self.reply(200, {"wasSuccessful": True,
                                        "result": {"secret": backend.gcs_token, "expiresInSeconds": 3600}})
            return self.reply(200, {"wasSuccessful": False, "errors": ["not linked"]})

        def reply(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    backend.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("KAGGLE_URL_BASE", backend.url)
    monkeypatch.setenv("KAGGLE_USER_SECRETS_TOKEN", "standin-jwt")
    for name in ("KAGGLE_KERNEL_INTEGRATIONS", "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
                 "COLAB_RELEASE_TAG"):
        monkeypatch.delenv(name, raising=False)
    import kaggle_secrets  # noqa: F401  (in sys.modules, as on Kaggle)

    yield backend
    server.shutdown()
    server.server_close()


def shell_command_env(**extra: str) -> dict[str, str]:
    """The environment of `!colab-magics …` in a hosted notebook: the stand-in modules importable,
    this checkout first, no kernel (a subprocess of the notebook's)."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "COLAB_RELEASE_TAG", "KAGGLE_KERNEL_RUN_TYPE",
        "KAGGLE_URL_BASE", "KAGGLE_USER_SECRETS_TOKEN", "KAGGLE_KERNEL_INTEGRATIONS", "NGROK_AUTHTOKEN",
        "PYTEST_CURRENT_TEST")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HOSTED), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env
