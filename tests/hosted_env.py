"""Fixtures that make this machine look like a Colab runtime or a Kaggle kernel.

The stand-in modules live in tests/standins/hosted/ (each cites the upstream file it reproduces);
the fixtures put that directory on sys.path, import them, and remove them again afterwards.
Kaggle's backend is a local HTTP server that answers the two requests the real client makes.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port

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


@pytest.fixture()
def colab(standins_path, monkeypatch, tmp_path):
    """A Colab runtime whose frontend answers: proxyPort, secrets, sign-in (all adjustable)."""
    import google.colab
    from google.colab import _message

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


@dataclass
class KaggleBackend:
    """What the local 'Kaggle backend' answers; tests change these fields."""

    url: str
    secrets: dict[str, str] = field(default_factory=dict)
    gcs_token: str | None = "ya29.standin-kaggle-token"
    requests: list[tuple[str, dict]] = field(default_factory=list)


@pytest.fixture()
def kaggle(standins_path, monkeypatch):
    """A Kaggle kernel with internet on, talking to a local backend; no add-on attached."""
    backend = KaggleBackend(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            backend.requests.append((self.path, body))
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


def internet_off(monkeypatch) -> None:
    """Kaggle with Internet off: its backend cannot be reached (nothing listens on the port)."""
    monkeypatch.setenv("KAGGLE_URL_BASE", f"http://127.0.0.1:{free_port()}")
