"""Build archives as streams, and extract them safely.

Writing: the pieces every archive writer shares — a file opened for archiving (`_Source`: read once,
exactly as large as planned, only if it is a regular file, opened with O_NONBLOCK so a FIFO never
blocks), its `Signature`, the rules of a consistent read (`changed_since`, `wait_until_quiet`) and
`choose_compression` (stored or deflated by a sample, so float weights are not pushed through DEFLATE
at single-core speed). Zips are laid out by `ziplayout`; tar.gz is written here. A file that must
not change and does raises FileChanged, and nothing more is written — no central directory, no gzip
trailer — so an upload fed by the stream never completes.

Reading: member names, layout, member count and declared sizes are checked before anything is
written (absolute paths, `..`, links, devices, paths deeper than MAX_DEPTH are refused); sizes are
enforced while inflating, with memory bounded by a constant; what is written goes into a staging
directory that `restore` swaps into place. A zip is cut into slices (`ZipPlan.slices`) that
workers extract independently from ranged reads (`sliced`), each piece's CRC-32 combined into the
member's (`crc32_combine`); a tar.gz is read as one stream.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import stat
import struct
import tarfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass, field
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
MAX_DEPTH = 128  # directory levels of one member path: real checkpoints nest a few, a hostile one thousands


def _shown(name: str, limit: int = 80) -> str:
    """A member name for a one-line message: a hostile 3 000-character name is cut."""
    return repr(name if len(name) <= limit else name[: limit - 1] + "…")


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path a member may be extracted to, or UnsafeArchive."""
    if "\x00" in name or "\\" in name:
        raise UnsafeArchive(f"archive member {_shown(name)} has a forbidden character: refusing to extract")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise UnsafeArchive(f"archive member {_shown(name)} has an absolute path: refusing to extract")
    if ".." in path.parts:
        raise UnsafeArchive(f"archive member {_shown(name)} points outside the target: refusing to extract")
    if not path.parts:
        raise UnsafeArchive("archive member with an empty name: refusing to extract")
    if len(path.parts) > MAX_DEPTH:
        raise UnsafeArchive(f"archive member {_shown(name)} is {len(path.parts):,} levels deep (at most "
                            f"{MAX_DEPTH}): refusing a corrupt or hostile archive")
    return path


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    safe_member_path(info.filename)
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "a device or special file"
        raise UnsafeArchive(f"archive member {_shown(info.filename)} is {kind}: refusing to extract")
    if info.flag_bits & 0x1:
        raise CorruptArchive(f"archive member {_shown(info.filename)} is encrypted, which colab_magics never "
                             "writes: refusing to extract")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CorruptArchive(
            f"archive member {_shown(info.filename)} uses compression method {info.compress_type}: "
            "only stored and deflated members are supported"
        )


# --- how much an extraction may write -----------------------------------------------------------
FILE_COST = 4096  # what each member costs beyond its bytes: an inode and a partly used block


def mib(n: int) -> str:
    """Bytes as MiB for messages: '1,024', or '0.2' below 10."""
    value = n / 1024 / 1024
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


@dataclass
class Budget:
    """How much an extraction may write in all, checked before each write (never after); thread-safe.

    Three caps: `ratio_limit` (a multiple of the archive's size: a zip bomb is refused), `disk_limit`
    (the free space of the target's filesystem less a margin) and `max_files` (members of any size:
    each costs an inode and a write). Every member also counts FILE_COST bytes against the first two,
    so a small archive of many empty files is refused like a bomb. None: no cap.
    """

    source: str = "the archive"
    ratio_limit: int | None = None
    ratio: float = 0.0
    disk_limit: int | None = None
    free: int = 0
    margin: int = 0
    written: int = 0
    max_files: int | None = None
    members: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

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

    def check_count(self, count: int, *, exact: bool = True) -> None:
        """Refuse an archive of more than `max_files` members (`count`: all of them, or seen so far)."""
        if self.max_files is not None and count > self.max_files:
            held = (f"{count:,} files and directories, over the {self.max_files:,}" if exact else
                    f"more than the {self.max_files:,} files and directories")
            raise ArchiveTooLarge(
                f"{self.source} holds {held} a restore takes: refusing a likely hostile archive (raise the "
                "restore_max_files setting if it is genuine)"
            )

    def declare(self, members: int, size: int) -> None:
        """An archive's declared member count and total size, refused before anything is written;
        what is written afterwards counts on top of the members' overhead."""
        self.check_count(members)
        self.check(size + members * FILE_COST, declared=True)
        with self._lock:
            self.members, self.written = members, members * FILE_COST

    def add_member(self) -> None:
        """Count one more member of a stream whose count is not known up front (tar.gz)."""
        with self._lock:
            self.members += 1
            self.check_count(self.members, exact=False)
            self.written += FILE_COST
            self.check(self.written)

    def add(self, n: int) -> None:
        """Count `n` bytes about to be written; refuse them if they pass a cap."""
        with self._lock:
            self.written += n
            self.check(self.written)


# --- CRCs of pieces -----------------------------------------------------------------------------
CRC32_POLY = 0xEDB88320  # zip's CRC-32 (zlib.crc32), reflected
CRC32C_POLY = 0x82F63B78  # Castagnoli's, as Cloud Storage's crc32c (google_crc32c), reflected


def _multiply(a: int, b: int, poly: int) -> int:
    """a × b modulo the CRC polynomial (reflected bit order), as zlib's multmodp."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ poly if b & 1 else b >> 1


@functools.lru_cache(maxsize=None)
def _powers(poly: int) -> tuple[int, ...]:
    """x^(2^k) modulo the polynomial, k = 0..31."""
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multiply(table[-1], table[-1], poly))
    return tuple(table)


def crc_combine(crc1: int, crc2: int, len2: int, poly: int = CRC32_POLY) -> int:
    """The CRC of A + B from crc(A), crc(B) and len(B), as zlib's crc32_combine: no byte read again.

    Any reflected 32-bit CRC with all-ones init and final xor: `poly` CRC32_POLY (zip) or CRC32C_POLY.
    """
    table, shift, power, k = _powers(poly), 1 << 31, len2, 3  # x^(8·len2): len2 bytes of zeros
    while power:
        if power & 1:
            shift = _multiply(table[k & 31], shift, poly)
        power >>= 1
        k += 1
    return _multiply(shift, crc1, poly) ^ crc2


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The zip CRC-32 (zlib.crc32) of A + B from crc(A), crc(B) and len(B)."""
    return crc_combine(crc1, crc2, len2, CRC32_POLY)


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """Cloud Storage's crc32c (google_crc32c) of A + B from crc32c(A), crc32c(B) and len(B)."""
    return crc_combine(crc1, crc2, len2, CRC32C_POLY)


# --- reading a zip's index from the object's tail -----------------------------------------------
INDEX_TAIL = 256 * 1024  # first guess at the index's size: one request for most archives
MAX_INDEX = 64 * 1024 * 1024  # ~400 000 members with typical names; a larger claim is refused unread
INFLATE_BLOCK = 1024 * 1024  # most bytes one inflate call may produce: memory stays bounded
MAX_LOCAL_HEADER = 30 + 2 * 65535  # a local header with the longest name and extra field


class NeedBytes(Exception):
    """Raised by TailFile when the zip index reaches before the bytes we fetched."""

    def __init__(self, offset: int):
        self.offset = offset


class TailFile(io.RawIOBase):
    """The last bytes of a remote object, seekable, so `zipfile` can read its central directory."""

    def __init__(self, size: int, tail_offset: int, tail: bytes):
        self._size, self._start, self._tail, self._pos = size, tail_offset, tail, 0

    @property
    def start(self) -> int:
        """The object offset of the first byte held."""
        return self._start

    def bytes(self, start: int, end: int) -> bytes:
        """The object's bytes [start, end), all held (start >= self.start)."""
        if start < self._start or end > self._size:
            raise NeedBytes(start)
        return self._tail[start - self._start : end - self._start]

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
                   max_index: int = MAX_INDEX, budget: Budget | None = None) -> zipfile.ZipFile:
    """Parse a remote zip's central directory from its tail; `fetch(start, end)` gets a byte range
    (`end` inclusive). The result's `fp` is the TailFile holding the bytes fetched.

    At most `max_index` bytes are ever fetched: an end record claiming a larger directory (or one
    before the object's start) is refused without reading it. With a `budget`, the directory's entries
    are counted before `zipfile` parses them, so an index of a million members is refused before a
    million ZipInfo objects exist.
    """
    start = max(0, size - tail)
    data = fetch(start, size - 1) if size else b""
    while True:
        try:
            fp = TailFile(size, start, data)
            if budget is not None and budget.max_files is not None:
                budget.check_count(_count_entries(fp, budget.max_files + 1), exact=False)
            return zipfile.ZipFile(fp)
        except NeedBytes as need:
            if size - need.offset > max_index:
                raise CorruptArchive(
                    f"the zip's end record claims an index of {mib(size - need.offset)} MiB "
                    f"(at most {mib(max_index)} MiB is read): the archive is corrupt or hostile"
                ) from None
            start, data = need.offset, fetch(need.offset, start - 1) + data
        except (zipfile.BadZipFile, zipfile.LargeZipFile, struct.error, ValueError, EOFError) as exc:
            raise CorruptArchive(f"not a valid zip archive ({exc}): it may be truncated") from None


def _count_entries(fp: TailFile, stop: int) -> int:
    """The central directory's entries, counted from their headers (not the end record, which may
    lie), up to `stop`. Finds the directory as `zipfile` does (its `_EndRecData`, zip64 included)."""
    end = zipfile._EndRecData(fp)  # noqa: SLF001  the same end record zipfile will use
    if end is None:
        raise zipfile.BadZipFile("File is not a zip file")
    size, offset = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]  # noqa: SLF001
    concat = end[zipfile._ECD_LOCATION] - size - offset  # noqa: SLF001
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # noqa: SLF001
        concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # noqa: SLF001
    first = offset + concat
    if first < 0:
        raise zipfile.BadZipFile("the central directory starts before the archive")
    directory = fp.bytes(first, first + size) if size else b""
    count = pos = 0
    while pos + 46 <= len(directory) and count < stop:
        if directory[pos : pos + 4] != b"PK\x01\x02":
            break  # zipfile says what is wrong with it
        name, extra, comment = struct.unpack_from("<HHH", directory, pos + 28)
        pos += 46 + name + extra + comment
        count += 1
    return count


# --- a zip's members, extracted by slices of the object -----------------------------------------
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
            raise CorruptArchive(f"archive member {_shown(entry.info.filename)} appears twice: the archive is corrupt")
        else:
            files.add(entry.path)
        dirs.update(entry.path.parents)
    clash = files & dirs
    if clash:
        raise CorruptArchive(f"archive member {sorted(clash)[0]} is both a file and a directory: "
                             "the archive is corrupt")


class Aborted(Exception):
    """Another slice of the same restore failed: this one stops where it is."""


@dataclass(frozen=True)
class Slice:
    """Bytes [start, end) of a zip object, extracted by one worker. `first` is the member it starts
    with: at (or before) its local header, or, when `inside`, in the middle of its stored data."""

    start: int
    end: int
    first: int
    inside: bool = False


class _Member:
    """One member's state shared by the slices that carry its bytes."""

    __slots__ = ("entry", "ready", "data_start", "pieces")

    def __init__(self, entry: _Entry):
        self.entry = entry
        self.ready = threading.Event()  # set once a slice has read its local header
        self.data_start = 0  # object offset of its first data byte
        self.pieces: list[tuple[int, int, int]] = []  # (offset in the file, length, CRC-32), any order


class ZipPlan:
    """What a zip restore writes, checked from the index before a byte is written: member names,
    layout, the member count and the declared total against `budget`. Its `slices` cut the object
    into byte ranges that workers extract independently (`SliceExtractor`), a stored member larger
    than a slice across several; `finish` then checks that every member arrived whole, its pieces'
    CRC-32s combined against the index.
    """

    def __init__(self, index: zipfile.ZipFile, budget: Budget | None = None):
        infos = sorted(index.infolist(), key=lambda i: i.header_offset)
        self.budget = budget or Budget()
        for info in infos:
            _check_zip_member(info)
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise CorruptArchive(f"archive member {_shown(info.filename)} has two different sizes: "
                                     "the archive is corrupt")
        entries = [_Entry(i, safe_member_path(i.filename)) for i in infos]
        _check_layout(entries, index.start_dir)
        if not any(not e.info.is_dir() for e in entries):
            raise EmptyArchive(f"{self.budget.source} holds no files: there is nothing to restore")
        self.budget.declare(len(entries), sum(e.info.file_size for e in entries))
        self.start_dir = index.start_dir  # where the members end and the index begins
        self.members = [_Member(e) for e in entries]

    def bound(self, i: int) -> int:
        """Where member `i`'s bytes must end: the next member's header, or the index."""
        return self.members[i + 1].entry.info.header_offset if i + 1 < len(self.members) else self.start_dir

    def slices(self, part: int | None = None) -> list[Slice]:
        """The object's bytes [0, start_dir) cut in pieces of about `part` bytes (None: one piece).

        Cuts fall on local headers, or inside a stored member's data (never within MAX_LOCAL_HEADER
        of its header, so the header is whole in the slice before); deflated members are never cut.
        """
        if not part:
            return [Slice(0, self.start_dir, 0)]
        cuts = [Slice(0, 0, 0)]
        for i, member in enumerate(self.members):
            info = member.entry.info
            head = info.header_offset
            split = info.compress_type == zipfile.ZIP_STORED and not info.is_dir() and info.compress_size > part
            if head > cuts[-1].start and (split or head - cuts[-1].start >= part):
                cuts.append(Slice(head, 0, i))
            if split:
                cut, data_end = head + max(part, MAX_LOCAL_HEADER + 1), head + 30 + info.compress_size
                while cut < data_end - part // 4:  # no sliver of a slice at the end
                    cuts.append(Slice(cut, 0, i, inside=True))
                    cut += part
        ends = [c.start for c in cuts[1:]] + [self.start_dir]
        return [Slice(c.start, end, c.first, c.inside) for c, end in zip(cuts, ends)]

    def prepare(self, dest: Path) -> None:
        """Create every directory and (empty) file first, so slices only write into files that exist."""
        dirs: set[PurePosixPath] = set()
        for member in self.members:
            path = member.entry.path
            dirs.update(p for p in path.parents if p.parts)
            if member.entry.info.is_dir():
                dirs.add(path)
        for path in sorted(dirs, key=lambda p: len(p.parts)):
            dest.joinpath(*path.parts).mkdir(exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for member in self.members:
            if not member.entry.info.is_dir():
                os.close(os.open(dest.joinpath(*member.entry.path.parts), flags, 0o666))

    def finish(self, dest: Path) -> tuple[Path, ...]:
        """Check every file arrived whole and passes its CRC-32; set mtimes; return the files, relative."""
        files = []
        for member in self.members:
            info = member.entry.info
            if info.is_dir():
                continue
            crc = size = 0
            for offset, length, piece_crc in sorted(member.pieces):
                if offset != size:
                    raise CorruptArchive(f"member {_shown(info.filename)} arrived incomplete: the archive is corrupt")
                crc, size = crc32_combine(crc, piece_crc, length), size + length
            if size != info.file_size or crc != info.CRC:
                raise CorruptArchive(f"member {_shown(info.filename)} fails its CRC check: the archive is corrupt")
            target = dest.joinpath(*member.entry.path.parts)
            try:
                mtime = time.mktime(info.date_time + (0, 0, -1))
                os.utime(target, (mtime, mtime))
            except (OverflowError, ValueError, OSError):
                pass
            files.append(Path(*member.entry.path.parts))
        return tuple(sorted(files))


_GAP, _HEADER, _DATA = range(3)


class SliceExtractor:
    """A writable sink for one slice of a zip object: its bytes go in, in order, from `piece.start`;
    the members (or parts of members) they carry are written into the files `ZipPlan.prepare` made.

    Each member's local header is parsed as it arrives and checked against the index; deflated
    data is inflated at most INFLATE_BLOCK bytes at a time and refused the moment it passes its
    declared size; each piece's CRC-32 is recorded for `ZipPlan.finish`. A slice starting inside a
    member waits (up to `wait` seconds, or until `abort` is set) for the slice holding its header.
    """

    def __init__(self, plan: ZipPlan, piece: Slice, dest: Path, abort: threading.Event | None = None,
                 wait: float = 120.0):
        self._plan, self._dest, self._wait = plan, dest, wait
        self._abort = abort or threading.Event()
        self._pos, self._end = piece.start, piece.end
        self._i = piece.first
        self._state = _DATA if piece.inside else _GAP
        self._header = bytearray()
        self._entered = False  # this slice has started on the current member's data
        self._fd: int | None = None
        self._inflater = None
        self._offset = 0  # file offset where this slice's part of the current member begins
        self._size = 0  # bytes of the current member written by this slice
        self._crc = 0

    def write(self, data) -> int:
        if self._abort.is_set():
            raise Aborted()
        view = memoryview(data)
        while view:
            if self._state == _GAP:
                view = self._skip(view)
            elif self._state == _HEADER:
                view = self._read_header(view)
            else:
                view = self._read_data(view)
        return len(data)

    def _skip(self, view: memoryview) -> memoryview:
        members = self._plan.members
        if self._i >= len(members) or members[self._i].entry.info.header_offset >= self._end:
            take = len(view)  # a data descriptor (or padding) before the next slice
        else:
            take = min(members[self._i].entry.info.header_offset - self._pos, len(view))
            if take == 0:
                self._state = _HEADER
                return view
        self._pos += take
        return view[take:]

    def _read_header(self, view: memoryview) -> memoryview:
        member = self._plan.members[self._i]
        info = member.entry.info
        need = 30 if len(self._header) < 30 else 30 + _name_extra_len(self._header)
        take = min(need - len(self._header), len(view))
        self._header += view[:take]
        self._pos += take
        if len(self._header) == 30 and self._header[:4] != b"PK\x03\x04":
            raise CorruptArchive(f"member {_shown(info.filename)} has no local header: archive is corrupt")
        if len(self._header) >= 30 and len(self._header) == 30 + _name_extra_len(self._header):
            name = bytes(self._header[30 : 30 + struct.unpack("<H", self._header[26:28])[0]])
            if name.decode("utf-8", "replace") != info.filename and name.decode("cp437") != info.filename:
                raise CorruptArchive(f"member {_shown(info.filename)} does not match its local header")
            if self._pos + info.compress_size > self._plan.bound(self._i):
                raise CorruptArchive("archive members overlap: refusing to extract")
            self._header = bytearray()
            member.data_start = self._pos
            member.ready.set()
            self._state = _DATA
            if info.compress_size == 0:
                self._enter(member)
                self._finish_member(member)
        return view[take:]

    def _enter(self, member: _Member) -> None:
        """Start on the member's data (opening its file) at the first data byte this slice has of it."""
        deadline = time.monotonic() + self._wait
        while not member.ready.wait(0.05):  # a slice that starts inside a member: its header is elsewhere
            if self._abort.is_set():
                raise Aborted()
            if time.monotonic() > deadline:
                raise CorruptArchive(f"the local header of member {_shown(member.entry.info.filename)} did not "
                                     f"arrive within {self._wait:g} s: the download stalled")
        info = member.entry.info
        if not member.data_start <= self._pos <= self._data_end(member):
            raise CorruptArchive(f"member {_shown(info.filename)} has a local header longer than any: "
                                 "the archive is corrupt")
        self._entered = True
        self._offset, self._size, self._crc = self._pos - member.data_start, 0, 0
        if not info.is_dir():
            self._fd = os.open(self._dest.joinpath(*member.entry.path.parts),
                               os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            self._inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None

    def _read_data(self, view: memoryview) -> memoryview:
        member = self._plan.members[self._i]
        if not self._entered:
            self._enter(member)
        take = min(self._data_end(member) - self._pos, len(view))
        if self._fd is not None:
            self._write(member, view[:take])
        self._pos += take
        if self._pos == self._data_end(member):
            self._finish_member(member)
        return view[take:]

    @staticmethod
    def _data_end(member: _Member) -> int:
        return member.data_start + member.entry.info.compress_size

    def _write(self, member: _Member, data: memoryview) -> None:
        if self._inflater is None:
            self._emit(member, data)
            return
        try:
            while data and not self._inflater.eof:  # bounded output per call: a bomb never sits in memory
                out = self._inflater.decompress(data, INFLATE_BLOCK)
                self._emit(member, out)
                data = self._inflater.unconsumed_tail
                while len(out) == INFLATE_BLOCK and not data and not self._inflater.eof:
                    out = self._inflater.decompress(b"", INFLATE_BLOCK)  # output zlib still holds
                    self._emit(member, out)
        except zlib.error as exc:
            raise CorruptArchive(f"member {_shown(member.entry.info.filename)} is not valid deflate data "
                                 f"({exc}): the archive is corrupt") from None

    def _emit(self, member: _Member, data) -> None:
        info = member.entry.info
        if self._offset + self._size + len(data) > info.file_size:
            raise ArchiveTooLarge(
                f"archive member {_shown(info.filename)} inflates beyond its declared size of "
                f"{info.file_size} bytes: refusing a corrupt or hostile archive"
            )
        self._plan.budget.add(len(data))
        self._crc = zlib.crc32(data, self._crc)
        done = 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], self._offset + self._size + done)
        self._size += len(data)

    def _finish_member(self, member: _Member) -> None:
        """This slice reached the end of the member's data: record its piece, go on to the next."""
        if self._inflater is not None:
            try:
                self._emit(member, self._inflater.flush())
            except zlib.error as exc:
                raise CorruptArchive(f"member {_shown(member.entry.info.filename)} is not valid deflate data "
                                     f"({exc}): the archive is corrupt") from None
            if not self._inflater.eof and member.entry.info.compress_size:  # no bytes at all: an empty file
                raise CorruptArchive(f"member {_shown(member.entry.info.filename)} is truncated: "
                                     "the archive is corrupt")
            self._inflater = None
        self._close_piece(member)
        self._entered = False
        self._i += 1
        self._state = _GAP

    def _close_piece(self, member: _Member) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            member.pieces.append((self._offset, self._size, self._crc))

    def close(self) -> None:
        """The slice's last byte arrived: record the piece of a member it ends inside of."""
        if self._pos != self._end:
            raise CorruptArchive(f"a slice of {self._plan.budget.source} ended at byte {self._pos}, not {self._end}")
        if self._state == _HEADER:
            raise CorruptArchive("a local header reaches past its slice: the archive is corrupt")
        if self._state == _DATA and self._entered:
            if self._inflater is not None:
                raise CorruptArchive(f"member {_shown(self._plan.members[self._i].entry.info.filename)} is "
                                     "truncated: the archive is corrupt")
            self._close_piece(self._plan.members[self._i])

    def abort(self) -> None:
        """Close what this slice holds open (after a failure)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
    writing: the member count and each member's declared size before it starts, the bytes themselves
    as they come. A file named twice is refused, never silently overwritten. Empty files are made
    once the stream has ended, so a small archive of a million of them is refused at the member cap
    having read headers only, not having made (and removed) the first hundred thousand.
    """
    job = _TarExtraction(dest, budget or Budget())
    try:
        with tarfile.open(fileobj=stream, mode="r|gz", tarinfo=_BoundedTarInfo) as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # stream mode would keep every header: memory would grow with the count
                job.extract(tar, member)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise UnsafeArchive(f"{exc}: refusing to extract") from None
        raise CorruptArchive(f"not a valid tar.gz archive ({exc}): it may be truncated") from None
    if not job.files:
        raise EmptyArchive(f"{job.budget.source} holds no files: there is nothing to restore")
    job.make_empty_files()
    return tuple(sorted(Path(name) for name in job.files))


class _TarExtraction:
    """The members of one tar stream written so far, by relative POSIX path (plain strings: a hundred
    thousand of them stay small), so a file named twice, or both a file and a directory, is caught."""

    def __init__(self, dest: Path, budget: Budget):
        self.dest, self.budget = dest, budget
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.empty: list[tuple[str, int, float]] = []  # (path, mode, mtime) made at the end
        self._buffer = bytearray(COPY_BLOCK)

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        path = "/".join(safe_member_path(member.name).parts)
        if member.issym() or member.islnk():
            raise UnsafeArchive(f"archive member {_shown(member.name)} is a link: refusing to extract")
        if member.issparse() or not (member.isfile() or member.isdir()):
            raise UnsafeArchive(f"archive member {_shown(member.name)} is a device or special file: "
                                "refusing to extract")
        self.budget.add_member()
        if path in self.files and member.isfile():
            raise CorruptArchive(f"archive member {_shown(member.name)} appears twice: the archive is corrupt "
                                 "(refusing to let the second copy overwrite the first)")
        if path in self.files or (member.isfile() and path in self.dirs) or self._under_a_file(path):
            raise CorruptArchive(f"archive member {_shown(member.name)} is both a file and a directory: "
                                 "the archive is corrupt")
        if member.isdir():
            self._make_dirs(path)
            return
        self.budget.check(self.budget.written + member.size)  # its declared size, before any of it is written
        self._make_dirs(path.rpartition("/")[0])
        self.files.add(path)
        if member.size == 0:
            self.empty.append((path, member.mode, member.mtime))
            return
        target = os.path.join(self.dest, path)
        source = tar.extractfile(member)
        view = memoryview(self._buffer)
        with open(target, "xb") as out:
            while n := source.readinto(self._buffer):
                self.budget.add(n)
                out.write(view[:n])
        _set_mode_and_time(target, member.mode, member.mtime)

    def _under_a_file(self, path: str) -> bool:
        parent = path.rpartition("/")[0]
        while parent and parent not in self.dirs:
            if parent in self.files:
                return True
            parent = parent.rpartition("/")[0]
        return False

    def _make_dirs(self, path: str) -> None:
        """Make `path` and its missing parents below `dest` (each made once)."""
        missing = []
        while path and path not in self.dirs:
            missing.append(path)
            path = path.rpartition("/")[0]
        for name in reversed(missing):
            try:
                os.mkdir(os.path.join(self.dest, name))
            except FileExistsError:
                if not os.path.isdir(os.path.join(self.dest, name)):
                    raise
            self.dirs.add(name)

    def make_empty_files(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for path, mode, mtime in self.empty:
            target = os.path.join(self.dest, path)
            os.close(os.open(target, flags, 0o600))
            _set_mode_and_time(target, mode, mtime)


def _set_mode_and_time(target: str, mode: int, mtime: float) -> None:
    os.chmod(target, (mode & 0o755) | 0o600)  # tarfile's "data" filter: no setuid, no group/other write
    try:
        os.utime(target, (mtime, mtime))
    except (OverflowError, ValueError, OSError):
        pass
