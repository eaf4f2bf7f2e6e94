"""The registry of child processes: every process we start is tracked here and ended at shutdown.

One place starts processes (list argv, never a shell; secrets only through `env`), one place ends
them (SIGTERM to the process group, then SIGKILL after a deadline), so no TensorBoard, tunnel agent,
rclone or emulator outlives the interpreter, `%unload_ext` or `--stop`.

The registry lives on the session (`session.current().processes`). `start_ready` is the one way
to start a helper and wait until it is ready (TensorBoard, the emulator, mounts, tunnel agents): on
death or timeout it ends the process and raises `HelperNotReady` with its exit code and last lines.
Even when the interpreter dies without cleaning up (SIGKILL, the OOM killer), its children die with
it: each is started with PR_SET_PDEATHSIG=SIGTERM. The kernel sends that signal when the *thread*
that forked the child ends, so children are forked by the main thread or by one long-lived spawner
thread, never by a short-lived worker. Nothing is started by a library behind our back: the ngrok
agent too is ours (`tunnels.ngrok`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

from colab_magics.errors import HelperNotReady

log = logging.getLogger(__name__)

_TAIL_LINES = 20


@dataclass(eq=False)
class Tracked:
    """A child process we started, with what is needed to explain its death."""

    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: Path | None = None
    ends_last: bool = False  # ended after every other process at shutdown (the emulator others write to)
    registry: "ProcessRegistry | None" = field(default=None, repr=False)
    _tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_TAIL_LINES))
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output_tail(self, lines: int = _TAIL_LINES) -> str:
        """The last lines the process printed (stdout and stderr merged)."""
        if self._reader is not None and not self.alive():
            self._reader.join(1.0)  # what it printed before dying is still in the pipe
        if self.log_path is not None and self.log_path.exists():
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return "\n".join(list(self._tail)[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """End it (and its process group) through the registry that started it."""
        if self.registry is not None:
            self.registry.stop(self, timeout)
        else:
            terminate(self.popen, timeout)


T = TypeVar("T")


class ProcessRegistry:
    """Every child process started by colab_magics in this interpreter (one per Session).

    `on_start` runs before each start (the session installs its signal handlers), `on_stop` after
    each stop (the session removes them when nothing is left)."""

    def __init__(self, *, on_start: Callable[[], None] | None = None,
                 on_stop: Callable[[], None] | None = None) -> None:
        self._procs: list[Tracked] = []
        self._lock = threading.RLock()  # re-entrant: the SIGTERM handler may stop processes mid-start
        self.on_start, self.on_stop = on_start, on_stop

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
        ends_last: bool = False,
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
        tracked = Tracked(name=name, argv=list(argv), popen=popen, log_path=log_path, ends_last=ends_last)
        if out is subprocess.PIPE:
            tracked._reader = threading.Thread(
                target=_pump, args=(tracked, on_line), name=f"{name}-output", daemon=True
            )
            tracked._reader.start()
        tracked.registry = self
        with self._lock:
            self._procs.append(tracked)
        log.debug("started %s (pid %d)", name, popen.pid)
        return tracked

    def start_ready(self, argv: Sequence[str], *, name: str, ready: Callable[[], T], timeout: float,
                    interval: float = 0.05, **start_options) -> tuple[Tracked, T]:
        """Start `argv` (as `start` does) and poll `ready()` until it returns a truthy value.

        Returns the process and that value. If the process dies first, or `timeout` seconds pass,
        it is ended and HelperNotReady says which, with its exit code and last output lines.
        """
        tracked = self.start(argv, name=name, **start_options)
        value = wait_until(ready, timeout=timeout, interval=interval, tracked=tracked)
        if value:
            return tracked, value
        died = not tracked.alive()
        self.stop(tracked)
        tail = tracked.output_tail()
        raise HelperNotReady(name, list(argv), tracked.popen.returncode if died else None, tail, timeout,
                             last_lines(tail))

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
        self._untrack(tracked)
        if self.on_stop is not None:
            self.on_stop()

    def stop_all(self, timeout: float = 5.0) -> None:
        """End every process, newest first; those marked `ends_last` after all the others."""
        with self._lock:
            procs = list(reversed(self._procs))
        for tracked in [p for p in procs if not p.ends_last] + [p for p in procs if p.ends_last]:
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


def last_lines(text: str, lines: int = 5, *, skip: Sequence[str] = ()) -> str:
    """The last `lines` non-empty lines of a process's output on one line (" | "), leaving out lines
    that start with one of `skip` (ssh's "debug1:" chatter, say): how a helper's death is explained."""
    kept = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(tuple(skip))]
    return " | ".join(kept[-lines:])


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
