"""A password in front of a local HTTP server: the basic-auth reverse proxy behind every tunnel.

TensorBoard has no authentication, and cloudflared quick tunnels, ssh forwards and plain local ports
cannot add any. An `AuthProxy` listens on 127.0.0.1 only, checks HTTP basic auth with a
constant-time compare, and streams each request and response between the tunnel and the server in
chunks (nothing is buffered whole). A wrong or missing password gets 401 and nothing of the server
behind it. Standard library only.

It lives in the notebook's kernel, so what a flood of connections costs is bounded: one loop thread
(a selector) holds every connection between requests and reads each request's head itself, so an
idle or slow client costs a small buffer, never a thread; a complete head goes to one of at most
`WORKERS` threads, which answers it and hands the connection back. A connection idle for
`idle_timeout`, or slower than HEAD_TIMEOUT to send a head, is closed; at `max_connections` the
longest-idle one makes room for a new one, so the real user always gets in. Malformed requests get a
4xx; clients that go away are logged at debug level only.
"""

from __future__ import annotations

import base64
import collections
import hmac
import http.client
import logging
import os
import queue
import re
import resource
import select
import selectors
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

from colab_magics import session

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # the most read at once: answers are copied through in pieces, never held whole
SPLICE_MIN = 1024 * 1024  # bodies this big move socket → pipe → socket inside the kernel (splice(2))
REALM = "TensorBoard"
UPSTREAM_TIMEOUT = 300.0  # a TensorBoard request may take long (big logdirs); a dead one must not hang us
CLIENT_TIMEOUT = 60.0  # the longest a worker waits on a client (its request body, room for the answer)
IDLE_TIMEOUT = 60.0  # a connection with no request for this long is closed (TensorBoard polls every 30 s)
HEAD_TIMEOUT = 20.0  # a request's head (line and headers) must arrive within this
MAX_HEAD = 64 * 1024 + 2  # a longer head is answered 4xx (http.server's own line limit, 64 KiB)
WORKERS = 16  # requests answered at once (a browser opens ~6 connections per site)
MAX_CONNECTIONS = 512  # open client connections; also at most a quarter of the process's file limit
_SWEEP = 1.0  # how often idle and slow connections are looked for
LINGER = 1.0  # the most spent reading away what a client sent beyond a refused or bad request
_CONTENT_LENGTH = re.compile(r"[0-9]+")
# Hop-by-hop headers (RFC 9110 §7.6.1) are per connection: never forwarded. Authorization is ours.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "authorization"}


def _connection_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(16, min(MAX_CONNECTIONS, soft // 4))


class AuthProxy:
    """Basic auth for http://127.0.0.1:`target_port`, served on http://127.0.0.1:`port` (picked by the OS)."""

    def __init__(self, target_port: int, user: str, password: str, *, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int | None = None):
        if not user or not password or ":" in user:
            raise ValueError("an AuthProxy needs a user (without ':') and a password")
        self.target_port = target_port
        self.user = user
        self._password = password
        self._expected = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections or _connection_limit()
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._workers: _Workers | None = None
        self._returned: queue.SimpleQueue = queue.SimpleQueue()  # connections workers hand back
        self._wake_read, self._wake_write = -1, -1
        self._open: set[_Connection] = set()  # every open client connection (the loop's and the workers')
        self._lock = threading.Lock()
        self._closing = False
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
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __repr__(self) -> str:  # never the password
        return f"AuthProxy(127.0.0.1:{self._port or '-'} -> 127.0.0.1:{self.target_port}, user={self.user!r})"

    def start(self) -> "AuthProxy":
        """Listen on a free loopback port and serve from a daemon thread; tracked by the session
        (closed at its shutdown, after the tunnels)."""
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.setblocking(False)
        self._port = self._listener.getsockname()[1]
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._workers = _Workers(WORKERS, self._serve, f"colab-magics-authproxy:{self.port}")
        self._thread = threading.Thread(target=self._loop, name=f"colab-magics-authproxy:{self.port}", daemon=True)
        self._thread.start()
        self._session = session.current()
        self._session.track(self)
        return self

    def close(self, urgent: bool = False) -> None:
        """Stop listening and end every connection (a request being answered is cut off)."""
        with self._lock:
            if self._thread is None or self._closing:
                return
            self._closing = True  # from now on no worker hands a connection back (see _serve)
            self._wake()
        self._thread.join(timeout=5)
        with self._lock:
            serving = list(self._open)
            wake, self._wake_read, self._wake_write = (self._wake_read, self._wake_write), -1, -1
        for conn in serving:  # held by a worker: wake it from any read or write, it closes the rest
            conn.shutdown()
        self._workers.stop(timeout=1.0 if urgent else 5.0)
        for fd in wake:
            os.close(fd)
        if self._session is not None:
            self._session.untrack(self)

    def alive(self) -> bool:
        return not self._closing and self._thread is not None and self._thread.is_alive()

    def authorized(self, header: str | None) -> bool:
        """True when an Authorization header carries our user and password (constant-time compare)."""
        return hmac.compare_digest((header or "").strip().encode(), self._expected)

    def connections(self) -> int:
        """Open client connections (idle or being answered)."""
        with self._lock:
            return len(self._open)

    # --- the loop: accepting, holding idle connections, reading request heads ---------------------
    def _loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, "accept")
        selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        held: collections.OrderedDict[_Connection, None] = collections.OrderedDict()  # longest idle first
        swept = time.monotonic()
        try:
            while not self._closing:
                for key, _ in selector.select(_SWEEP):
                    if key.data == "accept":
                        self._accept(selector, held)
                    elif key.data == "wake":
                        self._take_back(selector, held)
                    else:
                        self._receive(selector, held, key.data)
                now = time.monotonic()
                if now - swept >= _SWEEP:
                    self._sweep(selector, held, now)
                    swept = now
        finally:
            for conn in list(held):
                self._drop(selector, held, conn)
            while not self._returned.empty():  # handed back just before the end
                self._forget(self._returned.get_nowait())
            selector.close()
            self._listener.close()

    def _accept(self, selector, held) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: the backlog keeps the client waiting
                log.debug("accept failed: %s", exc)
                return
            sock.setblocking(False)
            # Headers and a small body are two writes: with Nagle's algorithm the second one waits for
            # the client's delayed ACK (~40 ms per request). TensorBoard pages make dozens of requests.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock, peer)
            with self._lock:
                full = len(self._open) >= self.max_connections
                self._open.add(conn)
            if full:
                if held:  # the longest-idle connection makes room: a flood cannot lock the user out
                    oldest = next(iter(held))
                    log.debug("%d connections: closing the longest idle (%s)", self.max_connections, oldest.peer)
                    self._drop(selector, held, oldest)
                else:  # every connection is being answered: this one waits its turn elsewhere
                    self._forget(conn)
                    continue
            self._hold(selector, held, conn)

    def _hold(self, selector, held, conn: _Connection) -> None:
        if conn.has_head():
            self._workers.submit(conn)
            return
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        held[conn] = None

    def _receive(self, selector, held, conn: _Connection) -> None:
        if not conn.receive():
            self._drop(selector, held, conn)
            return
        held.move_to_end(conn)
        if conn.has_head():
            selector.unregister(conn.sock)
            del held[conn]
            self._workers.submit(conn)

    def _take_back(self, selector, held) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                conn = self._returned.get_nowait()
            except queue.Empty:
                return
            conn.rested()
            self._hold(selector, held, conn)

    def _sweep(self, selector, held, now: float) -> None:
        for conn in list(held):
            late = conn.head_started is not None and now - conn.head_started > HEAD_TIMEOUT
            if late or now - conn.last_active > self.idle_timeout:
                log.debug("closing %s connection from %s", "a slow" if late else "an idle", conn.peer)
                self._drop(selector, held, conn)

    def _drop(self, selector, held, conn: _Connection) -> None:
        selector.unregister(conn.sock)
        del held[conn]
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)

    def _wake(self) -> None:
        """Wake the loop (called holding `_lock`, so the pipe is never written after close())."""
        try:
            os.write(self._wake_write, b"!")
        except BlockingIOError:  # full: the loop wakes anyway
            pass

    # --- a worker: one request at a time -----------------------------------------------------------
    def _serve(self, conn: _Connection) -> None:
        """Answer the request whose head `conn` holds (and any pipelined after it); then give the
        connection back to the loop, or close it."""
        try:
            conn.sock.settimeout(CLIENT_TIMEOUT)
            while True:
                exchange = _Exchange(conn, self)
                exchange.handle_one_request()
                if exchange.close_connection or self._closing:
                    conn.linger()
                    self._forget(conn)
                    return
                if not conn.has_head():
                    break
            conn.sock.setblocking(False)
        except OSError as exc:  # the client went away, or stopped reading
            log.debug("connection from %s ended: %s", conn.peer, exc)
            self._forget(conn)
            return
        except Exception:
            log.exception("the password proxy failed on a request from %s", conn.peer)
            self._forget(conn)
            return
        with self._lock:
            if not self._closing:
                self._returned.put(conn)
                self._wake()
                return
        self._forget(conn)


class _Connection:
    """A client connection and what lasts between its requests: unread bytes, the upstream connection."""

    def __init__(self, sock: socket.socket, peer):
        self.sock, self.peer = sock, peer
        self.buffer = bytearray()  # received and not yet read by a request
        self.upstream: http.client.HTTPConnection | None = None
        self.last_active = time.monotonic()
        self.head_started: float | None = None
        self.reader = _Reader(self)
        self.writer = _Writer(sock)

    def receive(self) -> bool:
        """Read what has arrived (the loop, non-blocking); False when the client closed or failed."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            log.debug("connection from %s failed: %s", self.peer, exc)
            return False
        if not data:
            return False
        self.buffer += data
        self.last_active = time.monotonic()
        if self.head_started is None:
            self.head_started = self.last_active
        return True

    def has_head(self) -> bool:
        """A whole request head has arrived (or more than one may be), so a worker can take it."""
        return b"\n\r\n" in self.buffer or b"\n\n" in self.buffer or len(self.buffer) >= MAX_HEAD

    def rested(self) -> None:
        """Back from a worker: idle from now on (what is buffered already is the next head's start)."""
        self.last_active = time.monotonic()
        self.head_started = self.last_active if self.buffer else None

    def linger(self) -> None:
        """Before closing after an answer: if the client sent more than was read (a refused body, a
        head too long), read it away for a moment, or closing would reset the connection and the
        client might lose the answer."""
        self.buffer.clear()
        try:
            if not select.select([self.sock], [], [], 0)[0]:
                return
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER
            while (left := deadline - time.monotonic()) > 0 and select.select([self.sock], [], [], left)[0]:
                if not self.sock.recv(65536):
                    return
        except OSError:
            pass

    def shutdown(self) -> None:
        for sock in (self.sock, getattr(self.upstream, "sock", None)):
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.sock.close()


class _Reader:
    """The client's side as http.server reads it (`readline`, `read`): what the loop buffered, then
    the socket (blocking, with the worker's timeout)."""

    def __init__(self, conn: _Connection):
        self._conn = conn

    def readline(self, limit: int = -1) -> bytes:
        buffer = self._conn.buffer
        while True:
            end = buffer.find(b"\n")
            if end >= 0 and (limit < 0 or end < limit):
                size = end + 1
                break
            if 0 <= limit <= len(buffer):
                size = limit
                break
            data = self._conn.sock.recv(65536)
            if not data:
                size = len(buffer)
                break
            buffer += data
        line = bytes(buffer[:size])
        del buffer[:size]
        return line

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (at least one, unless the client closed)."""
        buffer = self._conn.buffer
        if not buffer:
            return self._conn.sock.recv(CHUNK if size < 0 else size) if size else b""
        size = len(buffer) if size < 0 else min(size, len(buffer))
        data = bytes(buffer[:size])
        del buffer[:size]
        return data


class _Writer:
    def __init__(self, sock: socket.socket):
        self._sock = sock

    def write(self, data) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


class _Workers:
    """At most `limit` daemon threads answering requests; started as the load asks, kept for the next."""

    def __init__(self, limit: int, serve, name: str):
        self._limit, self._serve, self._name = limit, serve, name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._waiting = self._idle = 0
        self._lock = threading.Lock()

    def submit(self, conn: _Connection) -> None:
        with self._lock:
            self._waiting += 1
            if self._waiting > self._idle and len(self._threads) < self._limit:
                thread = threading.Thread(target=self._run, name=f"{self._name}-{len(self._threads) + 1}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._jobs.put(conn)

    def stop(self, timeout: float) -> None:
        """Tell every thread to end, and wait up to `timeout` in all for them."""
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            conn = self._jobs.get()
            with self._lock:
                self._idle -= 1
                self._waiting -= 1
            if conn is None:
                return
            self._serve(conn)


class _Exchange(BaseHTTPRequestHandler):
    """One request on a client connection: check its framing and auth, forward it, stream the answer
    back. http.server parses it (its own 4xx for a bad request line or headers); the connection
    (`_Connection`) outlives it."""

    protocol_version = "HTTP/1.1"  # keep-alive: a page's many requests reuse one connection

    def __init__(self, conn: _Connection, proxy: AuthProxy):  # not the base class's: no setup/handle/finish
        self.conn, self.proxy = conn, proxy
        self.connection = self.request = conn.sock
        self.client_address = conn.peer
        self.server = None
        self.rfile, self.wfile = conn.reader, conn.writer
        self.close_connection = True

    def do_GET(self):  # noqa: N802  (BaseHTTPRequestHandler's naming)
        self._relay()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = do_GET

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue`: only the real user is invited to send a body (others get 401)."""
        if self.proxy.authorized(self.headers.get("Authorization")):
            return super().handle_expect_100()
        return True

    def _relay(self) -> None:
        length = self._body_length()
        if length is None:
            return
        if not self.proxy.authorized(self.headers.get("Authorization")):
            self._refuse()
            return
        try:
            response = self._forward(length)
        except (OSError, http.client.HTTPException) as exc:
            log.debug("upstream 127.0.0.1:%d failed: %s", self.proxy.target_port, exc)
            self._close_upstream()
            self._plain(502, "Bad Gateway", "the server behind the proxy does not answer\n")
            return
        self._answer(response)

    def _body_length(self) -> int | None:
        """The request body's length from one well-formed Content-Length; else answered (400, or 411
        for a chunked body, which TensorBoard's pages never send) and None."""
        if "Transfer-Encoding" in self.headers:
            self._plain(411, "Length Required", "send a request body with a Content-Length\n")
            return None
        values = {value.strip() for value in self.headers.get_all("Content-Length", [])}
        if not values:
            return 0
        if len(values) > 1 or not _CONTENT_LENGTH.fullmatch(next(iter(values))):
            self._plain(400, "Bad Request", "Content-Length must be one number of bytes\n")
            return None
        return int(next(iter(values)))

    def _forward(self, length: int) -> http.client.HTTPResponse:
        """Send the request upstream (reusing this connection's upstream connection once)."""
        body = _Body(self.rfile, length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body is not None:
            headers["Content-Length"] = str(length)
        for attempt in (1, 2):
            if self.conn.upstream is None:
                self.conn.upstream = http.client.HTTPConnection("127.0.0.1", self.proxy.target_port,
                                                                timeout=UPSTREAM_TIMEOUT, blocksize=CHUNK)
            try:
                self.conn.upstream.request(self.command, self.path, body=body, headers=headers,
                                           encode_chunked=False)
                return self.conn.upstream.getresponse()
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
        except OSError as exc:  # the client went away mid-answer
            log.debug("%s went away mid-answer: %s", self.address_string(), exc)
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
                    try:
                        moved -= os.splice(read_end, target, moved, flags=os.SPLICE_F_MOVE)
                    except BlockingIOError:  # the client's socket has a timeout too: wait for room
                        if not select.select([], [target], [], CLIENT_TIMEOUT)[1]:
                            raise TimeoutError(f"client stalled for {CLIENT_TIMEOUT:.0f} s") from None
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
        if self.conn.upstream is not None:
            self.conn.upstream.close()
            self.conn.upstream = None

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
