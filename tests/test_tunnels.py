"""Tunnels to a real TensorBoard: OpenSSH end to end; ngrok and cloudflared through stand-in agents.

No ngrok or Cloudflare cloud is reachable from the test machine, so `tests/standins/ngrok` (driven by
the real pyngrok) and `tests/standins/cloudflared` play the agents: they print what the real ones
print, serve the agent API pyngrok calls, really forward HTTP and (ngrok) enforce basic auth.
The ssh provider goes through a real sshd on loopback.
"""

from __future__ import annotations

import base64
import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError

from colab_magics import net, tensorboard, tunnels
from colab_magics.errors import NoTunnelToken, TunnelError, TunnelInstallError
from colab_magics.tunnels import TunnelOptions
from colab_magics.tunnels import ngrok as ngrok_provider
from conftest import SESSION_PIDS, free_port, notebook_words, poll, raises_worded
from tests.test_tensorboard import write_events

STANDINS = Path(__file__).parent / "standins"
TOKEN = "2abcStandInAuthtoken_do_not_leak_9xyz"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def get(url: str, auth: tuple[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def is_tensorboard_page(body: bytes) -> bool:
    return b"<!doctype html>" in body.lower() and b"tensorboard" in body.lower()


def all_cmdlines() -> str:
    """Every process's command line, as `ps` would show it."""
    lines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return "\n".join(lines)


def pid_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def tb_port(tmp_path_factory):
    """One real TensorBoard for the tunnel tests, started outside colab_magics (the tunnels' target)."""
    root = tmp_path_factory.mktemp("tb")
    write_events(root / "runs" / "run1")
    port = free_port()
    env = dict(os.environ, TMPDIR=str(root))
    with (root / "tensorboard.log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(root / "runs"),
                                 "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    SESSION_PIDS.add(proc.pid)
    poll(lambda: net.http_ok(f"http://127.0.0.1:{port}/", 1), 90, message="TensorBoard")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def ngrok_env(monkeypatch):
    """An authtoken in the environment; the stand-in agent refuses any other token."""
    monkeypatch.setenv("NGROK_AUTHTOKEN", TOKEN)
    monkeypatch.setenv("STANDIN_NGROK_EXPECT_TOKEN", TOKEN)
    yield
    tunnels.close_tunnels()


@pytest.fixture()
def offline(monkeypatch):
    """Downloads fail at once: every HTTP(S) request goes to a proxy port where nothing listens."""
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


# --- ngrok (real pyngrok, stand-in agent) ----------------------------------------------------------
def test_ngrok_tunnel_asks_for_the_generated_password(ngrok_env, tb_port, caplog):
    caplog.set_level("DEBUG")
    tunnel = tunnels.open_tunnel("ngrok", tb_port, TunnelOptions(bin_dir=STANDINS, timeout=20))

    assert tunnel.protected and len(tunnel.auth_password) >= 16
    assert get(tunnel.url)[0] == 401
    assert get(tunnel.url, ("tensorboard", "wrong-password"))[0] == 401
    status, body = get(tunnel.url, (tunnel.auth_user, tunnel.auth_password))
    assert status == 200 and is_tensorboard_page(body)
    # pyngrok logs the tunnel options at DEBUG: the password is blanked out of its records.
    assert "basic_auth" in caplog.text and tunnel.auth_password not in caplog.text
    assert TOKEN not in caplog.text
    # The agent runs in its own session, so the notebook's Stop button (SIGINT) does not reach it.
    assert os.getsid(tunnel.process.pid) == tunnel.process.pid


def test_ngrok_authtoken_never_on_a_command_line(ngrok_env, tb_port):
    tunnel = tunnels.open_tunnel("ngrok", tb_port, TunnelOptions(bin_dir=STANDINS, timeout=20))

    assert TOKEN not in all_cmdlines()
    assert TOKEN not in " ".join(tunnel.process.argv)
    # the agent has it from its own environment (readable by its user only), not from a file
    assert f"NGROK_AUTHTOKEN={TOKEN}".encode() in Path(f"/proc/{tunnel.process.pid}/environ").read_bytes()
    config = Path(tunnel.process.argv[tunnel.process.argv.index("--config") + 1])
    assert not config.parent.exists()  # read at start, then removed: nothing left on disk

    tunnels.close_tunnel(tunnel)

    assert not pid_running(tunnel.process.pid)


def test_ngrok_without_auth_when_asked(ngrok_env, tb_port):
    tunnel = tunnels.open_tunnel("ngrok", tb_port, TunnelOptions(bin_dir=STANDINS, no_auth=True))

    status, body = get(tunnel.url)
    assert status == 200 and is_tensorboard_page(body)
    assert any("anyone with this URL" in str(note) for note in tunnel.notes)


def test_ngrok_reopening_returns_the_same_tunnel(ngrok_env, tb_port):
    first = tunnels.open_tunnel("ngrok", tb_port, TunnelOptions(bin_dir=STANDINS))

    again = tunnels.open_tunnel("ngrok", tb_port, TunnelOptions(bin_dir=STANDINS))

    assert isinstance(again, tunnels.Reopened) and again.tunnel is first
    assert first.auth_password not in " ".join(map(notebook_words, tunnels.describe(again)))


def test_ngrok_silent_agent_is_given_up_on(ngrok_env, tb_port, monkeypatch):
    # The stand-in prints nothing and hangs: pyngrok alone would wait forever.
    monkeypatch.setenv("STANDIN_NGROK_SILENT", "1")
    began = time.monotonic()

    with pytest.raises(TunnelError, match="did not start a tunnel within 2 s"):
        tunnels.open_tunnel("ngrok", tb_port, TunnelOptions(bin_dir=STANDINS, timeout=2))

    assert time.monotonic() - began < 10


def test_ngrok_rejected_token_is_reported_without_the_token(ngrok_env, tb_port, monkeypatch):
    monkeypatch.setenv("STANDIN_NGROK_EXPECT_TOKEN", "some-other-token")

    with pytest.raises(TunnelError, match="ERR_NGROK_4018") as caught:
        tunnels.open_tunnel("ngrok", tb_port, TunnelOptions(bin_dir=STANDINS, timeout=10))

    assert TOKEN not in str(caught.value)


def test_ngrok_without_token_says_where_to_put_one(monkeypatch, tb_port):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)

    with pytest.raises(NoTunnelToken, match="set NGROK_AUTHTOKEN"):
        tunnels.open_tunnel("ngrok", tb_port, TunnelOptions(bin_dir=STANDINS))


def test_ngrok_short_password_is_refused(ngrok_env, tb_port):
    with pytest.raises(TunnelError, match="8 to 128 characters"):
        tunnels.open_tunnel("ngrok", tb_port, TunnelOptions(bin_dir=STANDINS, auth=("me", "short")))


def test_install_ngrok_offline_fails_fast(tmp_path, offline):
    began = time.monotonic()

    with pytest.raises(TunnelInstallError, match="could not be downloaded"):
        ngrok_provider.install_ngrok(tmp_path / "bin")

    assert time.monotonic() - began < 15
    assert not (tmp_path / "bin" / "ngrok").exists()


def test_install_ngrok_keeps_an_installed_agent(tmp_path):
    (tmp_path / "ngrok").write_text("#!/bin/sh\n")

    assert ngrok_provider.install_ngrok(tmp_path) == tmp_path / "ngrok"


# --- cloudflared (stand-in agent) -----------------------------------------------------------------
class ToStandinEdge(urllib.request.BaseHandler):
    """Sends requests for https://*.trycloudflare.com to the stand-in's edge: the name cannot resolve
    here (this plays DNS + Cloudflare's TLS front); every other URL goes its normal way."""

    handler_order = 100  # before urllib's own HTTPS handler

    def __init__(self, port: int):
        self.port = port

    def https_open(self, request):
        if not request.host.endswith(".trycloudflare.com"):
            return None
        forwarded = urllib.request.Request(f"http://127.0.0.1:{self.port}{request.selector}",
                                           headers=dict(request.header_items()))  # Authorization too
        return urllib.request.build_opener().open(forwarded, timeout=request.timeout)


@pytest.fixture()
def trycloudflare(monkeypatch):
    """The stand-in's edge on a known port, reachable through its trycloudflare.com URL."""
    port = free_port()
    monkeypatch.setenv("STANDIN_CLOUDFLARED_EDGE_PORT", str(port))
    urllib.request.install_opener(urllib.request.build_opener(ToStandinEdge(port)))
    yield f"http://127.0.0.1:{port}"
    urllib.request.install_opener(None)


def test_cloudflared_reads_the_quick_tunnel_url_and_forwards(tb_port, trycloudflare):
    tunnel = tunnels.open_tunnel("cloudflared", tb_port, TunnelOptions(bin_dir=STANDINS, timeout=20))
    try:
        assert re.fullmatch(r"https://[a-z-]+\.trycloudflare\.com", tunnel.url)
        assert tunnel.protected  # through the AuthProxy (test_authproxy.py checks the refusals)
        assert get(tunnel.url + "/")[0] == 401
        status, body = get(tunnel.url + "/", (tunnel.auth_user, tunnel.auth_password))
        assert status == 200 and is_tensorboard_page(body)
    finally:
        tunnels.close_tunnel(tunnel)
    assert not pid_running(tunnel.process.pid)


def test_cloudflared_is_ready_only_when_its_url_answers(tb_port, trycloudflare, monkeypatch):
    # The agent prints its URL 3 s before its edge connection is up (cloudflared #513).
    monkeypatch.setenv("STANDIN_CLOUDFLARED_CONNECT_DELAY", "3")

    tunnel = tunnels.open_tunnel("cloudflared", tb_port, TunnelOptions(bin_dir=STANDINS, timeout=20))
    try:
        assert get(tunnel.url + "/", (tunnel.auth_user, tunnel.auth_password), timeout=2)[0] == 200  # not a 530
        assert "Registered tunnel connection" in tunnel.process.output_tail()
    finally:
        tunnels.close_tunnel(tunnel)


def test_cloudflared_that_never_connects_is_given_up_on(tb_port, trycloudflare, monkeypatch):
    monkeypatch.setenv("STANDIN_CLOUDFLARED_NEVER_CONNECT", "1")  # UDP blocked (#510, #617)
    began = time.monotonic()

    with pytest.raises(TunnelError, match="did not answer within 3 s") as caught:
        tunnels.open_tunnel("cloudflared", tb_port, TunnelOptions(bin_dir=STANDINS, timeout=3))

    assert "\n" not in str(caught.value) and "--provider ngrok" in notebook_words(caught.value)
    assert time.monotonic() - began < 15
    assert tunnels.open_tunnels() == []


@pytest.fixture()
def release_server(tmp_path):
    """A local file server standing in for the release downloads (GitHub cannot be reached here)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    root = tmp_path / "releases"
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/{{version}}/cloudflared-linux-{{arch}}"
    server.shutdown()


def served_binary(root: Path, content: bytes) -> Path:
    from colab_magics.tunnels import cloudflared

    for arch in cloudflared.SHA256:
        path = root / cloudflared.VERSION / f"cloudflared-linux-{arch}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return path


def test_cloudflared_download_not_matching_the_published_checksum_is_refused(release_server, tmp_path, monkeypatch):
    root, url = release_server
    served_binary(root, b"#!/bin/sh\necho not the real cloudflared\n")
    monkeypatch.setenv("COLAB_MAGICS_CLOUDFLARED_URL", url)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")

    with pytest.raises(TunnelInstallError, match="not the published 2026.9.3 release") as caught:
        tunnels.open_tunnel("cloudflared", free_port(), TunnelOptions(bin_dir=tmp_path / "bin"))

    assert "\n" not in str(caught.value)
    assert list((tmp_path / "bin").iterdir()) == []  # nothing half-installed


def test_cloudflared_download_matching_the_checksum_is_installed(release_server, tmp_path, monkeypatch):
    import hashlib

    from colab_magics.tunnels import cloudflared

    root, url = release_server
    content = b"#!/bin/sh\necho cloudflared stand-in\n"
    served_binary(root, content)
    monkeypatch.setattr(cloudflared, "SHA256", {a: hashlib.sha256(content).hexdigest() for a in cloudflared.SHA256})

    installed = cloudflared.install_cloudflared(tmp_path / "bin", url=url)

    assert installed.read_bytes() == content and os.access(installed, os.X_OK)


def test_cloudflared_pins_a_release_and_its_checksums():
    from colab_magics.tunnels import cloudflared

    assert "/latest/" not in cloudflared.DOWNLOAD_URL and "{version}" in cloudflared.DOWNLOAD_URL
    assert set(cloudflared.SHA256) == {"amd64", "arm64"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in cloudflared.SHA256.values())


def test_cloudflared_missing_and_offline(tmp_path, tb_port, offline, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no cloudflared anywhere

    with pytest.raises(TunnelInstallError, match="cloudflared is not installed"):
        tunnels.open_tunnel("cloudflared", tb_port, TunnelOptions(bin_dir=tmp_path / "bin"))


# --- ssh (real OpenSSH server on loopback) --------------------------------------------------------
@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A throwaway sshd on 127.0.0.1 that accepts one test key."""
    if not Path(SSHD).exists() or not shutil.which("ssh-keygen"):
        pytest.skip("openssh-server / openssh-client not installed")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)
    port = free_port()
    (root / "sshd_config").write_text(f"""
ListenAddress 127.0.0.1
HostKey {root / 'host_key'}
AuthorizedKeysFile {root / 'authorized_keys'}
PidFile {root / 'sshd.pid'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
""")
    with (root / "sshd.log").open("wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config"), "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    SESSION_PIDS.add(proc.pid)

    def banner() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                return sock.recv(7) == b"SSH-2.0"
        except OSError:
            return False

    poll(banner, 20, message="sshd")
    yield {"target": f"{getpass.getuser()}@127.0.0.1:{port}", "key": root / "user_key",
           "known_hosts": root / "known_hosts"}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.ssh
def test_ssh_forward_serves_tensorboard_through_the_server(sshd, tb_port):
    options = TunnelOptions(ssh_target=sshd["target"], ssh_key=str(sshd["key"]),
                            ssh_known_hosts=str(sshd["known_hosts"]), timeout=20)
    tunnel = tunnels.open_tunnel("ssh", tb_port, options)
    try:
        # The server picked the remote port; nobody printed a URL, so it is http://HOST:PORT/.
        remote = int(re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", tunnel.url).group(1))
        assert remote != tb_port
        status, body = get(tunnel.url, (tunnel.auth_user, tunnel.auth_password))
        assert status == 200 and is_tensorboard_page(body)
    finally:
        tunnels.close_tunnel(tunnel)
    assert not pid_running(tunnel.process.pid)
    poll(lambda: get_refused(tunnel.url), 10, message="forwarded port closed")


def get_refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return False
    except OSError:
        return True
    return False


@pytest.mark.ssh
def test_ssh_with_a_given_remote_port_and_url(sshd, tb_port):
    remote = free_port()
    options = TunnelOptions(ssh_target=sshd["target"], ssh_key=str(sshd["key"]),
                            ssh_known_hosts=str(sshd["known_hosts"]), remote_port=remote,
                            url=f"http://127.0.0.1:{remote}/", timeout=20)
    tunnel = tunnels.open_tunnel("ssh", tb_port, options)

    assert tunnel.url == f"http://127.0.0.1:{remote}/"
    assert get(tunnel.url, (tunnel.auth_user, tunnel.auth_password))[0] == 200
    tunnels.close_tunnel(tunnel)


@pytest.mark.ssh
def test_ssh_refused_key_is_reported(sshd, tb_port, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    options = TunnelOptions(ssh_target=sshd["target"], ssh_key=str(tmp_path / "other"),
                            ssh_known_hosts=str(sshd["known_hosts"]), timeout=20)

    with pytest.raises(TunnelError, match="exited with code 255"):
        tunnels.open_tunnel("ssh", tb_port, options)


@pytest.mark.parametrize("target", [None, "no-at-sign", "user@host:notaport"])
def test_ssh_target_must_be_user_at_host(target, tb_port):
    with raises_worded(TunnelError, "--ssh"):
        tunnels.open_tunnel("ssh", tb_port, TunnelOptions(ssh_target=target))


# --- choosing a provider ----------------------------------------------------------------------------
def test_default_is_local_with_a_hint_without_token(monkeypatch):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)

    provider, notes = tunnels.choose_provider()

    assert provider == "local" and "NGROK_AUTHTOKEN" in str(notes[0]) and "--provider ngrok" in notebook_words(notes[0])


def test_default_is_ngrok_with_a_token(monkeypatch):
    monkeypatch.setenv("NGROK_AUTHTOKEN", TOKEN)

    assert tunnels.choose_provider() == ("ngrok", ())


def test_default_in_colab_is_its_private_proxy(colab, monkeypatch, tb_port):
    monkeypatch.setenv("NGROK_AUTHTOKEN", TOKEN)

    provider, _ = tunnels.choose_provider()
    tunnel = tunnels.open_tunnel(provider, tb_port)

    assert provider == "colab" and tunnel.inline
    assert tunnel.url == f"https://standin-{tb_port}.colab.example/"
    _, notes = tunnels.choose_provider("ngrok")
    assert "Colab's terms" in str(notes[0])
    tunnels.close_tunnel(tunnel)


def test_colab_provider_outside_colab(monkeypatch, tb_port):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)

    with pytest.raises(TunnelError, match="only inside Google Colab"):
        tunnels.open_tunnel("colab", tb_port)


# --- the seed API --------------------------------------------------------------------------------
def test_seed_launch_tensorboard_returns_the_public_url(ngrok_env, tmp_path, capsys):
    from colab_magics import tboard, tensorboard

    log_dir = tmp_path / "logs"  # does not exist yet
    url = tboard.launch_tensorboard(STANDINS, log_dir)

    assert log_dir.is_dir()
    password = re.search(r"Password: (\S+)", capsys.readouterr().out).group(1)
    status, body = get(url, ("tensorboard", password))
    assert status == 200 and is_tensorboard_page(body)
    assert tboard.install_ngrok(STANDINS) == str(STANDINS / "ngrok")
    stopped = tensorboard.stop_served()
    assert len(stopped.instances) == 1 and len(stopped.tunnels) == 1


# --- the magic, end to end --------------------------------------------------------------------------
def test_magic_ngrok_link_credentials_once_and_stop(ip, ngrok_env, tmp_path, capsys):
    ip.run_line_magic("config", f"ColabMagics.ngrok_bin_dir = {str(STANDINS)!r}")
    logdir = tmp_path / "runs"
    write_events(logdir / "run1")

    url = ip.run_line_magic("tensorboard_tunnel", f"{logdir} --provider ngrok")
    shown = capsys.readouterr().out
    password = re.search(r"Password: (\S+)", shown).group(1)

    assert url in shown and TOKEN not in shown
    assert get(url)[0] == 401
    status, body = get(url, ("tensorboard", password))
    assert status == 200 and is_tensorboard_page(body)
    assert TOKEN not in all_cmdlines()

    pids = [int(row[3]) for row in ip.run_line_magic("tensorboard_tunnel", "--list")]
    again = ip.run_line_magic("tensorboard_tunnel", f"{logdir} --provider ngrok")  # speed: bench_tunnel.py
    assert again == url
    assert password not in capsys.readouterr().out  # credentials are shown once

    listing = ip.run_line_magic("tensorboard_tunnel", "--list")
    assert {row[0] for row in listing} == {"tensorboard", "tunnel (ngrok)"}
    assert [int(row[3]) for row in listing] == pids  # the same TensorBoard and agent: nothing new started

    ip.run_line_magic("tensorboard_tunnel", f"{logdir} --stop")

    assert not any(pid_running(pid) for pid in pids)
    assert ip.run_line_magic("tensorboard_tunnel", "--list") == []


def test_magic_ngrok_with_the_users_credentials(ip, ngrok_env, tmp_path, capsys):
    ip.run_line_magic("config", f"ColabMagics.ngrok_bin_dir = {str(STANDINS)!r}")

    url = ip.run_line_magic("tensorboard_tunnel", f"{tmp_path / 'runs'} --provider ngrok --auth ana:correct-horse")

    assert get(url, ("ana", "wrong-horse-9"))[0] == 401
    assert get(url, ("ana", "correct-horse"))[0] == 200


@pytest.mark.parametrize("line, message", [
    ("{logdir} --provider ngrok", "ngrok needs an authtoken"),
    ("{logdir} --provider ngrok --auth me:longenough --no-auth", "contradict"),
    ("{logdir} --provider ssh", "needs --ssh user@host"),
])
def test_magic_bad_tunnel_input_is_one_line_and_starts_nothing(ip, monkeypatch, tmp_path, line, message):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)

    with pytest.raises(UsageError, match=message) as caught:
        ip.run_line_magic("tensorboard_tunnel", line.format(logdir=tmp_path / "runs"))

    assert "\n" not in str(caught.value)
    assert tensorboard.running() == []


def test_magic_logdir_with_spaces_quotes_and_dollar(ip, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    ip.user_ns["x"] = "EXPANDED"  # '...' keeps `$x` literal, as in a shell
    logdir = tmp_path / 'my "quoted" logs $x'
    write_events(logdir / "run1")
    url = ip.run_line_magic("tensorboard_tunnel", f"'{logdir}' --provider local")
    try:
        status, body = get(url)
        assert status == 200 and is_tensorboard_page(body)
        assert [i.logdir for i in tensorboard.running()] == [logdir]
    finally:
        ip.run_line_magic("tensorboard_tunnel", f"'{logdir}' --stop")
    assert tensorboard.running() == []
