"""A zip archive planned before it is read, so that many writers can produce it at once, in parts.

Why: one upload stream is capped by its connection, so a big archive has to travel as N streams, and
N streams need N independent stretches of the archive's bytes. A zip allows that: its local headers
hold no absolute offsets — only the central directory, written last, does. So the archive is planned
from the files' sizes as a sequence of *segments*:

- jobs, each a run of whole members or one piece of a large stored member, that writers produce
  independently and in any order (`write_job`); a job's length is known once it is written;
- the data descriptors of members cut into pieces (a member's CRC is known only once all its pieces
  were read), and the central directory: both computed once every job is written (`assemble`).

Concatenated in order (a compose), the segments are one ordinary zip. Every member is written as
Python's zipfile writes into a stream — flag bit 3, CRC and sizes in a data descriptor after the data
— so `unzip`, `zipfile` and every loader of ours read it. A member larger than a part is stored (not
deflated), so it can be cut at any byte; a smaller one that crosses a part boundary is cut only if a
sample of it does not compress. A cut member's CRC-32 is combined from its pieces' (`packing.crc32_combine`),
and the composed object's crc32c from its parts' (`packing.crc32c_combine`). A single stream is the same plan
with one job and no cut, the directory written after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Collection, Iterable, Mapping

from colab_magics import packing
from colab_magics.packing import Signature

MiB = 1024 * 1024
BLOCK = MiB  # bytes read (and handed to the upload) at a time by each writer
ZIP64_LIMIT = zipfile.ZIP64_LIMIT  # as CPython's zipfile: past this, sizes and offsets go into zip64 fields
ZIP64_MEMBER = int(ZIP64_LIMIT / 1.05)  # members above this get zip64 local records (deflate may grow data)
STORED, DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
_DESCRIPTOR = 0x08074B50
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR64 = struct.Struct("<4sLQL")
_FLAG_DESCRIPTOR, _FLAG_UTF8 = 0x08, 0x800
_VERSION, _VERSION64, _UNIX = 20, 45, 3


class Cancelled(Exception):
    """Another writer of the same archive failed: this one stops without finishing its part."""


# --- what goes in ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """One file as planned: where it is read, its name in the archive and its signature when planned.

    `strict` members must keep that signature until the archive is complete; the others (event logs,
    which only grow) are read at their planned size from the same file.
    """

    path: Path
    name: str
    signature: Signature
    mode: int
    strict: bool = True
    origin: Path | None = None  # the file as the user knows it, when `path` is a link to it (a snapshot)

    @property
    def shown(self) -> Path:
        """The path to name in messages."""
        return self.origin or self.path

    @property
    def size(self) -> int:
        return self.signature.size

    @property
    def date_time(self) -> tuple[int, ...]:
        """The zip's timestamp: local time to 2 s (what a zip records, and a restore gives back), dates
        before 1980 as 1980 (as zipfile.ZipInfo.from_file)."""
        moment = time.localtime(self.signature.mtime_ns // 1_000_000_000)[:6]
        return moment[:5] + (moment[5] // 2 * 2,) if moment[0] >= 1980 else (1980, 1, 1, 0, 0, 0)

    @property
    def zip64(self) -> bool:
        return self.size > ZIP64_MEMBER


def member(path: Path, name: str, strict: bool = True, origin: Path | None = None) -> Member:
    """`path` as a Member named `name`, with its signature now (FileNotFoundError if it is gone)."""
    st = os.stat(path)
    return Member(path, name, packing.file_signature(st), st.st_mode & 0xFFFF, strict, origin)


def refreshed(members: Iterable[Member]) -> list[Member]:
    """The same members with their signatures now."""
    return [member(m.path, m.name, m.strict, m.origin) for m in members]


def content_hash(members: Iterable[Member]) -> str:
    """What identifies an archive's content without reading it: its strict members' names, sizes and
    zip timestamps (a restore gives files back those timestamps, so a restored step hashes the same)."""
    digest = hashlib.sha256()
    for m in sorted((m for m in members if m.strict), key=lambda m: m.name):
        digest.update(json.dumps([m.name, m.size, list(m.date_time)]).encode() + b"\n")
    return digest.hexdigest()[:32]


def holds_same_content(members: Iterable[Member], index: zipfile.ZipFile) -> bool:
    """Whether a zip's index lists every strict member with the same size and timestamp (an archive
    written without our content hash)."""
    infos = {info.filename: info for info in index.infolist()}
    for m in members:
        info = infos.get(m.name)
        if m.strict and (info is None or info.file_size != m.size or tuple(info.date_time) != tuple(m.date_time)):
            return False
    return True


# --- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of a member. `whole`: all of it, local header to data descriptor, deflated or
    stored as its writer chooses; else one piece of a stored member cut across jobs (the local header
    goes with the piece at 0, the descriptor is a segment of its own after the last piece)."""

    member: int
    start: int
    end: int
    whole: bool


@dataclass(frozen=True)
class Job:
    pieces: tuple[Piece, ...]

    def key(self, members: tuple[Member, ...]) -> tuple:
        """What this job's bytes depend on: its pieces and their files' signatures (a job with the same
        key in a later plan need not be written again)."""
        return tuple((p.start, p.end, p.whole, members[p.member].name, members[p.member].signature)
                     for p in self.pieces)

    def paths(self, members: tuple[Member, ...]) -> set[Path]:
        return {members[p.member].path for p in self.pieces}


@dataclass(frozen=True)
class Descriptor:
    """The data descriptor of a member cut across jobs, right after its last piece."""

    member: int


@dataclass(frozen=True)
class Layout:
    members: tuple[Member, ...]
    segments: tuple[Job | Descriptor, ...]

    @property
    def jobs(self) -> list[tuple[int, Job]]:
        """(segment index, job) of every job, in archive order."""
        return [(i, s) for i, s in enumerate(self.segments) if isinstance(s, Job)]

    @property
    def total(self) -> int:
        return sum(m.size for m in self.members)


def plan(members: Iterable[Member], part_size: int | None = None,
         compresses: Callable[[Member], bool] | None = None) -> Layout:
    """Cut the archive of `members` (in this order) into jobs of about `part_size` bytes (None: one job).

    A member that crosses a boundary is cut into pieces if it is larger than a part, or if
    `compresses(member)` says a sample of it does not compress (None: never cut such a member);
    otherwise it goes whole into the job where it starts.
    """
    members = tuple(members)
    segments: list[Job | Descriptor] = []
    run: list[Piece] = []
    filled = 0
    limit = part_size if part_size else float("inf")
    for i, m in enumerate(members):
        size = m.size
        if filled + size <= limit or (size <= limit and (compresses is None or compresses(m))):
            run.append(Piece(i, 0, size, True))
            filled += size
            if filled >= limit:
                segments.append(Job(tuple(run)))
                run, filled = [], 0
            continue
        cut = int(limit - filled)  # >= 1: a job is closed as soon as it is full
        run.append(Piece(i, 0, cut, False))
        segments.append(Job(tuple(run)))
        run, filled = [], 0
        while size - cut > limit:
            segments.append(Job((Piece(i, cut, cut + int(limit), False),)))
            cut += int(limit)
        segments.append(Job((Piece(i, cut, size, False),)))
        segments.append(Descriptor(i))
    if run or not segments:
        segments.append(Job(tuple(run)))
    return Layout(members, tuple(segments))


# --- writing a job --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """One piece as written: where its local header sits in the job (None: not in this job), how it
    was compressed, its data's length in the archive, and the CRC-32 and size of what was read."""

    header_at: int | None
    method: int
    data_length: int
    crc: int
    size: int


@dataclass(frozen=True)
class Written:
    length: int
    records: tuple[tuple[int, Record], ...]  # (member index, record), in order


def write_job(out: BinaryIO, layout: Layout, job: Job, *, on_bytes: Callable[[int], None] | None = None,
              cancelled: Callable[[], bool] | None = None, block: int = BLOCK) -> Written:
    """Write `job`'s bytes into `out`; return what the central directory needs of them.

    Each file is read once, at its planned size, and must still be the file it was when planned
    (`packing.FileChanged` otherwise, raised before anything more reaches `out`); the strict ones
    must keep their signature until the job ends. `cancelled()` is asked between blocks
    (`Cancelled`: another writer of the archive failed).
    """
    pos = 0
    records: list[tuple[int, Record]] = []
    opened: list[packing._Source] = []
    for piece in job.pieces:
        m = layout.members[piece.member]
        with packing._Source(m.path, m.strict, m.signature, on_bytes, piece.start, piece.end - piece.start) as src:
            method = packing.choose_compression(m.path, m.size, src.sample()) if piece.whole else STORED
            header_at = None
            if piece.start == 0:
                header_at = pos
                pos += _write(out, local_header(m, method))
            deflater = zlib.compressobj(1, zlib.DEFLATED, -15) if method == DEFLATED else None
            crc = length = 0
            while data := src.block(block):
                if cancelled is not None and cancelled():
                    raise Cancelled()
                crc = zlib.crc32(data, crc)
                if deflater is not None:
                    data = deflater.compress(data)
                length += _write(out, data)
            if deflater is not None:
                length += _write(out, deflater.flush())
            src.check()
            pos += length
            if piece.whole:
                pos += _write(out, descriptor(m, crc, length))
        records.append((piece.member, Record(header_at, method, length, crc, piece.end - piece.start)))
        opened.append(src)
    packing._check_unchanged(opened)  # a file read early in the job may have been rewritten since
    return Written(pos, tuple(records))


def _write(out: BinaryIO, data: bytes) -> int:
    if data:
        out.write(data)
    return len(data)


def _name(m: Member) -> tuple[bytes, int]:
    try:
        return m.name.encode("ascii"), _FLAG_DESCRIPTOR
    except UnicodeEncodeError:
        return m.name.encode("utf-8"), _FLAG_DESCRIPTOR | _FLAG_UTF8


def _dos_time(date_time: tuple[int, ...]) -> tuple[int, int]:
    year, month, day, hour, minute, second = date_time
    return hour << 11 | minute << 5 | second // 2, (year - 1980) << 9 | month << 5 | day


def local_header(m: Member, method: int) -> bytes:
    """A local header saying "CRC and sizes follow the data" (bit 3); a zip64 member's says where."""
    name, flags = _name(m)
    dostime, dosdate = _dos_time(m.date_time)
    extra, size32, version = b"", 0, _VERSION
    if m.zip64:  # the 32-bit fields point at the zip64 field; the descriptor then has 8-byte sizes
        extra, size32, version = struct.pack("<HHQQ", 1, 16, 0, 0), 0xFFFFFFFF, _VERSION64
    return _LOCAL.pack(b"PK\x03\x04", version, 0, flags, method, dostime, dosdate, 0, size32, size32,
                       len(name), len(extra)) + name + extra


def descriptor(m: Member, crc: int, compressed: int) -> bytes:
    if m.zip64:
        return struct.pack("<LLQQ", _DESCRIPTOR, crc, compressed, m.size)
    return struct.pack("<LLLL", _DESCRIPTOR, crc, compressed, m.size)


def write_zip(
    out: BinaryIO,
    root: Path,
    files: Iterable[Path],
    *,
    comment: bytes = b"",
    strict: Collection[Path] | Mapping[Path, Signature | None] = (),
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Write `files` (paths inside `root`) as a zip into the stream `out`; return the member count.

    Each file is read once, exactly as large as it was when opened. The files in `strict` (the
    step's own files) must not change until the archive is complete, nor differ from the
    `file_signature` a mapping gives them (taken when they had settled): if one does, FileChanged is
    raised before the zip's central directory is written and nothing more reaches `out`, so an
    upload fed by `out` is never finalized with a torn file. The other members (event logs, state
    files) are taken as they were when opened. `on_bytes(n)` is called as bytes are read.
    A single job of this module's plan: the same bytes a parallel save composes.
    """
    strict = packing._expected(strict)
    members = []
    for path in files:
        planned = member(path, path.relative_to(root).as_posix(), path in strict)
        if not packing.same_version(strict.get(path) or planned.signature, planned.signature):
            raise packing.FileChanged(path, "changed before it was read")
        members.append(planned)
    layout = plan(members)
    written = write_job(out, layout, layout.segments[0], on_bytes=on_bytes)
    out.write(assemble(layout, {0: written}, comment).directory)
    return len(members)


# --- putting the parts together -------------------------------------------------------------------
@dataclass
class _Entry:
    member: Member
    header_offset: int = -1
    method: int = STORED
    crc: int = 0
    compressed: int = 0
    size: int = 0


@dataclass(frozen=True)
class Assembly:
    """What follows the jobs: every segment's length, the descriptors' bytes, the central directory."""

    lengths: tuple[int, ...]  # of each segment, in order
    descriptors: Mapping[int, bytes]  # segment index → the descriptor's bytes
    directory: bytes  # the central directory and end records, after the last segment
    entries: tuple = field(repr=False, default=())

    @property
    def size(self) -> int:
        return sum(self.lengths) + len(self.directory)


def assemble(layout: Layout, written: Mapping[int, Written], comment: bytes = b"") -> Assembly:
    """The descriptors and central directory of `layout`, its jobs written as `written` (by segment)."""
    entries = [_Entry(m) for m in layout.members]
    lengths: list[int] = []
    descriptors: dict[int, bytes] = {}
    offset = 0
    for index, segment in enumerate(layout.segments):
        if isinstance(segment, Job):
            done = written[index]
            for i, rec in done.records:
                entry = entries[i]
                if rec.header_at is not None:
                    entry.header_offset, entry.method = offset + rec.header_at, rec.method
                entry.crc = packing.crc32_combine(entry.crc, rec.crc, rec.size)
                entry.compressed += rec.data_length
                entry.size += rec.size
            lengths.append(done.length)
        else:
            entry = entries[segment.member]
            descriptors[index] = descriptor(entry.member, entry.crc, entry.compressed)
            lengths.append(len(descriptors[index]))
        offset += lengths[-1]
    for entry in entries:
        if entry.header_offset < 0 or entry.size != entry.member.size:
            raise AssertionError(f"{entry.member.name}: the plan did not cover it whole")
    return Assembly(tuple(lengths), descriptors, central_directory(entries, offset, comment), tuple(entries))


def central_directory(entries: list[_Entry], start: int, comment: bytes = b"") -> bytes:
    """The central directory at offset `start` and the end records, zip64 where CPython's zipfile puts them."""
    out = bytearray()
    for entry in entries:
        m = entry.member
        name, flags = _name(m)
        dostime, dosdate = _dos_time(m.date_time)
        wide = []
        size, compressed, offset = entry.size, entry.compressed, entry.header_offset
        if size > ZIP64_LIMIT or compressed > ZIP64_LIMIT:
            wide += [size, compressed]
            size = compressed = 0xFFFFFFFF
        if offset > ZIP64_LIMIT:
            wide.append(offset)
            offset = 0xFFFFFFFF
        extra = struct.pack(f"<HH{len(wide)}Q", 1, 8 * len(wide), *wide) if wide else b""
        version = _VERSION64 if wide or m.zip64 else _VERSION
        out += _CENTRAL.pack(b"PK\x01\x02", version, _UNIX, version, 0, flags, entry.method, dostime, dosdate,
                             entry.crc, compressed, size, len(name), len(extra), 0, 0, 0, m.mode << 16, offset)
        out += name + extra
    count, length = len(entries), len(out)
    if count > 0xFFFF or start > ZIP64_LIMIT or length > ZIP64_LIMIT:
        out += _END64.pack(b"PK\x06\x06", 44, _VERSION64, _VERSION64, 0, 0, count, count, length, start)
        out += _LOCATOR64.pack(b"PK\x06\x07", 0, start + length, 1)
        count, length, start = min(count, 0xFFFF), min(length, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
    out += _END.pack(b"PK\x05\x06", 0, 0, count, count, length, start, len(comment)) + comment
    return bytes(out)

