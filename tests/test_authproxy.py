"""A password on every tunnel: the basic-auth proxy in front of a real TensorBoard.

Through the real OpenSSH server (ssh -R), the cloudflared stand-in agent (no Cloudflare edge is
reachable here) and the local provider; a small server of the test's own checks that answers are
streamed, not buffered, and that request bodies go through.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from colab_magics import authproxy, session, tensorboard, tunnels
from colab_magics.authproxy import AuthProxy
from colab_magics.tunnels import TunnelOptions
from tests.test_tensorboard import write_events
from tests.test_tunnels import STANDINS, get, is_tensorboard_page, sshd, tb_port, trycloudflare  # noqa: F401  (fixtures)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def assert_password_protected(url: str, auth: tuple[str, str]) -> None:
    status, body = get(url)
    assert status == 401 and b"tensorboard" not in body.lower()
    status, body = get(url, (auth[0], auth[1] + "x"))
    assert status == 401 and b"tensorboard" not in body.lower()
    assert get(url, ("someone-else", auth[1]))[0] == 401
    status, body = get(url, auth)
    assert status == 200 and is_tensorboard_page(body)


@pytest.mark.ssh
def test_ssh_tunnels_ask_for_a_generated_password(sshd, tb_port):  # noqa: F811
    options = TunnelOptions(ssh_target=sshd["target"], ssh_key=str(sshd["key"]),
                            ssh_known_hosts=str(sshd["known_hosts"]), timeout=20)
    tunnel = tunnels.open_tunnel("ssh", tb_port, options)
    try:
        assert tunnel.protected and tunnel.auth_user == "tensorboard" and len(tunnel.auth_password) >= 16
        assert_password_protected(tunnel.url, (tunnel.auth_user, tunnel.auth_password))
        assert tunnel.proxy.port != tb_port and tunnel.port == tb_port
        assert "User: tensorboard   Password: " in str(tunnels.describe(tunnel)[0])
    finally:
        tunnels.close_tunnel(tunnel)
    assert refused(tunnel.proxy.port)
    assert tunnel.proxy not in session.current().items(AuthProxy)


def test_cloudflared_tunnels_ask_for_the_users_password(tb_port, trycloudflare):  # noqa: F811
    tunnel = tunnels.open_tunnel("cloudflared", tb_port,
                                 TunnelOptions(bin_dir=STANDINS, auth=("ana", "correct horse"), timeout=20))
    try:
        edge = re.search(r"standin edge: (\S+)", tunnel.process.output_tail()).group(1)
        assert_password_protected(edge + "/", ("ana", "correct horse"))
        assert not any("anyone with this URL" in str(note) for note in tunnel.notes)
    finally:
        tunnels.close_tunnel(tunnel)


def test_cloudflared_without_a_password_only_when_asked(tb_port, trycloudflare):  # noqa: F811
    tunnel = tunnels.open_tunnel("cloudflared", tb_port, TunnelOptions(bin_dir=STANDINS, no_auth=True, timeout=20))
    try:
        edge = re.search(r"standin edge: (\S+)", tunnel.process.output_tail()).group(1)
        status, body = get(edge + "/")
        assert status == 200 and is_tensorboard_page(body)
        assert tunnel.proxy is None and not tunnel.protected
        assert any("anyone with this URL" in str(note) for note in tunnel.notes)
    finally:
        tunnels.close_tunnel(tunnel)


def test_magic_local_with_auth_never_shows_the_given_password_and_stop_ends_the_proxy(ip, tmp_path, capsys):
    logdir = tmp_path / "runs"
    write_events(logdir / "run1")

    url = ip.run_line_magic("tensorboard_tunnel", f"{logdir} --provider local --auth ana:correct-horse")
    shown = capsys.readouterr().out

    assert "Asks for user 'ana' and the password you gave." in shown
    assert "correct-horse" not in shown  # the user knows it; a saved notebook's output need not
    assert_password_protected(url, ("ana", "correct-horse"))
    instance = tensorboard.running()[0]
    assert url != instance.url  # the link is the proxy, not TensorBoard
    assert ip.run_line_magic("tensorboard_tunnel", f"{logdir} --provider local --auth ana:correct-horse") == url
    assert "correct-horse" not in capsys.readouterr().out
    proxy_port = int(re.search(r":(\d+)/", url).group(1))

    ip.run_line_magic("tensorboard_tunnel", f"{logdir} --stop")

    assert refused(proxy_port) and session.current().items(AuthProxy) == []


def test_local_without_auth_has_no_proxy(ip, tmp_path):
    url = ip.run_line_magic("tensorboard_tunnel", f"{tmp_path / 'runs'} --provider local")

    assert url == tensorboard.running()[0].url and session.current().items(AuthProxy) == []
    ip.run_line_magic("tensorboard_tunnel", "--stop")


def test_unloading_the_extension_ends_the_proxy(ip, tmp_path):
    url = ip.run_line_magic("tensorboard_tunnel", f"{tmp_path / 'runs'} --provider local --auth a:b")
    port = int(re.search(r":(\d+)/", url).group(1))

    ip.run_line_magic("unload_ext", "colab_magics")
    ip.run_line_magic("load_ext", "colab_magics")

    assert refused(port) and tensorboard.running() == []


# --- streaming and request bodies, against a server of the test's own ---------------------------
class _Upstream(BaseHTTPRequestHandler):
    """GET /big: `half` bytes, then waits for `release`, then `half` more. POST /echo: the body's sha256."""

    protocol_version = "HTTP/1.1"
    half = 8 * 1024 * 1024
    release = threading.Event()
    payload = bytes(range(256)) * (2 * half // 256)

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: self.half])
        self.release.wait(30)
        self.wfile.write(self.payload[self.half:])

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = hashlib.sha256(body).hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture()
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Upstream.release.clear()
    yield server.server_address[1]
    _Upstream.release.set()
    server.shutdown()
    server.server_close()


def _auth_header(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_big_answer_is_streamed_not_buffered(upstream):
    proxy = authproxy.AuthProxy(upstream, "u", "p").start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=20)
        conn.request("GET", "/big", headers=_auth_header("u", "p"))
        response = conn.getresponse()
        # The upstream holds back its second half until we have read the first one through the
        # proxy: a proxy that buffered whole answers would never deliver it (and this read times out).
        first = response.read(_Upstream.half)
        _Upstream.release.set()
        rest = response.read()
        assert first + rest == _Upstream.payload
        conn.close()
    finally:
        proxy.close()


def test_request_bodies_go_through_and_keep_alive_is_kept(upstream):
    proxy = authproxy.AuthProxy(upstream, "u", "p").start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=20)
        for size in (10, 3 * 1024 * 1024):  # two requests on one client connection
            body = bytes(size)
            conn.request("POST", "/echo", body=body, headers=_auth_header("u", "p"))
            answer = conn.getresponse()
            assert answer.status == 200 and answer.read().decode() == hashlib.sha256(body).hexdigest()
        conn.request("POST", "/echo", body=b"secret data", headers=_auth_header("u", "wrong"))
        assert conn.getresponse().status == 401
        conn.close()
    finally:
        proxy.close()


def test_the_proxy_listens_on_loopback_only_and_hides_the_password(upstream):
    proxy = authproxy.AuthProxy(upstream, "u", "hunter2-long").start()
    try:
        assert proxy._server.server_address[0] == "127.0.0.1"
        assert "hunter2-long" not in repr(proxy)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(proxy.url, timeout=10)
        assert caught.value.code == 401 and "Basic" in caught.value.headers["WWW-Authenticate"]
    finally:
        proxy.close()
    assert refused(proxy.port)


def test_big_answers_one_after_another_on_one_connection(upstream):
    _Upstream.release.set()  # no holding back here
    proxy = authproxy.AuthProxy(upstream, "u", "p").start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=20)
        for _ in range(2):
            conn.request("GET", "/big", headers=_auth_header("u", "p"))
            assert hashlib.sha256(conn.getresponse().read()).digest() == hashlib.sha256(_Upstream.payload).digest()
        conn.request("POST", "/echo", body=b"after", headers=_auth_header("u", "p"))
        assert conn.getresponse().read().decode() == hashlib.sha256(b"after").hexdigest()
        conn.close()
    finally:
        proxy.close()
