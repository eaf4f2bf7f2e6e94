"""Put a restore in place all at once: at every instant, and after a kill at any point, TARGET_DIR is
either exactly as it was or exactly the result.

The new tree is built in a sibling directory, `.TARGET.restoring-ID`: the archive is extracted
there, then the files of TARGET_DIR that the archive does not hold are hard-linked in (copied where a
link is impossible), and it is renamed `.TARGET.restored-ID` once complete. The two directories are
then swapped by one `renameat2(RENAME_EXCHANGE)` (Linux on ext4, xfs, btrfs, tmpfs...). Where the
filesystem lacks it, two renames do it (TARGET → `.TARGET.replaced-ID`, the new tree → TARGET): the
names record how far a swap got, so the next restore into that target rolls a killed one forward and
removes the debris of killed restores (a live one holds a lock on its directory and is left alone).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import sys
from pathlib import Path

from colab_magics import packing
from colab_magics.errors import DiskFull, RestoreConflict, RestoreError

BUILDING, COMPLETE, REPLACED = "restoring", "restored", "replaced"  # the states a debris name records
_TOKEN = re.compile(r"^[a-z0-9_]+$")  # ours are hex; older versions' mkdtemp names add "_"
RATIO_FLOOR = 64 * 1024 * 1024  # the ratio cap never falls below this: tiny archives of zeros stay restorable


class Restore:
    """One restore into `target`, used as a context manager around the extraction.

    Entering recovers debris, checks the target (refusing mount points and subdirectories on other
    filesystems, before anything is downloaded) and makes the staging directory. `commit()` merges
    the kept files and swaps. Leaving with an error removes the staging directory and turns an
    OSError into a one-line RestoreError naming the path.
    """

    def __init__(self, target: Path, source: str):
        self.shown = Path(target)  # as the user wrote it, for messages
        self.target = self.shown  # the real directory, once entered
        self.source = source
        self.staging: Path | None = None
        self._lock: int | None = None

    def __enter__(self) -> "Restore":
        try:
            self.target = _real_target(self.shown)
            recover(self.target)
            check_target(self.target)
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.staging, self._lock = _make_staging(self.target)
        except OSError as exc:
            raise self._translated(exc) from None
        return self

    def budget(self, archive_size: int, settings) -> packing.Budget:
        """The caps of this restore: `settings.restore_max_ratio` × the archive (at least RATIO_FLOOR),
        the free disk less `settings.restore_free_margin` (at most 5 % of the disk), and
        `settings.restore_max_files` members (0: no cap)."""
        ratio = settings.restore_max_ratio
        disk = shutil.disk_usage(self.staging)
        free = disk.free
        margin = min(settings.restore_free_margin, disk.total // 20)  # a small disk is not refused outright
        return packing.Budget(
            source=self.source,
            ratio_limit=max(int(ratio * archive_size), RATIO_FLOOR) if ratio > 0 else None,
            ratio=ratio,
            disk_limit=max(free - margin, 0),
            free=free,
            margin=margin,
            max_files=settings.restore_max_files if settings.restore_max_files > 0 else None,
        )

    def commit(self) -> None:
        """Add the target's other files to the new tree, then swap it in."""
        try:
            if os.path.lexists(self.target):
                merge_kept(self.target, self.staging, self.shown)
            complete = _renamed(self.staging, COMPLETE)
            self.staging = complete
            swap(complete, self.target)
            self.staging = None
        except OSError as exc:
            raise self._translated(exc) from None

    def __exit__(self, kind, exc, tb) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if isinstance(exc, OSError):
            raise self._translated(exc) from None

    def _translated(self, exc: OSError) -> RestoreError:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        return translate_os_error(exc, self.shown, self.source, self.target, self.staging)


# --- before downloading ---------------------------------------------------------------------------
def _real_target(target: Path) -> Path:
    """The directory a restore replaces: a symlinked TARGET_DIR is followed, so the link stays a link."""
    target = Path(os.path.abspath(target))
    if target.is_symlink():
        real = Path(os.path.realpath(target))
        if not real.exists():
            raise RestoreError(f"{target} is a link to {real}, which does not exist: create it or choose another TARGET_DIR")
        return real
    return target


def check_target(target: Path) -> None:
    """Refuse, before downloading, a target the swap cannot replace."""
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise RestoreError(f"{target} exists and is not a directory: choose another TARGET_DIR")
    if os.path.ismount(target):
        raise RestoreError(
            f"{target} is a mount point, which a restore cannot swap as a whole: restore into a "
            f"directory inside it (e.g. {target / 'run'}); nothing was changed"
        )
    device = target.stat().st_dev
    for dirpath, dirnames, _ in os.walk(target):
        for name in dirnames:
            sub = os.path.join(dirpath, name)
            try:
                other = os.lstat(sub).st_dev != device
            except FileNotFoundError:
                continue
            if other:
                raise RestoreError(
                    f"{sub} is on another filesystem than {target} (a mount point?): unmount it or "
                    "restore into another directory; nothing was changed"
                )


def _make_staging(target: Path) -> tuple[Path, int]:
    """A new, locked staging directory beside `target`, with the target's mode (or the umask's)."""
    while True:
        staging = target.parent / f".{target.name}.{BUILDING}-{secrets.token_hex(4)}"
        try:
            os.mkdir(staging, 0o777)  # the umask applies: a created TARGET_DIR follows it
            break
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise RestoreError(
                f"cannot create a directory in {target.parent} ({exc.strerror}): a restore builds the new "
                "tree beside TARGET_DIR and swaps it in; choose a TARGET_DIR whose parent you may write "
                "to (nothing was downloaded or changed)"
            ) from None
    if os.path.lexists(target):
        st = os.stat(target)
        os.chmod(staging, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
            os.chown(staging, st.st_uid, st.st_gid)
    lock = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return staging, lock


# --- debris of killed restores --------------------------------------------------------------------
def recover(target: Path) -> None:
    """Finish or undo what killed restores into `target` left, and remove their directories."""
    try:
        names = os.listdir(target.parent)
    except (FileNotFoundError, NotADirectoryError):
        return
    prefix = f".{target.name}."
    runs: dict[str, dict[str, Path]] = {}
    for name in names:
        state, dash, token = name[len(prefix):].partition("-")
        if name.startswith(prefix) and dash and state in (BUILDING, COMPLETE, REPLACED) and _TOKEN.match(token):
            runs.setdefault(token, {})[state] = target.parent / name
    for paths in runs.values():
        locks = [_try_lock(path) for path in paths.values()]
        try:
            if None in locks:
                continue  # a restore still running in another process
            if not os.path.lexists(target):
                if COMPLETE in paths:  # killed between the two renames: roll forward
                    os.rename(paths.pop(COMPLETE), target)
                elif REPLACED in paths:  # the new tree is gone: put the old one back
                    os.rename(paths.pop(REPLACED), target)
            for path in paths.values():
                shutil.rmtree(path, ignore_errors=True)
        finally:
            for lock in locks:
                if lock is not None and lock >= 0:  # -1: gone meanwhile, or not a directory
                    os.close(lock)


def _try_lock(path: Path) -> int | None:
    """An fd holding the directory's lock, or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return -1  # gone or not a directory: nothing holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# --- building the new tree ------------------------------------------------------------------------
def merge_kept(target: Path, staging: Path, shown: Path) -> None:
    """Hard-link into `staging` every file of `target` the archive does not hold (the archive wins).

    A file where the archive has a directory, or the reverse, is a RestoreConflict. Directories
    present in both keep the target's mode.
    """
    stack = [(str(target), str(staging))]
    fixups = []
    while stack:
        old_dir, new_dir = stack.pop()
        with os.scandir(old_dir) as entries:
            for entry in entries:
                new = os.path.join(new_dir, entry.name)
                old_is_dir = entry.is_dir(follow_symlinks=False)
                try:  # one call when the archive does not hold the name: the common case
                    if old_is_dir:
                        os.mkdir(new)
                    else:
                        _link_or_copy(entry.path, new)
                    new_is_dir = None
                except FileExistsError:
                    new_is_dir = stat.S_ISDIR(os.lstat(new).st_mode)
                if old_is_dir and new_is_dir is not False:
                    stack.append((entry.path, new))
                    fixups.append((entry, new))
                elif new_is_dir is not None and old_is_dir != new_is_dir:
                    rel = os.path.relpath(entry.path, target)
                    mine, theirs = ("a directory", "a file") if old_is_dir else ("a file", "a directory")
                    raise RestoreConflict(
                        f"{shown / rel} is {mine} in TARGET_DIR but {theirs} in the archive: move it "
                        f"away or restore into another directory; {shown} was left as it was"
                    )
    for entry, new in reversed(fixups):  # deepest first: setting a mode never blocks the rest
        st = entry.stat(follow_symlinks=False)
        os.chmod(new, stat.S_IMODE(st.st_mode))
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:  # no hard links here (some FUSE/network filesystems), or too many links
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        if os.path.lexists(dst):  # the archive's file: never overwritten by a kept one
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        shutil.copy2(src, dst, follow_symlinks=False)


def _renamed(path: Path, state: str) -> Path:
    """`.TARGET.<state>-ID` → `.TARGET.<new state>-ID`: one rename records the new state."""
    prefix, _, token = path.name.rpartition("-")
    new = path.with_name(f"{prefix.rsplit('.', 1)[0]}.{state}-{token}")
    os.rename(path, new)
    return new


# --- the swap -------------------------------------------------------------------------------------
def swap(complete: Path, target: Path) -> None:
    """Put the complete new tree at `target` and remove the old one, atomically where the kernel can."""
    if not os.path.lexists(target):
        os.rename(complete, target)
        return
    if exchange(complete, target):
        old = _renamed(complete, REPLACED)  # now holds the old tree
    else:  # two renames; a kill between them is rolled forward by the next restore (recover)
        old = complete.with_name(complete.name.replace(f".{COMPLETE}-", f".{REPLACED}-"))
        os.rename(target, old)
        try:
            os.rename(complete, target)
        except OSError:
            os.rename(old, target)
            raise
    shutil.rmtree(old, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "arm64": 276}


def _renameat2():
    """libc's renameat2, or the raw syscall on Linux with an older glibc; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):
        return libc.renameat2
    number = _SYS_RENAMEAT2.get(os.uname().machine)
    if number is None:
        return None
    return lambda *args: libc.syscall(number, *args)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (renameat2 RENAME_EXCHANGE); False where the system cannot."""
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # this filesystem (or kernel) has no exchange
    raise OSError(err, os.strerror(err), str(b))


# --- one line per failure -------------------------------------------------------------------------
def translate_os_error(exc: OSError, shown: Path, source: str, target: Path, staging: Path | None) -> RestoreError:
    """An OSError of a restore as one line: the path (as TARGET_DIR/...), what happened, what to do."""
    path = _shown_path(exc.filename, shown, target, staging)
    kept = f"{shown} was left as it was"
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = packing.mib(shutil.disk_usage(target.parent if not target.exists() else target).free)
        except OSError:
            free = "?"
        return DiskFull(f"disk full while restoring {source} into {shown}: {free} MiB free now; free "
                        f"some space and load again ({kept})")
    if code == errno.ENAMETOOLONG:
        return RestoreError(f"a path in {source} is too long for this filesystem ({path}): restore "
                            f"into a directory with a shorter path ({kept})")
    if code == errno.EXDEV:
        return RestoreError(f"{path} is on another filesystem than {shown}: unmount it or restore "
                            f"into another directory ({kept})")
    if code == errno.EBUSY:
        return RestoreError(f"{path} is busy (a mount point, or in use): unmount or close it, or "
                            f"choose another TARGET_DIR ({kept})")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RestoreError(f"cannot write {path} ({exc.strerror}): choose a TARGET_DIR you may write "
                            f"to, in a writable directory ({kept})")
    if code in (errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY):
        return RestoreConflict(f"{path}: {exc.strerror}: a file and a directory of the same name are in "
                               f"the way; move it away or choose another TARGET_DIR ({kept})")
    return RestoreError(f"could not restore {source} into {shown}: {exc.strerror or exc} ({path}); {kept}")


def _shown_path(filename, shown: Path, target: Path, staging: Path | None) -> str:
    """A path as the user knows it: inside the staging directory → the same place in TARGET_DIR."""
    if not filename:
        return str(shown)
    name = os.fsdecode(filename)
    for root in filter(None, (str(staging) if staging else None, str(target))):
        if name == root or name.startswith(root + os.sep):
            return str(shown / os.path.relpath(name, root)) if name != root else str(shown)
    parent = str(target.parent)
    if name.startswith(parent + os.sep + f".{target.name}."):  # another staging name
        rest = name[len(parent) + 1:].partition(os.sep)[2]
        return str(shown / rest) if rest else str(shown)
    return name
