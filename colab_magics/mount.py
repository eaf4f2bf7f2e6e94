"""A bucket on the local filesystem: `gcsfuse` when installed, else `rclone mount`, over FUSE.

Both backends run as tracked child processes (the session's process registry) and use the credentials chosen
by `%gcs_auth`: the local emulator (anonymous, custom endpoint), a service-account key file, or
Application Default Credentials. rclone is configured only through `RCLONE_CONFIG_<NAME>_*`
environment variables of its own process — no config file, nothing secret in argv.

`mount()` returns only when the mount is live (listed in /proc/mounts and a listing through it
works). Mounts made here outlive the cell and are unmounted by `unmount()` and the session's
shutdown (`%unload_ext`, interpreter exit, SIGTERM/SIGHUP); they are recorded in
the session (`Mount`, closed at its shutdown). If the interpreter is killed, the backend gets SIGTERM from the kernel
(PR_SET_PDEATHSIG) and unmounts; a mount left dead anyway ("Transport endpoint is not connected")
is cleaned by the next `mount()` at that place. Unmounting waits for rclone to finish its uploads: rclone runs with
`--vfs-write-back 0s` so a closed file is uploaded at once, and rclone exits only after uploads in
flight are done (with the default 5 s write-back, a file closed just before the unmount is lost).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from colab_magics import auth, processes, session, storage
from colab_magics.settings import Settings, effective
from colab_magics.errors import (
    HelperNotReady,
    BucketNotFound,
    FuseUnavailable,
    MountBackendDied,
    MountBackendInstallFailed,
    MountBackendMissing,
    MountError,
    MountPointBusy,
    MountPointNotEmpty,
    MountTimeout,
    NotMounted,
    Param,
    do,
)

log = logging.getLogger(__name__)

#: The FUSE device checked before mounting. Tests point it at a missing path to simulate a VM
#: without FUSE (e.g. a container started without `--device /dev/fuse`).
FUSE_DEVICE = "/dev/fuse"
#: Where `mount(bucket)` mounts when no mount point is given: DEFAULT_ROOT/BUCKET (as colab_utils).
DEFAULT_ROOT = "/tmp/gcs-bucket"
#: Seconds `mount()` waits for the mount to become usable.
READY_TIMEOUT = 30.0
#: Seconds `unmount()` waits for the backend to finish uploading and exit.
UNMOUNT_TIMEOUT = 600.0
#: Seconds mounts may take to finish their uploads when a signal (not the user) ends the session.
URGENT_UNMOUNT_TIMEOUT = 30.0
#: Seconds an apt-get step may take.
APT_TIMEOUT = 600.0
#: The rclone remote name, defined only in the environment of the rclone process.
RCLONE_REMOTE = "COLABMAGICSGCS"
#: How long rclone trusts a directory listing; objects written by others show up after this.
RCLONE_DIR_CACHE_TIME = "10s"
#: Google's apt repository for gcsfuse (the same one Colab's instructions use).
GCSFUSE_APT_KEY_URL = "https://packages.cloud.google.com/apt/doc/apt-key.gpg"
GCSFUSE_APT_REPO = "https://packages.cloud.google.com/apt"
GCSFUSE_KEYRING = "/usr/share/keyrings/colab-magics-gcsfuse"
GCSFUSE_SOURCES = "/etc/apt/sources.list.d/gcsfuse.list"

BACKENDS = ("gcsfuse", "rclone")
STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE", "REGIONAL", "MULTI_REGIONAL",
                   "DURABLE_REDUCED_AVAILABILITY")
_PROCESS_PREFIX = "gcs-mount "
_FSTYPES = {"fuse.rclone": "rclone", "fuse.gcsfuse": "gcsfuse"}


@dataclass(frozen=True)
class Mounted:
    """A live mount: where, of what, by which backend."""

    bucket: str
    mount_point: str
    backend: str
    pid: int
    only_dir: str | None = None
    read_only: bool = False
    created_bucket: bool = False
    reused: bool = False
    seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.only_dir}" if self.only_dir else f"gs://{self.bucket}"


@dataclass(eq=False)
class Mount:
    """A mount this session made: its backend process, tracked by the session under its mount point."""

    target: Path
    tracked: processes.Tracked
    closes_at = session.CLOSES_AT["mount"]

    def close(self, urgent: bool = False) -> None:
        """Unmount once pending uploads are done; a mount in use is detached lazily and a backend
        still uploading after the timeout is ended: nothing stays mounted."""
        try:
            unmount(self.target, timeout=URGENT_UNMOUNT_TIMEOUT if urgent else UNMOUNT_TIMEOUT)
        except MountError as exc:
            log.warning("%s; detaching it lazily", exc)
            if _mount_entry(self.target) is not None:
                _unmount_path(self.target, lazy=True)
            _forget(self)


@dataclass(frozen=True)
class Unmounted:
    """A mount that was removed; `ours` is False for a mount this interpreter did not start."""

    mount_point: str
    backend: str | None
    ours: bool
    seconds: float = 0.0


@dataclass(frozen=True)
class ActiveMount:
    """One line of `--list`: a bucket mount present in /proc/mounts (pid set when it is ours)."""

    mount_point: str
    source: str
    backend: str
    read_only: bool
    pid: int | None


# --- public API ---------------------------------------------------------------------------------
def default_mount_point(bucket: str) -> Path:
    """DEFAULT_ROOT/BUCKET for a bucket name or gs://BUCKET[/DIR] URL."""
    return Path(DEFAULT_ROOT) / storage.parse_url(bucket).bucket


def mount(
    bucket: str,
    mount_point: str | os.PathLike | None = None,
    *,
    only_dir: str | None = None,
    read_only: bool = False,
    create: bool = False,
    location: str | None = None,
    storage_class: str | None = None,
    backend: str | None = None,
    install: bool = False,
    timeout: float = READY_TIMEOUT,
    settings: Settings | None = None,
) -> Mounted:
    """Mount `bucket` (or its `only_dir` prefix) at `mount_point`; return once it is usable.

    `backend` None means gcsfuse when it is on PATH, else rclone. `install` installs gcsfuse from
    Google's apt repository when it is missing (Debian/Ubuntu, root); rclone is installed from the
    distribution when missing and root. Re-running with the same arguments reuses the mount.
    `settings.retry_deadline` bounds the bucket check against an endpoint that does not answer (at
    most `storage.EXISTS_CHECK_DEADLINE`).
    """
    started = time.monotonic()
    if (location or storage_class) and not create:
        raise MountError(Param("location"), " and ", Param("storage_class"), " apply to a new bucket: add ",
                         Param("create", True))
    location_url = storage.parse_url(bucket)
    bucket = location_url.bucket
    if location_url.path:
        if only_dir and only_dir.strip("/") != location_url.path:
            raise MountError(f"give the directory once: either gs://{bucket}/{location_url.path} or ",
                             Param("only_dir"))
        only_dir = location_url.path
    only_dir = (only_dir.strip("/") or None) if only_dir else None
    if only_dir:  # a prefix of the bucket: named as Cloud Storage names objects
        storage.parse_url(f"gs://{bucket}/{only_dir}")
    target = _resolve(mount_point or default_mount_point(bucket))
    executable, backend = _backend(backend, install)
    check_fuse()

    client = auth.storage_client()
    info = session.current().auth
    if backend == "rclone":
        argv, env = rclone_command(executable, bucket, target, info, only_dir=only_dir, read_only=read_only)
    else:
        argv, env = gcsfuse_command(executable, bucket, target, info, only_dir=only_dir, read_only=read_only)

    existing = _mount_of(target)
    if existing is not None and existing.tracked.argv == argv and _mount_entry(target):
        return Mounted(bucket, str(target), backend, existing.tracked.pid, only_dir, read_only, reused=True,
                       seconds=time.monotonic() - started)
    _check_mount_point(target)
    created = _ensure_bucket(client, bucket, create=create, location=location, storage_class=storage_class,
                             project=getattr(info, "project", None),
                             deadline=effective(settings).retry_deadline)
    target.mkdir(parents=True, exist_ok=True)

    log_path = Path(tempfile.gettempdir()) / "colab_magics-mounts" / (_slug(target) + ".log")
    log_path.unlink(missing_ok=True)
    try:
        tracked, _ = session.current().processes.start_ready(
            argv, name=_PROCESS_PREFIX + str(target), ready=lambda: _mount_entry(target) is not None and _lists(target),
            timeout=timeout, env=env, log_path=log_path)
    except HelperNotReady as exc:
        _undo_half_mount(target)
        if exc.died:
            raise MountBackendDied(f"{backend} exited with code {exc.returncode} before gs://{bucket} was mounted "
                                   f"at {target}: {exc.last or '(no output)'}",
                                   argv=argv, returncode=exc.returncode, tail=exc.tail) from None
        raise MountTimeout(f"gs://{bucket} was not usable at {target} after {timeout:.0f} s: "
                           f"{backend} said {exc.last or 'nothing'}") from None
    session.current().track(Mount(target, tracked), str(target))
    log.info("mounted gs://%s at %s with %s (pid %d)", bucket, target, backend, tracked.pid)
    return Mounted(bucket, str(target), backend, tracked.pid, only_dir, read_only, created_bucket=created,
                   seconds=time.monotonic() - started)


def unmount(mount_point: str | os.PathLike, *, timeout: float = UNMOUNT_TIMEOUT) -> Unmounted:
    """Unmount, then wait (up to `timeout`) for the backend to finish its uploads and exit."""
    started = time.monotonic()
    target = _resolve(mount_point)
    ours = _mount_of(target)
    entry = _mount_entry(target)
    if entry is None and ours is None:
        raise NotMounted(f"{target} is not mounted: ", do("mounts"), " shows the active mounts")
    backend = _FSTYPES.get(entry[2]) if entry else None
    if entry is not None:
        _unmount_path(target)
    if ours is not None:
        backend = backend or ("rclone" if "rclone" in Path(ours.tracked.argv[0]).name else "gcsfuse")
        try:
            ours.tracked.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MountTimeout(
                f"{target} is unmounted but {backend} is still uploading after {timeout:.0f} s; it keeps "
                "running: wait, then run ", do("unmount", str(target)),
                " again (ending the interpreter now may lose files)"
            ) from None
        _forget(ours)
    log.info("unmounted %s", target)
    return Unmounted(str(target), backend, ours is not None, time.monotonic() - started)


def unmount_all(timeout: float = UNMOUNT_TIMEOUT) -> list[Unmounted]:
    """Unmount every mount this session made (waiting up to `timeout` for each one's uploads)."""
    return [unmount(m.target, timeout=timeout) for m in session.current().items(Mount)]


def active_mounts() -> list[ActiveMount]:
    """Bucket mounts now in /proc/mounts (rclone and gcsfuse), ours marked by their pid."""
    ours = {str(m.target): m.tracked.pid for m in session.current().items(Mount) if m.tracked.alive()}
    result = []
    for source, where, fstype, options in _proc_mounts():
        if fstype in _FSTYPES or where in ours:
            result.append(ActiveMount(where, source, _FSTYPES.get(fstype, fstype),
                                      "ro" in options.split(","), ours.get(where)))
    return result


def check_fuse(device: str | os.PathLike | None = None) -> None:
    """Raise FuseUnavailable unless the FUSE device exists and this user may open it."""
    path = Path(device or FUSE_DEVICE)
    if not path.exists():
        raise FuseUnavailable(
            f"FUSE is not available here ({path} does not exist): in Docker add  --device /dev/fuse "
            "--cap-add SYS_ADMIN; otherwise copy files with ", do("save"), " / ", do("load"), " instead of mounting"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise FuseUnavailable(
            f"FUSE is not permitted for this user ({path} is not readable and writable): run as root or "
            "add the user to the 'fuse' group"
        )


# --- backends -----------------------------------------------------------------------------------
def rclone_command(executable: str, bucket: str, target: Path, info, *, only_dir: str | None = None,
                   read_only: bool = False) -> tuple[list[str], dict[str, str]]:
    """argv and environment of `rclone mount`: the remote exists only in the environment."""
    remote = f"{bucket}/{only_dir}" if only_dir else bucket
    argv = [executable, "mount", f"{RCLONE_REMOTE}:{remote}", str(target),
            "--devname", f"gs://{remote}",
            "--vfs-cache-mode", "writes", "--vfs-write-back", "0s",  # see the module docstring
            "--dir-cache-time", RCLONE_DIR_CACHE_TIME]
    if read_only:
        argv.append("--read-only")
    prefix = f"RCLONE_CONFIG_{RCLONE_REMOTE}_"
    env = {prefix + "TYPE": "google cloud storage",
           prefix + "BUCKET_POLICY_ONLY": "true"}  # no object ACLs: works with uniform access too
    method = getattr(info, "method", None)
    if method == "emulator":
        env[prefix + "ENDPOINT"] = _emulator_host(info) + "/storage/v1/"
        env[prefix + "ANONYMOUS"] = "true"
    elif method == "service-account":
        env[prefix + "SERVICE_ACCOUNT_FILE"] = _key_file(info)
    elif method == "kaggle":
        raise _kaggle_cannot_mount()
    else:
        env[prefix + "ENV_AUTH"] = "true"
        env.update(_adc_file_env(info))
    return argv, env


def gcsfuse_command(executable: str, bucket: str, target: Path, info, *, only_dir: str | None = None,
                    read_only: bool = False) -> tuple[list[str], dict[str, str]]:
    """argv and environment of `gcsfuse --foreground` (gcsfuse 2.x flags)."""
    argv = [executable, "--foreground", "--implicit-dirs"]
    if only_dir:
        argv += ["--only-dir", only_dir]
    if read_only:
        argv += ["-o", "ro"]
    env: dict[str, str] = {}
    method = getattr(info, "method", None)
    if method == "emulator":
        argv += ["--custom-endpoint", _emulator_host(info) + "/storage/v1/", "--anonymous-access"]
    elif method == "service-account":
        argv += ["--key-file", _key_file(info)]  # a path, not the key
    elif method == "kaggle":
        raise _kaggle_cannot_mount()
    else:
        env.update(_adc_file_env(info))
    argv += [bucket, str(target)]
    return argv, env


def _kaggle_cannot_mount() -> MountError:
    return MountError("Kaggle's Google Cloud integration cannot be handed to a mount: use  ",
                      do("auth", "PROJECT", key_file="KEY.json"), "  with a service-account key")


def ensure_rclone() -> str:
    """The rclone executable; installed with apt-get (rclone, fuse3) when missing and root."""
    found = shutil.which("rclone")
    if found:
        return found
    if os.geteuid() != 0:
        raise MountBackendMissing("neither gcsfuse nor rclone is installed: run  sudo apt-get install -y "
                                  "rclone fuse3  (or install gcsfuse) and retry")
    _apt_install(["rclone", "fuse3"])
    found = shutil.which("rclone")
    if not found:
        raise MountBackendInstallFailed("apt-get installed rclone but it is not on PATH: check PATH")
    return found


def install_gcsfuse() -> str:
    """Install gcsfuse from Google's apt repository (Debian/Ubuntu, root), as Colab's docs do."""
    found = shutil.which("gcsfuse")
    if found:
        return found
    if os.geteuid() != 0:
        raise MountBackendInstallFailed("installing gcsfuse needs root: run as root, or use ", Param("backend", "rclone"))
    codename = _debian_codename()
    if not codename:
        raise MountBackendInstallFailed(
            "gcsfuse can be installed automatically only on Debian or Ubuntu: see "
            "https://cloud.google.com/storage/docs/cloud-storage-fuse/install, or use ", Param("backend", "rclone")
        )
    try:
        with urllib.request.urlopen(GCSFUSE_APT_KEY_URL, timeout=30) as response:
            key = response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MountBackendInstallFailed(
            f"could not download Google's apt key from {GCSFUSE_APT_KEY_URL} ({reason}): check the internet "
            "connection, or use ", Param("backend", "rclone")
        ) from None
    keyring = GCSFUSE_KEYRING + (".asc" if key.lstrip().startswith(b"-----BEGIN PGP") else ".gpg")
    Path(keyring).write_bytes(key)
    Path(GCSFUSE_SOURCES).write_text(f"deb [signed-by={keyring}] {GCSFUSE_APT_REPO} gcsfuse-{codename} main\n")
    _apt_install(["gcsfuse"], update_first=True)
    found = shutil.which("gcsfuse")
    if not found:
        raise MountBackendInstallFailed("apt-get installed gcsfuse but it is not on PATH: check PATH")
    return found


def _backend(name: str | None, install: bool) -> tuple[str, str]:
    if name not in (None, *BACKENDS):
        raise MountError(f"unknown backend {name!r}: use gcsfuse or rclone")
    if name in (None, "gcsfuse"):
        found = shutil.which("gcsfuse") or (install_gcsfuse() if install else None)
        if found:
            return found, "gcsfuse"
        if name == "gcsfuse":
            raise MountBackendMissing("gcsfuse is not installed: add ", Param("install", True), " to install it from "
                                      "Google's apt repository (Debian/Ubuntu, root), or use ", Param("backend", "rclone"))
    return ensure_rclone(), "rclone"


def _apt_install(packages: list[str], *, update_first: bool = False) -> None:
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if not update_first and _run(install, env=env)[0] == 0:
        return
    code, tail = _run(["apt-get", "update"], env=env)
    if code == 0:
        code, tail = _run(install, env=env)
    if code != 0:
        raise MountBackendInstallFailed(
            f"apt-get could not install {' '.join(packages)} (exit code {code}): {processes.last_lines(tail)}"
        )


def _run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = APT_TIMEOUT) -> tuple[int, str]:
    """Run a short helper command through the registry; (exit code, last output lines)."""
    with tempfile.TemporaryDirectory(prefix="colab_magics-") as tmp:
        try:
            tracked = session.current().processes.start(argv, name=Path(argv[0]).name, env=env,
                                               log_path=Path(tmp) / "output.log")
        except FileNotFoundError:
            return 127, f"{argv[0]}: not found"
        try:
            tracked.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tracked.stop()
            return -1, f"{' '.join(argv)} did not finish within {timeout:.0f} s"
        tracked.stop()
        return tracked.popen.returncode, tracked.output_tail(10)


def _emulator_host(info) -> str:
    host = getattr(info, "emulator_host", None) or os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        raise MountError("the emulator's address is unknown: run  ", do("auth", emulator=True), "  again")
    return host.rstrip("/")


def _key_file(info) -> str:
    path = getattr(info, "key_file", None) or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        raise MountError("the service-account key file in use is unknown to the mount: set "
                         "GOOGLE_APPLICATION_CREDENTIALS=/path/key.json and run  ", do("auth"), "  again")
    return str(Path(path).expanduser().resolve())


def _adc_file_env(info=None) -> dict[str, str]:
    """Point Go programs at the credentials file `%gcs_auth` used (any type), else at gcloud's ADC
    file when gcloud keeps it somewhere non-standard (Colab)."""
    if getattr(info, "key_file", None):
        return {"GOOGLE_APPLICATION_CREDENTIALS": info.key_file}
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return {}
    config = os.environ.get("CLOUDSDK_CONFIG")
    adc = Path(config) / "application_default_credentials.json" if config else None
    return {"GOOGLE_APPLICATION_CREDENTIALS": str(adc)} if adc and adc.is_file() else {}


def _debian_codename() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    fields = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', text, re.M))
    family = {fields.get("ID", "")} | set(fields.get("ID_LIKE", "").split())
    if not family & {"debian", "ubuntu"}:
        return None
    return fields.get("VERSION_CODENAME") or None


# --- the mount point ----------------------------------------------------------------------------
def _check_mount_point(target: Path) -> None:
    entry = _mount_entry(target)
    if entry is not None and entry[2] in _FSTYPES and _dead(target):
        # its backend is gone (killed with the interpreter that made it): nobody can use it
        log.info("cleaning the dead %s mount at %s", entry[2], target)
        _unmount_path(target, lazy=True)
        entry = _mount_entry(target)
    if entry is not None:
        raise MountPointBusy(
            f"{target} is already a mount point ({entry[0]}, {entry[2]}): unmount it with ",
            do("unmount", str(target)), ", or choose another mount point"
        )
    if target.exists() and not target.is_dir():
        raise MountPointNotEmpty(f"{target} is a file, not a directory: choose another mount point")
    if target.is_dir() and any(target.iterdir()):
        raise MountPointNotEmpty(
            f"{target} is not empty (mounting would hide its files): move them away or choose another mount point"
        )


def _ensure_bucket(client, bucket: str, *, create: bool, location: str | None, storage_class: str | None,
                   project: str | None, deadline: float) -> bool:
    """True if the bucket was created; BucketNotFound (suggesting --create) if missing."""
    where = storage.GcsPath(bucket)
    if storage.bucket_exists(client, where, deadline):
        return False
    if not create:
        raise BucketNotFound(f"bucket gs://{bucket} does not exist: add ", Param("create", True), " to make it (with ",
                             Param("location"), " and ", Param("storage_class"), "), or check the name")
    new = client.bucket(bucket)
    if storage_class:
        if storage_class.upper() not in STORAGE_CLASSES:
            raise MountError(f"unknown storage class {storage_class!r}: use one of {', '.join(STORAGE_CLASSES)}")
        new.storage_class = storage_class.upper()
    with storage.translated_errors(where, "create"):
        client.create_bucket(new, location=location, project=project or client.project,
                             **storage.request_options(deadline))
    return True


def _undo_half_mount(target: Path) -> None:
    """A mount that never became usable: unmount it if it got that far (its process is ended)."""
    if _mount_entry(target) is not None:
        try:
            _unmount_path(target)
        except MountError as exc:
            log.warning("could not unmount %s: %s", target, exc)


def _unmount_path(target: Path, *, lazy: bool = False) -> None:
    flag = "-uz" if lazy else "-u"
    tools = [[t, flag, str(target)] for t in ("fusermount3", "fusermount") if shutil.which(t)]
    tools.append(["umount", "-l", str(target)] if lazy else ["umount", str(target)])
    tail = ""
    for argv in tools:
        code, tail = _run(argv, timeout=60)
        if code == 0 or _mount_entry(target) is None:
            return
        if code == 127:
            continue
        if "busy" in tail.lower():
            raise MountPointBusy(
                f"cannot unmount {target}: it is in use (a file is open there, or a working directory is "
                "inside it, e.g. after %cd): close it, %cd elsewhere, and retry"
            )
    raise MountError(f"could not unmount {target}: {processes.last_lines(tail) or '(no output)'}")


def _mount_of(target: Path) -> Mount | None:
    """Our live mount at `target`; one whose backend died is forgotten."""
    ours = session.current().get(Mount, str(target))
    if ours is not None and not ours.tracked.alive():
        _forget(ours)
        return None
    return ours


def _forget(mount: Mount) -> None:
    session.current().untrack(mount, str(mount.target))
    mount.tracked.stop()


def _dead(target: Path, timeout: float = 2.0) -> bool:
    """True when the FUSE mount at `target` has lost its backend (ENOTCONN).

    Probed from a thread: a backend that hangs (stopped, not dead) would block the probe forever.
    """
    outcome: list[bool] = []

    def probe() -> None:
        try:
            os.stat(target)
            outcome.append(False)
        except OSError as exc:
            outcome.append(exc.errno == errno.ENOTCONN)

    thread = threading.Thread(target=probe, name="colab-magics-mount-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def _lists(target: Path) -> bool:
    try:
        os.listdir(target)
        return True
    except OSError:
        return False


def _proc_mounts() -> list[tuple[str, str, str, str]]:
    """(source, mount point, fstype, options) of every mount, with /proc's octal escapes decoded."""
    rows = []
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            rows.append((_unescape(parts[0]), _unescape(parts[1]), parts[2], parts[3]))
    return rows


def _mount_entry(target: Path) -> tuple[str, str, str, str] | None:
    where = str(target)
    return next((row for row in reversed(_proc_mounts()) if row[1] == where), None)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _slug(target: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(target)).strip("_") or "root"
