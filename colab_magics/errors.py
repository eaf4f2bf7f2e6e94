"""One exception base class, one subclass per thing that can go wrong.

Each message says what happened and what to do, in one line, and never carries a secret. The magics
turn these into `UsageError` so IPython prints the line without a traceback.
"""

from __future__ import annotations


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


class CheckpointChanging(RunDirError):
    """A checkpoint file kept changing while it was read: archiving it would store a torn copy."""

    def __init__(self, message: str, *, path=None):
        super().__init__(message)
        self.path = path


class UnsafeArchive(ColabMagicsError):
    """An archive tries to write outside its target or holds links or devices."""


class CorruptArchive(ColabMagicsError):
    """An archive is truncated, malformed or fails its checksums."""


# --- tensorboard and tunnels --------------------------------------------------------------------
class TensorBoardError(ColabMagicsError):
    """TensorBoard could not be started or did not answer."""


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
