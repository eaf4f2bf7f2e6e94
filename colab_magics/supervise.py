"""`colab-magics run`: any training command, archived while it runs and once more when it ends.

    colab-magics run RUN_DIR gs://BUCKET[/PREFIX] [--every 10m] [--resume] [--keep N] [--events]
                     [--final-timeout 25s] -- CMD [ARGS...]

The command runs as a child (its output passed straight through) while an `archiver.Archiver`
archives RUN_DIR exactly as `%%gcs_archive` does. SIGINT/SIGTERM/SIGHUP sent to us are forwarded to
the child; when it exits, for any reason, the newest step is archived within `--final-timeout`
(25 s fits GCE's 30 s preemption notice) and we exit with the child's code (128 + N for signal N),
so a job scheduler sees what it would have seen without us.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from colab_magics.errors import (
    ColabMagicsError,
    CommandNotFound,
    InvalidBucketURL,
    InvalidInterval,
    RunDirError,
    check_keep,
)

log = logging.getLogger(__name__)

PROG = "colab-magics run"
DEFAULT_FINAL_TIMEOUT = 25.0  # GCE gives 30 s between the preemption notice and the end
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_WAIT_SLICE = 1.0  # the child's exit is checked this often; signals are handled at once regardless
_USAGE_ERRORS = (CommandNotFound, InvalidBucketURL, InvalidInterval)  # wrong arguments: exit 2


def run(
    run_dir: str | os.PathLike,
    destination: str,
    command: Sequence[str],
    *,
    every: str | float | None = "10m",
    resume: bool = False,
    keep: int | None = None,
    events: bool = False,
    final_timeout: str | float = DEFAULT_FINAL_TIMEOUT,
    settings=None,
) -> int:
    """Run `command` while archiving `run_dir` to `destination`; return the exit code to exit with.

    Everything that can be refused (a missing command, a bad URL or interval, RUN_DIR a file, an
    unreachable bucket) is checked before the child starts, and raised as a ColabMagicsError.
    """
    from colab_magics import archiver, runs, session, storage, workers
    from colab_magics.cli import dialect

    argv = resolve_command(command)
    location = storage.parse_url(destination)
    if every is not None:
        archiver.parse_interval(every)
    final_timeout = archiver.parse_interval(final_timeout)
    check_keep(keep)
    root = Path(run_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise RunDirError(f"RUN_DIR {root} is a file: give the directory the command writes its checkpoints into")
    chief = workers.is_chief()
    if resume:
        restored = runs.resume(root, location.url, settings=settings)
        _say(f"resumed from {restored.url} (step {restored.step})" if restored else restored.note)
    elif chief:  # fail now, not after hours of training, when the bucket cannot be reached
        storage.require_bucket(session.current().storage_client(), location)

    worker = archiver.Archiver(root, location.url, every, events=events, keep=keep, settings=settings,
                               last_chance_timeout=final_timeout)
    current = session.current()
    with _Forwarding() as forwarding:
        child = _start(argv)
        forwarding.child = child.popen
        try:
            worker.start()
            forwarding.reinstall()  # Archiver.start installs its own SIGTERM flush: ours comes first here
            code = _wait(child.popen)
        finally:
            current.registry.stop(child)
        summary = worker.stop(final=True, timeout=final_timeout)
    _say(_describe(summary, final_timeout, dialect()))
    return code


def resolve_command(command: Sequence[str]) -> list[str]:
    """`command` with its program checked: on PATH (shutil.which) or an executable path."""
    argv = [str(part) for part in command]
    if not argv or not argv[0]:
        raise CommandNotFound("no command to run: put it after --, e.g. colab-magics run runs/run1 "
                              "gs://my-bucket/exp -- python train.py")
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
    from colab_magics import processes

    return processes.registry.start(argv, name=f"run:{Path(argv[0]).name}", inherit_stdio=True)


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


def _describe(summary, final_timeout: float, words) -> str:
    if summary.skipped:
        return f"archiving skipped: {summary.skipped}"
    text = f"archived {summary.archives} checkpoint(s) of {summary.run} to {summary.destination}"
    if summary.last_url:
        text += f"; last step {summary.last_step}: {summary.last_url}"
    else:
        text += "; nothing archived yet" if summary.pending else "; no checkpoint found"
    if summary.newest_step is not None and summary.newest_step != summary.last_step:
        text += f"; newest step {summary.newest_step} is NOT archived"
    if summary.failures:
        text += f"; {summary.failures} failed attempt(s), last: {words.render(summary.last_error)}"
    if summary.pending:
        text += (f"; the final archive did not finish within {final_timeout:g} s and was abandoned "
                 "(an unfinished upload leaves nothing in the bucket)")
    return text


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- the command line ---------------------------------------------------------------------------
class _Usage(Exception):
    """Bad usage: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message and exits; we want one line
        raise _Usage(message)


def _interval(text: str) -> float:
    from colab_magics.archiver import parse_interval

    try:
        return parse_interval(text)
    except InvalidInterval as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count of archives to keep (1 or more)")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        usage=f"{PROG} RUN_DIR gs://BUCKET[/PREFIX] [options] -- CMD [ARGS...]",
        description="Run a training command while its newest checkpoint is archived to a bucket; "
                    "archive once more when it ends (preempted, killed or done) and exit with its code.",
        epilog="Example: colab-magics run runs/run1 gs://my-bucket/exp --every 10m --resume -- python train.py",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="The directory the command writes checkpoints into.")
    p.add_argument("destination", metavar="gs://BUCKET[/PREFIX]", help="Where the RUN.STEP.zip archives go.")
    p.add_argument("--every", default="10m", metavar="INTERVAL", type=_interval,
                   help="Shortest time between two archives: 90, 30s, 10m, 1h (default 10m).")
    p.add_argument("--resume", action="store_true",
                   help="First restore the run's latest archive into RUN_DIR (none yet: a fresh start).")
    p.add_argument("--keep", type=_count, metavar="N", help="After each archive, delete all but the newest N.")
    p.add_argument("--events", action="store_true", help="Also archive every events.out.tfevents.* below RUN_DIR.")
    p.add_argument("--final-timeout", default=DEFAULT_FINAL_TIMEOUT, type=_interval, metavar="INTERVAL",
                   help="How long the final archive may take after the command ends (default 25s).")
    return p


def cli_main(argv: Sequence[str] | None = None) -> int:
    """`colab-magics run ...`: 0.. the command's exit code; 1 a failure before it started; 2 bad usage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, command = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, None)
    try:
        options, extra = parser().parse_known_args(ours)
        if command is None and extra:
            raise _Usage(f"no command: put it after --, as in  -- {' '.join(extra[:3])}")
        if extra:
            raise _Usage(f"unrecognized arguments: {' '.join(extra)}")
        if not command:
            raise _Usage("no command: put it after --, e.g. -- python train.py")
    except _Usage as exc:
        print(f"{PROG}: {exc} (see {PROG} --help)", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    _configure_logging()
    from colab_magics import session, settings as user_settings
    from colab_magics.cli import dialect

    words = dialect()
    try:
        settings = user_settings.from_env()  # COLAB_MAGICS_* (chunk size, retry deadline, progress)
        return run(options.run_dir, options.destination, command, every=options.every, resume=options.resume,
                   keep=options.keep, events=options.events, final_timeout=options.final_timeout,
                   settings=settings)
    except _USAGE_ERRORS as exc:
        print(f"{PROG}: {words.render(exc)} (see {PROG} --help)", file=sys.stderr)
        return 2
    except ColabMagicsError as exc:
        print(f"{PROG}: {words.render(exc)}", file=sys.stderr)
        return 1
    finally:
        session.current().shutdown()


def _configure_logging() -> None:
    """The archiver's progress (INFO) and warnings on stderr, prefixed: this is a program, not a library."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    package = logging.getLogger("colab_magics")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False


if __name__ == "__main__":
    sys.exit(cli_main())
