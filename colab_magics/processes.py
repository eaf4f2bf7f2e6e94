"""The registry of child processes: every process we start is tracked here and ended at exit.

One place starts processes (list argv, never a shell; secrets only through `env`), one place ends
them (SIGTERM to the process group, then SIGKILL after a deadline), so no TensorBoard, tunnel agent,
rclone or emulator outlives the interpreter, `%unload_ext` or `--stop`.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

_TAIL_LINES = 20


@dataclass(eq=False)
class Tracked:
    """A child process we started, with what is needed to explain its death."""

    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: Path | None = None
    _tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_TAIL_LINES))
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output_tail(self, lines: int = _TAIL_LINES) -> str:
        """The last lines the process printed (stdout and stderr merged)."""
        if self.log_path is not None and self.log_path.exists():
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return "\n".join(list(self._tail)[-lines:])


class ProcessRegistry:
    """Every child process started by colab_magics in this interpreter."""

    def __init__(self) -> None:
        self._procs: list[Tracked] = []
        self._lock = threading.Lock()

    def start(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike | None = None,
        cwd: str | os.PathLike | None = None,
        on_line=None,
    ) -> Tracked:
        """Start `argv` in its own session (so the notebook's Stop button does not reach it).

        Output goes to `log_path` when given, else it is read by a thread that keeps the last lines
        (and calls `on_line(line)` for each, for callers that wait for a start-up line).
        """
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        if log_path is not None:
            log_path = Path(log_path)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(log_path, "ab")
        else:
            out = subprocess.PIPE
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if log_path is not None:
                out.close()
        tracked = Tracked(name=name, argv=list(argv), popen=popen, log_path=log_path)
        if log_path is None:
            tracked._reader = threading.Thread(
                target=_pump, args=(tracked, on_line), name=f"{name}-output", daemon=True
            )
            tracked._reader.start()
        self.adopt(tracked)
        log.debug("started %s (pid %d)", name, popen.pid)
        return tracked

    def adopt(self, tracked: Tracked) -> Tracked:
        """Track a process started elsewhere (e.g. by pyngrok) so it is ended with the others."""
        with self._lock:
            self._procs.append(tracked)
        return tracked

    def all(self) -> list[Tracked]:
        with self._lock:
            return [p for p in self._procs if p.alive()]

    def stop(self, tracked: Tracked, timeout: float = 5.0) -> None:
        """End a process and everything in its process group; SIGKILL after `timeout`."""
        terminate(tracked.popen, timeout)
        with self._lock:
            if tracked in self._procs:
                self._procs.remove(tracked)

    def stop_all(self, timeout: float = 5.0) -> None:
        with self._lock:
            procs = list(self._procs)
        for tracked in reversed(procs):
            self.stop(tracked, timeout)


def terminate(popen: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM the process group, wait up to `timeout`, then SIGKILL it."""
    if popen.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                popen.send_signal(sig)
            except ProcessLookupError:
                return
        try:
            popen.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    popen.wait(timeout=timeout)


def _pump(tracked: Tracked, on_line) -> None:
    assert tracked.popen.stdout is not None
    for raw in tracked.popen.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        tracked._tail.append(line)
        if on_line is not None:
            on_line(line)
    tracked.popen.stdout.close()


def wait_until(predicate, *, timeout: float, interval: float = 0.05, tracked: Tracked | None = None):
    """Poll `predicate()` until it returns a truthy value or `timeout` passes.

    Returns the value, or None on timeout. Stops early (returning None) if `tracked` dies.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if tracked is not None and not tracked.alive():
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when `url` answers HTTP 200: the readiness check of every server we start."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it) for a server we start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


registry = ProcessRegistry()
atexit.register(registry.stop_all)
