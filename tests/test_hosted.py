"""Colab and Kaggle as they really are, through stand-ins of their modules (tests/standins/hosted/),
and credentials of every type through google-auth's own loader.

One test per row of issue 13; every bad input is one line, in bounded time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from colab_magics import auth, hosted, session, storage, tensorboard
from colab_magics.errors import AuthError, NoCredentials
from conftest import free_port, notebook_words, poll
from hosted_env import HOSTED, shell_command_env
from tests.test_tensorboard import write_events

pytest_plugins = ("hosted_env",)  # the colab, kaggle and standins_path fixtures


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


# --- Colab: a process that is not the notebook's kernel (`!colab-magics …` in a cell) ----------------
PROBE = r"""
from google.colab import _message, userdata
from google.colab.output import eval_js

for name, call in (("eval_js", lambda: eval_js("1", timeout_sec=10)),
                   ("blocking_request", lambda: _message.blocking_request("request_auth", timeout_sec=None)),
                   ("userdata.get", lambda: userdata.get("NGROK_AUTHTOKEN"))):
    try:
        print(name, "returned", repr(call()))
    except Exception as exc:
        print(name, "raised", type(exc).__name__, exc)
"""


@pytest.mark.parametrize("interpreter", [[sys.executable, "-c"], [sys.executable, "-m", "IPython", "-c"]],
                         ids=["python", "ipython"])
def test_colab_modules_with_no_kernel_raise_attribute_error_as_upstream(tmp_path, interpreter):
    """What colabtools' own modules do outside the kernel (read in _ipython.py, _message.py, output/_js.py
    and userdata.py: each reaches the frontend through `get_ipython().kernel`), the stand-ins do too."""
    env = dict(os.environ, PYTHONPATH=str(HOSTED), COLAB_RELEASE_TAG="standin", IPYTHONDIR=str(tmp_path))
    result = subprocess.run([*interpreter, PROBE], capture_output=True, text=True, env=env, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr

    no_kernel = "'NoneType' object" if interpreter[1] == "-c" else "'TerminalInteractiveShell' object"
    assert result.stdout.splitlines() == [f"{name} raised AttributeError {no_kernel} has no attribute 'kernel'"
                                          for name in ("eval_js", "blocking_request", "userdata.get")]


def colab_shell_env(tmp_path, **extra) -> dict:
    """`!colab-magics …` in a Colab cell: COLAB_RELEASE_TAG set, the Colab modules importable, no
    kernel; no credentials and no metadata server unless a test adds them."""
    return shell_command_env(COLAB_RELEASE_TAG="standin", DATALAB_ROOT=str(tmp_path / "datalab"),
                             HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), TMPDIR=str(tmp_path),
                             GCE_METADATA_HOST=f"127.0.0.1:{free_port()}", GCE_METADATA_IP=f"127.0.0.1:{free_port()}",
                             **extra)


def shell_command(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    program = shutil.which("colab-magics")
    assert program, "the colab-magics console script is not installed"
    return subprocess.run([program, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args", [["auth"], ["auth", "my-project"], ["list", "gs://my-bucket"]])
def test_colab_auth_from_a_shell_command_is_one_line_naming_the_key_file(tmp_path, args):
    result = shell_command(*args, env=colab_shell_env(tmp_path))

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    line, = result.stderr.strip().splitlines()
    assert "not the notebook's kernel" in line and "sign in from a notebook cell first" in line
    assert "colab-magics auth PROJECT --key-file KEY.json" in line and "%" not in line


def test_colab_auth_from_a_shell_command_uses_the_notebooks_sign_in_file(tmp_path):
    adc = tmp_path / "datalab" / "content" / ".adc" / "adc.json"  # Colab's sign-in wrote it, and the
    adc.parent.mkdir(parents=True)  # kernel's GOOGLE_APPLICATION_CREDENTIALS reaches its `!` commands
    user_credentials(adc)

    result = shell_command("auth", env=colab_shell_env(tmp_path, GOOGLE_APPLICATION_CREDENTIALS=str(adc)))

    assert result.returncode == 0, result.stderr
    assert "Google Cloud: your Google account (authorized_user) (colab)" in result.stdout


class StubMetadataWithToken(StubMetadata):
    """Colab's sign-in (USE_AUTH_EPHEM) serves the user's token from the VM's metadata server."""

    email = "trainer@gmail.com"

    def do_GET(self):
        path = self.path.split("?")[0]
        if path.endswith("/service-accounts/default/token"):
            answer = {"access_token": "ya29.user-token", "expires_in": 3600, "token_type": "Bearer"}
        elif path.endswith("/service-accounts/default/"):
            answer = {"email": self.email, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
        else:
            return super().do_GET()
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_colab_auth_from_a_shell_command_uses_a_sign_in_served_by_the_metadata_server(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubMetadataWithToken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        result = shell_command("auth", env=colab_shell_env(tmp_path) | {"GCE_METADATA_HOST": address,
                                                                        "GCE_METADATA_IP": address})
    finally:
        server.shutdown()

    assert result.returncode == 0, result.stderr
    assert "Google Cloud: trainer@gmail.com (colab)" in result.stdout


def test_colab_tunnel_from_a_shell_command_is_local_with_one_line_naming_public_providers(tmp_path):
    pytest.importorskip("tensorboard")
    write_events(tmp_path / "runs" / "run1")
    log = tmp_path / "tunnel.log"
    program = shutil.which("colab-magics")
    with log.open("wb") as out:
        proc = subprocess.Popen([program, "tunnel", str(tmp_path / "runs")], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=colab_shell_env(tmp_path))
    try:
        poll(lambda: "press Ctrl-C" in log.read_text() or proc.poll() is not None, 120, message="the tunnel")
        assert proc.poll() is None, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    text = log.read_text()

    assert code == 130, text  # a foreground command ended by SIGTERM, as the README lists
    assert "http://127.0.0.1:" in text and "Traceback" not in text
    assert "Javascript object" not in text  # nothing was "displayed" where no notebook can show it
    note, = [line for line in text.splitlines() if "not the notebook's kernel" in line]
    assert "--provider ngrok" in note and "--provider cloudflared" in note


def test_colab_ngrok_from_a_shell_command_says_why_the_secret_is_out_of_reach(tmp_path):
    pytest.importorskip("pyngrok")

    result = shell_command("tunnel", str(tmp_path / "runs"), "--provider", "ngrok", env=colab_shell_env(tmp_path))

    assert result.returncode == 1 and "Traceback" not in result.stderr
    line, = result.stderr.strip().splitlines()
    assert "ngrok needs an authtoken" in line and "not the notebook's kernel" in line
    assert "os.environ['NGROK_AUTHTOKEN'] = userdata.get('NGROK_AUTHTOKEN')" in line


@pytest.fixture()
def colab_without_kernel(colab, shell, monkeypatch):
    """Colab's modules, but this shell is not the notebook's kernel (a terminal IPython on the VM)."""
    monkeypatch.delattr(shell, "kernel")
    return colab


def test_colab_calls_outside_the_kernel_answer_at_once_and_ask_nothing(colab_without_kernel, capsys):
    from google.colab import _message, output

    colab_without_kernel.secrets["NGROK_AUTHTOKEN"] = ("tok-123", True)
    began = time.monotonic()

    assert hosted.colab_proxy_url(6006) is None and hosted.colab_frontend_answers() is False
    assert hosted.colab_serve_port(6006) is False
    found = hosted.read_secret("NGROK_AUTHTOKEN")
    assert found.value is None and "not the notebook's kernel" in found.problem
    assert time.monotonic() - began < 2
    assert _message.requests == [] and output.served == [] and capsys.readouterr().out == ""


def test_colab_sign_in_outside_the_kernel_is_one_line(colab_without_kernel, ip, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{free_port()}")

    with pytest.raises(UsageError, match="not the notebook's kernel") as caught:
        ip.run_line_magic("gcs_auth", "my-project")

    assert "%gcs_auth PROJECT --key-file KEY.json" in one_line(caught.value)


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
    kaggle.internet_off()

    with pytest.raises(AuthError, match="turn on Internet") as caught:
        auth.authenticate()
    one_line(caught.value)


def test_kaggle_add_on_attached_but_not_linked_is_one_line(kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_INTEGRATIONS", "GCS")
    kaggle.gcs_token = None

    with pytest.raises(AuthError, match="re-link") as caught:
        auth.authenticate()
    one_line(caught.value)


def test_the_kaggle_client_stand_in_reports_http_errors_as_connection_errors(kaggle):
    """The fact the adapter is built on (kaggle_web_client catches URLError before HTTPError), as the
    stand-in reproduces it against a local server answering 403 and 500 (the real module is not in
    the repository: fetched code is never committed)."""
    from urllib.error import HTTPError

    from google.auth.exceptions import RefreshError
    from kaggle_gcp import KaggleKernelCredentials
    from kaggle_secrets import GcpTarget, UserSecretsClient

    kaggle.status = 403
    with pytest.raises(ConnectionError) as caught:
        UserSecretsClient().get_secret("NGROK_AUTHTOKEN")
    assert isinstance(caught.value.__cause__, HTTPError) and caught.value.__cause__.code == 403

    kaggle.status = 500
    with pytest.raises(RefreshError) as caught:
        KaggleKernelCredentials(target=GcpTarget.GCS).refresh(None)
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert caught.value.__cause__.__cause__.code == 500


@pytest.mark.parametrize("status, words", [
    (403, "Kaggle refused the Google Cloud Services add-on's credentials (HTTP 403): attach it again or "
          "re-link your account under Add-ons → Google Cloud Services, then run %gcs_auth again"),
    (500, "Kaggle's service failed (HTTP 500) while fetching the Google Cloud Services add-on's credentials: "
          "that is on Kaggle's side, run %gcs_auth again in a minute"),
    (503, "Kaggle's service failed (HTTP 503)"),
])
def test_kaggle_add_on_refused_or_failing_is_named_not_called_offline(kaggle, ip, monkeypatch, capsys, status, words):
    monkeypatch.setenv("KAGGLE_KERNEL_INTEGRATIONS", "GCS")
    kaggle.status = status

    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("gcs_auth", "my-project")

    assert words in one_line(caught.value) and "Internet" not in str(caught.value)
    assert capsys.readouterr().out == ""  # none of kaggle_gcp's own "ensure internet is on" prints


def sdk_credential() -> dict:
    return {"type": "authorized_user", "client_id": "c.apps.googleusercontent.com", "client_secret": "s",
            "refresh_token": "SDK-REFRESH-SECRET", "quota_project_id": "sdk-project"}


def test_kaggle_google_cloud_sdk_add_on_is_a_credential_source(kaggle, ip, capsys):
    from colab_magics import mount

    kaggle.attach_gcloud_sdk(sdk_credential())

    ip.run_line_magic("gcs_auth", "my-project")

    info = session.current().auth
    assert (info.method, info.credential_type, info.project) == ("kaggle-sdk", "authorized_user", "my-project")
    assert "your Google account (authorized_user) (kaggle-sdk), project my-project" in capsys.readouterr().out
    key = Path(info.key_file)
    assert json.loads(key.read_text()) == sdk_credential()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert ("/requests/GetUserSecretByLabelRequest", {"Label": "__gcloud_sdk_auth__"}) in kaggle.requests
    _, env = mount.rclone_command("rclone", "my-bucket", Path("/mnt/b"), info)  # mounts can use it
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == str(key) and "SDK-REFRESH-SECRET" not in repr(env)


def test_kaggle_cloud_services_add_on_comes_before_the_sdk_add_on(kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_INTEGRATIONS", "GCS")
    kaggle.attach_gcloud_sdk(sdk_credential())

    info = auth.authenticate()

    assert info.method == "kaggle" and info.credentials.token == kaggle.gcs_token


@pytest.mark.parametrize("state, words", [
    (403, "Kaggle refused the Google Cloud SDK add-on's credentials (HTTP 403): attach it again or re-link"),
    (502, "Kaggle's service failed (HTTP 502) while fetching the Google Cloud SDK add-on's credentials"),
    ("offline", "Kaggle's Google Cloud SDK add-on needs the internet: turn on Internet"),
])
def test_kaggle_sdk_add_on_failures_are_named(kaggle, state, words):
    kaggle.attach_gcloud_sdk(sdk_credential())
    if state == "offline":
        kaggle.internet_off()
    else:
        kaggle.status = state

    with pytest.raises(AuthError) as caught:
        auth.authenticate()

    assert words in notebook_words(caught.value) and "\n" not in str(caught.value)


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
        kaggle.internet_off()  # the built-in ConnectionError
    else:
        monkeypatch.setenv("KAGGLE_USER_SECRETS_TOKEN", "some-other-jwt")  # HTTP 403 (ConnectionError upstream)

    assert hosted.secret("NGROK_AUTHTOKEN") is None


@pytest.mark.parametrize("state, words", [
    (403, "Kaggle refused secret NGROK_AUTHTOKEN (HTTP 403): attach it to this notebook again under Add-ons → Secrets"),
    (500, "Kaggle's service failed (HTTP 500) reading secret NGROK_AUTHTOKEN: try again in a minute"),
    ("offline", "Kaggle secret NGROK_AUTHTOKEN needs the internet: turn on Internet in the notebook's settings"),
])
def test_kaggle_secret_failures_are_named_where_the_token_is_needed(kaggle, ip, monkeypatch, tmp_path, state, words):
    pytest.importorskip("pyngrok")
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    kaggle.secrets["NGROK_AUTHTOKEN"] = "tok-456"
    if state == "offline":
        kaggle.internet_off()
    else:
        kaggle.status = state

    found = hosted.read_secret("NGROK_AUTHTOKEN")
    assert found.value is None and found.problem == words

    with pytest.raises(UsageError, match="ngrok needs an authtoken") as caught:
        ip.run_line_magic("tensorboard_tunnel", f"{tmp_path / 'runs'} --provider ngrok")
    assert words in one_line(caught.value)
    assert tensorboard.running() == []  # refused before anything started


def test_kaggle_bare_tensorboard_tunnel_with_internet_off_is_local(kaggle, ip, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    kaggle.internet_off()

    url = ip.run_line_magic("tensorboard_tunnel", str(tmp_path / "runs"))

    assert url.startswith("http://127.0.0.1:")
    assert "Reachable from this machine only" in capsys.readouterr().out
    tensorboard.stop_served()
