"""The one object holding this interpreter's state, and the one path that undoes it.

`Session` keeps the credentials and storage client, and every registry of things we started: child
processes, TensorBoards, tunnels, ngrok agents, mounts, running archivers, the emulator we started.
Services reach them through `session.current()`; no module keeps state of its own.

`Session.shutdown()` ends everything in one order (archivers' final flush → tunnels → password
proxies → TensorBoards → mounts → remaining processes → emulator). It is the only cleanup path, reached from `%unload_ext`,
one atexit hook, and SIGTERM/SIGHUP handlers installed when the first child, mount or archiver
starts and removed when nothing is left (they run the shutdown, then hand the signal to the handler
that was there before, or die of it as the default action would). Children also get PR_SET_PDEATHSIG (see `processes`), so even a
SIGKILL of the interpreter ends them.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable

from colab_magics.processes import ProcessRegistry, Tracked

log = logging.getLogger(__name__)

#: Seconds mounts may take to finish their uploads when a signal (not the user) ends the session.
SIGNAL_UNMOUNT_TIMEOUT = 30.0
_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Registry:
    """What this session started, by key (thread-safe; re-entrant, as a signal handler may use it)."""

    def __init__(self) -> None:
        self._items: dict = {}
        self.lock = threading.RLock()

    def add(self, key, item) -> None:
        with self.lock:
            self._items[key] = item

    def get(self, key, default=None):
        with self.lock:
            return self._items.get(key, default)

    def remove(self, key, item=None) -> bool:
        """Forget `key` (only if it still holds `item`, when given); True if something was removed."""
        with self.lock:
            if key in self._items and (item is None or self._items[key] is item):
                del self._items[key]
                return True
            return False

    def values(self) -> list:
        with self.lock:
            return list(self._items.values())

    def items(self) -> list:
        with self.lock:
            return list(self._items.items())

    def __len__(self) -> int:
        with self.lock:
            return len(self._items)


@dataclass
class Session:
    """Credentials chosen by `%gcs_auth`, a cached storage client, and everything to end at shutdown."""

    auth: object | None = None  # colab_magics.auth.AuthInfo
    _client: object | None = None
    #: every child process (TensorBoard, tunnel agents, rclone/gcsfuse, helpers, the emulator)
    processes: ProcessRegistry = field(default_factory=ProcessRegistry)
    #: (logdir, extra args) → tensorboard.Instance
    tensorboards: Registry = field(default_factory=Registry)
    #: (provider, url) → tunnels.Tunnel
    tunnels: Registry = field(default_factory=Registry)
    #: ngrok binary path → tunnels.ngrok agent record (one agent per binary, as pyngrok runs them)
    ngrok_agents: Registry = field(default_factory=Registry)
    #: mount point (str) → processes.Tracked of its backend
    mounts: Registry = field(default_factory=Registry)
    #: id(archiver) → archiver.Archiver while its worker runs (flushed first at shutdown)
    active_archivers: Registry = field(default_factory=Registry)
    #: the emulator process we started (None when we use one started elsewhere)
    emulator_process: Tracked | None = None
    archivers: dict = field(default_factory=dict)  # run dir → archiver.Archiver started by %gcs_archive's line form
    auth_proxies: list = field(default_factory=list)  # authproxy.AuthProxy servers in front of tunnels
    _shutdown_hooks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _previous_handlers: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.processes.on_start = self.arm
        self.processes.on_stop = self.disarm_if_idle

    @property
    def emulator_host(self) -> str | None:
        """The emulator's URL when the credentials in use are the emulator's (requests go there)."""
        return getattr(self.auth, "emulator_host", None)

    @property
    def registry(self) -> ProcessRegistry:
        """The process registry (old name of `processes`)."""
        return self.processes

    def set_auth(self, info) -> None:
        with self._lock:
            self.auth = info
            self._client = None

    def storage_client(self):
        """The google-cloud-storage client for the current credentials (resolved on first use)."""
        from colab_magics import auth

        with self._lock:
            if self._client is None:
                if self.auth is None:
                    self.auth = auth.authenticate()
                self._client = auth.make_client(self.auth)
            return self._client

    def on_shutdown(self, hook: Callable[[], None]) -> None:
        """Run `hook` at shutdown, after the archivers' flush and before tunnels are closed."""
        self._shutdown_hooks.append(hook)
        self.arm()

    # --- the one shutdown path ----------------------------------------------------------------------
    def shutdown(self, reason: str = "shutdown", *, unmount_timeout: float | None = None) -> None:
        """End everything this session started, in order; each step's failure is logged, not raised."""
        steps: list[tuple[str, Callable[[], None]]] = []
        if len(self.active_archivers):
            steps.append(("archivers", lambda: _flush_archivers(self, reason)))
        hooks, self._shutdown_hooks = self._shutdown_hooks, []
        steps += [(f"hook {hook!r}", hook) for hook in reversed(hooks)]
        if len(self.tunnels) or len(self.ngrok_agents):
            steps.append(("tunnels", lambda: _close_tunnels(self)))
        if self.auth_proxies:
            steps.append(("password proxies", _stop_auth_proxies))
        if len(self.tensorboards):
            steps.append(("tensorboards", _stop_tensorboards))
        if len(self.mounts):
            steps.append(("mounts", lambda: _unmount_all(unmount_timeout)))
        steps.append(("processes", lambda: self._stop_processes()))
        for name, step in steps:
            try:
                step()
            except Exception:  # one failed cleanup must not stop the others
                log.exception("%s: cleaning up %s failed", reason, name)

    def _stop_processes(self) -> None:
        emulator = self.emulator_process
        for tracked in reversed(self.processes.all()):
            if tracked is not emulator:
                self.processes.stop(tracked)
        if emulator is not None:
            self.processes.stop(emulator)
            self.emulator_process = None

    # --- signals ------------------------------------------------------------------------------------
    def arm(self) -> None:
        """Install the SIGTERM/SIGHUP handlers (once; only the main thread may install them).

        A signal that was ignored stays ignored (e.g. SIGHUP under nohup): then nothing must end.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        with self._lock:
            for signum in _SIGNALS:
                if signum in self._previous_handlers:
                    continue
                previous = signal.getsignal(signum)
                if previous == signal.SIG_IGN:
                    continue
                try:
                    signal.signal(signum, self._on_signal)
                except ValueError:  # not the main interpreter
                    return
                self._previous_handlers[signum] = previous

    def disarm(self) -> None:
        """Put back the handlers that were there before ours (when ours are still installed)."""
        if threading.current_thread() is not threading.main_thread():
            return
        with self._lock:
            for signum, previous in list(self._previous_handlers.items()):
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
                del self._previous_handlers[signum]

    def idle(self) -> bool:
        """True when nothing of ours runs: no process, archiver, mount, tunnel, TensorBoard or hook."""
        return not (self.processes.all() or len(self.active_archivers) or len(self.mounts)
                    or len(self.tunnels) or len(self.tensorboards) or len(self.ngrok_agents)
                    or self._shutdown_hooks)

    def disarm_if_idle(self) -> None:
        """Put the previous signal handlers back once nothing is left to clean up."""
        if self._previous_handlers and self.idle():
            self.disarm()

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self.shutdown(name, unmount_timeout=SIGNAL_UNMOUNT_TIMEOUT)
        if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default action: die of this signal, as without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _flush_archivers(session: Session, reason: str) -> None:
    from colab_magics import archiver

    archiver.flush(session, reason)


def _close_tunnels(session: Session) -> None:
    from colab_magics import tunnels

    tunnels.close_tunnels()
    if len(session.ngrok_agents):  # an agent left without tunnels (a failed start) still holds a token
        from colab_magics.tunnels import ngrok

        ngrok.end_agents()


def _stop_auth_proxies() -> None:
    from colab_magics import authproxy

    authproxy.stop_all()


def _stop_tensorboards() -> None:
    from colab_magics import tensorboard

    tensorboard.stop()


def _unmount_all(timeout: float | None) -> None:
    from colab_magics import mount

    mount.unmount_all(timeout=timeout if timeout is not None else mount.UNMOUNT_TIMEOUT, lazy_fallback=True)


_current = Session()


def current() -> Session:
    return _current


atexit.register(lambda: _current.shutdown("interpreter exit"))
