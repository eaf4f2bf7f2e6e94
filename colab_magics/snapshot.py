"""A hard-link snapshot of the files a save archives, so the training library cannot take them away mid-read.

Why: transformers' `save_total_limit` (and Lightning's `save_top_k`) delete older checkpoints at the
next save; when an upload is slower than the save interval, the step being read vanishes under it. A
hard link keeps the file's data alive whatever happens to its name, and costs one link(2) call per
file — no data is copied, so a snapshot of a 12 GB step takes milliseconds.

The links live in a hidden sibling of RUN_DIR, `.RUN.snapshot-ID`: on the same filesystem as the
files, outside RUN_DIR so no checkpoint selection ever sees it, and removed when the save ends. A live
snapshot holds a lock on its directory; the next save beside it removes those of killed processes.
A link shares the file's inode: a library that rewrites a file in place is still seen (the save's
signature checks cover every member), one that deletes or replaces it is not. Where a link is
impossible (RUN_DIR's parent read-only, another filesystem, a FUSE mount that refuses links) the file
is read in place, said once at INFO; a file that then vanishes makes the save skip the step.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

STATE = "snapshot"  # `.RUN.snapshot-ID`: restore's debris names use other words, so neither touches the other's
_UNLINKABLE = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.EROFS, errno.ENOSPC, errno.ENOTSUP,
               errno.EOPNOTSUPP, errno.ENOSYS}


class Vanished(Exception):
    """A file of the archive was deleted before it could be linked or read (the library rotated it out)."""

    def __init__(self, path: Path):
        super().__init__(f"{path} was deleted while it was being saved")
        self.path = path


class Snapshot:
    """`with Snapshot(root, files) as snap:` — read `snap.path(f)` instead of `f` until the block ends."""

    def __init__(self, root: Path, files: list[Path]):
        self.root, self.files = Path(root), list(files)
        self.directory: Path | None = None
        self.links: dict[Path, Path] = {}
        self._lock: int | None = None

    def path(self, original: Path) -> Path:
        """Where to read `original`: its link, or itself where no link could be made."""
        return self.links.get(original, original)

    def __enter__(self) -> "Snapshot":
        real = self.root.resolve()
        recover(real)
        directory = real.parent / f".{real.name}.{STATE}-{secrets.token_hex(6)}"
        try:
            os.mkdir(directory, 0o700)
        except OSError as exc:
            log.info("no snapshot of %s (cannot create %s: %s): its files are read in place",
                     self.root, directory, exc.strerror or exc)
            return self
        self.directory = directory
        self._lock = _locked(directory)
        try:
            self._link_all()
        except BaseException:
            self.close()
            raise
        return self

    def _link_all(self) -> None:
        made: set[Path] = set()
        refused = 0
        for original in self.files:
            link = self.directory / original.relative_to(self.root)
            if link.parent not in made:
                link.parent.mkdir(parents=True, exist_ok=True)
                made.add(link.parent)
            try:
                os.link(original, link)
            except FileNotFoundError:
                raise Vanished(original) from None
            except OSError as exc:
                if exc.errno not in _UNLINKABLE:
                    raise
                if not refused:
                    log.info("%s cannot be hard-linked into %s (%s): it is read in place",
                             original, self.directory, exc.strerror or exc)
                refused += 1
                continue
            self.links[original] = link
        if refused > 1:
            log.info("%d files of %s are read in place (no hard links there)", refused, self.root)

    def close(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __exit__(self, *exc) -> None:
        self.close()


def _locked(directory: Path) -> int:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def recover(root: Path) -> None:
    """Remove the snapshots beside `root` that no live save holds (left by killed processes)."""
    prefix = f".{root.name}.{STATE}-"
    try:
        names = [n for n in os.listdir(root.parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        path = root.parent / name
        try:
            fd = _locked(path)
        except BlockingIOError:
            continue  # a save running now, in this process or another
        except OSError:
            continue  # gone meanwhile, or not a directory of ours
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
