"""`colab-magics`: the magics as a command line, for scripts and cron.

Each subcommand parses its arguments with the magic's own parser (so options, help and error
messages are the same) and calls the same service. Exit codes: 0 done, 1 a failure of the
operation (its one-line message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading

SUBCOMMANDS = {
    "auth": ("gcs_auth", "Show (and check) the credentials and project in use."),
    "save": ("gcs_save", "Archive the latest checkpoint of a run directory into a bucket."),
    "load": ("gcs_load", "Restore an archive, or a run's latest, into a directory."),
    "list": ("gcs_list", "List the archives under gs://BUCKET[/PREFIX]."),
    "mount": ("gcsfuse_mount", "Mount a bucket (stays in the foreground until Ctrl-C)."),
    "tunnel": ("tensorboard_tunnel", "Start TensorBoard behind a tunnel (foreground until Ctrl-C)."),
}
FOREGROUND = {"mount", "tunnel"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="colab-magics",
        description="Checkpoints to Cloud Storage and back, TensorBoard tunnels and bucket mounts.",
        epilog="Run  colab-magics COMMAND --help  for a command's options.",
    )
    parser.add_argument("--emulator", action="store_true",
                        help="Use the bundled local GCS emulator (started for this command if not running).")
    parser.add_argument("--project", help="Google Cloud project (default: from the credentials).")
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), metavar="COMMAND",
                        help="one of: " + ", ".join(f"{k} ({v[1]})" for k, v in SUBCOMMANDS.items()))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    return run(options.command, options.args, emulator=options.emulator, project=options.project)


def run(command: str, args: list[str], *, emulator: bool = False, project: str | None = None) -> int:
    from IPython.core.error import UsageError

    from colab_magics import auth, session
    from colab_magics.errors import ColabMagicsError
    from colab_magics.magics import ColabMagics

    magic_name, _ = SUBCOMMANDS[command]
    magics = ColabMagics(shell=None)
    method = getattr(magics, magic_name)
    method.parser.prog = f"colab-magics {command}"
    if {"-h", "--help"} & set(args):
        print(method.__doc__.replace(f"%{magic_name}", f"colab-magics {command}"))
        return 0
    try:
        if command != "auth" and (emulator or project):
            session.current().set_auth(auth.authenticate(project, emulator=emulator))
        if command == "auth":
            extra = (["--emulator"] if emulator else []) + ([project] if project else [])
            args = extra + args
        result = method(shlex.join(args))
        if command == "list":
            print(result.table)
        elif command in FOREGROUND:
            _wait_for_interrupt(f"{command} running; press Ctrl-C to stop")
    except UsageError as exc:
        print(f"colab-magics {command}: {exc}", file=sys.stderr)
        return 1 if isinstance(exc.__cause__, ColabMagicsError) else 2
    except ColabMagicsError as exc:
        print(f"colab-magics {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        session.current().shutdown()
    return 0


def _wait_for_interrupt(message: str) -> None:
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
