"""Supervising a training command (`colab-magics run`): archived while it runs, once more when it ends.

The command runs as a child (its output passed straight through) while an `archiver.Archiver`
archives RUN_DIR exactly as `%%gcs_archive` does. SIGINT/SIGTERM/SIGHUP sent to us are forwarded to
the child; when it exits, for any reason, the newest step is archived within `--final-timeout`
(25 s fits GCE's 30 s preemption notice) and we exit with the child's code (128 + N for signal N),
so a job scheduler sees what it would have seen without us. `cli.py` parses its arguments and words
what happened.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from colab_magics import archiver, auth, chief, runs, session, storage
from colab_magics.errors import (
    CommandNotFound,
    InvalidBucketURL,
    InvalidInterval,
    RunDirError,
    check_keep,
)
from colab_magics.settings import Settings, effective

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_WAIT_SLICE = 1.0  # the child's exit is checked this often; signals are handled at once regardless
USAGE_ERRORS = (CommandNotFound, InvalidBucketURL, InvalidInterval)  # wrong arguments, not a failure


@dataclass(frozen=True)
class Supervised:
    """How a supervised command ended: the code to exit with and what the archiver did."""

    code: int
    summary: archiver.ArchiveSummary
    final_timeout: float


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
    if resume:
        restored = runs.resume(root, location.url, settings=settings)
        log.info("%s", f"resumed from {restored.url} (step {restored.step})" if restored else restored.note)
    elif chief.is_chief():  # fail now, not after hours of training, when the bucket cannot be reached
        storage.require_bucket(auth.storage_client(), location)

    worker = archiver.Archiver(root, location.url, every, events=events, keep=keep, settings=settings,
                               last_chance_timeout=final_timeout)
    with _Forwarding() as forwarding:
        child = _start(argv)
        forwarding.child = child.popen
        try:
            worker.start()
            forwarding.reinstall()  # Archiver.start installs its own SIGTERM flush: ours comes first here
            code = _wait(child.popen)
        finally:
            child.stop()
        summary = worker.stop(final=True, timeout=final_timeout)
    return Supervised(code, summary, final_timeout)


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


def _start(argv: list[str]):
    """Start the child in a session of its own (a terminal's Ctrl-C reaches it once: through us),
    with stdin/stdout/stderr inherited, tracked by the process registry (and PR_SET_PDEATHSIG) so
    nothing outlives us."""
    return session.current().processes.start(argv, name=f"run:{Path(argv[0]).name}", inherit_stdio=True)


def _wait(popen: subprocess.Popen) -> int:
    while True:
        try:
            return exit_code(popen.wait(timeout=_WAIT_SLICE))
        except subprocess.TimeoutExpired:
            continue


class _Forwarding:
    """While active, SIGINT/SIGTERM/SIGHUP are sent on to the child instead of ending us."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self._previous: dict[int, object] = {}
        self._pending: list[int] = []

    def __enter__(self) -> "_Forwarding":
        for signum in FORWARDED:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def reinstall(self) -> None:
        for signum in FORWARDED:
            signal.signal(signum, self._on_signal)
        for signum in self._pending:  # arrived before the child existed
            self._forward(signum)
        self._pending.clear()

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _on_signal(self, signum, frame) -> None:
        if self.child is None:
            self._pending.append(signum)
        else:
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        if self.child is not None and self.child.poll() is None:
            log.info("forwarding %s to the command (pid %d)", signal.Signals(signum).name, self.child.pid)
            try:
                self.child.send_signal(signum)
            except ProcessLookupError:
                pass
