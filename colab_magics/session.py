"""The one object holding this interpreter's state: credentials, project, client, cleanup hooks.

Services read the current session instead of keeping module-level state of their own.
"""

from __future__ import annotations

import atexit
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from colab_magics import processes

log = logging.getLogger(__name__)


@dataclass
class Session:
    """Credentials chosen by `%gcs_auth`, a cached storage client, and what to undo at exit."""

    auth: object | None = None  # colab_magics.auth.AuthInfo
    _client: object | None = None
    archivers: dict = field(default_factory=dict)  # run dir → archiver.Archiver started by %gcs_archive's line form
    supervised: object | None = None  # processes.Tracked: the command `colab-magics run` supervises
    auth_proxies: list = field(default_factory=list)  # authproxy.AuthProxy servers in front of tunnels
    _shutdown_hooks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def registry(self) -> processes.ProcessRegistry:
        return processes.registry

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
        """Run `hook` at `%unload_ext` and interpreter exit (mounts, archivers, tunnels)."""
        self._shutdown_hooks.append(hook)

    def shutdown(self) -> None:
        """Undo everything this session set up: hooks first (newest first), then child processes."""
        hooks, self._shutdown_hooks = self._shutdown_hooks, []
        for hook in reversed(hooks):
            try:
                hook()
            except Exception:  # one failed cleanup must not stop the others
                log.exception("cleanup %r failed", hook)
        self.registry.stop_all()


_current = Session()


def current() -> Session:
    return _current


atexit.register(lambda: _current.shutdown())
