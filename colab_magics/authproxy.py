"""A password in front of a local HTTP server: the basic-auth reverse proxy behind every tunnel.

TensorBoard has no authentication, and cloudflared quick tunnels, ssh forwards and plain local ports
cannot add any. An `AuthProxy` listens on 127.0.0.1 only, checks HTTP basic auth with a
constant-time compare, and streams each request and response between the tunnel and the server in
chunks (nothing is buffered whole), one thread per client connection (the standard library's
ThreadingHTTPServer: no new dependency). A wrong or missing password gets 401 and nothing of the
server behind it.
"""

from __future__ import annotations

import base64
import hmac
import http.client
import logging
import os
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from colab_magics import session

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # the most read at once: answers are copied through in pieces, never held whole
SPLICE_MIN = 1024 * 1024  # bodies this big move socket → pipe → socket inside the kernel (splice(2))
REALM = "TensorBoard"
UPSTREAM_TIMEOUT = 300.0  # a TensorBoard request may take long (big logdirs); a dead one must not hang us
# Hop-by-hop headers (RFC 9110 §7.6.1) are per connection: never forwarded. Authorization is ours.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "authorization"}


class AuthProxy:
    """Basic auth for http://127.0.0.1:`target_port`, served on http://127.0.0.1:`port` (picked by the OS)."""

    def __init__(self, target_port: int, user: str, password: str):
        if not user or not password or ":" in user:
            raise ValueError("an AuthProxy needs a user (without ':') and a password")
        self.target_port = target_port
        self.user = user
        self._password = password
        self._expected = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
        self._server: ThreadingHTTPServer | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._session = None  # the session that tracks it while it serves

    closes_at = session.CLOSES_AT["proxy"]

    @property
    def credentials(self) -> tuple[str, str]:
        return self.user, self._password

    @property
    def port(self) -> int:
        """The port it listens (or listened) on."""
        assert self._port is not None, "start() the proxy first"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __repr__(self) -> str:  # never the password
        return f"AuthProxy(127.0.0.1:{self._port or '-'} -> 127.0.0.1:{self.target_port}, user={self.user!r})"

    def start(self) -> "AuthProxy":
        """Listen on a free loopback port and serve from a daemon thread; tracked by the session
        (closed at its shutdown, after the tunnels)."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server, self._port = server, server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name=f"colab-magics-authproxy:{self.port}", daemon=True)
        self._thread.start()
        self._session = session.current()
        self._session.track(self)
        return self

    def close(self, urgent: bool = False) -> None:
        """Stop listening and close the socket (connections being served end with their thread)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._session is not None:
            self._session.untrack(self)

    def alive(self) -> bool:
        return self._server is not None and self._thread is not None and self._thread.is_alive()

    def authorized(self, header: str | None) -> bool:
        """True when an Authorization header carries our user and password (constant-time compare)."""
        return hmac.compare_digest((header or "").strip().encode(), self._expected)


def _handler_for(proxy: AuthProxy):
    class Handler(_ProxyHandler):
        pass

    Handler.proxy = proxy
    return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    """One client connection: check auth, forward the request, stream the answer back."""

    protocol_version = "HTTP/1.1"  # keep-alive: a page's many requests reuse one connection
    proxy: AuthProxy
    _upstream: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        # Headers and a small body are two writes: with Nagle's algorithm the second one waits for
        # the client's delayed ACK (~40 ms per request). TensorBoard pages make dozens of requests.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):  # noqa: N802  (BaseHTTPRequestHandler's naming)
        self._relay()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = do_GET

    def _relay(self) -> None:
        if not self.proxy.authorized(self.headers.get("Authorization")):
            self._refuse()
            return
        try:
            response = self._forward()
        except (OSError, http.client.HTTPException) as exc:
            log.debug("upstream 127.0.0.1:%d failed: %s", self.proxy.target_port, exc)
            self._close_upstream()
            self._plain(502, "Bad Gateway", "the server behind the proxy does not answer\n")
            return
        self._answer(response)

    def _forward(self) -> http.client.HTTPResponse:
        """Send the request upstream (reusing this connection's upstream connection once)."""
        length = int(self.headers.get("Content-Length") or 0)
        body = _Body(self.rfile, length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body is not None:
            headers["Content-Length"] = str(length)
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection("127.0.0.1", self.proxy.target_port,
                                                            timeout=UPSTREAM_TIMEOUT, blocksize=CHUNK)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers,
                                       encode_chunked=False)
                return self._upstream.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._close_upstream()  # an idle keep-alive connection the server closed: once more
                if attempt == 2 or (body is not None and body.started):
                    raise
        raise AssertionError("unreachable")

    def _answer(self, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        for key, value in response.getheaders():
            if key.lower() not in _HOP:
                self.send_header(key, value)
        streamed_to_close = length is None and self.command != "HEAD" and response.status not in (204, 304)
        if streamed_to_close:  # no length known: the end of the body is the end of the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        try:
            if self.command != "HEAD":
                self._copy_body(response)
        except OSError:  # the client went away mid-answer
            self.close_connection = True
            self._close_upstream()
            return
        if response.will_close:
            self._close_upstream()

    def _copy_body(self, response: http.client.HTTPResponse) -> None:
        """Stream the body: big ones with splice(2) where the OS has it, else through Python in pieces."""
        if (response.length or 0) >= SPLICE_MIN and hasattr(os, "splice") and not response.chunked:
            self._splice_body(response)
            return
        # read1: whatever has arrived (one recv), so receiving and sending overlap
        while chunk := response.read1(CHUNK):
            self.wfile.write(chunk)
        response.read()  # read1 leaves a fully read response open; this marks it done, for reuse

    def _splice_body(self, response: http.client.HTTPResponse) -> None:
        """Move a known-length body from the upstream socket to the client without copying it through
        Python (the proxy then costs little CPU beside TensorBoard and the tunnel agent)."""
        already = response.fp.peek(1)[: response.length]  # what http.client buffered with the headers
        if already:
            self.wfile.write(response.read(len(already)))
        left = response.length
        source, target = response.fp.fileno(), self.connection.fileno()  # fp owns it with Connection: close
        read_end, write_end = os.pipe()
        try:
            _grow_pipe(write_end)
            while left:
                try:
                    moved = os.splice(source, write_end, min(left, CHUNK), flags=os.SPLICE_F_MOVE)
                except BlockingIOError:  # the upstream socket has a timeout, so it is non-blocking
                    if not select.select([source], [], [], UPSTREAM_TIMEOUT)[0]:
                        raise TimeoutError(f"upstream silent for {UPSTREAM_TIMEOUT:.0f} s") from None
                    continue
                if moved == 0:
                    raise http.client.IncompleteRead(b"", left)
                left -= moved
                while moved:
                    moved -= os.splice(read_end, target, moved, flags=os.SPLICE_F_MOVE)
        finally:
            os.close(read_end)
            os.close(write_end)
        response.length = 0
        response.read()  # nothing left: marks the response finished, so the connection is reused

    def _refuse(self) -> None:
        body = b"401 Unauthorized: this page asks for a user and password\n"
        self.send_response_only(401, "Unauthorized")
        self.send_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
        self._finish_plain(body)

    def _plain(self, status: int, reason: str, text: str) -> None:
        self.send_response_only(status, reason)
        self._finish_plain(text.encode())

    def _finish_plain(self, body: bytes) -> None:
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")  # the request body (if any) was not read
        self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._close_upstream()

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's signature)
        log.debug("%s %s", self.address_string(), format % args)


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer splice calls per answer (best effort)."""
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
    except OSError:
        pass


class _Body:
    """The client's request body, read in chunks as http.client sends it (never whole in memory)."""

    def __init__(self, rfile, length: int):
        self._rfile, self._left, self.started = rfile, length, False

    def read(self, size: int = CHUNK) -> bytes:
        if self._left <= 0:
            return b""
        self.started = True
        data = self._rfile.read(min(size if size > 0 else CHUNK, self._left))
        self._left -= len(data)
        return data
