"""The one TCP proxy of the tests and benchmarks: a model of Cloud Storage's per-stream limit, and faults.

Real Cloud Storage limits what one stream carries (window and round trip), so one upload or download is
slow however fast the network is, and parallel streams add up. In front of fake-gcs-server, this proxy
throttles each connection on its own, per direction, by a token bucket whose credit never exceeds
`burst` seconds' worth (an idle keep-alive connection cannot save up credit and then run unthrottled).
Start the emulator with the proxy's URL as `-external-url`: resumable-upload sessions and media links
then lead through the proxy too (conftest's `proxied_gcs` does).

It also plays what goes wrong on the way, per HTTP request (requests are delimited by Content-Length;
a chunked body is passed on raw): `proxy.fault(request)` returns None (pass it on) or an action —
`Answer` (answered here, never sent upstream), `Cut` (cut part-way through the request's body), `Slow`
(this connection slower from now on), `CutAnswer` / `FlipAnswer` (the answer's body cut short, or one of
its bytes inverted; that request goes upstream with `Connection: close`, so its answer is the
connection's last). `Once(match, action)` is a fault for the first matching request only.
`cut_after(n)` cuts whichever connection carries the n-th upstream byte from now (and may go down);
`go_down()` refuses new connections and cuts every open one — pooled keep-alive connections included,
or a library's retry reuses one and an "endpoint down" test passes by luck — until `go_up()`.

    proxy = NetProxy(upstream_port, rate=20 * MiB).start()        # in a thread of this process
    with ProxyProcess(upstream_port, down_rate=20 * MiB) as child:  # in a process of its own (benchmarks:
        child.port                                                  # no GIL shared with the measured client)
    python tests/netproxy.py --upstream 127.0.0.1:PORT [--rate-mib R] [--up-rate-mib U] [--down-rate-mib D]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MiB = 1024 * 1024
READ = 256 * 1024  # bytes read from a socket at a time


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names in lower case


@dataclass(frozen=True)
class Answer:
    """Answer the request here with HTTP `status` (a dict body is sent as JSON) and close the connection."""

    status: int
    body: bytes | dict = b""

    def response(self) -> bytes:
        body = json.dumps(self.body).encode() if isinstance(self.body, dict) else self.body
        return (f"HTTP/1.1 {self.status} Fault\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Cut:
    """Cut the connection `after` bytes into the request's body."""

    after: int = 0


@dataclass(frozen=True)
class Slow:
    """This request and the rest of its connection, both ways, at `rate` bytes a second."""

    rate: float


@dataclass(frozen=True)
class CutAnswer:
    """The answer ends (the connection closes) after `after` bytes of its body."""

    after: int


@dataclass(frozen=True)
class FlipAnswer:
    """Byte `at` of the answer's body is inverted."""

    at: int


Action = Answer | Cut | Slow | CutAnswer | FlipAnswer


class Once:
    """A fault: `action` for the first request `match` accepts, nothing for the others."""

    def __init__(self, match: Callable[[Request], bool], action: Action):
        self.match, self.action, self.pending = match, action, True

    def __call__(self, request: Request) -> Action | None:
        if self.pending and self.match(request):
            self.pending = False
            return self.action
        return None


class _Bucket:
    """A token bucket: `take(n)` waits until n bytes fit the rate; credit is capped at `burst` seconds.
    The rate is asked each time (a test may change the proxy's rate while a connection is open)."""

    def __init__(self, rate: Callable[[], float | None], burst: float):
        self.rate, self.burst = rate, burst
        self.tokens: float | None = None  # full at first
        self.at = time.monotonic()

    async def take(self, n: int) -> None:
        rate = self.rate()
        if not rate:
            return
        now, cap = time.monotonic(), rate * self.burst
        self.tokens = min(cap, cap if self.tokens is None else self.tokens + (now - self.at) * rate) - n
        self.at = now
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / rate)


class _Link:
    """One client connection and its own connection upstream."""

    def __init__(self, proxy: "NetProxy", client: asyncio.StreamWriter, up_reader, up_writer):
        self.client, self.up_reader, self.upstream = client, up_reader, up_writer
        self.up = _Bucket(lambda: proxy.up_rate, proxy.burst)
        self.down = _Bucket(lambda: proxy.down_rate, proxy.burst)
        self.spoil: CutAnswer | FlipAnswer | None = None  # what to do to the connection's last answer


class _CutHere(Exception):
    pass


class NetProxy:
    """127.0.0.1:`port` → 127.0.0.1:`upstream_port`. `rate` caps each connection both ways (bytes a
    second; None: no cap), `up_rate` / `down_rate` one way (client → upstream / back)."""

    def __init__(self, upstream_port: int | None = None, *, rate: float | None = None,
                 up_rate: float | None = None, down_rate: float | None = None, burst: float = 0.05,
                 fault: Callable[[Request], Action | None] | None = None, port: int = 0):
        self.upstream_port, self.burst, self.port = upstream_port, burst, port
        self._defaults = (up_rate or rate, down_rate or rate, fault)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._set_defaults()

    def _set_defaults(self) -> None:
        self.up_rate, self.down_rate, self.fault = self._defaults
        self.refusing = False
        self.connections = 0  # accepted so far
        self.requests: list[Request] = []  # every request seen, in order
        self.forwarded = 0  # bytes sent upstream
        self.cuts = 0  # connections cut by cut_after
        self._cut_at: tuple[int, bool] | None = None

    @property
    def rate(self) -> float | None:
        """The cap both ways (None: no cap, or not the same both ways); setting it sets both."""
        return self.up_rate if self.up_rate == self.down_rate else None

    @rate.setter
    def rate(self, value: float | None) -> None:
        self.up_rate = self.down_rate = value

    # --- what a test does -------------------------------------------------------------------------
    def cut_after(self, n: int, then_down: bool = False) -> None:
        """Cut the connection that would carry the n-th byte upstream from now; then go down if asked."""
        self._cut_at = (self.forwarded + n, then_down)

    def go_down(self) -> None:
        """Refuse new connections and cut every open one."""
        self.refusing = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cut_all)

    def go_up(self) -> None:
        self.refusing = False

    def reset(self) -> None:
        """As constructed, up, counters at zero, and no connection open (a pooled one carries nothing over)."""
        self._set_defaults()

        async def cut():
            self._cut_all()

        asyncio.run_coroutine_threadsafe(cut(), self._loop).result(10)

    # --- life -------------------------------------------------------------------------------------
    def start(self) -> "NetProxy":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="netproxy", daemon=True)
        self._thread.start()
        if not ready.wait(10) or self._server is None:
            raise RuntimeError("the proxy did not start")
        return self

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
        finally:
            ready.set()
            self._loop.close()

    def _cut_all(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()

    def close(self) -> None:
        if self._loop is None:
            return
        self.go_down()

        async def stop():
            self._server.close()
            self._cut_all()  # every handler then ends on its own (cancelling them makes asyncio log errors)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # --- connections ------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing or self.upstream_port is None:
            writer.transport.abort()
            return
        self.connections += 1
        try:
            link = _Link(self, writer, *await asyncio.open_connection("127.0.0.1", self.upstream_port))
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, link.upstream))
        answers = asyncio.ensure_future(self._answers(link))
        try:
            await self._requests(reader, link)
        except (OSError, asyncio.IncompleteReadError, _CutHere):
            pass
        finally:
            link.upstream.transport.abort()
            if link.spoil is None:  # (a spoiled answer ends on its own: passed on up to its spoiling)
                link.client.transport.abort()
                answers.cancel()
            self._open.difference_update((writer, link.upstream))

    async def _send(self, link: _Link, data: bytes) -> None:
        """`data` upstream at the connection's rate, unless the cut_after budget ends in it."""
        await link.up.take(len(data))
        if self._cut_at is not None and self.forwarded + len(data) > self._cut_at[0]:
            then_down, self._cut_at = self._cut_at[1], None
            self.cuts += 1
            if then_down:
                self.go_down()
            raise _CutHere
        self.forwarded += len(data)
        link.upstream.write(data)
        await link.upstream.drain()

    async def _requests(self, src: asyncio.StreamReader, link: _Link) -> None:
        """Client → upstream, one HTTP request at a time (a fault decided per request)."""
        while True:
            try:
                head = await src.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:  # not HTTP as we know it: pass everything on raw
                while data := await src.read(READ):
                    await self._send(link, data)
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target = (lines[0].split(" ") + ["", ""])[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            request = Request(method, target, headers)
            self.requests.append(request)
            action = self.fault(request) if self.fault else None
            length = int(headers.get("content-length", "0") or 0)
            if isinstance(action, Slow):
                link.up.rate = link.down.rate = lambda rate=action.rate: rate
                link.up.tokens = link.down.tokens = 0.0
            elif isinstance(action, Answer):
                if length:
                    await src.readexactly(length)
                link.client.write(action.response())
                link.client.close()  # flushed, then closed ("Connection: close")
                await link.client.wait_closed()
                return
            elif isinstance(action, (CutAnswer, FlipAnswer)):
                kept = [line for line in lines[:-2] if not line.lower().startswith("connection:")]
                head = "\r\n".join(kept + ["Connection: close", "", ""]).encode("latin-1")
                link.spoil = action
            await self._send(link, head)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                while data := await src.read(READ):
                    await self._send(link, data)
                return
            left = action.after if isinstance(action, Cut) else None
            while length:
                data = await src.read(min(READ, length))
                if not data:
                    return
                if left is not None and len(data) >= left:
                    await self._send(link, data[:left])
                    return  # the connection is cut mid-body
                if left is not None:
                    left -= len(data)
                length -= len(data)
                await self._send(link, data)
            if left is not None:
                return
            if link.spoil is not None:  # its answer is the connection's last: wait until the client hangs up
                while await src.read(READ):
                    pass
                return

    async def _answers(self, link: _Link) -> None:
        """Upstream → client, at the connection's rate; a spoiled answer is spoiled on its way."""
        head, body = b"", None  # the spoiled answer's head so far, its body bytes passed on so far
        try:
            while data := await link.up_reader.read(READ):
                await link.down.take(len(data))
                spoil = link.spoil
                if spoil is not None:
                    if body is None:
                        head += data
                        if b"\r\n\r\n" not in head:
                            continue
                        passed, _, data = head.partition(b"\r\n\r\n")
                        link.client.write(passed + b"\r\n\r\n")
                        body = 0
                    if isinstance(spoil, CutAnswer) and body + len(data) >= spoil.after:
                        link.client.write(data[:spoil.after - body])
                        break  # the answer ends part-way through its body
                    if isinstance(spoil, FlipAnswer) and body <= spoil.at < body + len(data):
                        data = bytearray(data)
                        data[spoil.at - body] ^= 0xFF
                    body += len(data)
                link.client.write(data)
                await link.client.drain()
        except (OSError, asyncio.CancelledError):
            link.client.transport.abort()
        else:
            link.client.close()  # the other side ended (or the cut answer): pass on what is buffered, then end
        finally:
            link.upstream.transport.abort()


class ProxyProcess:
    """A NetProxy in a child process of its own: `port` once started; ended by close() or on leaving `with`."""

    def __init__(self, upstream_port: int, *, rate: float | None = None, up_rate: float | None = None,
                 down_rate: float | None = None, burst: float = 0.05, timeout: float = 30):
        argv = [sys.executable, str(Path(__file__).resolve()), "--upstream", f"127.0.0.1:{upstream_port}",
                "--burst", str(burst)]
        for flag, value in (("--rate-mib", rate), ("--up-rate-mib", up_rate), ("--down-rate-mib", down_rate)):
            if value:
                argv += [flag, str(value / MiB)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        said = self._proc.stdout.readline() if select.select([self._proc.stdout], [], [], timeout)[0] else ""
        if not said.strip().isdigit():  # it prints its port once listening, or dies (EOF)
            self.close()
            raise RuntimeError(f"the proxy did not start within {timeout} s: {said!r}")
        self.port = int(said)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc.stdout.close()

    def __enter__(self) -> "ProxyProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, metavar="127.0.0.1:PORT", help="where to forward to")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: one the system picks)")
    parser.add_argument("--rate-mib", type=float, help="cap per connection and direction, MiB/s (none if unset)")
    parser.add_argument("--up-rate-mib", type=float, help="cap per connection, client → upstream, MiB/s")
    parser.add_argument("--down-rate-mib", type=float, help="cap per connection, upstream → client, MiB/s")
    parser.add_argument("--burst", type=float, default=0.05, help="seconds of credit a connection may hold")
    args = parser.parse_args()
    def mib(value: float | None) -> float | None:
        return value * MiB if value else None

    proxy = NetProxy(int(args.upstream.rsplit(":", 1)[1]), rate=mib(args.rate_mib), up_rate=mib(args.up_rate_mib),
                     down_rate=mib(args.down_rate_mib), burst=args.burst, port=args.port).start()
    print(proxy.port, flush=True)
    try:
        threading.Event().wait()  # until SIGTERM (its default action ends the process) or Ctrl-C
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
