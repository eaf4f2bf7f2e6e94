"""The registry of child processes: every process we start is tracked here and ended at shutdown.

One place starts processes (list argv, never a shell; secrets only through `env`), one place ends
them (SIGTERM to the process group, then SIGKILL after a deadline), so no TensorBoard, tunnel agent,
rclone or emulator outlives the interpreter, `%unload_ext` or `--stop`.

The registry lives on the session (`session.current().processes`; `processes.registry` is that).
Even when the interpreter dies without cleaning up (SIGKILL, the OOM killer), its children die with
it: each is started with PR_SET_PDEATHSIG=SIGTERM. The kernel sends that signal when the *thread*
that forked the child ends, so children are forked by the main thread or by one long-lived spawner
thread, never by a short-lived worker. A process started by a library (pyngrok's ngrok agent) gets
a small watchdog child of ours instead, which has PDEATHSIG and ends the process when we die.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
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
    guard: "Tracked | None" = None  # the watchdog that ends an adopted process if we die
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
        self._lock = threading.RLock()  # re-entrant: the SIGTERM handler may stop processes mid-start
        self.on_start = None  # called before each start (the session installs its signal handlers)
        self.on_stop = None  # called after each stop (the session removes them when idle)

    def start(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike | None = None,
        cwd: str | os.PathLike | None = None,
        on_line=None,
        inherit_stdio: bool = False,
    ) -> Tracked:
        """Start `argv` in its own session (so the notebook's Stop button does not reach it).

        Output goes to `log_path` when given, else it is read by a thread that keeps the last lines
        (and calls `on_line(line)` for each, for callers that wait for a start-up line). With
        `inherit_stdio` the child shares our stdin, stdout and stderr (a command we supervise).
        """
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        if inherit_stdio:
            stdin = out = err = log_path = None
        elif log_path is not None:
            log_path = Path(log_path)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            stdin, out, err = subprocess.DEVNULL, open(log_path, "ab"), subprocess.STDOUT
        else:
            stdin, out, err = subprocess.DEVNULL, subprocess.PIPE, subprocess.STDOUT
        if self.on_start is not None:
            self.on_start()
        try:
            popen = _spawner.call(lambda: subprocess.Popen(
                list(argv),
                stdin=stdin,
                stdout=out,
                stderr=err,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            ))
        finally:
            if log_path is not None:
                out.close()
        tracked = Tracked(name=name, argv=list(argv), popen=popen, log_path=log_path)
        if out is subprocess.PIPE:
            tracked._reader = threading.Thread(
                target=_pump, args=(tracked, on_line), name=f"{name}-output", daemon=True
            )
            tracked._reader.start()
        self.adopt(tracked)
        log.debug("started %s (pid %d)", name, popen.pid)
        return tracked

    def adopt(self, tracked: Tracked, *, guard: bool = False, remove: Sequence[os.PathLike] = ()) -> Tracked:
        """Track a process started elsewhere (e.g. by pyngrok) so it is ended with the others.

        With `guard`, a watchdog child of ours ends it (and removes the paths in `remove`) if this
        interpreter dies without shutting down: the library could not give it PR_SET_PDEATHSIG.
        """
        if guard:
            argv = [sys.executable, "-c", _WATCHDOG, str(tracked.pid), *map(str, remove)]
            tracked.guard = self.start(argv, name=f"{tracked.name}-guard", log_path=os.devnull)
            self._untrack(tracked.guard)
        with self._lock:
            self._procs.append(tracked)
        return tracked

    def _untrack(self, tracked: Tracked) -> None:
        with self._lock:
            if tracked in self._procs:
                self._procs.remove(tracked)

    def all(self) -> list[Tracked]:
        with self._lock:
            return [p for p in self._procs if p.alive()]

    def stop(self, tracked: Tracked, timeout: float = 5.0) -> None:
        """End a process and everything in its process group; SIGKILL after `timeout`."""
        terminate(tracked.popen, timeout)
        if tracked.guard is not None:
            terminate(tracked.guard.popen, timeout)
        self._untrack(tracked)
        if self.on_stop is not None:
            self.on_stop()

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
    return http_status(url, timeout) == 200


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status `url` answers with (401 and 5xx included), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it) for a server we start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def __getattr__(name: str):
    """`processes.registry`: the current session's process registry (kept for call sites)."""
    if name == "registry":
        from colab_magics import session

        return session.current().processes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- dying with the parent ------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
_prctl = None


def _die_with_parent():
    """A preexec_fn asking the kernel to SIGTERM the child when its parent dies (Linux only)."""
    global _prctl
    if not sys.platform.startswith("linux"):
        return None
    if _prctl is None:  # looked up in the parent: the child only calls it
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl, parent = _prctl, os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would tell us
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class _Spawner:
    """Forks children from a thread that lives as long as the interpreter (see the module docstring)."""

    START_TIMEOUT = 60.0  # fork+exec of a large interpreter takes well under a second

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def call(self, start):
        if threading.current_thread() is threading.main_thread():
            return start()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="colab-magics-spawner", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((start, future))
        return future.result(timeout=self.START_TIMEOUT)

    def _serve(self) -> None:
        while True:
            start, future = self._jobs.get()
            try:
                future.set_result(start())
            except BaseException as exc:  # handed to the caller's thread
                future.set_exception(exc)


_spawner = _Spawner()

# The watchdog of an adopted process: on SIGTERM (our death, through PDEATHSIG) it ends the process
# and removes the given paths; it exits by itself when the process ends first. A pidfd makes sure
# the signal never reaches another process that reused the pid.
_WATCHDOG = """
import os, select, shutil, signal, sys
pid, paths = int(sys.argv[1]), sys.argv[2:]
try:
    fd = os.pidfd_open(pid)
except ProcessLookupError:
    sys.exit(0)
def end(*_):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            break
        if select.select([fd], [], [], 5)[0]:
            break
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    os._exit(0)
signal.signal(signal.SIGTERM, end)
signal.signal(signal.SIGHUP, end)
while not select.select([fd], [], [], 3600)[0]:
    pass
"""
