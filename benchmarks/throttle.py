"""A TCP proxy that caps every connection at a rate: a model of Cloud Storage's per-stream limit.

Real Cloud Storage limits what one stream carries (window and round trip), so one download or
upload stream is slow however fast the network is, and parallel streams add up. In front of the
bundled emulator, this proxy gives each connection its own token bucket in each direction, so N
connections move N times one connection's bytes. The bucket holds at most `burst` seconds of credit:
an idle keep-alive connection cannot save up credit and then run unthrottled.

Start the emulator with `-external-url` set to the proxy's URL: it writes that URL into every
object's media link, and downloads follow media links (otherwise they bypass the proxy).

    python benchmarks/throttle.py --upstream 127.0.0.1:4443 --rate-mib 20 [--up-rate-mib 0] [--port 0]
    # prints "listening PORT" once it accepts connections; runs until SIGTERM/SIGINT

From Python: `with Throttle(upstream_port, rate_mib=20) as proxy: ... proxy.port` runs it in a child
process (so it never competes with the measured client for the GIL).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from pathlib import Path

MiB = 1024 * 1024
READ = 256 * 1024  # bytes read from a socket at a time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float, burst: float) -> None:
    """Copy reader → writer at no more than `rate` bytes/s, with at most `burst` s of saved-up credit."""
    loop = asyncio.get_running_loop()
    credit, last = 0.0, loop.time()
    try:
        while data := await reader.read(READ):
            if not rate:
                writer.write(data)
                await writer.drain()
                continue
            now = loop.time()
            credit = min(credit + (now - last) * rate, rate * burst)
            last = now
            credit -= len(data)
            if credit < 0:
                await asyncio.sleep(-credit / rate)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


async def serve(upstream: tuple[str, int], rate_mib: float, port: int = 0, burst: float = 0.05,
                ready=None, up_rate_mib: float | None = None) -> None:
    """Proxy 127.0.0.1:`port` → `upstream`, each connection capped at `rate_mib` MiB/s per direction
    (`up_rate_mib` for client → server, when given; 0: no cap that way)."""
    down = rate_mib * MiB
    up = down if up_rate_mib is None else up_rate_mib * MiB

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(*upstream)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(_pipe(client_reader, server_writer, up, burst),
                                 _pipe(server_reader, client_writer, down, burst))
        except asyncio.CancelledError:  # the proxy is stopping: end quietly
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    if ready is not None:
        ready(server.sockets[0].getsockname()[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


class Throttle:
    """The proxy in a child process, for a benchmark: `port` once entered; ended on exit."""

    def __init__(self, upstream_port: int, rate_mib: float, burst: float = 0.05, up_rate_mib: float | None = None):
        self.argv = [sys.executable, str(Path(__file__).resolve()), "--upstream", f"127.0.0.1:{upstream_port}",
                     "--rate-mib", str(rate_mib), "--burst", str(burst)]
        if up_rate_mib is not None:
            self.argv += ["--up-rate-mib", str(up_rate_mib)]
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "Throttle":
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()  # the child prints it once listening, or dies (EOF)
        if not line.startswith("listening "):
            self.__exit__()
            raise RuntimeError(f"the throttling proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc.stdout.close()
            self._proc = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT")
    parser.add_argument("--rate-mib", type=float, required=True, help="MiB/s per connection and direction")
    parser.add_argument("--up-rate-mib", type=float, help="MiB/s per connection from client to server, if "
                                                         "other than --rate-mib (0: no cap)")
    parser.add_argument("--burst", type=float, default=0.05, help="seconds of credit a connection may save up")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: one the system picks)")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    asyncio.run(serve((host, int(port)), args.rate_mib, args.port, args.burst,
                      ready=lambda p: print(f"listening {p}", flush=True), up_rate_mib=args.up_rate_mib))


if __name__ == "__main__":
    main()
