"""The one object holding this interpreter's state, and the one path that undoes it.

A `Session` keeps the credentials in use (and the storage client made for them), the registry of
child processes, and every other thing we started that must end with us: TensorBoards, tunnels and
their agents, password proxies, mounts, running archivers. It knows none of them by type: each is an
object with `close(urgent=False)` and a `closes_at` rank (lower closes first, see `CLOSES_AT`), tracked
under a key of its kind (`track(item, key)`, looked up again by `get(Kind, key)` / `items(Kind)`).
Services reach it as `session.current()` or are handed one; the session imports no service.

`Session.shutdown()` is the only cleanup path, reached from `%unload_ext`, one atexit hook, and the
SIGTERM/SIGHUP handlers installed while anything is tracked (they run the shutdown with
`urgent=True`, then hand the signal to the handler that was there before, or die of it as the
default action would). It closes every item in `closes_at` order, newest first within a rank, then
ends the remaining processes. Children also get PR_SET_PDEATHSIG (see `processes`), so even a
SIGKILL of the interpreter ends them.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from typing import Hashable, Iterator, Protocol, TypeVar

from colab_magics.processes import ProcessRegistry

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

#: Shutdown ranks of the kinds of things services track (`closes_at`): what writes to or listens
#: through something closes before it. Archivers make their final archive first, tunnels close
#: before the proxies and TensorBoards they lead to, mounts flush before processes end.
CLOSES_AT = {"archiver": 0, "tunnel": 10, "agent": 20, "proxy": 30, "tensorboard": 40, "mount": 50}


class Closable(Protocol):
    closes_at: int

    def close(self, urgent: bool = False) -> None:
        """End it. `urgent`: the interpreter is being stopped by a signal: finish within seconds.

        An item may also have `begin_close(reason)`: called for every item of a rank before the first
        `close`, so their endings overlap (the archivers' final archives run side by side)."""


T = TypeVar("T")


class Session:
    """Credentials chosen by `%gcs_auth`, a cached storage client, and everything to end at shutdown."""

    def __init__(self) -> None:
        self.auth: object | None = None  # colab_magics.auth.AuthInfo
        self.client: object | None = None  # the storage client for `auth` (auth.storage_client makes it)
        #: every child process (TensorBoard, tunnel agents, rclone/gcsfuse, helpers, the emulator)
        self.processes = ProcessRegistry(on_start=self.arm, on_stop=self.disarm_if_idle)
        self._items: dict[tuple[type, Hashable], Closable] = {}
        self.lock = threading.RLock()  # re-entrant: a signal handler may shut down mid-registration
        self._previous_handlers: dict = {}

    @property
    def emulator_host(self) -> str | None:
        """The emulator's URL when the credentials in use are the emulator's (requests go there)."""
        return getattr(self.auth, "emulator_host", None)

    def set_auth(self, info) -> None:
        with self.lock:
            self.auth = info
            self.client = None

    # --- what we started -----------------------------------------------------------------------------
    def track(self, item: Closable, key: Hashable | None = None) -> Closable:
        """Remember `item` (under `key` of its kind: the item itself when None) until it is closed."""
        with self.lock:
            self._items[(type(item), item if key is None else key)] = item
        self.arm()
        return item

    def untrack(self, item: Closable, key: Hashable | None = None) -> bool:
        """Forget `item` (only if `key` still holds it); True if it was tracked."""
        with self.lock:
            slot = (type(item), item if key is None else key)
            found = self._items.get(slot) is item
            if found:
                del self._items[slot]
        self.disarm_if_idle()
        return found

    def get(self, kind: type[T], key: Hashable, default: T | None = None) -> T | None:
        with self.lock:
            return self._items.get((kind, key), default)  # type: ignore[return-value]

    def items(self, kind: type[T]) -> list[T]:
        """The tracked items of `kind`, oldest first."""
        with self.lock:
            return [item for (k, _), item in self._items.items() if k is kind]  # type: ignore[misc]

    def keyed(self, kind: type[T]) -> Iterator[tuple[Hashable, T]]:
        with self.lock:
            pairs = [(key, item) for (k, key), item in self._items.items() if k is kind]
        return iter(pairs)  # type: ignore[arg-type]

    # --- the one shutdown path ----------------------------------------------------------------------
    def shutdown(self, reason: str = "shutdown", *, urgent: bool = False) -> None:
        """End everything this session started, in order; each failure is logged, not raised."""
        with self.lock:
            tracked = list(self._items.items())
        order = sorted(range(len(tracked)), key=lambda i: (tracked[i][1].closes_at, -i))
        for rank in sorted({tracked[i][1].closes_at for i in order}):
            group = [tracked[i] for i in order if tracked[i][1].closes_at == rank]
            for _, item in group:  # let a whole rank start closing at once (archivers' final archives)
                begin = getattr(item, "begin_close", None)
                if begin is not None:
                    self._attempt(reason, item, lambda begin=begin: begin(reason))
            for (kind, key), item in group:
                self._attempt(reason, item, lambda item=item: item.close(urgent=urgent))
                with self.lock:
                    if self._items.get((kind, key)) is item:
                        del self._items[(kind, key)]
        self._attempt(reason, "processes", self.processes.stop_all)
        self.disarm_if_idle()

    @staticmethod
    def _attempt(reason: str, what, step) -> None:
        try:
            step()
        except Exception:  # one failed cleanup must not stop the others
            log.exception("%s: cleaning up %r failed", reason, what)

    # --- signals ------------------------------------------------------------------------------------
    def arm(self) -> None:
        """Install the SIGTERM/SIGHUP handlers (once; only the main thread may install them).

        A signal that was ignored stays ignored (e.g. SIGHUP under nohup): then nothing must end.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        with self.lock:
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
        with self.lock:
            for signum, previous in list(self._previous_handlers.items()):
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
                del self._previous_handlers[signum]

    def idle(self) -> bool:
        """True when nothing of ours runs: no tracked item, no child process."""
        with self.lock:
            return not self._items and not self.processes.all()

    def disarm_if_idle(self) -> None:
        """Put the previous signal handlers back once nothing is left to clean up."""
        if self._previous_handlers and self.idle():
            self.disarm()

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self.shutdown(name, urgent=True)
        if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default action: die of this signal, as without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


_current = Session()


def current() -> Session:
    """This interpreter's session (the magics', the CLI's and the Python API's)."""
    return _current


atexit.register(lambda: _current.shutdown("interpreter exit"))
