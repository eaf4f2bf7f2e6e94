"""`colab-magics`: the magics as a shell command, for scripts, cron and terminals.

Each command hands its argv list, as the shell split it, to the magic's own parser
(`magics.parse`), so options mean the same in both; the help, examples and messages are written for
a shell. Exit codes: 0 done, 1 the operation failed (one line on stderr), 2 bad usage (one line
naming `colab-magics COMMAND --help`), 130 interrupted (Ctrl-C; for `mount` and `tunnel`, which
stay in the foreground, SIGTERM too). `run` exits with its command's code.

A secret never comes from the command line (`ps` shows it to every local user): the tunnel's
password comes from COLAB_MAGICS_TUNNEL_AUTH, a 0600 file (--auth-file) or the terminal (--auth USER).
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
import textwrap
import threading
from dataclasses import dataclass

from colab_magics.errors import CommandNotFound, InvalidBucketURL, InvalidInterval


@dataclass(frozen=True)
class Command:
    magic: str | None  # the magic whose parser and body the command shares; None: its own parser
    summary: str
    description: str = ""
    examples: tuple[str, ...] = ()
    foreground: bool = False  # stays running until Ctrl-C / SIGTERM (what it started ends with it)


COMMANDS = {
    "auth": Command(
        "gcs_auth", "Check which credentials and project the other commands use.",
        "Find Google Cloud credentials in this order and print whose they are: what you name "
        "(--key-file: any credentials file google-auth reads; or --emulator, the local emulator) → "
        "STORAGE_EMULATOR_HOST set outside → GOOGLE_APPLICATION_CREDENTIALS → Application Default "
        "Credentials (gcloud auth application-default login). A project given here also becomes "
        "the gcloud CLI's default.",
        ("colab-magics auth --emulator", "colab-magics auth --project my-project",
         "colab-magics auth my-project --key-file ~/keys/trainer.json"),
    ),
    "save": Command(
        "gcs_save", "Archive the latest checkpoint of a run directory into a bucket.",
        "Archive the latest checkpoint of RUN_DIR (or --step's) as RUN.STEP.zip under DESTINATION and "
        "print its URL. The archive is streamed (no temporary file), checked end to end by crc32c, "
        "and never replaces an existing one unless --force.",
        ("colab-magics save runs/run1 gs://my-bucket/experiments --events",
         "colab-magics save 'runs/my run' my-bucket --step 1000 --keep 3",
         "colab-magics --emulator save runs/run1 gs://local-bucket"),
    ),
    "load": Command(
        "gcs_load", "Restore an archive, or a run's latest, into a directory.",
        "Download and extract an archive (or the newest archive of a run) into TARGET_DIR and print "
        "the restored checkpoint's path. Extraction is checked and atomic: a corrupt or unsafe "
        "archive leaves TARGET_DIR as it was.",
        ("colab-magics load gs://my-bucket/experiments/run1 runs/run1",
         "colab-magics load gs://my-bucket/experiments/run1.1000.zip restored/run1"),
    ),
    "list": Command(
        "gcs_list", "List the archives under gs://BUCKET[/PREFIX] and its sub-prefixes.",
        "List the archives under DESTINATION and every prefix below it: prefix, run, step, size, time, URL.",
        ("colab-magics list gs://my-bucket", "colab-magics list gs://my-bucket/experiments run1"),
    ),
    "cleanup": Command(
        "gcs_cleanup", "Delete the temporary parts interrupted parallel saves left in a bucket.",
        "A save of 64 MiB or more uploads its archive as parts under PREFIX/.colab_magics-parts/ and "
        "composes them into RUN.STEP.zip; a killed save leaves them behind. The next save to that prefix "
        "removes those older than 6 hours; this removes every one under DESTINATION and the prefixes below "
        "it now (a save running right now then fails, leaving nothing).",
        ("colab-magics cleanup gs://my-bucket", "colab-magics cleanup gs://my-bucket/experiments"),
    ),
    "mount": Command(
        "gcsfuse_mount", "Mount a bucket and stay in the foreground until Ctrl-C.",
        "Mount a bucket on the local filesystem (gcsfuse, else rclone over FUSE) and wait: Ctrl-C or "
        "SIGTERM unmounts it once pending uploads are done. --list and --unmount return at once.",
        ("colab-magics mount my-bucket /mnt/ckpt --only-dir run1",
         "colab-magics mount gs://datasets/imagenet --read-only",
         "colab-magics mount --list", "colab-magics mount my-bucket /mnt/ckpt --unmount"),
        foreground=True,
    ),
    "tunnel": Command(
        "tensorboard_tunnel", "Serve TensorBoard behind a tunnel until Ctrl-C.",
        "Start TensorBoard for LOGDIR, make it reachable and print the URL; Ctrl-C or SIGTERM ends "
        "both (exit 130). Options after -- go to TensorBoard unchanged. Every public tunnel (ngrok, "
        "cloudflared, ssh) asks for a password by default (generated, printed once with the link); "
        "your own comes from COLAB_MAGICS_TUNNEL_AUTH=USER:PASSWORD, --auth-file PATH (USER:PASSWORD, "
        "mode 0600) or --auth USER (asked on the terminal) — never from the command line, where ps "
        "shows it to every user of the machine. --no-auth opts out.",
        ("colab-magics tunnel runs --provider ngrok",
         "colab-magics tunnel runs --provider cloudflared --auth-file ~/.tensorboard-auth",
         "colab-magics tunnel runs --provider local --auth me",
         "colab-magics tunnel runs --provider ssh --ssh me@myserver.example.com --remote-port 8080",
         "colab-magics tunnel runs --provider local -- --reload_interval 5"),
        foreground=True,
    ),
    "run": Command(
        None, "Run a training command, archiving its run directory; final archive on exit/preemption.",
        "Run CMD while the newest checkpoint in RUN_DIR is archived to a bucket; archive once more when "
        "it ends (preempted, killed or done) and exit with its code (128+N when signal N ended it). "
        "Signals go on to CMD's process group; what still runs --final-timeout after the first is "
        "killed (exit 137). Everything CMD starts, background jobs included, ends with it, and with "
        "colab-magics run if that is killed.",
        ("colab-magics run runs/run1 gs://my-bucket/exp --every 10m --resume -- python train.py",
         "colab-magics --emulator run runs/run1 gs://local-bucket -- python train.py --epochs 3"),
    ),
}
_RETURNS_AT_ONCE = {"--list", "--unmount", "--stop"}  # foreground commands that only look or undo
BAD_ARGUMENTS = (InvalidBucketURL, InvalidInterval, CommandNotFound)  # a wrong argument, not a failed operation: exit 2


class Misuse(Exception):
    """Bad usage of the command line: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise Misuse(message)


def _global_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument("--emulator", action="store_true",
                       help="Use the bundled local GCS emulator (started for this command if not running; "
                            "its data stays in COLAB_MAGICS_EMULATOR_DIR or ~/.cache/colab_magics).")
    group.add_argument("--project", help="Google Cloud project (default: from the credentials).")
    return parser


def _top_parser() -> argparse.ArgumentParser:
    from colab_magics import __version__

    width = max(map(len, COMMANDS))
    commands = "\n".join(f"  {name.ljust(width)}  {c.summary}" for name, c in COMMANDS.items())
    parser = _Parser(
        prog="colab-magics", usage="colab-magics [--emulator] [--project PROJECT] COMMAND [ARGS...]",
        description="Checkpoints to Cloud Storage and back, TensorBoard tunnels and bucket mounts.\n\n"
                    f"commands:\n{commands}",
        epilog="examples:\n  colab-magics --emulator save runs/run1 gs://local-bucket\n"
               "  colab-magics list gs://my-bucket --project my-project\n\n"
               "Run  colab-magics COMMAND --help  for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    _global_options(parser)
    parser.add_argument("--version", action="version", version=f"colab-magics {__version__}")
    parser.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser and help of `colab-magics NAME`: the magic's own arguments (`run`: its own), with
    words written for a shell, and the global options."""
    from colab_magics.magics import ColabMagics

    command = COMMANDS[name]
    examples = "\n".join(f"  {line}" for line in command.examples)
    # a copy: options this parser redefines ("resolve") must not change the magic's own parser
    parents = [copy.deepcopy(getattr(ColabMagics, command.magic).parser)] if command.magic else []
    parser = _Parser(
        prog=f"colab-magics {name}", description=textwrap.fill(command.description, 79),
        epilog=f"examples:\n{examples}" if examples else None, parents=parents, conflict_handler="resolve",
        usage=_RUN_USAGE if name == "run" else None,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    if name == "run":
        _run_arguments(parser)
    if name == "tunnel":
        _tunnel_auth_arguments(parser)
    return _global_options(parser)


TUNNEL_AUTH_ENV = "COLAB_MAGICS_TUNNEL_AUTH"


def _tunnel_auth_arguments(parser: argparse.ArgumentParser) -> None:
    """The tunnel's password, from where `ps` cannot see it (the magic's --auth USER:PASS is refused)."""
    parser.add_argument("--auth", metavar="USER",
                        help="Ask the URL for USER and a password you type (asked on the terminal). "
                             "USER:PASSWORD is refused here: use --auth-file or " + TUNNEL_AUTH_ENV + ".")
    parser.add_argument("--auth-file", metavar="PATH",
                        help="A file holding USER:PASSWORD on its first line, readable by you only "
                             "(chmod 600). Without --auth/--auth-file: " + TUNNEL_AUTH_ENV + "=USER:PASSWORD "
                             "if set, else a generated password on public providers.")


def _tunnel_argv(rest: list[str]) -> list[str]:
    """The magic's argv for `colab-magics tunnel`, its credentials read from where the CLI takes them.

    They go to the magic in this in-memory list only (a process's argv is what `ps` shows; this
    list is not one). Misuse for a password on the command line or a bad source."""
    try:
        options = command_parser("tunnel").parse_args(rest)
    except Misuse as exc:  # argparse quotes what it did not recognize: maybe `--au USER:PASSWORD`
        words = str(exc).split(": ", 1)
        if words[0] == "unrecognized arguments":
            names = [token.split("=", 1)[0] for token in words[1].split() if token.startswith("-")]
            raise Misuse(f"unrecognized arguments: {' '.join(names) or 'values'} (options are not "
                         "abbreviated here, and their values are not repeated)") from None
        raise
    from_env = os.environ.pop(TUNNEL_AUTH_ENV, None)  # not handed down to TensorBoard or the agents
    if options.auth is not None and ":" in options.auth:
        raise Misuse(f"--auth USER:PASSWORD would show the password to every user of this machine (ps): "
                     f"give --auth USER to be asked for it, --auth-file PATH, or set {TUNNEL_AUTH_ENV}=USER:PASSWORD")
    if options.auth is not None and options.auth_file is not None:
        raise Misuse("--auth and --auth-file: give one of them")
    if options.no_auth and (options.auth is not None or options.auth_file is not None):
        raise Misuse("--no-auth contradicts --auth/--auth-file: give one of them")
    argv = _without_options(rest, ("--auth", "--auth-file"))
    if options.list or options.stop or options.no_auth:
        return argv
    if options.auth_file is not None:
        user, password = _auth_file(options.auth_file)
    elif options.auth is not None:
        user, password = options.auth, _ask_password(options.auth)
    elif from_env:
        user, password = _split_auth(from_env, TUNNEL_AUTH_ENV)
    else:
        return argv
    return argv + ["--auth", f"{user}:{password}"]


def _split_auth(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.strip("\r\n").partition(":")
    if not sep or not user or not password:
        raise Misuse(f"{where} must hold USER:PASSWORD (both non-empty)")
    return user, password


def _auth_file(path: str) -> tuple[str, str]:
    """USER:PASSWORD from the first line of a file that only its owner may read."""
    import stat

    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise Misuse(f"--auth-file {path} is not a file")
        if info.st_mode & 0o077:
            raise Misuse(f"--auth-file {path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}): "
                         f"chmod 600 {path}")
        with open(path, encoding="utf-8") as source:
            first = source.readline()
    except FileNotFoundError:
        raise Misuse(f"--auth-file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Misuse(f"--auth-file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    return _split_auth(first, f"--auth-file {path}")


def _ask_password(user: str) -> str:
    import getpass

    if not user:
        raise Misuse("--auth takes a user name")
    if not sys.stdin.isatty():
        raise Misuse(f"--auth {user} asks for the password on a terminal, and stdin is not one: "
                     f"use --auth-file PATH or set {TUNNEL_AUTH_ENV}=USER:PASSWORD")
    password = getpass.getpass(f"Password the tunnel asks for (user {user}): ")
    if not password:
        raise Misuse("an empty password: give one, or --no-auth for none")
    return password


def _without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """`argv` without `NAME VALUE` / `NAME=VALUE` for each of `names` (exact names: no abbreviations
    are accepted by the CLI's parsers)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in names:
            skip = True
        elif not any(token.startswith(f"{name}=") for name in names):
            kept.append(token)
    return kept


_RUN_USAGE = "colab-magics run RUN_DIR gs://BUCKET[/PREFIX] [options] -- CMD [ARGS...]"


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    from colab_magics.settings import DEFAULTS

    parser.add_argument("run_dir", metavar="RUN_DIR", help="The directory the command writes checkpoints into.")
    parser.add_argument("destination", metavar="gs://BUCKET[/PREFIX]", help="Where the RUN.STEP.zip archives go.")
    parser.add_argument("--every", metavar="INTERVAL", type=_interval,
                        help=f"Shortest time between two archives: 90, 30s, 10m, 1h (default: the `every` "
                             f"setting, {DEFAULTS.every}).")
    parser.add_argument("--resume", action="store_true",
                        help="First restore the run's latest archive into RUN_DIR (none yet: a fresh start).")
    parser.add_argument("--keep", type=_count, metavar="N", help="After each archive, delete all but the newest N.")
    parser.add_argument("--events", action="store_true",
                        help="Also archive every events.out.tfevents.* below RUN_DIR.")
    parser.add_argument("--final-timeout", type=_interval, metavar="INTERVAL",
                        help=f"How long the final archive may take after the command ends (default: the "
                             f"`final_timeout` setting, {DEFAULTS.final_timeout:g}s).")
    parser.add_argument("--streams", type=int, metavar="N",
                        help=f"Parallel uploads of one archive of 64 MiB or more (default: the `streams` setting, "
                             f"{DEFAULTS.streams}); 1: one stream.")


def _interval(text: str) -> float:
    from colab_magics.archiver import parse_interval
    from colab_magics.errors import InvalidInterval

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    try:
        options = top.parse_args(argv)
    except Misuse as exc:
        return _misuse(None, str(exc))
    if options.command is None:
        print(top.format_usage().rstrip(), file=sys.stderr)
        print("commands:\n" + "\n".join(f"  {name}" for name in COMMANDS), file=sys.stderr)
        return 2
    if options.command not in COMMANDS:
        return _misuse(None, f"no command {options.command!r}: use one of {', '.join(COMMANDS)}")
    return run(options.command, options.args, emulator=options.emulator, project=options.project)


def dialect():
    """How the CLI words a failure's parameters and remedies: `--keep`, `colab-magics auth --emulator`
    (what only a notebook can do is worded as the magic)."""
    from colab_magics.errors import Dialect
    from colab_magics.magics import DIALECT as MAGIC

    return Dialect("cli", {
        "auth": "colab-magics auth", "save": "colab-magics save", "load": "colab-magics load",
        "list": "colab-magics list", "mount": "colab-magics mount", "unmount": "colab-magics mount --unmount",
        "mounts": "colab-magics mount --list", "tunnel": "colab-magics tunnel", "cleanup": "colab-magics cleanup",
    }, fallback=MAGIC)


def run(command: str, args: list[str], *, emulator: bool = False, project: str | None = None) -> int:
    """Run one command with its argv (global options may still be in it, before any `--`)."""
    from colab_magics import session

    try:
        if command == "run":
            return _run_supervised(args, emulator=emulator, project=project)
        return _run_magic(command, args, emulator=emulator, project=project)
    except KeyboardInterrupt:
        print(f"colab-magics {command}: interrupted", file=sys.stderr)
        return 130
    finally:
        session.current().shutdown()


def _run_magic(command: str, args: list[str], *, emulator: bool, project: str | None) -> int:
    from IPython.core.error import UsageError

    from colab_magics import auth, session
    from colab_magics.display import TableList
    from colab_magics.errors import ColabMagicsError
    from colab_magics.magics import ColabMagics

    cut = args.index("--") if "--" in args else len(args)
    try:
        found, rest = _global_options(_Parser(add_help=False, allow_abbrev=False)).parse_known_args(args[:cut])
    except Misuse as exc:
        return _misuse(command, str(exc))
    if {"-h", "--help"} & set(rest):
        print(command_parser(command).format_help())
        return 0
    emulator, project = emulator or found.emulator, found.project or project
    if command == "auth":
        rest = (["--emulator"] if emulator else []) + ([project] if project else []) + rest
    if command == "tunnel":
        try:
            rest = _tunnel_argv(rest)
        except Misuse as exc:
            return _misuse(command, str(exc))
    argv = rest + args[cut:]
    magics = ColabMagics(shell=None)  # the magic's parser and body, worded for a shell
    magics.dialect = words = dialect()
    magic = getattr(magics, COMMANDS[command].magic)
    try:
        if command != "auth" and (emulator or project):
            session.current().set_auth(auth.authenticate(project, emulator=emulator))
        result = magic(argv)
        if isinstance(result, TableList):
            print(result.table)
        elif COMMANDS[command].foreground and not _RETURNS_AT_ONCE & set(rest):
            _wait_for_interrupt(f"{command} running; press Ctrl-C to stop")
            return 130  # stopped as asked: what it started ends in run()'s shutdown
    except UsageError as exc:
        if isinstance(exc.__cause__, ColabMagicsError) and not isinstance(exc.__cause__, BAD_ARGUMENTS):
            return _failure(command, exc)
        return _misuse(command, str(exc))
    except BAD_ARGUMENTS as exc:
        return _misuse(command, words.render(exc))
    except ColabMagicsError as exc:
        return _failure(command, words.render(exc))
    return 0


def _run_supervised(args: list[str], *, emulator: bool, project: str | None) -> int:
    """`colab-magics run`: 0.. the command's exit code; 1 a failure before it started; 2 bad usage."""
    from colab_magics import auth, session, supervise
    from colab_magics.errors import ColabMagicsError

    cut = args.index("--") if "--" in args else len(args)
    command = args[cut + 1:]
    try:
        options, extra = command_parser("run").parse_known_args(args[:cut])
        if "--" not in args and extra:
            raise Misuse(f"no command: put it after --, as in  -- {' '.join(extra[:3])}")
        if extra:
            raise Misuse(f"unrecognized arguments: {' '.join(extra)}")
        if not command:
            raise Misuse("no command: put it after --, e.g. -- python train.py")
    except Misuse as exc:
        return _misuse("run", str(exc))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    _log_to_stderr("colab-magics run")
    words = dialect()
    try:
        if emulator or project or options.emulator or options.project:
            session.current().set_auth(auth.authenticate(options.project or project,
                                                         emulator=emulator or options.emulator))
        done = supervise.run(options.run_dir, options.destination, command, every=options.every,
                             resume=options.resume, keep=options.keep, events=options.events,
                             final_timeout=options.final_timeout, settings=_with_streams(options.streams))
    except BAD_ARGUMENTS as exc:
        return _misuse("run", words.render(exc))
    except ColabMagicsError as exc:
        return _failure("run", words.render(exc))
    print(f"colab-magics run: {_describe_supervised(done, words)}", file=sys.stderr, flush=True)
    return done.code


def _with_streams(streams: int | None):
    """The environment's settings, `--streams` applied (checked: one line when out of range)."""
    from colab_magics import settings

    found = settings.from_env()
    return found if streams is None else found.replace(streams=settings.check_streams(streams))


def _describe_supervised(done, words) -> str:
    from colab_magics.magics import describe_archiving

    killed = (f"the command outlived --final-timeout ({done.final_timeout:g} s) after the signal and was killed",)
    text = describe_archiving(done.summary, words, more=killed if done.killed else (),
                              pending=f"the final archive did not finish within {done.final_timeout:g} s and was "
                                      "abandoned (an unfinished upload leaves nothing in the bucket)")
    return text[0].lower() + text[1:]


def _log_to_stderr(prefix: str) -> None:
    """The archiver's progress (INFO) and warnings on stderr, prefixed: this is a program, not a library."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    package = logging.getLogger("colab_magics")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False


def _misuse(command: str | None, message: str) -> int:
    where = f"colab-magics {command}" if command else "colab-magics"
    print(f"{where}: error: {message} (see  {where} --help)", file=sys.stderr)
    return 2


def _failure(command: str, message: object) -> int:
    print(f"colab-magics {command}: {message}", file=sys.stderr)
    return 1


def _wait_for_interrupt(message: str) -> None:
    """Until Ctrl-C or SIGTERM (either ends a foreground command, exit 130)."""
    print(message, file=sys.stderr, flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
