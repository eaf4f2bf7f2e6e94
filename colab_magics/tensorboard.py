"""Start, reuse and stop TensorBoard servers bound to 127.0.0.1.

TensorBoard's own `%tensorboard` reuses an instance from its info files without checking that it is
alive; here we keep our own record of the servers we started and reuse one only after it answers.
Results are typed records (`Launched`, `Reused`); display decides the words.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from colab_magics import hosted, net, processes, session, storage, tunnels
from colab_magics.display import Link
from colab_magics.settings import DEFAULTS, Settings, effective
from colab_magics.errors import (
    HelperNotReady,
    LogDirError,
    MissingDependency,
    Param,
    RefusedTensorBoardFlag,
    TensorBoardError,
    Words,
)

log = logging.getLogger(__name__)

START_TIMEOUT = DEFAULTS.tensorboard_timeout  # TensorBoard imports TensorFlow when installed: 5–12 s is common
_BIND_FAILURE = "could not bind to port"
# TensorBoard's flags that bind beyond loopback (argparse also takes unambiguous abbreviations)
_BINDING_FLAGS = ("--host", "--bind_all", "--bind-all")


@dataclass(frozen=True)
class Instance:
    """A TensorBoard server we started: where its data comes from and where it answers."""

    logdir: Path | str  # a local directory, or a gs:// URL TensorBoard reads itself
    port: int
    extra_args: tuple[str, ...] = ()
    tracked: processes.Tracked | None = field(default=None, compare=False, repr=False)
    closes_at = session.CLOSES_AT["tensorboard"]

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """How the session finds it again: (logdir_key, extra args)."""
        return logdir_key(self.logdir), self.extra_args

    def close(self, urgent: bool = False) -> None:
        """End the server and remove its log."""
        if self.tracked is not None:
            _discard(self.tracked)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        return self.tracked.pid if self.tracked else None

    def alive(self) -> bool:
        return self.tracked is not None and self.tracked.alive()


@dataclass(frozen=True)
class Launched:
    """A new TensorBoard was started and answered after `seconds`."""

    instance: Instance
    seconds: float
    note: str | None = None


@dataclass(frozen=True)
class Reused:
    """A TensorBoard we started earlier for the same logdir still answers."""

    instance: Instance


def is_remote(logdir: str | os.PathLike) -> bool:
    """True for a gs:// logdir, which TensorBoard reads itself (its data server, or TensorFlow's gfile)."""
    return str(logdir).startswith("gs://")


def logdir_key(logdir: str | os.PathLike) -> str:
    """How a logdir is recognised again: a gs:// URL without a trailing slash, or an absolute path."""
    if is_remote(logdir):
        return str(logdir).rstrip("/")
    return str(Path(logdir).expanduser().absolute())


def resolve_logdir(logdir: str | os.PathLike) -> Path | str:
    """The logdir to give TensorBoard: a gs:// URL as it is (its bucket name checked), else the
    absolute local directory, created if missing (a parent that cannot be created is a LogDirError)."""
    if is_remote(logdir):
        storage.parse_url(str(logdir))  # a malformed bucket name is one line here, not in TensorBoard
        return str(logdir)
    path = Path(logdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise LogDirError(f"logdir {path} is a file, not a directory: pass the directory your runs write to")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LogDirError(
            f"cannot create logdir {path} ({exc.strerror}): pick a directory under a writable place "
            f"such as /content or your home"
        ) from exc
    return path


def check_extra_args(extra_args: Sequence[str]) -> None:
    """Refuse flags that would make TensorBoard listen on other interfaces, with no password.

    We bind 127.0.0.1 and say so; reaching TensorBoard from elsewhere is what tunnels are for.
    """
    for arg in extra_args:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and len(name) > 3 and any(flag.startswith(name) for flag in _BINDING_FLAGS):
            raise RefusedTensorBoardFlag(
                f"{name} is refused: TensorBoard listens on 127.0.0.1 only (it has no password); "
                "to reach it from elsewhere use a tunnel: ", Param("provider", "ngrok"), ", cloudflared or ssh"
            )


def find(logdir: str | os.PathLike, extra_args: Sequence[str] = ()) -> Instance | None:
    """The running TensorBoard we started for `logdir` if it still answers; a dead one is forgotten."""
    instance = session.current().get(Instance, (logdir_key(logdir), tuple(extra_args)))
    if instance is None:
        return None
    if instance.alive() and net.http_ok(instance.url):
        return instance
    log.info("TensorBoard for %s (port %d) no longer answers: starting a new one", logdir, instance.port)
    _stop_instance(instance)
    return None


def running() -> list[Instance]:
    """The TensorBoards we started that are still alive."""
    return [i for i in session.current().items(Instance) if i.alive()]


def start(
    logdir: str | os.PathLike,
    *,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = START_TIMEOUT,
) -> Launched | Reused:
    """Reuse the live TensorBoard for `logdir`, or start one on 127.0.0.1 and wait until it answers.

    `port` is a wish: when it is busy another free port is used (and said so in `note`).
    """
    check_extra_args(extra_args)
    _require_tensorboard()
    path = resolve_logdir(logdir)
    extra = tuple(extra_args)
    existing = find(path, extra)
    if existing is not None:
        return Reused(existing)
    note = None
    if port is not None and not net.port_is_free(port):
        note = f"port {port} is busy: TensorBoard uses another one"
        port = None
    began = time.monotonic()
    # Picking a free port and binding it are two steps; if someone takes it between them,
    # TensorBoard says so and we pick again (a bounded number of times).
    for attempt in range(3):
        chosen = port if (port is not None and attempt == 0) else net.free_port()
        try:
            tracked = _launch(path, chosen, extra, timeout)
        except HelperNotReady as exc:
            if exc.died and _BIND_FAILURE in exc.tail.lower() and attempt < 2:
                continue
            raise TensorBoardError(f"TensorBoard on port {chosen} {exc.explained}") from None
        instance = Instance(logdir=path, port=chosen, extra_args=extra, tracked=tracked)
        session.current().track(instance, instance.key)
        return Launched(instance, time.monotonic() - began, note)
    raise AssertionError("unreachable")


def stop(logdir: str | os.PathLike | None = None) -> list[Instance]:
    """End the TensorBoard(s) we started for `logdir` (every one when None); return those ended."""
    key = logdir_key(logdir) if logdir is not None else None
    ended = [i for i in session.current().items(Instance) if key is None or logdir_key(i.logdir) == key]
    for instance in ended:
        _stop_instance(instance)
    return ended


def _stop_instance(instance: Instance) -> None:
    instance.close()
    session.current().untrack(instance, instance.key)


def _discard(tracked: processes.Tracked) -> None:
    tracked.stop()
    if tracked.log_path is not None:
        tracked.log_path.unlink(missing_ok=True)


def _launch(logdir: Path | str, port: int, extra: tuple[str, ...], timeout: float) -> processes.Tracked:
    """TensorBoard on 127.0.0.1:`port`, once it answers (HelperNotReady if it dies or stays silent)."""
    argv = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
            "--host", "127.0.0.1", "--port", str(port), *extra]
    # Output goes to a file so the whole of it is there when TensorBoard dies (to explain why).
    log_path = Path(tempfile.gettempdir()) / "colab_magics" / f"tensorboard-{port}-{time.time_ns()}.log"
    try:
        tracked, _ = session.current().processes.start_ready(
            argv, name="TensorBoard", ready=lambda: net.http_ok(f"http://127.0.0.1:{port}/", 1.0),
            timeout=timeout, log_path=log_path, env=_credentials_env(logdir))
    except HelperNotReady:
        log_path.unlink(missing_ok=True)
        raise
    return tracked


def _credentials_env(logdir: Path | str) -> dict[str, str]:
    """TensorBoard reads a gs:// logdir itself: hand it the credentials file `%gcs_auth` chose, if any."""
    key_file = getattr(session.current().auth, "key_file", None)
    return {"GOOGLE_APPLICATION_CREDENTIALS": key_file} if is_remote(logdir) and key_file else {}


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401  (the package itself is light; its server is a subprocess)
    except ImportError as exc:
        raise MissingDependency("tensorboard", "tensorboard") from exc


# --- the %tensorboard_tunnel service: TensorBoard plus a tunnel to it --------------------------
@dataclass(frozen=True)
class Served:
    """TensorBoard behind a tunnel: the URL to open and the lines to show under the link."""

    url: str
    provider: str
    logdir: Path | str
    notes: tuple[str | Words, ...]
    inline_port: int | None = None  # shown inside the cell's output too (Colab), see `inline_view`

    def link(self, words=str) -> Link:
        """The link to show, its notes worded by `words` (a front end's `Dialect.render`; str: Python's)."""
        return Link(self.url, f"TensorBoard ({self.provider}) for {self.logdir}", [words(n) for n in self.notes])


def serve(
    log_dir: str | os.PathLike,
    provider: str | None = None,
    options: tunnels.TunnelOptions | None = None,
    *,
    port: int | None = None,
    extra_args: tuple[str, ...] | list[str] = (),
    settings: Settings | None = None,
) -> Served:
    """Start (or reuse) TensorBoard for `log_dir` and open (or reuse) a tunnel to it.

    `provider` defaults to the `tunnel_provider` setting (else Colab's proxy in Colab, ngrok with a
    token, local); `options` to the settings' (`tunnels.TunnelOptions.from_settings`). Everything
    that can be refused (binding flags, unknown provider, no token, a password and no password
    together) is checked before any process starts.
    """
    settings = effective(settings)
    check_extra_args(extra_args)
    options = options or tunnels.TunnelOptions.from_settings(settings)
    provider, notes = tunnels.choose_provider(provider or settings.tunnel_provider or None)
    tunnels.validate(provider, options)
    started = start(log_dir, port=port, extra_args=extra_args, timeout=settings.tensorboard_timeout)
    opened = tunnels.open_tunnel(provider, started.instance.port, options)
    tunnel = opened.tunnel if isinstance(opened, tunnels.Reopened) else opened
    lines = tunnels.describe(opened) + list(notes)
    if getattr(started, "note", None):
        lines.append(started.note)
    return Served(tunnel.url, provider, started.instance.logdir, tuple(lines),
                  inline_port=tunnel.port if tunnel.inline else None)


INLINE_PATH = "/?tensorboardColab=true"  # what TensorBoard's own %tensorboard opens in Colab
INLINE_HEIGHT = 800


def inline_view(served: Served) -> None:
    """Show TensorBoard inside the cell's output, as TensorBoard's `%tensorboard` does in Colab."""
    if served.inline_port is not None:
        hosted.colab_serve_port(served.inline_port, path=INLINE_PATH, height=INLINE_HEIGHT)


@dataclass(frozen=True)
class Stopped:
    """What `stop` ended."""

    instances: tuple[Instance, ...]
    tunnels: tuple[tunnels.Tunnel, ...]


def stop_served(log_dir: str | os.PathLike | None = None) -> Stopped:
    """End the TensorBoard for `log_dir` and its tunnels (every one of ours when None)."""
    if log_dir is None:
        closed = tunnels.close_tunnels()
        return Stopped(tuple(stop()), tuple(closed))
    ended = stop(log_dir)
    closed = [t for instance in ended for t in tunnels.close_tunnels(instance.port)]
    return Stopped(tuple(ended), tuple(closed))


def listing() -> list[tuple[str, str, str, str]]:
    """(what, serves, url, pid) for every TensorBoard and tunnel of ours that is alive."""
    rows = [("tensorboard", str(i.logdir), i.url, str(i.pid)) for i in running()]
    rows += [(f"tunnel ({t.provider})", f"port {t.port}", t.url, str(t.process.pid) if t.process else "-")
             for t in tunnels.open_tunnels()]
    return rows
