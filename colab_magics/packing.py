"""Build archives as streams, and extract them safely.

Writing: the pieces every archive writer shares — a file opened for archiving (`_Source`: read once,
exactly as large as planned, only if it is a regular file, opened with O_NONBLOCK so a FIFO never
blocks), its `Signature`, the rules of a consistent read (`changed_since`, `wait_until_quiet`) and
`choose_compression` (stored or deflated by a sample, so float weights are not pushed through DEFLATE
at single-core speed). Zips are laid out by `ziplayout`; tar.gz is written here. A file that must
not change and does raises FileChanged, and nothing more is written — no central directory, no gzip
trailer — so an upload fed by the stream never completes.

Reading: member names, layout and declared sizes are checked before anything is written (absolute
paths, `..`, links, devices are refused); sizes are enforced while inflating, with memory bounded
by a constant; what is written goes into a staging directory that `restore` swaps into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Collection, Iterable, Mapping, NamedTuple

from colab_magics.errors import ArchiveTooLarge, CorruptArchive, DiskFull, EmptyArchive, RunDirError, UnsafeArchive

COPY_BLOCK = 4 * 1024 * 1024
_SAMPLE = 256 * 1024
_SMALL_FILE = 64 * 1024
_COMPRESSIBLE_RATIO = 0.85
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")


# --- writing ------------------------------------------------------------------------------------
class FileChanged(Exception):
    """A file changed, shrank or stopped being a regular file while it was read into an archive."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"{path} {what}")
        self.path, self.what = path, what


def choose_compression(path: Path, size: int, sample: bytes | None = None) -> int:
    """DEFLATE when a sample of the file shrinks by 15 % or more, else STORED."""
    if size <= _SMALL_FILE:
        return zipfile.ZIP_DEFLATED
    if sample is None:
        with _Source(path) as src:
            sample = src.sample()
    packed = zlib.compress(sample, 1)
    return zipfile.ZIP_DEFLATED if len(packed) < _COMPRESSIBLE_RATIO * len(sample) else zipfile.ZIP_STORED


def write_targz(
    out: BinaryIO,
    root: Path | None,
    files: Iterable[Path],
    *,
    strict: Collection[Path] | Mapping[Path, Signature | None] = (),
    on_bytes: Callable[[int], None] | None = None,
    names: Mapping[Path, str] | None = None,
) -> int:
    """Write `files` (paths inside `root`, or named by `names`) as a tar.gz into the stream `out`;
    return the member count.

    Sequential (a tar written into a GzipFile, 4 MiB at a time), so `out` need not seek. The gzip
    level follows `choose_compression` on the largest file: 1 when it compresses, 0 (stored blocks)
    when it does not, so float weights are not pushed through DEFLATE for nothing. Files are read and
    checked as by `ziplayout.write_zip`; on a change nothing more reaches `out` (no gzip trailer).
    """
    import gzip

    files = list(files)
    strict = _expected(strict)
    largest = max(files, key=lambda p: p.stat().st_size, default=None)
    compresses = largest is None or choose_compression(largest, largest.stat().st_size) == zipfile.ZIP_DEFLATED
    level = 1 if compresses else 0
    sink = _Sink(out)
    taken: list[_Source] = []
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=level) as gz, \
            tarfile.TarFile(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BLOCK) as tar, \
            sink.abandoned_on_error():
        for path in files:
            with _Source(path, path in strict, strict.get(path), on_bytes) as src:
                info = tarfile.TarInfo(names[path] if names else path.relative_to(root).as_posix())
                info.size, info.mtime, info.mode = src.size, src.stat.st_mtime, src.stat.st_mode & 0o7777
                tar.addfile(info, src)
                src.check()
            taken.append(src)
        _check_unchanged(taken)
    return len(taken)


class Signature(NamedTuple):
    """What changes when a file is written, truncated or replaced (mtime alone can tick coarsely)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    nlink: int = 1


def file_signature(st: os.stat_result) -> Signature:
    return Signature(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)


def same_version(before: Signature | None, after: Signature | None) -> bool:
    """Whether a file still holds what it held at `before`.

    A link added or removed (our hard-link snapshot, a library deleting the step it rotates out) moves
    the ctime too, without touching the data: then only dev, inode, size and mtime are compared.
    """
    if before is None or after is None:
        return before is after
    if before.nlink != after.nlink:
        return before[:4] == after[:4]
    return before == after


def _expected(strict) -> dict:
    return dict(strict) if isinstance(strict, Mapping) else dict.fromkeys(strict)


def _check_unchanged(sources: list[_Source]) -> None:
    for src in sources:
        if src.strict:
            try:
                now = os.stat(src.path)
            except FileNotFoundError:
                raise FileChanged(src.path, "was deleted while the archive was written") from None
            if not same_version(file_signature(src.stat), file_signature(now)):
                raise FileChanged(src.path, "changed while the archive was written")


# --- reading files that training may be writing -------------------------------------------------
READ_TRIES = 3  # reads of an archive whose files change meanwhile, before the save gives up
SETTLE_SECONDS = 0.5  # the files must look the same at least this long, around the whole read
SETTLE_DEADLINE = 3.0  # how long a changed file is watched for quiet before it is read again


def signatures(paths: Iterable[Path]) -> dict[Path, Signature | None]:
    """Each path's signature now (None: it does not exist)."""
    seen = {}
    for path in paths:
        try:
            seen[path] = file_signature(os.stat(path))
        except FileNotFoundError:
            seen[path] = None
    return seen


def changed_since(expected: Mapping[Path, Signature | None], started: float) -> list[Path]:
    """The files of `expected` whose signature is no longer the one given, looked at no sooner than
    SETTLE_SECONDS after `started` (monotonic): a file caught between a truncate and its next write
    looks unchanged while a small archive is read; not for that long."""
    time.sleep(max(0.0, SETTLE_SECONDS - (time.monotonic() - started)))
    now = signatures(expected)
    return [path for path, signature in expected.items() if not same_version(signature, now[path])]


def wait_until_quiet(paths: Iterable[Path]) -> None:
    """Return once none of `paths` has changed for SETTLE_SECONDS, or after SETTLE_DEADLINE."""
    paths = list(paths)
    deadline = time.monotonic() + SETTLE_DEADLINE
    seen, quiet_since = signatures(paths), time.monotonic()
    while time.monotonic() - quiet_since < SETTLE_SECONDS and time.monotonic() < deadline:
        time.sleep(0.05)
        now = signatures(paths)
        if now != seen:
            seen, quiet_since = now, time.monotonic()


class _Source:
    """One file opened for archiving: its size is fixed at opening, and exactly that many bytes are read.

    Only a regular file is opened, and with O_NONBLOCK, so a FIFO (or one swapped in meanwhile)
    never blocks the save. A file whose signature is not `expect` (when given) is FileChanged at
    once; `check()` raises FileChanged if a `strict` file changed since it was opened. With `start`
    and `length`, only that range is read (a piece of a member that several writers share): then
    `expect` is the signature the archive was planned with, and a file that is not `strict` (an event
    log, which only grows) need only be the same file, at least that long.
    """

    def __init__(self, path: Path, strict: bool = False, expect: Signature | None = None,
                 on_bytes: Callable[[int], None] | None = None, start: int = 0, length: int | None = None):
        self.path, self.strict, self._on_bytes = path, strict, on_bytes
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise RunDirError(f"{path} is not a regular file (a FIFO, socket or device): it cannot be archived; "
                              "move it out of the run directory")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        self.file = os.fdopen(fd, "rb", buffering=0)
        self.stat = os.fstat(fd)
        if not stat.S_ISREG(self.stat.st_mode):
            self.file.close()
            raise RunDirError(f"{path} is not a regular file (a FIFO, socket or device): it cannot be archived; "
                              "move it out of the run directory")
        self.size = self._left = self.stat.st_size - start if length is None else length
        now = file_signature(self.stat)
        if expect is not None and not (same_version(expect, now) if strict or length is None
                                       else expect[:2] == now[:2]):
            self.file.close()
            raise FileChanged(path, "changed before it was read")
        if start + self.size > self.stat.st_size:
            self.file.close()
            raise FileChanged(path, f"shrank before it was read ({self.stat.st_size} of {start + self.size} bytes)")
        if start:
            os.lseek(fd, start, os.SEEK_SET)

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def sample(self) -> bytes:
        """The first bytes, without moving the read position."""
        return os.pread(self.file.fileno(), _SAMPLE, 0)

    def readinto(self, buffer) -> int:
        if not self._left:
            return 0
        n = self.file.readinto(memoryview(buffer)[: min(len(buffer), self._left)])
        if not n:
            raise FileChanged(self.path, f"shrank while it was read ({self.size - self._left} of {self.size} bytes)")
        self._left -= n
        if self._on_bytes is not None:
            self._on_bytes(n)
        return n

    def block(self, size: int) -> bytes:
        """Up to `size` of the bytes left, as one new bytes object (b"" once all were read)."""
        if not self._left:
            return b""
        data = self.file.read(min(size, self._left))
        if not data:
            raise FileChanged(self.path, f"shrank while it was read ({self.size - self._left} of {self.size} bytes)")
        self._left -= len(data)
        if self._on_bytes is not None:
            self._on_bytes(len(data))
        return data

    def read(self, size: int = -1) -> bytes:
        """Exactly `size` bytes (or what is left of the size at opening): tarfile takes less as an error."""
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = bytearray(want)
        got = 0
        while got < want:
            got += self.readinto(memoryview(data)[got:])
        return bytes(data)

    def check(self) -> None:
        if self.strict and not same_version(file_signature(self.stat), file_signature(os.fstat(self.file.fileno()))):
            raise FileChanged(self.path, "changed while it was read")


class _Sink:
    """What the archive writers write into: counts bytes, and goes deaf once abandoned.

    On an error, the end records zipfile/tarfile/gzip write while unwinding never reach `out`, so a
    torn archive is never completed and an upload fed by `out` never sees its end.
    """

    def __init__(self, out: BinaryIO):
        self._out = out
        self.written = 0
        self._abandoned = False

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if not self._abandoned:
            self._out.write(data)
            self.written += size
        return size

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        pass

    @contextlib.contextmanager
    def abandoned_on_error(self):
        try:
            yield
        except BaseException:
            self._abandoned = True
            raise


# --- checking names -----------------------------------------------------------------------------
def safe_member_path(name: str) -> PurePosixPath:
    """The relative path a member may be extracted to, or UnsafeArchive."""
    if "\x00" in name or "\\" in name:
        raise UnsafeArchive(f"archive member {name!r} has a forbidden character: refusing to extract")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise UnsafeArchive(f"archive member {name!r} has an absolute path: refusing to extract")
    if ".." in path.parts:
        raise UnsafeArchive(f"archive member {name!r} points outside the target: refusing to extract")
    if not path.parts:
        raise UnsafeArchive("archive member with an empty name: refusing to extract")
    return path


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    safe_member_path(info.filename)
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "a device or special file"
        raise UnsafeArchive(f"archive member {info.filename!r} is {kind}: refusing to extract")
    if info.flag_bits & 0x1:
        raise UnsafeArchive(f"archive member {info.filename!r} is encrypted: refusing to extract")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CorruptArchive(
            f"archive member {info.filename!r} uses compression method {info.compress_type}: "
            "only stored and deflated members are supported"
        )


# --- how much an extraction may write -----------------------------------------------------------
def mib(n: int) -> str:
    """Bytes as MiB for messages: '1,024', or '0.2' below 10."""
    value = n / 1024 / 1024
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


@dataclass
class Budget:
    """How many bytes an extraction may write in all, checked before each write (never after).

    Two caps: `ratio_limit` (a multiple of the archive's size: a zip bomb is refused) and
    `disk_limit` (the free space of the target's filesystem less a margin). None: no cap.
    """

    source: str = "the archive"
    ratio_limit: int | None = None
    ratio: float = 0.0
    disk_limit: int | None = None
    free: int = 0
    margin: int = 0
    written: int = 0

    def check(self, total: int, *, declared: bool = False) -> None:
        """Refuse `total` bytes (the archive's declared total, or the bytes written so far)."""
        if self.ratio_limit is not None and total > self.ratio_limit:
            raise ArchiveTooLarge(
                f"{self.source} {'declares' if declared else 'expands to more than'} "
                f"{mib(total if declared else self.ratio_limit)} MiB, over {self.ratio:g}x its size: refusing "
                "a likely zip bomb (raise %config ColabMagics.restore_max_ratio if it is genuine)"
            )
        if self.disk_limit is not None and total > self.disk_limit:
            raise DiskFull(
                f"not enough disk to restore {self.source}: it needs {'' if declared else 'more than '}"
                f"{mib(total)} MiB and {mib(self.free)} MiB are free, keeping {mib(self.margin)} MiB free "
                "(%config ColabMagics.restore_free_margin_mb): free some space or choose another TARGET_DIR"
            )

    def add(self, n: int) -> None:
        """Count `n` bytes about to be written; refuse them if they pass a cap."""
        self.written += n
        self.check(self.written)


# --- reading a zip as a stream ------------------------------------------------------------------
INDEX_TAIL = 256 * 1024  # first guess at the index's size: one request for most archives
MAX_INDEX = 64 * 1024 * 1024  # ~400 000 members with typical names; a larger claim is refused unread
INFLATE_BLOCK = 1024 * 1024  # most bytes one inflate call may produce: memory stays bounded


class NeedBytes(Exception):
    """Raised by TailFile when the zip index reaches before the bytes we fetched."""

    def __init__(self, offset: int):
        self.offset = offset


class TailFile(io.RawIOBase):
    """The last bytes of a remote object, seekable, so `zipfile` can read its central directory."""

    def __init__(self, size: int, tail_offset: int, tail: bytes):
        self._size, self._start, self._tail, self._pos = size, tail_offset, tail, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        """Without allocating `size` bytes first (RawIOBase.read does): a forged index size costs nothing."""
        if self._start > self._pos < self._size:
            raise NeedBytes(self._pos)
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        chunk = self._tail[self._pos - self._start : max(end, self._pos) - self._start]
        self._pos += len(chunk)
        return chunk

    def readinto(self, buffer) -> int:
        if self._pos >= self._size:
            return 0
        if self._pos < self._start:
            raise NeedBytes(self._pos)
        chunk = self._tail[self._pos - self._start : self._pos - self._start + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def read_zip_index(size: int, fetch: Callable[[int, int], bytes], tail: int = INDEX_TAIL,
                   max_index: int = MAX_INDEX) -> zipfile.ZipFile:
    """Parse a remote zip's central directory from its tail; `fetch(start, end)` gets a byte range.

    At most `max_index` bytes are ever fetched: an end record claiming a larger directory (or one
    before the object's start) is refused without reading it.
    """
    start = max(0, size - tail)
    data = fetch(start, size - 1) if size else b""
    while True:
        try:
            return zipfile.ZipFile(TailFile(size, start, data))
        except NeedBytes as need:
            if size - need.offset > max_index:
                raise CorruptArchive(
                    f"the zip's end record claims an index of {mib(size - need.offset)} MiB "
                    f"(at most {mib(max_index)} MiB is read): the archive is corrupt or hostile"
                ) from None
            start, data = need.offset, fetch(need.offset, start - 1) + data
        except (zipfile.BadZipFile, zipfile.LargeZipFile, struct.error, ValueError, EOFError) as exc:
            raise CorruptArchive(f"not a valid zip archive ({exc}): it may be truncated") from None


@dataclass
class _Entry:
    info: zipfile.ZipInfo
    path: PurePosixPath


def _check_layout(entries: list[_Entry], index_start: int) -> None:
    """Members inside the object and apart; no name twice; no name both a file and a directory."""
    for before, after in zip(entries, entries[1:]):
        if before.info.header_offset + 30 + before.info.compress_size > after.info.header_offset:
            raise CorruptArchive("archive members overlap: refusing to extract")
    if entries and entries[-1].info.header_offset + 30 + entries[-1].info.compress_size > index_start:
        raise CorruptArchive("an archive member reaches into the index: the archive is corrupt")
    files, dirs = set(), set()
    for entry in entries:
        if entry.info.is_dir():
            dirs.add(entry.path)
        elif entry.path in files:
            raise CorruptArchive(f"archive member {entry.info.filename!r} appears twice: the archive is corrupt")
        else:
            files.add(entry.path)
        dirs.update(entry.path.parents)
    clash = files & dirs
    if clash:
        raise CorruptArchive(f"archive member {sorted(clash)[0]} is both a file and a directory: the archive is corrupt")


class ZipStreamExtractor(io.RawIOBase):
    """A writable sink: the zip's bytes go in, in order; member files come out in `dest`.

    Everything is checked from the index before a byte is written (names, layout, the declared total
    against `budget`); each member's local header is parsed as it arrives, its data is inflated at most
    INFLATE_BLOCK bytes at a time, refused the moment it passes its declared size, and its CRC-32
    checked against the index.
    """

    def __init__(self, index: zipfile.ZipFile, dest: Path, budget: Budget | None = None):
        infos = sorted(index.infolist(), key=lambda i: i.header_offset)
        for info in infos:
            _check_zip_member(info)
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise CorruptArchive(f"archive member {info.filename!r} has two different sizes: the archive is corrupt")
        self._entries = [_Entry(i, safe_member_path(i.filename)) for i in infos]
        _check_layout(self._entries, index.start_dir)
        self._budget = budget or Budget()
        if not any(not e.info.is_dir() for e in self._entries):
            raise EmptyArchive(f"{self._budget.source} holds no files: there is nothing to restore")
        self._budget.check(sum(e.info.file_size for e in self._entries), declared=True)
        self._dest = dest
        self._pos = 0  # offset in the archive of the next byte written to us
        self._i = 0  # index of the entry we are in or waiting for
        self._header = bytearray()
        self._remaining = 0  # data bytes of the current entry still to come
        self._out: BinaryIO | None = None
        self._crc = 0
        self._size = 0  # bytes of the current member written so far
        self._inflater = None
        self._extracted: set[Path] = set()  # files written, relative to `dest`

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            view = self._feed(view)
        return len(data)

    def _feed(self, view: memoryview) -> memoryview:
        if self._i >= len(self._entries):  # central directory and trailer: already parsed
            self._pos += len(view)
            return view[len(view):]
        entry = self._entries[self._i]
        if self._out is None and self._remaining == 0:
            skip = entry.info.header_offset - self._pos - len(self._header)
            if skip > 0:  # a data descriptor or padding between members
                take = min(skip, len(view))
                self._pos += take
                return view[take:]
            return self._read_header(entry, view)
        take = min(self._remaining, len(view))
        self._write_data(entry, view[:take])
        self._remaining -= take
        self._pos += take
        if self._remaining == 0:
            self._finish_member(entry)
        return view[take:]

    def _read_header(self, entry: _Entry, view: memoryview) -> memoryview:
        need = 30 if len(self._header) < 30 else 30 + _name_extra_len(self._header)
        take = min(need - len(self._header), len(view))
        self._header += view[:take]
        if len(self._header) == 30 and self._header[:4] != b"PK\x03\x04":
            raise CorruptArchive(f"member {entry.info.filename!r} has no local header: archive is corrupt")
        if len(self._header) >= 30 and len(self._header) == 30 + _name_extra_len(self._header):
            name = bytes(self._header[30 : 30 + struct.unpack("<H", self._header[26:28])[0]])
            if name.decode("utf-8", "replace") != entry.info.filename and name.decode("cp437") != entry.info.filename:
                raise CorruptArchive(f"member {entry.info.filename!r} does not match its local header")
            self._pos += len(self._header)
            self._header = bytearray()
            self._start_member(entry)
            return view[take:]
        return view[take:]

    def _start_member(self, entry: _Entry) -> None:
        target = self._dest.joinpath(*entry.path.parts)
        self._remaining = entry.info.compress_size
        self._crc = self._size = 0
        if entry.info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            self._out = None
            if self._remaining == 0:
                self._finish_member(entry)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(target, "xb")
        self._inflater = zlib.decompressobj(-15) if entry.info.compress_type == zipfile.ZIP_DEFLATED else None
        if self._remaining == 0:
            self._finish_member(entry)

    def _write_data(self, entry: _Entry, data: memoryview) -> None:
        if self._out is None:
            return
        if self._inflater is None:
            self._emit(entry, data)
            return
        while data and not self._inflater.eof:  # bounded output per call: a bomb never sits in memory
            out = self._inflater.decompress(data, INFLATE_BLOCK)
            self._emit(entry, out)
            data = self._inflater.unconsumed_tail
            while len(out) == INFLATE_BLOCK and not data and not self._inflater.eof:
                out = self._inflater.decompress(b"", INFLATE_BLOCK)  # output zlib still holds
                self._emit(entry, out)

    def _emit(self, entry: _Entry, data) -> None:
        self._size += len(data)
        if self._size > entry.info.file_size:
            raise ArchiveTooLarge(
                f"archive member {entry.info.filename!r} inflates beyond its declared size of "
                f"{entry.info.file_size} bytes: refusing a corrupt or hostile archive"
            )
        self._budget.add(len(data))
        self._crc = zlib.crc32(data, self._crc)
        self._out.write(data)

    def _finish_member(self, entry: _Entry) -> None:
        if self._out is not None:
            if self._inflater is not None:
                self._emit(entry, self._inflater.flush())
                if not self._inflater.eof:
                    raise CorruptArchive(f"member {entry.info.filename!r} is truncated: archive is corrupt")
            self._out.close()
            self._out = None
            if self._crc != entry.info.CRC or self._size != entry.info.file_size:
                raise CorruptArchive(
                    f"member {entry.info.filename!r} fails its CRC check: the archive is corrupt"
                )
            self._set_mtime(entry)
            self._extracted.add(Path(*entry.path.parts))
        self._i += 1

    def _set_mtime(self, entry: _Entry) -> None:
        try:
            mtime = time.mktime(entry.info.date_time + (0, 0, -1))
            os.utime(self._dest.joinpath(*entry.path.parts), (mtime, mtime))
        except (OverflowError, ValueError, OSError):
            pass

    def finish(self) -> tuple[Path, ...]:
        """Check that every member arrived whole; return the files extracted, relative to `dest`."""
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._i < len(self._entries):
            raise CorruptArchive(
                f"archive ended inside member {self._entries[self._i].info.filename!r}: it is truncated"
            )
        return tuple(sorted(self._extracted))

    def abort(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _name_extra_len(header: bytearray) -> int:
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return name_len + extra_len


# --- tar.gz (the format later colab_utils versions wrote) ---------------------------------------
MAX_TAR_HEADER = 1024 * 1024  # a long name or pax header larger than this is refused, not read into memory
_TAR_META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                   tarfile.SOLARIS_XHDTYPE)


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized extended headers before tarfile reads them whole into memory."""

    def _proc_member(self, tarfile_):
        if self.type in _TAR_META_TYPES and self.size > MAX_TAR_HEADER:
            raise CorruptArchive(
                f"a tar header block claims {mib(self.size)} MiB (at most {mib(MAX_TAR_HEADER)} MiB): "
                "the archive is corrupt or hostile"
            )
        return super()._proc_member(tarfile_)


def extract_tar_stream(stream: BinaryIO, dest: Path, budget: Budget | None = None) -> tuple[Path, ...]:
    """Extract a tar.gz read sequentially from `stream` into `dest`; refuse anything unsafe. Returns
    the files extracted, relative to `dest`.

    Members are written here block by block (not by tarfile.extract), so `budget` is enforced while
    writing: each member's declared size before it starts, the bytes themselves as they come.
    """
    budget = budget or Budget()
    extracted: set[Path] = set()
    buffer = bytearray(COPY_BLOCK)
    try:
        with tarfile.open(fileobj=stream, mode="r|gz", tarinfo=_BoundedTarInfo) as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # stream mode would keep every header: memory would grow with the count
                written = _extract_tar_member(tar, member, dest, budget, buffer)
                if written is not None:
                    extracted.add(written)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise UnsafeArchive(f"{exc}: refusing to extract") from None
        raise CorruptArchive(f"not a valid tar.gz archive ({exc}): it may be truncated") from None
    if not extracted:
        raise EmptyArchive(f"{budget.source} holds no files: there is nothing to restore")
    return tuple(sorted(extracted))


def _extract_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, budget: Budget,
                        buffer: bytearray) -> Path | None:
    """Write one member below `dest`; return the file's path relative to `dest` (None: a directory)."""
    path = safe_member_path(member.name)
    if member.issym() or member.islnk():
        raise UnsafeArchive(f"archive member {member.name!r} is a link: refusing to extract")
    if member.issparse() or not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"archive member {member.name!r} is a device or special file: refusing to extract")
    target = dest.joinpath(*path.parts)
    if member.isdir():
        if target.exists() and not target.is_dir():
            raise CorruptArchive(f"archive member {member.name!r} is both a file and a directory: the archive is corrupt")
        target.mkdir(parents=True, exist_ok=True)
        return None
    budget.check(budget.written + member.size)  # its declared size, before any of it is written
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise CorruptArchive(f"archive member {member.name!r} is both a file and a directory: the archive is corrupt")
    source = tar.extractfile(member)
    view = memoryview(buffer)
    with open(target, "wb") as out:
        while True:
            n = source.readinto(buffer)
            if not n:
                break
            budget.add(n)
            out.write(view[:n])
    os.chmod(target, (member.mode & 0o755) | 0o600)  # tarfile's "data" filter: no setuid, no group/other write
    try:
        os.utime(target, (member.mtime, member.mtime))
    except (OverflowError, ValueError, OSError):
        pass
    return Path(*path.parts)
