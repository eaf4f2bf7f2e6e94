"""A TCP proxy for tests and benchmarks: a per-connection rate cap, and faults injected per HTTP request.

    proxy = NetProxy(upstream_port, rate=20 * MiB).start()    # serves from a thread of its own
    ... STORAGE_EMULATOR_HOST=http://127.0.0.1:{proxy.port} ...
    proxy.close()

or as a process of its own, so it never shares a benchmarked client's GIL:

    python tests/netproxy.py --upstream 127.0.0.1:PORT [--port P] [--rate-mib 40]   # prints its port

The cap models what real Cloud Storage does to one stream: each connection is throttled on its own,
both ways, by a token bucket of `rate` bytes a second whose credit never exceeds `burst` seconds'
worth (an idle keep-alive connection cannot save up credit and then run unthrottled).

Faults: `fault(method, target, headers)` sees each HTTP request as it enters (requests are delimited
by Content-Length; a chunked body is passed on raw) and returns None (pass it on), `Answer(status,
body)` (answered here, never sent upstream) or `Cut(after)` (the connection is cut `after` bytes into
the request's body). `go_down()` refuses new connections and cuts the open ones, pooled keep-alive
connections included, as TESTING.md asks of a proxy that plays an endpoint going away.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Callable

MiB = 1024 * 1024
READ = 256 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes | dict = b""

    def response(self) -> bytes:
        body = json.dumps(self.body).encode() if isinstance(self.body, dict) else self.body
        return (f"HTTP/1.1 {self.status} Fault\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Cut:
    after: int = 0


@dataclass(frozen=True)
class Slow:
    """This request and the rest of its connection, both ways, at `rate` bytes a second."""

    rate: float


class _Bucket:
    """A token bucket: `take(n)` waits until n bytes fit the rate; credit is capped at `burst` seconds."""

    def __init__(self, rate: float | None, burst: float):
        self.rate, self.cap = rate, (rate or 0) * burst
        self.tokens, self.at = self.cap, time.monotonic()

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self.tokens = min(self.cap, self.tokens + (now - self.at) * self.rate) - n
        self.at = now
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


class NetProxy:
    def __init__(self, upstream_port: int | None = None, *, rate: float | None = None, burst: float = 0.05,
                 fault: Callable[[str, str, dict], Answer | Cut | None] | None = None, port: int = 0,
                 host: str = "127.0.0.1"):
        self.upstream_port, self.rate, self.burst, self.fault = upstream_port, rate, burst, fault
        self.host, self.port = host, port
        self.refusing = False
        self.connections = 0  # accepted so far
        self.requests: list[tuple[str, str]] = []  # (method, target) of every request seen
        self.forwarded = 0  # bytes sent upstream
        self._open: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None

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
            self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
        finally:
            ready.set()
            self._loop.close()

    def go_down(self) -> None:
        """Refuse new connections and cut every open one."""
        self.refusing = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cut_all)

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
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        up_bucket, down_bucket = _Bucket(self.rate, self.burst), _Bucket(self.rate, self.burst)
        down = asyncio.ensure_future(self._pipe(up_reader, writer, down_bucket, False))
        try:
            await self._requests(reader, up_writer, writer, up_bucket, down_bucket)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
                self._open.discard(w)
            down.cancel()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, bucket: _Bucket, up: bool) -> None:
        try:
            while data := await src.read(READ):
                await bucket.take(len(data))
                if up:
                    self.forwarded += len(data)
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            dst.transport.abort()
        else:
            dst.close()  # the other side ended: pass what is buffered on, then end this side too

    async def _requests(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, client: asyncio.StreamWriter,
                        bucket: _Bucket, down: _Bucket) -> None:
        """Client → upstream, one HTTP request at a time (faults decided per request)."""
        while True:
            try:
                head = await src.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:  # not HTTP as we know it: pass everything on raw
                await self._pipe(src, dst, bucket, True)
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target = (lines[0].split(" ") + ["", ""])[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            self.requests.append((method, target))
            action = self.fault(method, target, headers) if self.fault else None
            length = int(headers.get("content-length", "0") or 0)
            if isinstance(action, Slow):
                for b in (bucket, down):
                    b.rate, b.cap, b.tokens = action.rate, action.rate * self.burst, 0.0
            if isinstance(action, Answer):
                if length:
                    await src.readexactly(length)
                client.write(action.response())
                client.close()  # flushed, then closed ("Connection: close")
                await client.wait_closed()
                return
            await bucket.take(len(head))
            dst.write(head)
            self.forwarded += len(head)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                await self._pipe(src, dst, bucket, True)
                return
            cut = action.after if isinstance(action, Cut) else None
            left = length
            while left:
                data = await src.read(min(READ, left))
                if not data:
                    return
                if cut is not None and len(data) >= cut:
                    dst.write(data[:cut])
                    await dst.drain()
                    return  # the connection is cut mid-body
                if cut is not None:
                    cut -= len(data)
                left -= len(data)
                await bucket.take(len(data))
                dst.write(data)
                self.forwarded += len(data)
                await dst.drain()
            if cut is not None:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to (only 127.0.0.1 is used)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-mib", type=float, default=0, help="per-connection cap in MiB/s (0: none)")
    parser.add_argument("--burst", type=float, default=0.05, help="seconds of credit a connection may hold")
    args = parser.parse_args()
    proxy = NetProxy(int(args.upstream.rsplit(":", 1)[1]), rate=args.rate_mib * MiB or None, burst=args.burst,
                     port=args.port).start()
    print(proxy.port, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
