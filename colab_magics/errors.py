"""One exception base class, one subclass per thing that can go wrong: facts, not a front end's words.

A message says what happened and what to do, in one line, and never carries a secret. It names no
magic, shell command or flag of its own accord: where it points at a parameter or at an operation
that fixes things, it holds a `Param` or a `Remedy`, and the front end that shows it words them in
its own terms (a `Dialect`): `Param("keep")` is `--keep` in a notebook or a shell and `keep=` in
Python; `do("auth", emulator=True)` is `%gcs_auth --emulator`, `colab-magics auth --emulator` or
`colab_magics.auth.sign_in(emulator=True)`. A message is built from parts, plain strings and those
two, so nothing in a path or a name is ever taken for a placeholder:

    raise InvalidArgument(Param("keep"), " must be at least 1: it counts the archives to keep")

`str(exc)` is the Python wording (a Python caller reads names it can pass); `exc.render(dialect)` any
other. This module imports nothing of colab_magics: every other module may import it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Sequence

_UNSET = object()


@dataclass(frozen=True)
class Param:
    """A parameter of the operation that failed, e.g. `keep` (`--keep` / `keep=`), with a value to suggest."""

    name: str
    value: object = _UNSET


@dataclass(frozen=True)
class Remedy:
    """An operation that fixes things, as data: `action` (see `ACTIONS`), positional `args` (shown as
    they are, e.g. "PROJECT"), and `options` as (Python name, value) pairs (True: a bare flag)."""

    action: str
    args: tuple[str, ...] = ()
    options: tuple[tuple[str, object], ...] = ()


def do(action: str, *args: str, **options) -> Remedy:
    """`do("auth", "PROJECT", key_file="KEY.json")`: the Remedy of running `action` so."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}: add it to errors.ACTIONS")
    return Remedy(action, tuple(str(a) for a in args), tuple(options.items()))


#: Every operation a message may suggest, and the Python call that does it (the Remedy's args are
#: its positional arguments, its options keyword arguments). The magics and the CLI map the same
#: names to their own commands (`magics.DIALECT`, `cli.DIALECT`).
ACTIONS = {
    "auth": "colab_magics.auth.sign_in",
    "save": "colab_magics.runs.save_run",
    "load": "colab_magics.runs.load_run",
    "list": "colab_magics.runs.list_archives",
    "mount": "colab_magics.mount.mount",
    "unmount": "colab_magics.mount.unmount",
    "mounts": "colab_magics.mount.active_mounts",
    "archive": "colab_magics.archiver.start_background",
    "archive_stop": "colab_magics.archiver.stop_background",
    "archive_status": "colab_magics.archiver.background",
    "tunnel": "colab_magics.tensorboard.serve",
    "cleanup": "colab_magics.runs.remove_debris",
}


def _shell_word(text: str) -> str:
    return text if text and not re.search(r"[\s'\"$\\]", text) else shlex.quote(text)


class Dialect:
    """How one front end words parameters and operations: shell-style flags (`--keep`, `--backend
    rclone`) and `commands[action]` followed by the Remedy's args and options. An action the front end
    has no command for is worded by `fallback`."""

    def __init__(self, name: str, commands: dict[str, str], fallback: "Dialect | None" = None):
        unknown = set(commands) - set(ACTIONS)
        if unknown:
            raise ValueError(f"{name}: unknown actions {sorted(unknown)}")
        self.name, self.commands, self.fallback = name, dict(commands), fallback

    def param(self, param: Param) -> str:
        flag = "--" + param.name.replace("_", "-")
        if param.value is _UNSET or param.value is True:
            return flag
        return f"{flag} {_shell_word(str(param.value))}"

    def remedy(self, remedy: Remedy) -> str:
        command = self.commands.get(remedy.action)
        if command is None:
            return (self.fallback or PYTHON).remedy(remedy)
        words = [command, *map(_shell_word, remedy.args)]
        words += [self.param(Param(name, value)) for name, value in remedy.options
                  if value is not False and value is not None]
        return " ".join(words)

    def render(self, said: object) -> str:
        """An error or a note in these words (ours part by part; anything else as str() has it)."""
        if isinstance(said, (ColabMagicsError, Words)):
            return said.render(self)
        return str(said)


class _PythonDialect(Dialect):
    """The Python API's words: `keep=`, `colab_magics.auth.sign_in(emulator=True)`."""

    def param(self, param: Param) -> str:
        return f"{param.name}=" if param.value is _UNSET else f"{param.name}={param.value!r}"

    def remedy(self, remedy: Remedy) -> str:
        arguments = [repr(a) for a in remedy.args]
        arguments += [f"{name}={value!r}" for name, value in remedy.options]
        return f"{ACTIONS[remedy.action]}({', '.join(arguments)})"


PYTHON: Dialect = _PythonDialect("python", {})


def render(parts: Sequence[object], dialect: Dialect) -> str:
    """A message's parts as one line in `dialect`'s words."""
    out = []
    for part in parts:
        if isinstance(part, Param):
            out.append(dialect.param(part))
        elif isinstance(part, Remedy):
            out.append(dialect.remedy(part))
        else:
            out.append(str(part))
    return "".join(out)


class Words:
    """A line for the user that is not a failure (a tunnel's note, say), built from parts like an error's."""

    def __init__(self, *parts: object):
        self.parts = parts

    def render(self, dialect: Dialect) -> str:
        return render(self.parts, dialect)

    def __str__(self) -> str:
        return self.render(PYTHON)

    def __repr__(self) -> str:
        return f"Words({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Words) and other.parts == self.parts

    def __hash__(self) -> int:
        return hash(self.parts)


class ColabMagicsError(Exception):
    """Base class of every expected failure of colab_magics. Its args are the message's parts."""

    def render(self, dialect: Dialect) -> str:
        return render(self.args, dialect)

    def __str__(self) -> str:
        return self.render(PYTHON)

    @property
    def remedies(self) -> tuple[Remedy, ...]:
        return tuple(part for part in self.args if isinstance(part, Remedy))


def first_line(exc: BaseException) -> str:
    """A third-party exception's first line (its name when it says nothing): what a one-line message quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class MissingDependency(ColabMagicsError):
    """An optional package is not installed."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"{package} is not installed: run  pip install \"colab-magics[{extra}]\"  and retry"
        )
        self.package = package
        self.extra = extra


# --- helper processes ----------------------------------------------------------------------------
class HelperNotReady(ColabMagicsError):
    """A helper process we started died, or was not ready in time; it has been ended. Services turn
    this into their own error (TensorBoardError, EmulatorError, ...) with `explained` in it."""

    def __init__(self, name: str, argv: list[str], returncode: int | None, tail: str, timeout: float,
                 last: str = ""):
        self.name, self.argv, self.returncode, self.tail, self.timeout = name, argv, returncode, tail, timeout
        self.last = last  # its last output lines, on one line
        super().__init__(f"{name} {self.explained}")

    @property
    def died(self) -> bool:
        return self.returncode is not None

    @property
    def explained(self) -> str:
        """"exited with code 1: LAST | LINES" or "was not ready within 20 s: LAST | LINES"."""
        what = f"exited with code {self.returncode}" if self.died else f"was not ready within {self.timeout:.0f} s"
        return f"{what}: {self.last or '(no output)'}"


# --- auth -------------------------------------------------------------------------------------
class AuthError(ColabMagicsError):
    """Credentials could not be found or used."""


class NoCredentials(AuthError):
    """No credentials of any kind are available."""


class EmulatorError(ColabMagicsError):
    """The local GCS emulator could not be started or reached."""


# --- storage ----------------------------------------------------------------------------------
class StorageError(ColabMagicsError):
    """A Cloud Storage request failed."""


class InvalidBucketURL(StorageError):
    """A bucket name or gs:// URL breaks GCS naming rules."""


class BucketNotFound(StorageError):
    """The bucket does not exist."""


class PermissionDenied(StorageError):
    """The credentials in use may not do this."""


class StorageUnreachable(StorageError):
    """The storage endpoint (GCS or the emulator) does not answer."""


class ArchiveNotFound(StorageError):
    """No archive matches what was asked for."""


class ArchiveConflict(StorageError):
    """The archive's name is taken by an archive of other files (another run's): nothing was uploaded."""


class UploadFailed(StorageError):
    """An upload did not complete; nothing was left under the final name."""


class DownloadFailed(StorageError):
    """A download did not complete or did not match its checksum."""


# --- run directories and archives ---------------------------------------------------------------
class RunDirError(ColabMagicsError):
    """The run directory is missing or unusable."""


class NoCheckpointFound(RunDirError):
    """The run directory holds no checkpoint of a known layout."""


class NotRegularFile(RunDirError):
    """The checkpoint asked for is a FIFO, socket, device or broken link: it cannot be read as a file."""
class CheckpointChanging(RunDirError):
    """A checkpoint file kept changing while it was read: archiving it would store a torn copy."""

    def __init__(self, message: str, *, path=None):
        super().__init__(message)
        self.path = path


class UnsafeArchive(ColabMagicsError):
    """An archive tries to write outside its target or holds links or devices."""


class CorruptArchive(ColabMagicsError):
    """An archive is truncated, malformed or fails its checksums."""


class EmptyArchive(CorruptArchive):
    """An archive holds no files: there is nothing to restore."""


class ArchiveTooLarge(UnsafeArchive):
    """An archive expands beyond the restore's ratio cap (a likely zip bomb) or a member beyond its declared size."""


# --- restoring into a directory -----------------------------------------------------------------
class RestoreError(ColabMagicsError):
    """The target directory cannot take the restore; it is left exactly as it was."""


class RestoreConflict(RestoreError):
    """TARGET_DIR has a file where the archive has a directory, or the reverse."""


class DiskFull(RestoreError):
    """Not enough free disk space for the restore (refused before writing, or ENOSPC while writing)."""


# --- tensorboard and tunnels --------------------------------------------------------------------
class TensorBoardError(ColabMagicsError):
    """TensorBoard could not be started or did not answer."""


class RefusedTensorBoardFlag(TensorBoardError):
    """A pass-through flag that would make TensorBoard listen beyond 127.0.0.1 (tunnels are the way out)."""


class LogDirError(TensorBoardError):
    """The log directory cannot be created or used."""


class TunnelError(ColabMagicsError):
    """A tunnel could not be opened, or was asked for something it cannot do."""


class UnknownProvider(TunnelError):
    """The tunnel provider named is not one colab_magics knows."""


class NoTunnelToken(TunnelError):
    """The provider needs an account token and none was found."""


class TunnelInstallError(TunnelError):
    """The tunnel agent is missing and could not be installed (offline, blocked download)."""


# --- mounts -------------------------------------------------------------------------------------
class MountError(ColabMagicsError):
    """A bucket could not be mounted or unmounted."""


class FuseUnavailable(MountError):
    """/dev/fuse is missing or this user may not open it."""


class MountPointBusy(MountError):
    """The mount point is already a mount, or is in use and cannot be unmounted."""


class MountPointNotEmpty(MountError):
    """The mount point holds files (mounting would hide them)."""


class NotMounted(MountError):
    """Asked to unmount a path that is not mounted."""


class MountBackendMissing(MountError):
    """Neither gcsfuse nor rclone is installed, and it could not be installed."""


class MountBackendInstallFailed(MountBackendMissing):
    """Installing gcsfuse or rclone failed (offline, not root, not Debian/Ubuntu)."""


class MountBackendDied(MountError):
    """The mount process exited; its last output lines are in the message."""

    def __init__(self, message: str, *, argv: list[str] | None = None, returncode: int | None = None,
                 tail: str = ""):
        super().__init__(message)
        self.argv = argv or []
        self.returncode = returncode
        self.tail = tail


class MountTimeout(MountError):
    """The mount did not become usable (or finish uploading at unmount) within its deadline."""


# --- continuous archiving -----------------------------------------------------------------------
class InvalidInterval(ColabMagicsError):
    """An archiving interval such as `--every 10m` could not be read."""


# --- Python API arguments -----------------------------------------------------------------------
class InvalidArgument(ColabMagicsError, TypeError):
    """A Python API call (the colab_utils names, the hooks) got a missing or wrongly typed argument."""


class InvalidValue(ColabMagicsError, ValueError):
    """An argument of the right type whose value cannot work (`keep=0`); `param` names it."""

    def __init__(self, *parts, param: str | None = None):
        super().__init__(*parts)
        self.param = param


class InvalidSetting(ColabMagicsError, ValueError):
    """A `COLAB_MAGICS_*` variable (or `%config` value) that does not parse; `name` is the setting."""

    def __init__(self, *parts, name: str):
        super().__init__(*parts)
        self.name = name


def check_keep(keep: int | None) -> None:
    """How many archives to keep counts the new one: at least 1 (None: keep everything)."""
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise InvalidValue(Param("keep"), f" must be a whole number of at least 1, not {keep!r}: it counts "
                           "the archives to keep, the new one included", param="keep")


def check_argument(call: str, name: str, value, kinds: tuple, what: str) -> None:
    """Raise InvalidArgument naming `call`'s public parameter unless `value` is one of `kinds`."""
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise InvalidArgument(f"{call}: {name} must be {what}, not {shown}")
class AlreadyArchiving(ColabMagicsError):
    """A background archiver already watches this run directory."""


# --- colab-magics run ---------------------------------------------------------------------------
class CommandNotFound(ColabMagicsError):
    """The command `colab-magics run` should supervise does not exist or is not executable."""
