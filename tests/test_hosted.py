"""Colab and Kaggle as they really are, through stand-ins of their modules (tests/standins/hosted/),
and credentials of every type through google-auth's own loader.

One test per row of issue 13; every bad input is one line, in bounded time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from IPython.core.error import UsageError

from colab_magics import auth, hosted, session, storage, tensorboard
from colab_magics.errors import AuthError, NoCredentials
from conftest import free_port
from hosted_env import colab, internet_off, kaggle, standins_path  # noqa: F401  (fixtures)
from tests.test_tensorboard import write_events


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.fixture(autouse=True)
def fresh_session():
    yield
    session.current().set_auth(None)


# --- credentials files of every type -----------------------------------------------------------
def service_account_key(path, email="trainer@my-project.iam.gserviceaccount.com", project="my-project"):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "project_id": project, "private_key_id": "k1",
                                "private_key": pem, "client_email": email, "client_id": "1",
                                "token_uri": "https://oauth2.googleapis.com/token"}))
    return path


def user_credentials(path, quota_project=None):
    """What `gcloud auth application-default login`, Colab's sign-in and Kaggle's
    set_gcloud_credentials write: the user's own credentials."""
    data = {"type": "authorized_user", "client_id": "c.apps.googleusercontent.com", "client_secret": "s",
            "refresh_token": "REFRESH-SECRET"}
    if quota_project:
        data["quota_project_id"] = quota_project
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def no_emulator(monkeypatch):
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "COLAB_RELEASE_TAG",
                 "KAGGLE_KERNEL_RUN_TYPE", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)


def test_service_account_key_identity_is_its_email(no_emulator, tmp_path):
    info = auth.authenticate(key_file=service_account_key(tmp_path / "sa.json"))

    assert (info.method, info.identity, info.project) == (
        "service-account", "trainer@my-project.iam.gserviceaccount.com", "my-project")
    assert info.key_file == str(tmp_path / "sa.json") and info.credential_type == "service_account"


def test_user_credentials_file_is_accepted_and_named(no_emulator, tmp_path, capsys, ip):
    key = user_credentials(tmp_path / "adc.json", quota_project="billing-project")

    ip.run_line_magic("gcs_auth", f"--key-file {key}")

    out = capsys.readouterr().out
    assert "your Google account (authorized_user)" in out and "project billing-project" in out
    assert "REFRESH-SECRET" not in out


def test_google_application_credentials_of_user_type_is_accepted(no_emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user_credentials(tmp_path / "adc.json")))

    info = auth.authenticate("p1")

    assert info.credential_type == "authorized_user" and info.project == "p1"


class StubSTS(BaseHTTPRequestHandler):
    """Google's Security Token Service, as far as a workload-identity token exchange needs it."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"access_token": "ya29.federated", "issued_token_type":
                           "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer",
                           "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_workload_identity_configuration_is_accepted(no_emulator, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubSTS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "token").write_text("eyJhbGciOiJub25lIn0.e30.")
    config = tmp_path / "wif.json"
    config.write_text(json.dumps({
        "type": "external_account", "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "audience": "//iam.googleapis.com/locations/global/workforcePools/pool/providers/prov",
        "token_url": f"http://127.0.0.1:{server.server_address[1]}/v1/token",
        "credential_source": {"file": str(tmp_path / "token")}}))
    try:
        info = auth.authenticate("p2", key_file=config)
    finally:
        server.shutdown()

    assert info.credential_type == "external_account" and info.method == "key-file"
    assert "external_account" in info.identity and info.project == "p2"


@pytest.mark.parametrize("content, expected", [
    ('{"installed": {"client_id": "c", "client_secret": "SECRET"}}', "not a credentials file google-auth can use"),
    ("not json at all", "not a JSON credentials file"),
])
def test_wrong_credential_type_is_one_line(no_emulator, tmp_path, content, expected):
    key = tmp_path / "key.json"
    key.write_text(content)

    with pytest.raises(AuthError, match=expected) as caught:
        auth.authenticate(key_file=key)

    assert "SECRET" not in one_line(caught.value)


def test_missing_key_file_is_one_line(no_emulator, tmp_path):
    with pytest.raises(AuthError, match="not found"):
        auth.authenticate(key_file=tmp_path / "nope.json")


class StubMetadata(BaseHTTPRequestHandler):
    """The GCE metadata server as google-auth and colab_magics ask it (Metadata-Flavor: Google)."""

    email: str | None = "vm-runner@my-project.iam.gserviceaccount.com"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/service-accounts/default/email") and self.email:
            body, status = self.email.encode(), 200
        elif self.path.rstrip("/") in ("", "/computeMetadata/v1/project/project-id"):
            body, status = b"vm-project", 200
        else:
            body, status = b"not found", 404
        self.send_response(status)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/text")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("email, identity", [
    ("vm-runner@my-project.iam.gserviceaccount.com", "vm-runner@my-project.iam.gserviceaccount.com"),
    (None, "the VM's service account"),
])
def test_metadata_server_credentials_name_a_real_identity(tmp_path, email, identity):
    handler = type("Handler", (StubMetadata,), {"email": email})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    # google-auth reads GCE_METADATA_HOST when it is imported: ask from a fresh interpreter.
    env = {k: v for k, v in os.environ.items()
           if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "COLAB_RELEASE_TAG")}
    env.update(GCE_METADATA_HOST=address, GCE_METADATA_IP=address, HOME=str(tmp_path),
               CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))
    code = "from colab_magics import auth; i = auth.authenticate(); print(i.credential_type, '|', i.identity)"
    try:
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()

    assert result.stdout.strip() == f"compute_engine | {identity}", result.stderr[-2000:]


def test_no_credentials_at_all_is_one_line(no_emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{free_port()}")

    with pytest.raises(NoCredentials, match=r"sign_in\(emulator=True\)") as caught:
        auth.authenticate()  # a Python caller reads the call it can make

    one_line(caught.value)
    from colab_magics import cli, magics

    assert "%gcs_auth --emulator" in magics.DIALECT.render(caught.value)
    assert "colab-magics auth --emulator" in cli.dialect().render(caught.value)


# --- explicit beats implicit: the emulator belongs to the session --------------------------------
def test_emulator_then_key_file_uses_the_key(ip, no_emulator, tmp_path, emulator_host, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator_host)  # honoured while nothing explicit is said
    ip.run_line_magic("gcs_auth", "")
    assert session.current().emulator_host == emulator_host
    assert auth.storage_client()._connection.API_BASE_URL == emulator_host

    ip.run_line_magic("gcs_auth", f"my-project --key-file {service_account_key(tmp_path / 'sa.json')}")

    info = session.current().auth
    assert info.method == "service-account" and session.current().emulator_host is None
    # The library alone would send the key's requests to the emulator named in the environment.
    assert auth.storage_client()._connection.API_BASE_URL == "https://storage.googleapis.com"
    assert storage._endpoint() == "Cloud Storage"


def test_bundled_emulator_leaves_the_environment_alone(ip, no_emulator, tmp_path):
    ip.run_line_magic("config", f"ColabMagics.emulator_dir = {str(tmp_path / 'emu')!r}")

    ip.run_line_magic("gcs_auth", "--emulator")

    host = session.current().emulator_host
    assert host and "STORAGE_EMULATOR_HOST" not in os.environ
    client = auth.storage_client()
    assert client._connection.API_BASE_URL == host
    assert storage._endpoint() == f"the storage emulator at {host}"
    bucket = client.bucket("local-bucket")
    blob = bucket.blob("big", chunk_size=256 * 1024)  # resumable upload in chunks, then download
    data = os.urandom(1024 * 1024 + 3)
    blob.upload_from_string(data)
    assert bucket.blob("big").download_as_bytes() == data

    ip.run_line_magic("gcs_auth", f"p --key-file {service_account_key(tmp_path / 'sa.json')}")
    assert auth.storage_client()._connection.API_BASE_URL != host


def test_key_file_and_emulator_together_contradict(no_emulator, tmp_path):
    with pytest.raises(AuthError, match="contradict"):
        auth.authenticate(key_file=tmp_path / "k.json", emulator=True)


# --- Colab: sign-in -------------------------------------------------------------------------------
def test_colab_sign_in_passes_the_project_and_a_second_auth_works(colab, ip, capsys):
    from google.colab import auth as colab_auth

    ip.run_line_magic("gcs_auth", "my-project")
    ip.run_line_magic("gcs_auth", "my-project")  # GOOGLE_APPLICATION_CREDENTIALS is now a *user* file

    assert colab_auth.calls[-2:] == [{"clear_output": True, "project_id": "my-project"}] * 2
    assert os.environ["GOOGLE_CLOUD_QUOTA_PROJECT"] == "my-project"
    out = capsys.readouterr().out
    assert out.count("your Google account (authorized_user) (colab), project my-project") == 2
    assert session.current().auth.credential_type == "authorized_user"


def test_colab_sign_in_without_project_calls_it_plainly(colab):
    from google.colab import auth as colab_auth

    auth.authenticate()

    assert colab_auth.calls[-1] == {"clear_output": True, "project_id": None}


def test_colab_refused_sign_in_is_one_line(colab, ip):
    from google.colab import _message

    _message.frontend["request_auth"] = lambda request: False

    with pytest.raises(UsageError, match="Colab sign-in failed") as caught:
        ip.run_line_magic("gcs_auth", "my-project")
    assert "--key-file" in one_line(caught.value)


def test_colab_managed_runtime_is_one_line(colab, monkeypatch):
    from google.colab import auth as colab_auth

    monkeypatch.setattr(colab_auth, "MANAGED", True)

    with pytest.raises(AuthError, match="managed runtime") as caught:
        auth.authenticate("p")
    one_line(caught.value)


def test_colab_with_a_users_own_key_skips_sign_in(colab, tmp_path, monkeypatch):
    from google.colab import auth as colab_auth

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_key(tmp_path / "sa.json")))

    info = auth.authenticate()

    assert info.method == "service-account" and colab_auth.calls == []


# --- Colab: secrets ---------------------------------------------------------------------------------
def test_colab_secret_granted(colab):
    colab.secrets["NGROK_AUTHTOKEN"] = ("tok-123", True)

    assert hosted.secret("NGROK_AUTHTOKEN") == "tok-123"


@pytest.mark.parametrize("state", ["missing", "not granted", "no frontend"])
def test_colab_secret_unavailable_is_none(colab, state):
    from google.colab import _message

    if state == "not granted":
        colab.secrets["NGROK_AUTHTOKEN"] = ("tok-123", False)
    if state == "no frontend":
        _message.frontend = None
    began = time.monotonic()

    assert hosted.secret("NGROK_AUTHTOKEN") is None
    assert time.monotonic() - began < 15  # userdata.get itself waits at most 10 s


# --- Colab: TensorBoard inside the notebook -------------------------------------------------------
def test_colab_tensorboard_is_shown_inline_with_the_proxy_link(colab, ip, tmp_path, capsys):
    from google.colab import _message, output

    logdir = tmp_path / "runs"
    write_events(logdir / "run1")

    url = ip.run_line_magic("tensorboard_tunnel", str(logdir))

    port = tensorboard.running()[0].port
    assert output.served == [(port, "/?tensorboardColab=true", "100%", 800)]
    assert url == f"https://standin-{port}.colab.example/"
    evals = [r for r in _message.requests if r[0] == "cell_javascript_eval"]
    assert evals and all(timeout is not None for _, _, timeout in evals)  # never an unbounded wait
    assert "private to your Google account" in capsys.readouterr().out
    tensorboard.stop_served()


def test_colab_sign_in_without_a_frontend_is_one_line_not_a_hang(colab, ip):
    from google.colab import _message, auth as colab_auth

    _message.frontend = None  # a Colab runtime driven from VS Code: nobody can show the sign-in
    colab_auth.calls.clear()

    with pytest.raises(UsageError, match="no Colab frontend answered") as caught:
        ip.run_line_magic("gcs_auth", "my-project")

    assert "\n" not in str(caught.value) and "--key-file" in str(caught.value)
    assert colab_auth.calls == []  # its unbounded request was never sent
    assert all(timeout is not None for _, _, timeout in _message.requests)


def test_colab_without_a_frontend_says_so_and_names_a_public_provider(colab, ip, tmp_path, capsys):
    from google.colab import _message

    _message.frontend = None

    url = ip.run_line_magic("tensorboard_tunnel", str(tmp_path / "runs"))

    out = capsys.readouterr().out
    note = next(line for line in out.splitlines() if "No Colab frontend answered" in line)
    assert "--provider ngrok" in note and "--provider cloudflared" in note
    assert url.startswith("http://127.0.0.1:")
    tensorboard.stop_served()


def test_colab_public_provider_is_one_flag_away(colab, ip, tmp_path, monkeypatch):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)

    with pytest.raises(UsageError, match="ngrok needs an authtoken"):
        ip.run_line_magic("tensorboard_tunnel", f"{tmp_path / 'runs'} --provider ngrok")


# --- Kaggle: the Google Cloud Services add-on ---------------------------------------------------------
def test_kaggle_without_the_add_on_names_it(kaggle, ip):
    with pytest.raises(UsageError, match="Add-ons → Google Cloud Services") as caught:
        ip.run_line_magic("gcs_auth", "my-project")

    one_line(caught.value)
    assert not any(path == "/requests/GetUserSecretRequest" for path, _ in kaggle.requests)


def test_kaggle_with_the_add_on_gets_a_token(kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_INTEGRATIONS", "GCS")

    info = auth.authenticate("my-project")

    assert info.method == "kaggle" and info.project == "my-project"
    assert info.credentials.token == kaggle.gcs_token
    assert ("/requests/GetUserSecretRequest", {"Target": 2}) in kaggle.requests


def test_kaggle_add_on_with_internet_off_is_one_line(kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_INTEGRATIONS", "GCS")
    internet_off(monkeypatch)

    with pytest.raises(AuthError, match="turn on Internet") as caught:
        auth.authenticate()
    one_line(caught.value)


def test_kaggle_add_on_attached_but_not_linked_is_one_line(kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_INTEGRATIONS", "GCS")
    kaggle.gcs_token = None

    with pytest.raises(AuthError, match="re-link") as caught:
        auth.authenticate()
    one_line(caught.value)


# --- Kaggle: secrets ------------------------------------------------------------------------------------
def test_kaggle_secret_attached(kaggle):
    kaggle.secrets["NGROK_AUTHTOKEN"] = "tok-456"

    assert hosted.secret("NGROK_AUTHTOKEN") == "tok-456"


@pytest.mark.parametrize("state", ["missing", "no user-secrets token", "internet off", "refused"])
def test_kaggle_secret_unavailable_is_none(kaggle, monkeypatch, state):
    kaggle.secrets["NGROK_AUTHTOKEN"] = "tok-456"
    if state == "missing":
        kaggle.secrets.clear()  # BackendError
    elif state == "no user-secrets token":
        monkeypatch.delenv("KAGGLE_USER_SECRETS_TOKEN")  # CredentialError
    elif state == "internet off":
        internet_off(monkeypatch)  # the built-in ConnectionError
    else:
        monkeypatch.setenv("KAGGLE_USER_SECRETS_TOKEN", "some-other-jwt")  # HTTP 403 (ConnectionError upstream)

    assert hosted.secret("NGROK_AUTHTOKEN") is None


def test_kaggle_bare_tensorboard_tunnel_with_internet_off_is_local(kaggle, ip, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    internet_off(monkeypatch)

    url = ip.run_line_magic("tensorboard_tunnel", str(tmp_path / "runs"))

    assert url.startswith("http://127.0.0.1:")
    assert "Reachable from this machine only" in capsys.readouterr().out
    tensorboard.stop_served()
