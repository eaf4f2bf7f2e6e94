"""A password on every tunnel: the basic-auth proxy in front of a real TensorBoard.

Through the real OpenSSH server (ssh -R), the cloudflared stand-in agent (no Cloudflare edge is
reachable here) and the local provider; a small server of the test's own checks that answers are
streamed, not buffered, and that request bodies go through.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import re
import socket
import struct
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from colab_magics import authproxy, session, tensorboard, tunnels
from colab_magics.authproxy import AuthProxy
from colab_magics.tunnels import TunnelOptions
from conftest import poll
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


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # the proxy cut a big answer short: expected here
        pass


@pytest.fixture()
def upstream():
    server = _QuietServer(("127.0.0.1", 0), _Upstream)
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
        assert proxy.address[0] == "127.0.0.1" and proxy._listener.getsockname()[0] == "127.0.0.1"
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


# --- what a flood and bad clients cost ------------------------------------------------------------
def proxy_threads(proxy: AuthProxy) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"colab-magics-authproxy:{proxy.port}")]


def idle_connections(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


def raw_request(port: int, data: bytes) -> bytes:
    """What the proxy answers to `data` sent as is, read until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_flood_of_idle_connections_neither_grows_threads_nor_locks_out_the_user(tb_port):  # noqa: F811
    proxy = AuthProxy(tb_port, "ana", "correct-horse").start()
    flood = idle_connections(proxy.port, 300)
    try:
        held_until = time.monotonic() + 40  # the flood is held for 40 s; the user keeps using the page
        answered = 0
        while time.monotonic() < held_until:
            status, body = get(proxy.url, ("ana", "correct-horse"), timeout=5)
            assert status == 200 and is_tensorboard_page(body)
            answered += 1
            assert len(proxy_threads(proxy)) <= authproxy.WORKERS + 1  # the loop and the workers, nothing per connection
            threading.Event().wait(0.2)  # pacing the user's requests, not waiting for anything
        assert answered >= 40
        assert proxy.connections() >= 300 - 5  # the idle ones are held (not yet idle for a minute) …
        assert not any(closed_by_server(sock) for sock in flood[-10:])
    finally:
        for sock in flood:
            sock.close()
        proxy.close()
    assert proxy_threads(proxy) == []  # close() ends them all


def test_at_its_connection_limit_the_longest_idle_makes_room_for_the_user(tb_port):  # noqa: F811
    proxy = AuthProxy(tb_port, "ana", "correct-horse", max_connections=50).start()
    flood = idle_connections(proxy.port, 300)
    try:
        status, body = get(proxy.url, ("ana", "correct-horse"), timeout=10)
        assert status == 200 and is_tensorboard_page(body)
        poll(lambda: proxy.connections() <= 50, 10, message="the proxy at its limit")
        assert closed_by_server(flood[0]) and not closed_by_server(flood[-1])  # the oldest went first
    finally:
        for sock in flood:
            sock.close()
        proxy.close()


def test_idle_and_slow_connections_are_closed(upstream, monkeypatch):
    monkeypatch.setattr(authproxy, "HEAD_TIMEOUT", 1.0)
    proxy = AuthProxy(upstream, "u", "p", idle_timeout=1.0).start()
    try:
        idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        slow = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        poll(lambda: closed_by_server(idle) and closed_by_server(slow), 15, message="both closed")
        poll(lambda: proxy.connections() == 0, 5, message="nothing held")
        idle.close()
        slow.close()
    finally:
        proxy.close()


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", b"400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"411"),
    (b"HELLO\r\n\r\n", b"400"),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"b" * 70_000 + b"\r\n\r\n", b"431"),
])
def test_malformed_requests_get_a_4xx_and_no_traceback(upstream, capfd, request_bytes, status):
    proxy = AuthProxy(upstream, "u", "p").start()
    auth = b"Authorization: " + _auth_header("u", "p")["Authorization"].encode() + b"\r\n"
    try:
        answer = raw_request(proxy.port, request_bytes.replace(b"Host: x\r\n", b"Host: x\r\n" + auth))
        first_line = answer.split(b"\r\n", 1)[0]  # an HTTP/0.9-looking request gets the page alone
        assert first_line.startswith(b"HTTP/1.") and first_line.split(b" ")[1] == status \
            or b"Error code: " + status in answer, answer[:300]
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)  # and the next one is served
        conn.request("POST", "/echo", body=b"ok", headers=_auth_header("u", "p"))
        assert conn.getresponse().read().decode() == hashlib.sha256(b"ok").hexdigest()
        conn.close()
    finally:
        proxy.close()
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_leaving_mid_answer_is_a_debug_line_not_a_traceback(upstream, capfd, caplog):
    proxy = AuthProxy(upstream, "u", "p").start()
    try:
        with caplog.at_level(logging.DEBUG, logger="colab_magics.authproxy"):
            for _ in range(3):
                _Upstream.release.clear()
                sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nAuthorization: "
                             + _auth_header("u", "p")["Authorization"].encode() + b"\r\n\r\n")
                sock.recv(65536)  # the answer has begun …
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # … and the client is gone (a reset, as a closed browser tab)
                _Upstream.release.set()
            poll(lambda: sum("ended" in r.getMessage() or "went away" in r.getMessage() for r in caplog.records) >= 1,
                 20, message="the disconnect logged at debug level")
        assert get(proxy.url, ("u", "p"))[0] in (200, 404, 501)  # still serving
    finally:
        proxy.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "colab_magics.authproxy")
