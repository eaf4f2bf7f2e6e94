"""The hostile suite of %gcs_load: archives built to hurt (bombs, size liars, forged indexes), targets
that get in the way (conflicts, mount points, a full disk) and restores killed half-way.

Every case ends the same way for the user: one line, TARGET_DIR exactly as it was (the whole tree
with its modes), and no staging debris once the next load into that target has run. Everything talks
to the real fake-gcs-server (conftest.emulator_host); small disks are real tmpfs mounts (root only).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from colab_magics.settings import Settings
from colab_magics import packing, restore, runs
from colab_magics.errors import (
    ColabMagicsError,
    ArchiveNotFound,
    ArchiveTooLarge,
    CorruptArchive,
    DiskFull,
    EmptyArchive,
    RestoreConflict,
    RestoreError,
)
from conftest import poll, run_cell

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
FAST = Settings(chunk_size_mb=1, retry_deadline=5, progress=False)
NO_MARGIN = Settings(chunk_size_mb=1, retry_deadline=5, progress=False, restore_free_margin_mb=0)


# --- what "untouched" means ---------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple]:
    """Every path below (and including) root → kind, mode and content hash: a tree compared exactly."""
    found = {".": ("dir", os.lstat(root).st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            key = os.path.normpath(os.path.join(rel, name))
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    found[key] = ("file", st.st_mode, hashlib.sha256(fh.read()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                found[key] = ("link", os.readlink(path))
            else:
                found[key] = ("dir", st.st_mode)
    return found


def debris(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def precious_target(path: Path) -> Path:
    """A TARGET_DIR with files, a subdirectory, a symlink and unusual modes: all must survive."""
    (path / "logs").mkdir(parents=True)
    (path / "model-0.keras").write_bytes(b"precious weights")
    (path / "logs" / "notes.txt").write_text("mine")
    (path / "logs" / "link").symlink_to("../model-0.keras")
    os.chmod(path / "logs", 0o750)
    os.chmod(path / "model-0.keras", 0o640)
    return path


def one_line_error(ip, capsys, line: str, kind: type = ColabMagicsError) -> str:
    """Run a magic that must fail: one line, no traceback, caused by a `kind` error; return the line."""
    capsys.readouterr()
    result = run_cell(ip, line)
    assert not result.success
    assert isinstance(result.error_in_exec.__cause__, kind), repr(result.error_in_exec.__cause__)
    captured = capsys.readouterr()
    text = (captured.out + captured.err).strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    return text


def upload(bucket, name: str, data: bytes) -> str:
    bucket.blob(name).upload_from_string(data)
    return f"gs://{bucket.name}/{name}"


# --- archives built by hand, so they can lie ----------------------------------------------------
def raw_zip(members, flags: int = 0) -> bytes:
    """A zip written byte by byte: members are (name, data, method, crc, declared size); `flags` are
    every member's general-purpose bits (1: encrypted)."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, size in members:
        encoded = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, len(data), size,
                           len(encoded), 0) + encoded + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, method, 0, 0x21, crc, len(data),
                               size, len(encoded), 0, 0, 0, 0, 0o644 << 16, offset) + encoded
    start = len(out)
    out += central + end_record(len(members), len(central), start)
    return bytes(out)


def end_record(entries: int, size: int, offset: int) -> bytes:
    """The end record; a count past 65 535 is written as 0xFFFF, as the count field cannot hold it
    (readers go by the directory's size)."""
    entries = min(entries, 0xFFFF)
    return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, size, offset, 0)


@functools.lru_cache(maxsize=None)
def deflated_zeros(mib: int, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """A raw DEFLATE stream of prefix + `mib` MiB of zeros + suffix, made without compressing them:
    a fully flushed segment of 1 MiB of zeros is the same bytes every time (~1 KiB), so it repeats."""
    def segment(data: bytes) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)

    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (segment(prefix) if prefix else b"") + segment(bytes(MiB)) * mib + c.compress(suffix) + c.flush()


@functools.lru_cache(maxsize=None)
def zeros_crc(mib: int, prefix: bytes = b"", suffix: bytes = b"") -> int:
    crc = zlib.crc32(prefix)
    block = bytes(MiB)
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(suffix, crc)


def zip_bomb(mib: int, declared: int | None = None) -> bytes:
    """One member of `mib` MiB of zeros (~1 KiB per MiB), declaring `declared` bytes (default: the truth)."""
    size = mib * MiB if declared is None else declared
    return raw_zip([("model-1.keras", deflated_zeros(mib), zipfile.ZIP_DEFLATED, zeros_crc(mib), size)])


def targz_bomb(mib: int) -> bytes:
    """A tar.gz of one member declaring (honestly) `mib` MiB of zeros."""
    info = tarfile.TarInfo("model-1.keras")
    info.size = mib * MiB
    header = info.tobuf(tarfile.USTAR_FORMAT)
    end = bytes(1024)  # two zero blocks close a tar
    raw = deflated_zeros(mib, header, end)
    crc = zeros_crc(mib, header, end)
    size = len(header) + mib * MiB + len(end)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + raw + struct.pack("<II", crc, size & 0xFFFFFFFF)


def targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def small_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture()
def tmpfs():
    """Mount a small real tmpfs (root only); unmounted after the test."""
    mounted = []

    def mount(path: Path, size: str = "20m", *, required: bool = True, inodes: int | None = None) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode:
            if required:
                pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
            return path
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


# --- bombs --------------------------------------------------------------------------------------
def test_a_zip_bomb_is_refused_before_a_byte_is_written(ip, bucket, tmp_path, capsys):
    url = upload(bucket, "run1.1.zip", zip_bomb(1024))  # 1 MB declaring 1 GiB
    target = precious_target(tmp_path / "work" / "target")
    before = snapshot(target)
    text = one_line_error(ip, capsys, f"%gcs_load {url} {target}", ArchiveTooLarge)
    assert "declares 1,024 MiB, over 200x its size" in text and "restore_max_ratio" in text
    assert snapshot(target) == before and debris(target) == []


CHILD_LOAD = textwrap.dedent("""
    import json, sys
    from colab_magics import runs
    from colab_magics.settings import Settings
    settings = Settings(chunk_size_mb=1, retry_deadline=10, progress=False)
    try:
        runs.load_run(sys.argv[1], sys.argv[2], settings=settings)
        outcome = "restored"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"outcome": outcome, "peak_kib": int(peak.split()[1])}))
""")


def _child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_a_bomb_lying_about_its_size_stops_there_in_bounded_memory(gcs, bucket, tmp_path):
    """1 MB inflating to 1 GiB while declaring 100 MiB: refused once past 100 MiB, memory stays small."""
    import json

    url = upload(bucket, "run1.1.zip", zip_bomb(1024, declared=100 * MiB))
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    done = subprocess.run([sys.executable, "-c", CHILD_LOAD, url, str(target)], env=_child_env(),
                          capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"peak RSS of a load refusing a 1 GiB bomb: {report['peak_kib'] / 1024:.0f} MiB")
    assert report["outcome"].startswith("ArchiveTooLarge") and "beyond its declared size" in report["outcome"]
    assert report["peak_kib"] < 200 * 1024
    assert snapshot(target) == before and debris(target) == []


def test_a_size_liar_cannot_fill_a_small_disk(gcs, bucket, tmp_path, tmpfs):
    disk = tmpfs(tmp_path / "disk", "20m")
    url = upload(bucket, "run1.1.zip", zip_bomb(64, declared=10))  # declares 10 bytes, inflates to 64 MiB
    target = precious_target(disk / "target")
    before, used = snapshot(target), shutil.disk_usage(disk).used
    with pytest.raises(ArchiveTooLarge, match="beyond its declared size of 10 bytes"):
        runs.load_run(url, target, settings=NO_MARGIN)
    assert snapshot(target) == before and debris(target) == []
    assert shutil.disk_usage(disk).used == used


def test_a_tar_gz_bomb_is_refused(ip, bucket, tmp_path, capsys):
    url = upload(bucket, "run1.1.tar.gz", targz_bomb(1024))
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    text = one_line_error(ip, capsys, f"%gcs_load {url} {target}")
    assert "over 200x its size" in text
    assert snapshot(target) == before and debris(target) == []


def test_a_tar_gz_over_the_cap_is_stopped_while_writing_and_what_was_written_removed(gcs, bucket, tmp_path):
    """Members declaring 40 MiB each: those within the cap are written, then one would pass it."""
    files = {f"model-{i}.keras": bytes(40 * MiB) for i in range(3)}
    url = upload(bucket, "run1.1.tar.gz", targz(files))
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    with pytest.raises(ArchiveTooLarge, match=r"expands to more than \d+ MiB, over 200x its size"):
        runs.load_run(url, target, settings=FAST)
    assert snapshot(target) == before and debris(target) == []


def test_a_forged_end_record_is_refused_after_a_bounded_read(ip, bucket, tmp_path, capsys):
    """An 80 MiB object whose end record claims an 80 MiB index: only the tail is ever fetched."""
    size = 80 * MiB
    url = upload(bucket, "run1.1.zip", bytes(size - 22) + end_record(1, size - 22, 0))
    blob = bucket.get_blob("run1.1.zip")
    fetched = []

    def fetch(start, end):
        data = blob.download_as_bytes(start=start, end=end, checksum=None)
        fetched.append(len(data))
        return data

    with pytest.raises(CorruptArchive, match="claims an index of 80 MiB"):
        packing.read_zip_index(blob.size, fetch)
    assert sum(fetched) <= packing.INDEX_TAIL

    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    assert "claims an index" in one_line_error(ip, capsys, f"%gcs_load {url} {target}")
    assert snapshot(target) == before and debris(target) == []


# --- archives of too many members, too deep, named twice, encrypted or corrupt -----------------
def load_in_child(url: str, target: Path, timeout: float = 120) -> dict:
    """Restore in a fresh process, killed after `timeout` s (the time bound); its outcome and peak RSS."""
    import json

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CHILD_LOAD, url, str(target)], env=_child_env(),
                          capture_output=True, text=True, timeout=timeout)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["seconds"] = time.monotonic() - started
    return report


def hostile_restore(bucket, tmp_path, name: str, data: bytes, expected: str, peak_mib: int = 200) -> str:
    """Restore an archive built to hurt in a child process: refused in one line (ending `expected`'s
    class), within the memory bound and load_in_child's time bound, the target exactly as it was."""
    url = upload(bucket, name, data)
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    report = load_in_child(url, target)
    print(f"{name}: {report['outcome'][:140]} ({report['seconds']:.1f} s, peak {report['peak_kib'] / 1024:.0f} MiB)")
    assert report["outcome"].startswith(expected + ":") and "\n" not in report["outcome"], report["outcome"]
    assert report["peak_kib"] < peak_mib * 1024
    assert snapshot(target) == before and debris(target) == []
    return report["outcome"]


def empty_files_targz(count: int) -> bytes:
    """A tar.gz of `count` empty files f0000000, f0000001, ...: 800 000 of them make ~7 MB.

    Built from one ustar header whose name and checksum are patched (tarfile takes a minute for this)."""
    template = tarfile.TarInfo("f0000000")
    template.mtime, template.mode = 0, 0o644
    header = bytearray(template.tobuf(tarfile.USTAR_FORMAT))
    header[148:156] = b" " * 8
    base = sum(header) - sum(b"f0000000")
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # a gzip stream
    out, block = [], bytearray()
    for i in range(count):
        name = b"f%07d" % i
        header[0:8] = name
        header[148:156] = b"%06o\0 " % (base + sum(name))
        block += header
        if len(block) >= 4 * MiB:
            out.append(packer.compress(block))
            block.clear()
    out.append(packer.compress(bytes(block) + bytes(1024)) + packer.flush())
    return b"".join(out)


def test_a_tar_gz_of_800_000_empty_files_is_refused_at_the_member_cap(gcs, bucket, tmp_path):
    """The issue's 7 MB archive (158 s of CPU and 800 MiB before): the 100 001st member is refused."""
    data = empty_files_targz(800_000)
    assert len(data) < 10 * MiB
    outcome = hostile_restore(bucket, tmp_path, "run1.1.tar.gz", data, "ArchiveTooLarge", peak_mib=250)
    assert "holds more than the 100,000 files and directories a restore takes" in outcome
    assert "restore_max_files" in outcome


def test_a_zip_of_too_many_members_is_refused_from_its_index_alone(gcs, bucket, tmp_path):
    """Counted from the directory's headers ("more than": the count stops at the cap), before zipfile
    builds an object per member and before anything is written."""
    data = raw_zip([(f"f{i:07d}", b"", zipfile.ZIP_STORED, 0, 0) for i in range(100_001)])
    outcome = hostile_restore(bucket, tmp_path, "run1.1.zip", data, "ArchiveTooLarge")
    assert "holds more than the 100,000 files and directories a restore takes" in outcome


def test_the_member_cap_is_a_setting(ip, bucket, tmp_path, capsys, monkeypatch):
    url = upload(bucket, "run1.1.zip", small_zip({f"part-{i}.bin": b"w" for i in range(50)}))
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    ip.run_line_magic("config", "ColabMagics.restore_max_files = 49")
    text = one_line_error(ip, capsys, f"%gcs_load {url} {target}", ArchiveTooLarge)
    assert "holds more than the 49 files and directories a restore takes" in text and "restore_max_files" in text
    assert snapshot(target) == before and debris(target) == []
    ip.run_line_magic("config", "ColabMagics.restore_max_files = 0")  # no cap
    ip.run_line_magic("gcs_load", f"{url} {target}")
    monkeypatch.setenv("COLAB_MAGICS_RESTORE_MAX_FILES", "10")
    with pytest.raises(ArchiveTooLarge, match="holds more than the 10 files"):
        runs.load_run(url, tmp_path / "other")


def test_many_small_files_that_would_not_fit_are_refused_before_writing(gcs, bucket, tmp_path, tmpfs):
    """3 000 files of 4 097 bytes declare 12 MiB, but each takes two pages: with the per-file overhead
    counted they need 24 MiB, and a 20 MiB disk is refused before a byte is written."""
    disk = tmpfs(tmp_path / "disk", "20m")
    url = upload(bucket, "run1.1.zip", small_zip({f"part-{i:04d}.bin": os.urandom(4097) for i in range(3000)}))
    target = precious_target(disk / "target")
    before, used = snapshot(target), shutil.disk_usage(disk).used
    with pytest.raises(DiskFull, match="it needs 23 MiB and 20 MiB are free"):
        runs.load_run(url, target, settings=NO_MARGIN)
    assert snapshot(target) == before and debris(target) == [] and shutil.disk_usage(disk).used == used


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_a_member_1_500_levels_deep_is_one_line(gcs, bucket, tmp_path, fmt):
    """A RecursionError before."""
    name = "d/" * 1500 + "model-1.keras"
    data = small_zip({name: b"w"}) if fmt == "zip" else targz({name: b"w"})
    outcome = hostile_restore(bucket, tmp_path, f"run1.1.{fmt}", data, "UnsafeArchive")
    assert "is 1,501 levels deep (at most 128)" in outcome and len(outcome) < 300


def test_a_tar_member_named_twice_is_one_line_not_an_overwrite(ip, bucket, tmp_path, capsys):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for content in (b"the real weights", b"a second copy"):
            info = tarfile.TarInfo("model-1.keras")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    outcome = hostile_restore(bucket, tmp_path, "run1.1.tar.gz", buffer.getvalue(), "CorruptArchive")
    assert "'model-1.keras' appears twice" in outcome
    target = tmp_path / "target"
    assert "appears twice" in one_line_error(ip, capsys, f"%gcs_load gs://{bucket.name}/run1.1.tar.gz {target}",
                                             CorruptArchive)


@pytest.mark.parametrize("case", ["encrypted", "not deflate data", "truncated deflate data"])
def test_an_encrypted_or_corrupt_zip_member_is_one_line(ip, bucket, tmp_path, capsys, case):
    """A raw RuntimeError / zlib.error before."""
    good = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = good.compress(b"weights " * 1000) + good.flush()
    crc = zlib.crc32(b"weights " * 1000)
    member = {"encrypted": ("model-1.keras", deflated, zipfile.ZIP_DEFLATED, crc, 8000),
              "not deflate data": ("model-1.keras", b"\xff" * 64, zipfile.ZIP_DEFLATED, crc, 8000),
              "truncated deflate data": ("model-1.keras", deflated[:20], zipfile.ZIP_DEFLATED, crc, 8000)}[case]
    data = raw_zip([member], flags=1 if case == "encrypted" else 0)
    outcome = hostile_restore(bucket, tmp_path, "run1.1.zip", data, "CorruptArchive")
    assert {"encrypted": "is encrypted", "not deflate data": "is not valid deflate data",
            "truncated deflate data": "is truncated"}[case] in outcome
    target = tmp_path / "target"
    assert "corrupt" in one_line_error(ip, capsys, f"%gcs_load gs://{bucket.name}/run1.1.zip {target}",
                                       CorruptArchive) or case == "encrypted"


# --- targets that get in the way ----------------------------------------------------------------
@pytest.mark.parametrize("mine, theirs", [
    ("train", {"train/model-1.keras": b"w"}),  # a file where the archive has a directory
    ("model-1.keras/", {"model-1.keras": b"w"}),  # a directory where the archive has a file
])
def test_a_file_where_the_archive_has_a_directory_is_one_line(ip, bucket, tmp_path, capsys, mine, theirs):
    url = upload(bucket, "run1.1.zip", small_zip(theirs))
    target = precious_target(tmp_path / "target")
    if mine.endswith("/"):
        (target / mine).mkdir()
        (target / mine / "inner").write_bytes(b"x")
    else:
        (target / mine).write_bytes(b"a file")
    before = snapshot(target)
    text = one_line_error(ip, capsys, f"%gcs_load {url} {target}", RestoreConflict)
    assert f"{target / mine.rstrip('/')} is a" in text and "was left as it was" in text
    assert snapshot(target) == before and debris(target) == []


def test_a_mount_point_as_target_is_refused_before_downloading(ip, bucket, tmp_path, capsys, tmpfs, monkeypatch):
    url = upload(bucket, "run1.1.zip", small_zip({"model-1.keras": b"w"}))
    target = precious_target(tmpfs(tmp_path / "mnt") / "inner").parent
    before = snapshot(target)
    monkeypatch.setattr(packing, "read_zip_index", lambda *a, **k: pytest.fail("downloaded before refusing"))
    text = one_line_error(ip, capsys, f"%gcs_load {url} {target}", RestoreError)
    assert "is a mount point" in text and str(target / "run") in text
    assert snapshot(target) == before and debris(target) == []


def test_a_mount_inside_the_target_is_refused_before_downloading(ip, bucket, tmp_path, capsys, tmpfs, monkeypatch):
    url = upload(bucket, "run1.1.zip", small_zip({"model-1.keras": b"w"}))
    target = precious_target(tmp_path / "target")
    (tmpfs(target / "data") / "x").write_bytes(b"on another disk")
    before = snapshot(target)
    monkeypatch.setattr(packing, "read_zip_index", lambda *a, **k: pytest.fail("downloaded before refusing"))
    text = one_line_error(ip, capsys, f"%gcs_load {url} {target}", RestoreError)
    assert f"{target / 'data'} is on another filesystem" in text
    assert snapshot(target) == before and debris(target) == []


def test_a_target_whose_parent_is_read_only_is_refused_before_downloading(ip, bucket, tmp_path, capsys, tmpfs,
                                                                          monkeypatch):
    url = upload(bucket, "run1.1.zip", small_zip({"model-1.keras": b"w"}))
    disk = tmpfs(tmp_path / "ro")
    target = precious_target(disk / "target")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, timeout=30)
    before = snapshot(target)
    monkeypatch.setattr(packing, "read_zip_index", lambda *a, **k: pytest.fail("downloaded before refusing"))
    text = one_line_error(ip, capsys, f"%gcs_load {url} {target}", RestoreError)
    assert f"cannot create a directory in {disk} (Read-only file system)" in text
    assert snapshot(target) == before and debris(target) == []


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_disk_full_while_restoring_is_one_line_and_leaves_the_target(gcs, bucket, tmp_path, tmpfs, fmt):
    """3 000 files of 100 bytes on a disk of 1 000 inodes: the bytes fit (their overhead counted), the
    inodes run out while writing."""
    disk = tmpfs(tmp_path / "disk", "20m", inodes=1000)
    files = {f"part-{i:04d}.bin": os.urandom(100) for i in range(3000)}
    url = upload(bucket, f"run1.1.{fmt}", small_zip(files) if fmt == "zip" else targz(files))
    target = precious_target(disk / "target")
    before, used = snapshot(target), shutil.disk_usage(disk).used
    with pytest.raises(DiskFull, match=f"disk full while restoring {url} into {target}: .* MiB free now"):
        runs.load_run(url, target, settings=NO_MARGIN)
    assert snapshot(target) == before and debris(target) == []
    assert shutil.disk_usage(disk).used == used


def test_an_archive_larger_than_the_free_space_is_refused_before_writing(gcs, bucket, tmp_path, tmpfs):
    disk = tmpfs(tmp_path / "disk", "20m")
    url = upload(bucket, "run1.1.zip", zip_bomb(30))  # 30 MiB declared, honestly
    target = precious_target(disk / "target")
    before = snapshot(target)
    with pytest.raises(DiskFull, match="it needs 30 MiB and 20 MiB are free"):
        runs.load_run(url, target, settings=NO_MARGIN)
    assert snapshot(target) == before and debris(target) == []


def test_a_name_too_long_for_the_filesystem_is_one_line(ip, bucket, tmp_path, capsys):
    url = upload(bucket, "run1.1.zip", small_zip({"d" * 300 + "/model-1.keras": b"w"}))
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    assert "is too long for this filesystem" in one_line_error(ip, capsys, f"%gcs_load {url} {target}", RestoreError)
    assert snapshot(target) == before and debris(target) == []


def test_an_empty_archive_says_so(ip, bucket, tmp_path, capsys):
    url = upload(bucket, "run1.1.zip", small_zip({}))
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    assert f"{url} holds no files" in one_line_error(ip, capsys, f"%gcs_load {url} {target}", EmptyArchive)
    assert snapshot(target) == before and debris(target) == []


def test_an_archive_deleted_meanwhile_is_not_a_missing_bucket(gcs, bucket, tmp_path, monkeypatch):
    url = upload(bucket, "run1.1.zip", small_zip({"model-1.keras": b"w"}))
    real = packing.read_zip_index

    def delete_first(*args, **kwargs):  # the object goes away between the listing and the download
        bucket.blob("run1.1.zip").delete()
        return real(*args, **kwargs)

    monkeypatch.setattr(packing, "read_zip_index", delete_first)
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    with pytest.raises(ArchiveNotFound, match=rf"^{url} no longer exists \(deleted meanwhile\?\)"):
        runs.load_run(url, target, settings=FAST)
    assert snapshot(target) == before and debris(target) == []


# --- modes --------------------------------------------------------------------------------------
def test_a_created_target_follows_the_umask_and_an_existing_one_keeps_its_mode(gcs, bucket, tmp_path):
    url = upload(bucket, "run1.1.zip", small_zip({"model-1.keras": b"w"}))
    previous = os.umask(0o027)
    try:
        runs.load_run(url, tmp_path / "new", settings=FAST)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o711)
    os.chmod(existing, 0o711)
    runs.load_run(url, existing, settings=FAST)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o711


# --- the swap and its debris --------------------------------------------------------------------
KILL_CHILD = textwrap.dedent("""
    import sys
    from colab_magics import runs
    from colab_magics.settings import Settings
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    client = storage.Client(project="p", credentials=AnonymousCredentials())
    settings = Settings(chunk_size_mb=1, retry_deadline=10, progress=False)
    print("go", flush=True)
    runs.load_run(sys.argv[1], sys.argv[2], settings=settings, client=client)
    print("done", flush=True)
""")


def run_child(url: str, target: Path, kill_at=None) -> float:
    """Restore in a child process and return the seconds from its start to its end. `kill_at`: None
    (let it finish), seconds after its start, or a debris state ("restoring", "restored") whose
    directory appearing beside the target triggers the SIGKILL."""
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, url, str(target)], env=_child_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout.readline().strip() == "go"
        started = time.monotonic()
        if kill_at is None:
            assert child.stdout.readline().strip() == "done"
        else:
            if isinstance(kill_at, str):
                poll(lambda: child.poll() is not None or any(
                    n.startswith(f".{target.name}.{kill_at}-") for n in os.listdir(target.parent)),
                    60, interval=0.001, message=f"a {kill_at} directory")
            else:
                time.sleep(kill_at)  # the kill's moment is the thing tested, not a readiness wait
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        return time.monotonic() - started
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        child.stdout.close()


def many_files(root: Path, tag: bytes, names) -> Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tag + name.encode())
    return root


def test_a_restore_killed_at_any_point_leaves_the_old_or_the_new_tree(gcs, bucket, tmp_path, tmpfs):
    """10 000 new files over 10 000 old ones (half the names shared), SIGKILLed while extracting, as
    the swap begins, and at random moments.

    On a tmpfs where root may mount one (file creation on a busy disk is slow), else in tmp_path.
    """
    tmp_path = tmpfs(tmp_path / "fast", "256m", required=False)
    names = [f"shard-{i % 20}/file-{i}.bin" for i in range(10_000)]
    url = upload(bucket, "run1.2.zip", small_zip({n: b"new" + n.encode() for n in names}))
    pristine = many_files(tmp_path / "pristine", b"old", [f"shard-{i % 20}/file-{i}.bin" for i in range(5_000, 15_000)])
    expected = tmp_path / "expected"
    shutil.copytree(pristine, expected, symlinks=True)
    seconds = run_child(url, expected)  # a whole restore, timed as the killed ones will run
    old, new = snapshot(pristine), snapshot(expected)
    target = tmp_path / "work" / "target"
    shutil.copytree(pristine, target, symlinks=True)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    outcomes = []
    for kill_at in ["restoring", "restored", *(rng.uniform(0, seconds) for _ in range(3))]:
        run_child(url, target, kill_at)
        now = snapshot(target)
        assert now in (old, new), f"a kill left a mix of old and new (seed {seed})"
        outcomes.append("new" if now == new else "old")
        if now == new:  # start the next kill from the old tree again (the debris stays for the next load)
            shutil.rmtree(target)
            shutil.copytree(pristine, target, symlinks=True)
    print(f"kill outcomes: {outcomes}; one restore of 10 000 files over 10 000 took {seconds:.1f} s")
    runs.load_run(url, target, settings=FAST)
    assert snapshot(target) == new and debris(target) == []


def test_a_swap_killed_between_its_two_renames_is_rolled_forward(gcs, bucket, tmp_path, monkeypatch):
    """Where the filesystem has no exchange, the names record the swap: the next load finishes it."""
    url = upload(bucket, "run1.1.zip", small_zip({"model-1.keras": b"new"}))
    target = precious_target(tmp_path / "target")
    monkeypatch.setattr(restore, "exchange", lambda a, b: False)
    expected = tmp_path / "expected"
    shutil.copytree(target, expected, symlinks=True)
    runs.load_run(url, expected, settings=FAST)  # the two-rename path, whole
    assert (expected / "model-1.keras").read_bytes() == b"new" and debris(expected) == []
    new = snapshot(expected)

    # the state right after `rename(target → replaced)`, as a kill would leave it
    os.rename(target, target.with_name(".target.replaced-0a1b"))
    shutil.copytree(expected, target.with_name(".target.restored-0a1b"), symlinks=True)
    restore.recover(target)
    assert snapshot(target) == new and debris(target) == []


def test_a_live_restore_is_not_mistaken_for_debris(tmp_path):
    target = precious_target(tmp_path / "target")
    staging, lock = restore._make_staging(target)  # another restore, still running
    try:
        (tmp_path / ".target.restoring-dead").mkdir()  # a killed one
        restore.recover(target)
        assert debris(target) == [staging.name]
    finally:
        os.close(lock)
        shutil.rmtree(staging)


def test_a_file_named_like_debris_is_left_alone_and_does_not_break_a_load(gcs, bucket, tmp_path):
    """Only directories are a killed restore's debris; another file of that name is not ours."""
    url = upload(bucket, "run1.1.zip", small_zip({"model-1.keras": b"new"}))
    target = precious_target(tmp_path / "target")
    (tmp_path / ".target.restoring-0a1b").write_bytes(b"not ours")
    runs.load_run(url, target, settings=FAST)
    assert (target / "model-1.keras").read_bytes() == b"new"
    assert (tmp_path / ".target.restoring-0a1b").read_bytes() == b"not ours"


def test_debris_of_the_previous_version_is_removed_by_the_next_load(gcs, bucket, tmp_path):
    url = upload(bucket, "run1.1.zip", small_zip({"model-1.keras": b"new"}))
    target = precious_target(tmp_path / "target")
    many_files(tmp_path / ".target.restoring-k2_x9q1z", b"half", ["a", "b/c"])  # mkdtemp's names
    runs.load_run(url, target, settings=FAST)
    assert debris(target) == [] and (target / "model-0.keras").read_bytes() == b"precious weights"


def test_a_target_that_is_a_file_is_refused(gcs, bucket, tmp_path):
    url = upload(bucket, "run1.1.zip", small_zip({"model-1.keras": b"w"}))
    (tmp_path / "target").write_bytes(b"a file")
    with pytest.raises(RestoreError, match="exists and is not a directory"):
        runs.load_run(url, tmp_path / "target", settings=FAST)
    assert (tmp_path / "target").read_bytes() == b"a file"


def test_where_hard_links_are_impossible_the_kept_files_are_copied(gcs, bucket, tmp_path, monkeypatch):
    """Some FUSE and network filesystems refuse link(2) with EPERM: the kept files are copied instead."""
    import errno

    url = upload(bucket, "run1.1.zip", small_zip({"model-1.keras": b"new", "logs/notes.txt": b"theirs"}))
    target = precious_target(tmp_path / "target")

    def no_links(src, dst, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted", src)

    monkeypatch.setattr(os, "link", no_links)
    runs.load_run(url, target, settings=FAST)
    assert (target / "model-0.keras").read_bytes() == b"precious weights"
    assert stat.S_IMODE((target / "model-0.keras").stat().st_mode) == 0o640
    assert (target / "logs" / "notes.txt").read_bytes() == b"theirs"  # the archive's file wins
    assert os.readlink(target / "logs" / "link") == "../model-0.keras"
    assert stat.S_IMODE((target / "logs").stat().st_mode) == 0o750
    assert debris(target) == []
