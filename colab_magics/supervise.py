"""Supervising a training command (`colab-magics run`): archived while it runs, once more when it ends.

The command runs as a child (its output passed straight through) while an `archiver.Archiver`
archives RUN_DIR exactly as `%%gcs_archive` does. We own its whole process tree: the command starts in
a session and process group of its own, and we are a child subreaper, so its orphans come back to us.
SIGINT/SIGTERM/SIGHUP sent to us go on to its process group (as a terminal sends Ctrl-C); what of the
tree still runs `final_timeout` after the first of them is SIGKILLed. When the command exits, what it
left running gets SIGTERM (SIGKILL after `LEFTOVER_GRACE`), then the newest step is archived within
`final_timeout` (25 s fits GCE's 30 s preemption notice) and we exit with the command's code (128 + N
for signal N, 137 when it had to be killed), so a job scheduler sees what it would have seen without
us. If we are killed outright, the command dies with us (PR_SET_PDEATHSIG=SIGKILL) and a watchdog
process SIGKILLs the rest of the tree. `cli.py` parses the arguments and words what happened.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from colab_magics import archiver, processes, runs, session, storage
from colab_magics.errors import CommandNotFound, RunDirError, check_keep
from colab_magics.settings import Settings, effective

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_WAIT_SLICE = 1.0  # the child's exit is checked this often; signals are handled at once regardless
_REAP_EVERY = 10.0  # orphans that came back to us and died are collected this often while the command runs
LEFTOVER_GRACE = 5.0  # what the command left running gets this long after SIGTERM (at most final_timeout)


@dataclass(frozen=True)
class Supervised:
    """How a supervised command ended: the code to exit with and what the archiver did.

    `killed`: the command outlived `final_timeout` after a signal and was SIGKILLed (code 137);
    `left_running`: processes of its tree still running when it exited (then ended by us)."""

    code: int
    summary: archiver.ArchiveSummary
    final_timeout: float
    killed: bool = False
    left_running: int = 0


def run(
    run_dir: str | os.PathLike,
    destination: str,
    command: Sequence[str],
    *,
    every: str | float | None = None,
    resume: bool = False,
    keep: int | None = None,
    events: bool = False,
    final_timeout: str | float | None = None,
    settings: Settings | None = None,
) -> Supervised:
    """Run `command` while archiving `run_dir` to `destination`; return how it ended.

    `every` and `final_timeout` default to the settings'. Everything that can be refused (a missing
    command, a bad URL or interval, RUN_DIR a file, an unreachable bucket) is checked before the
    child starts, and raised as a ColabMagicsError.
    """
    settings = effective(settings)
    argv = resolve_command(command)
    location = storage.parse_url(destination)
    every = archiver.parse_interval(settings.every if every is None else every)
    final_timeout = archiver.parse_interval(settings.final_timeout if final_timeout is None else final_timeout)
    check_keep(keep)
    root = Path(run_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise RunDirError(f"RUN_DIR {root} is a file: give the directory the command writes its checkpoints into")
    worker = archiver.Archiver(root, location.url, every, events=events, keep=keep, settings=settings,
                               last_chance_timeout=final_timeout)
    if resume:
        restored = runs.resume(root, location.url, settings=settings)
        log.info("%s", f"resumed from {restored.url} (step {restored.step})" if restored else restored.note)
    else:
        worker.check_destination()
    registry = session.current().processes
    # The watchdog stops last: the session then puts back the signal handlers it found (ours are gone)
    with processes.subreaper(), processes.Watchdog(registry) as watchdog, _Forwarding() as forwarding:
        child = _start(argv)
        tree = processes.ProcessTree(child, registry)
        watchdog.watch(tree)
        forwarding.attach(tree)
        try:
            worker.start()
            forwarding.reinstall()  # ours stay first, whatever was installed meanwhile
            code = _wait(child, tree, forwarding, final_timeout)
        finally:
            ended = _end_tree(tree, forwarding, final_timeout)
            child.stop()
        summary = worker.stop(final=True, timeout=final_timeout)
    return Supervised(code, summary, final_timeout, killed=forwarding.killed, left_running=ended.running)


def resolve_command(command: Sequence[str]) -> list[str]:
    """`command` with its program checked: on PATH (shutil.which) or an executable path."""
    argv = [str(part) for part in command]
    if not argv or not argv[0]:
        raise CommandNotFound("no command to run: give the training command, e.g. python train.py")
    program = argv[0]
    found = shutil.which(program)
    if found is None:
        where = "is not an executable file" if os.sep in program else "is not on PATH"
        raise CommandNotFound(f"command {program!r} {where}: nothing was started")
    return argv


def exit_code(returncode: int) -> int:
    """A Popen return code as a shell reports it: 128 + N when signal N ended the process."""
    return 128 - returncode if returncode < 0 else returncode


def _start(argv: list[str]) -> processes.Tracked:
    """Start the child in a session and process group of its own (a terminal's Ctrl-C reaches it
    once: through us), with stdin/stdout/stderr inherited, tracked by the process registry, and
    SIGKILLed by the kernel if we die (PR_SET_PDEATHSIG: a command ignoring SIGTERM would survive
    that signal)."""
    return session.current().processes.start(argv, name=f"run:{Path(argv[0]).name}", inherit_stdio=True,
                                             death_signal=signal.SIGKILL)


def _wait(child: processes.Tracked, tree: processes.ProcessTree, forwarding: "_Forwarding",
          final_timeout: float) -> int:
    """The command's exit code; SIGKILL for the tree once `final_timeout` passed after a signal."""
    reaped = killed_at = time.monotonic()
    while True:
        deadline = forwarding.deadline(final_timeout)
        if forwarding.killed:
            slice_ = 0.1
        elif deadline is not None:
            slice_ = min(_WAIT_SLICE, max(deadline - time.monotonic(), 0.01))
        else:
            slice_ = _WAIT_SLICE
        try:
            return exit_code(child.popen.wait(timeout=slice_))
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if forwarding.killed:
            if now - killed_at > processes.KILL_WAIT:
                log.warning("the command (pid %d) does not die even of SIGKILL (stuck in I/O?): making the "
                            "final archive without waiting for it", child.pid)
                return exit_code(-signal.SIGKILL)
            tree.kill()  # what it may have forked meanwhile
        elif deadline is not None and now >= deadline:
            log.warning("the command did not end within %g s of %s: killing it (SIGKILL) and everything it "
                        "started", final_timeout, forwarding.first_name)
            forwarding.killed, killed_at = True, now
            tree.kill()
        if now - reaped >= _REAP_EVERY:
            tree.reap()
            reaped = now


def _end_tree(tree: processes.ProcessTree, forwarding: "_Forwarding", final_timeout: float) -> processes.TreeEnded:
    """End what the command left running. After a forwarded signal its process group already has it:
    the rest gets SIGTERM, and all of it time until the signal's deadline; else everything left gets
    SIGTERM and LEFTOVER_GRACE (at most final_timeout). Then SIGKILL."""
    deadline = forwarding.deadline(final_timeout)
    signalled = deadline is not None
    if not signalled:
        deadline = time.monotonic() + min(LEFTOVER_GRACE, final_timeout)
    ended = tree.end(deadline, term=not signalled)
    if ended.running:
        log.info("the command left %d process(es) running: ended them (%s)", ended.running,
                 f"{ended.killed} with SIGKILL" if ended.killed else "SIGTERM")
    return ended


class _Forwarding:
    """While active, SIGINT/SIGTERM/SIGHUP are sent on to the command's process group instead of
    ending us; the first of them starts the `final_timeout` countdown to SIGKILL."""

    def __init__(self) -> None:
        self.tree: processes.ProcessTree | None = None
        self.first_at: float | None = None  # time.monotonic() of the first forwarded signal
        self.first_name = ""
        self.killed = False  # the deadline passed: the tree was SIGKILLed
        self._previous: dict[int, object] = {}
        self._pending: list[int] = []

    def __enter__(self) -> "_Forwarding":
        session.current().arm()  # the session's handlers first (they end what it tracks), then ours on top
        for signum in FORWARDED:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def attach(self, tree: processes.ProcessTree) -> None:
        """The command started: forward what arrived before, and put our handlers back on top (the
        session installs its own when a process starts)."""
        self.tree = tree
        self.reinstall()

    def reinstall(self) -> None:
        for signum in FORWARDED:
            signal.signal(signum, self._on_signal)
        for signum in self._pending:  # arrived before the command existed
            self._forward(signum)
        self._pending.clear()

    def deadline(self, final_timeout: float) -> float | None:
        return None if self.first_at is None else self.first_at + final_timeout

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _on_signal(self, signum, frame) -> None:
        if self.tree is None:
            self._pending.append(signum)
        else:
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        assert self.tree is not None
        name = signal.Signals(signum).name
        if self.first_at is None:
            self.first_at, self.first_name = time.monotonic(), name
        if self.tree.leader.alive() and self.tree.signal_group(signum):
            log.info("forwarding %s to the command (process group %d)", name, self.tree.session)
