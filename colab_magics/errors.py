"""One exception base class, one subclass per thing that can go wrong.

Each message says what happened and what to do, in one line, and never carries a secret. The magics
turn these into `UsageError` so IPython prints the line without a traceback.
"""

from __future__ import annotations

import re
import shlex


def hint(magic: str, *args: str) -> str:
    """How to run `magic` where the user is: `%gcs_auth --emulator` in a notebook,
    `colab-magics auth --emulator` in a shell (`Session.interface`). Every message that names a
    command builds it here, so the two interfaces never tell users to type the other's syntax."""
    from colab_magics import session
    from colab_magics.cli import COMMAND_OF_MAGIC

    words = [a if not re.search(r"[\s'\"$\\]", a) else shlex.quote(a) for a in args]
    if session.current().interface == "cli" and magic in COMMAND_OF_MAGIC:
        return " ".join(["colab-magics", COMMAND_OF_MAGIC[magic], *words])
    return " ".join([f"%{magic}", *words])


class ColabMagicsError(Exception):
    """Base class of every expected failure of colab_magics."""


class MissingDependency(ColabMagicsError):
    """An optional package is not installed."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"{package} is not installed: run  pip install \"colab-magics[{extra}]\"  and retry"
        )
        self.package = package
        self.extra = extra


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
