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

A supervised command (`colab-magics run`) is owned down to its last descendant: `subreaper()` makes
orphans come back to us, `ProcessTree` finds, signals, ends and reaps the command's session and what
left it, and a `Watchdog` process SIGKILLs the tree if we die without ending it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
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
        death_signal: int | None = signal.SIGTERM,
        pass_fds: Sequence[int] = (),
    ) -> Tracked:
        """Start `argv` in its own session (so the notebook's Stop button does not reach it).

        Output goes to `log_path` when given, else it is read by a thread that keeps the last lines
        (and calls `on_line(line)` for each, for callers that wait for a start-up line). With
        `inherit_stdio` the child shares our stdin, stdout and stderr (a command we supervise).
        `death_signal` is what the Linux kernel sends the child when we die (None: nothing, for a
        watchdog that must outlive us); `pass_fds` are kept open in the child.
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
                preexec_fn=_die_with_parent(death_signal),
                pass_fds=tuple(pass_fds),
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

    def pids(self) -> set[int]:
        """The pids of every process tracked here, running or not yet stopped."""
        with self._lock:
            return {p.pid for p in self._procs}

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


def _libc_prctl():
    global _prctl
    if _prctl is None:  # looked up in the parent: a child only calls it
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    return _prctl


def _die_with_parent(death_signal: int | None = signal.SIGTERM):
    """A preexec_fn asking the kernel to send `death_signal` to the child when its parent dies
    (Linux only; None: no preexec_fn)."""
    if death_signal is None or not sys.platform.startswith("linux"):
        return None
    prctl, parent, death_signal = _libc_prctl(), os.getpid(), int(death_signal)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would tell us
            os.kill(os.getpid(), death_signal)

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


# --- a command's whole process tree (colab-magics run) --------------------------------------------
# A command started in a session of its own (sid = pgid = its pid) keeps that session in everything
# it forks, unless a descendant starts a session of its own (setsid, a daemon). While we are a child
# subreaper, a descendant whose parent dies is re-parented to us instead of to init: so the tree is
# the command's session, the processes re-parented to us from another session, and all their
# descendants. A session id stays allocated while any process uses it, so signalling the session
# after the command itself is gone never reaches a stranger.

_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37
WATCH_INTERVAL = 1.0  # how often the watchdog notes the tree (it acts at once when we die)
_HAVE_PROC = os.path.isdir("/proc/self")  # elsewhere (macOS) only the command's process group is known
KILL_WAIT = 10.0  # SIGKILL is final, but a process in uninterruptible I/O (a dead FUSE mount) dies late


@contextlib.contextmanager
def subreaper():
    """While inside, orphaned descendants are re-parented to this process, not to init (Linux;
    elsewhere a no-op). Yields whether it took effect; the previous setting is put back after."""
    if not sys.platform.startswith("linux"):
        yield False
        return
    prctl, previous = _libc_prctl(), ctypes.c_int(0)
    prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(previous), 0, 0, 0)
    enabled = prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield enabled
    finally:
        if enabled:
            prctl(_PR_SET_CHILD_SUBREAPER, previous.value, 0, 0, 0)


@dataclass(frozen=True)
class ProcInfo:
    """One line of /proc/PID/stat: what the tree is built from."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start: int  # clock ticks after boot: with the pid, names one process even when pids are reused

    @property
    def live(self) -> bool:
        return self.state not in ("Z", "X")


def process_table() -> dict[int, ProcInfo]:
    """Every process of this machine (its pid namespace), read from /proc (empty without one)."""
    table: dict[int, ProcInfo] = {}
    if not _HAVE_PROC:
        return table
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:  # gone since listdir
            continue
        fields = data[data.rindex(b")") + 2:].split()  # the name, in parentheses, may hold anything
        pid = int(name)
        table[pid] = ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode(),
                              int(fields[19]))
    return table


def tree_members(table: Mapping[int, ProcInfo], *, session: int, parent: int | None = None,
                 spare: set[int] = frozenset(), known: Mapping[int, int] | None = None) -> dict[int, ProcInfo]:
    """The processes of the tree whose command leads `session`: that session, the processes `known`
    before (pid → start time), the children of subreaper `parent` from another session than its own
    (orphans it adopted; `spare` names its children that are not the command's), and every
    descendant of those. Zombies included (`ProcInfo.live` tells)."""
    roots = [p for p in table.values() if p.sid == session]
    for pid, start in (known or {}).items():
        if pid in table and table[pid].start == start:
            roots.append(table[pid])
    if parent is not None and parent in table:
        own = table[parent].sid
        roots += [p for p in table.values() if p.ppid == parent and p.sid != own and p.pid not in spare]
    children: dict[int, list[ProcInfo]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p)
    members: dict[int, ProcInfo] = {}
    while roots:
        p = roots.pop()
        if p.pid in members or p.pid in (1, os.getpid(), parent):
            continue
        members[p.pid] = p
        roots.extend(children.get(p.pid, ()))
    return members


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(frozen=True)
class TreeEnded:
    """What ending a tree took: processes still running when it began, those that needed SIGKILL,
    and those that not even SIGKILL ended within KILL_WAIT (stuck in uninterruptible I/O)."""

    running: int = 0
    killed: int = 0
    stuck: int = 0


class ProcessTree:
    """A command we started in a session of its own (`tracked`), and everything that came from it.

    Made for a supervisor that is a child subreaper (`subreaper()`): the orphans of the tree come
    back to it, and are found, signalled and reaped here. The other processes of `registry` are
    ours, not the command's, and are left alone."""

    def __init__(self, tracked: Tracked, registry: ProcessRegistry):
        self.leader = tracked
        self.session = tracked.pid  # start_new_session: sid = pgid = pid
        self._registry = registry
        self._me = os.getpid()

    def members(self) -> dict[int, ProcInfo]:
        if not _HAVE_PROC:  # the process group stands for the tree: its leader's pid names it
            return {self.session: ProcInfo(self.session, self._me, self.session, self.session, "R", 0)} \
                if _group_exists(self.session) else {}
        spare = self._registry.pids() - {self.leader.pid}
        return tree_members(process_table(), session=self.session, parent=self._me, spare=spare)

    def live(self) -> dict[int, ProcInfo]:
        return {pid: p for pid, p in self.members().items() if p.live}

    def signal_group(self, signum: int) -> bool:
        """Send `signum` to the command's process group, as a terminal sends Ctrl-C; False when the
        group is gone."""
        try:
            os.killpg(self.session, signum)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> int:
        """SIGKILL every live process of the tree; how many there were."""
        live = self.live()
        self.signal_group(signal.SIGKILL)
        for pid in live:
            _kill(pid, signal.SIGKILL)
        return len(live)

    def reap(self) -> None:
        """Collect the exit status of the orphans that came back to us and died (never the command's:
        its Popen does that)."""
        for pid, p in self.members().items():
            if p.ppid == self._me and not p.live and pid != self.leader.pid:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def end(self, deadline: float, *, term: bool = True, term_outside_group: bool = True) -> TreeEnded:
        """End what is left of the tree: SIGTERM (to every member with `term`; else only to those
        outside the command's process group, which a forwarded signal did not reach), wait until
        `deadline` (time.monotonic()) for them to go, then SIGKILL the rest."""
        live = self.live()
        running = len(live)
        if term:
            self.signal_group(signal.SIGTERM)
        for pid, p in live.items():
            if term or (term_outside_group and p.pgid != self.session):
                _kill(pid, signal.SIGTERM)
        while live and time.monotonic() < deadline:
            time.sleep(0.05)
            self.reap()
            live = self.live()
        killed = 0
        give_up = time.monotonic() + KILL_WAIT
        while live and time.monotonic() < give_up:
            killed = max(killed, self.kill())
            time.sleep(0.05)
            self.reap()
            live = self.live()
        if live:
            log.warning("%d process(es) of the command did not end even after SIGKILL (pids %s)",
                        len(live), " ".join(map(str, sorted(live))))
        self.reap()
        return TreeEnded(running, killed, len(live))


class Watchdog:
    """A small process of its own that kills a command's whole tree if we die without ending it
    (SIGKILL, the OOM killer): nothing then depends on the command honouring a signal.

    It is started before the command (`start`), told which session to watch (`watch`) and notes
    the tree every WATCH_INTERVAL, so processes that left the session (daemons) are known too. It
    learns that we died when its end of a pipe reaches end-of-file (the kernel closes ours, however
    we die) and then SIGKILLs everything of the tree it can find. `close()` stands it down.
    """

    def __init__(self, registry: ProcessRegistry):
        self._registry = registry
        self._write: int | None = None
        self.tracked: Tracked | None = None

    def start(self) -> "Watchdog":
        read, self._write = os.pipe()
        root = str(Path(__file__).resolve().parent.parent)  # the same colab_magics, whatever sys.path says
        code = ("import sys; sys.path.insert(0, sys.argv[2]); "
                "from colab_magics.processes import watchdog_main; watchdog_main(int(sys.argv[1]))")
        try:
            self.tracked = self._registry.start([sys.executable, "-I", "-S", "-c", code, str(read), root],
                                                name="watchdog", death_signal=None, pass_fds=(read,))
        finally:
            os.close(read)
        return self

    def watch(self, tree: ProcessTree) -> None:
        spare = self._registry.pids() - {tree.leader.pid}
        self._send(f"watch {tree.session} {' '.join(map(str, sorted(spare)))}\n")

    def close(self, urgent: bool = False) -> None:
        """Stand it down (the tree is ended, or never started) and wait for it to exit."""
        if self._write is not None:
            self._send("done\n")
            os.close(self._write)
            self._write = None
        if self.tracked is not None:
            try:
                self.tracked.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.tracked.stop()

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, line: str) -> None:
        try:
            os.write(self._write, line.encode())
        except OSError as exc:  # it died: nothing to tell
            log.debug("the watchdog is gone: %s", exc)


def watchdog_main(fd: int) -> None:
    """The watchdog process (see `Watchdog`): read orders from `fd`; at end-of-file, SIGKILL the tree."""
    import select

    for signum in (signal.SIGINT, signal.SIGHUP):  # a terminal's signals are for the supervisor
        signal.signal(signum, signal.SIG_IGN)
    supervisor = os.getppid()
    session: int | None = None
    spare: set[int] = {os.getpid()}
    known: dict[int, int] = {}
    pending = b""
    while True:
        if select.select([fd], [], [], WATCH_INTERVAL)[0]:
            data = os.read(fd, 4096)
            if not data:
                break  # the supervisor is gone (it closes its end only after "done")
            pending += data
            *lines, pending = pending.split(b"\n")
            for words in (line.split() for line in lines):
                if words[:1] == [b"done"]:
                    return
                if words[:1] == [b"watch"]:
                    session = int(words[1])
                    spare |= {int(word) for word in words[2:]}
        if session is not None:
            members = tree_members(process_table(), session=session, parent=supervisor, spare=spare, known=known)
            known = {pid: p.start for pid, p in members.items()}
    if session is None:
        return
    give_up = time.monotonic() + KILL_WAIT
    while time.monotonic() < give_up:  # the supervisor's pid may be reused now: no `parent` rule
        # who descends from whom is read before anything dies (a dead parent's children move to init)
        members = tree_members(process_table(), session=session, spare=spare, known=known)
        known.update({pid: p.start for pid, p in members.items()})
        live = [pid for pid, p in members.items() if p.live]
        try:
            os.killpg(session, signal.SIGKILL)  # a group id is not reused while the group has members
        except (ProcessLookupError, PermissionError):
            if not live:
                return
        for pid in live:
            _kill(pid, signal.SIGKILL)
        time.sleep(0.02)
