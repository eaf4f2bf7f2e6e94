"""One archive, many streams: a save of a big archive goes as parallel parts composed into the one zip.

Real fake-gcs-server (conftest), real files; faults and slow connections come from a real TCP proxy
(tests/netproxy.py) in front of an emulator that hands out the proxy's URL for uploads. The part size
and the parallel threshold are lowered here (16 MiB and 64 MiB by default) so the archives stay small.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import textwrap
import zipfile
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from IPython.core.error import UsageError

from colab_magics import composite, packing, runs, ziplayout
from colab_magics.errors import CheckpointChanging, ColabMagicsError, InvalidBucketURL, InvalidValue
from colab_magics.settings import Settings
from conftest import poll, sigkill_mid_way
from netproxy import Answer, Cut, Slow

KiB, MiB = 1024, 1024 * 1024
FAST = Settings(chunk_size_mb=1, retry_deadline=10, progress=False)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def small_parts(monkeypatch):
    """Jobs of at least 128 KiB, parallel from 512 KiB up."""
    monkeypatch.setattr(composite, "PART_MIN", 128 * KiB)
    monkeypatch.setattr(composite, "PARALLEL_MIN", 512 * KiB)


def write(path: Path, data: bytes | int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(data) if isinstance(data, int) else data)
    return path


def text(size: int, seed: int = 0) -> bytes:
    """Compressible bytes (deflated in the archive)."""
    words = random.Random(seed).choices([b"loss", b"step", b"0.125", b"epoch", b"lr", b"\n"], k=size // 3)
    return b" ".join(words)[:size]


def hf_run(root: Path) -> Path:
    """A Hugging Face-shaped run: a big shard larger than any part, shards that straddle part
    boundaries, compressible files, an empty file and a non-ASCII name."""
    write(root / "config.json", text(3_000, 1))
    write(root / "checkpoint-7" / "empty.txt", b"")
    write(root / "checkpoint-7" / "model.safetensors", 3 * MiB + 12_345)
    for i in range(6):
        write(root / "checkpoint-7" / f"optimizer-{i}.bin", 300_000 + 7_777 * i)
    write(root / "checkpoint-7" / "trainer_state.json", text(500_000, 2))
    write(root / "checkpoint-7" / "notes ü.txt", "ünïcode".encode() * 10)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def names(bucket) -> list[str]:
    return sorted(blob.name for blob in bucket.client.list_blobs(bucket.name))


def check_archive(data: bytes, run_dir: Path, tmp_path: Path) -> None:
    """The archive is one valid zip for zipfile and unzip, holding run_dir byte for byte."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert {n: zf.read(n) for n in zf.namelist()} == tree(run_dir)
    path = tmp_path / "archive.zip"
    path.write_bytes(data)
    tested = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# --- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("streams", [1, 2, 8])
def test_round_trip_at_1_2_and_8_streams(streams, small_parts, bucket, tmp_path):
    run_dir = hf_run(tmp_path / "run1")
    saved = runs.save_run(run_dir, f"gs://{bucket.name}/exp", settings=FAST.replace(streams=streams))

    assert isinstance(saved, runs.Saved) and saved.url == f"gs://{bucket.name}/exp/run1.7.zip"
    assert (saved.parts == 0) == (streams == 1) and (streams == 1 or saved.parts >= streams)
    assert names(bucket) == ["exp/run1.7.zip"]  # no part left
    blob = bucket.get_blob("exp/run1.7.zip")
    assert blob.size == saved.size and blob.content_type == "application/zip"
    check_archive(blob.download_as_bytes(), run_dir, tmp_path)
    for reads in (1, 8):  # %gcs_load as one stream, and as parallel ranged reads
        back = tmp_path / f"back-{reads}"
        restored = runs.load_run(f"gs://{bucket.name}/exp/run1", back, settings=FAST.replace(streams=reads))
        assert tree(back) == tree(run_dir) and restored.step == 7


def test_zip64_records_of_a_parallel_archive_are_read_everywhere(small_parts, bucket, tmp_path, monkeypatch):
    """Members and offsets past the zip64 limits (lowered here: the real ones need 2 GiB) are written
    as CPython's zipfile writes them, and read back by zipfile, unzip and the extractor."""
    monkeypatch.setattr(ziplayout, "ZIP64_MEMBER", 0)
    monkeypatch.setattr(ziplayout, "ZIP64_LIMIT", 100_000)
    run_dir = hf_run(tmp_path / "run1")
    saved = runs.save_run(run_dir, bucket.name, settings=FAST.replace(streams=4))
    assert saved.parts > 4
    check_archive(bucket.blob("run1.7.zip").download_as_bytes(), run_dir, tmp_path)


def test_33_or_more_parts_are_composed_in_nested_calls(small_parts, proxied_gcs, tmp_path, monkeypatch):
    monkeypatch.setattr(composite, "PART_MIN", 32 * KiB)
    run_dir = tmp_path / "run1"
    for i in range(45):  # over 64 KiB (smaller files are always deflated, hence never cut)
        write(run_dir / f"model-{i + 1:05d}-of-00045.safetensors", 70 * KiB + i)
    write(run_dir / "model-3.pt", 100 * KiB)
    bucket = proxied_gcs.bucket

    saved = runs.save_run(run_dir, bucket.name, settings=FAST.replace(streams=40))

    assert saved.parts > composite.MAX_COMPOSE
    composes = [r for r in proxied_gcs.proxy.requests if r.method == "POST" and "/compose" in r.target.split("?")[0]]
    assert len(composes) >= 3  # at least two groups of <= 32, then the archive of them
    assert proxied_gcs.names() == ["run1.3.zip"]
    check_archive(bucket.blob("run1.3.zip").download_as_bytes(), run_dir, tmp_path)


# --- failures leave nothing ---------------------------------------------------------------------
def second_upload_session(action):
    """A proxy fault: `action` for every request of the second resumable upload that sends data."""
    sessions: list[str] = []

    def fault(request):
        if request.method != "PUT" or "upload_id=" not in request.target:
            return None
        upload = parse_qs(urlsplit(request.target).query)["upload_id"][0]
        if upload not in sessions:
            sessions.append(upload)
        return action if len(sessions) > 1 and upload == sessions[1] else None

    return fault


@pytest.mark.parametrize("action, said", [
    (Cut(after=50_000), "does not answer after retrying"),
    (Answer(429, {"error": {"code": 429, "message": "The rate of change requests to the object exceeds the rate "
                            "limit.", "errors": [{"reason": "rateLimitExceeded"}]}}), "HTTP 429 (a rate or quota limit)"),
], ids=["cut-every-time", "quota"])
def test_a_part_that_fails_mid_way_fails_the_save_in_one_line_and_leaves_nothing(action, said, small_parts,
                                                                                  proxied_gcs, tmp_path):
    run_dir = tmp_path / "run1"
    for i in range(4):
        write(run_dir / f"model-00{i}-of-004.safetensors", 400 * KiB)
    write(run_dir / "model-9.pt", 10 * KiB)
    proxied_gcs.proxy.fault = second_upload_session(action)
    settings = Settings(chunk_size_mb=1, retry_deadline=4, progress=False, streams=4)

    with pytest.raises(ColabMagicsError) as failed:
        runs.save_run(run_dir, proxied_gcs.bucket.name, settings=settings)

    assert "\n" not in str(failed.value) and "run1.9.zip" in str(failed.value) and said in str(failed.value)
    assert proxied_gcs.names() == []  # no archive, no part
    proxied_gcs.proxy.fault = None
    assert isinstance(runs.save_run(run_dir, proxied_gcs.bucket.name, settings=settings), runs.Saved)


SAVE_SCRIPT = textwrap.dedent("""
    import sys
    from colab_magics import composite, runs
    from colab_magics.settings import Settings
    composite.PART_MIN, composite.PARALLEL_MIN = 128 * 1024, 512 * 1024
    print(runs.save_run(sys.argv[1], sys.argv[2], settings=Settings(streams=4, chunk_size_mb=1, progress=False)))
""")


def test_a_save_killed_mid_way_leaves_parts_that_cleanup_removes(small_parts, proxied_gcs, tmp_path):
    run_dir = tmp_path / "run1"
    write(run_dir / "model-5.pt", 2 * MiB)
    first: list[str] = []

    def slow_but_the_first(request):  # one part done, the others crawling
        if request.method == "PUT" and "upload_id=" in request.target:
            first[:] = first or [request.target]
            return None if request.target == first[0] else Slow(64 * KiB)
        return None

    proxied_gcs.proxy.fault = slow_but_the_first
    env = dict(os.environ, PYTHONPATH=str(ROOT), STORAGE_EMULATOR_HOST=proxied_gcs.host)
    url = f"gs://{proxied_gcs.bucket.name}/exp"
    child = subprocess.Popen([sys.executable, "-c", SAVE_SCRIPT, str(run_dir), url], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sigkill_mid_way(child, lambda: any(composite.is_part(n) for n in proxied_gcs.names()), 60, message="a part in the bucket")
    left = proxied_gcs.names()
    assert left and all(composite.is_part(n) for n in left) and "exp/run1.5.zip" not in left
    assert runs.list_archives(f"gs://{proxied_gcs.bucket.name}", recursive=True) == []  # parts are no archives
    proxied_gcs.proxy.fault = None

    cleaned = subprocess.run([sys.executable, "-m", "colab_magics.cli", "cleanup", url], env=env,
                             capture_output=True, text=True, timeout=60)

    assert cleaned.returncode == 0, cleaned.stderr
    assert f"Removed {len(left)} part(s)" in cleaned.stdout
    assert proxied_gcs.names() == []


def test_the_next_save_removes_old_parts_and_leaves_young_ones(small_parts, bucket, tmp_path, monkeypatch):
    debris = f"exp/{composite.PARTS_FOLDER}/20200101T000000-0123456789ab/run1.999.zip"  # named like an archive
    bucket.blob(debris).upload_from_string(b"left by a killed save")
    run_dir = hf_run(tmp_path / "run1")
    url = f"gs://{bucket.name}/exp"
    assert runs.list_archives(url, recursive=True) == [] and runs.list_archives(url, "run1") == []

    runs.save_run(run_dir, url, settings=FAST.replace(streams=4))
    assert debris in names(bucket)  # younger than PARTS_MAX_AGE: a save may be using it

    monkeypatch.setattr(composite, "PARTS_MAX_AGE", timedelta(0))
    write(run_dir / "checkpoint-8" / "model.safetensors", MiB)
    runs.save_run(run_dir, url, keep=1, settings=FAST.replace(streams=4))
    assert names(bucket) == ["exp/run1.8.zip"]


# --- consistency, per part ----------------------------------------------------------------------
def test_a_cut_file_rewritten_while_read_is_read_again_and_composed_whole(small_parts, bucket, tmp_path):
    from test_consistency import opened_by_me, rewrite, which_version

    import threading

    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    ckpt = run_dir / "model-5.pt"
    rewrite(ckpt, 1, 6)
    write(run_dir / "config.json", text(200_000))

    def rewrite_once_while_read():
        poll(lambda: opened_by_me(ckpt), 60, interval=0.001, message="the save to open the file")
        rewrite(ckpt, 2, 6)

    writer = threading.Thread(target=rewrite_once_while_read, daemon=True)
    writer.start()
    saved = runs.save_run(run_dir, bucket.name, settings=FAST.replace(streams=4))
    writer.join(timeout=60)
    assert isinstance(saved, runs.Saved) and saved.parts and saved.reread and set(saved.reread) == {"model-5.pt"}
    assert names(bucket) == ["run1.5.zip"]
    runs.load_run(saved.url, tmp_path / "back", settings=FAST)
    assert which_version((tmp_path / "back" / "model-5.pt").read_bytes(), 6, range(1, 3)) == 2


def test_a_neighbour_that_never_settles_fails_the_save_and_leaves_nothing(small_parts, bucket, tmp_path):
    from test_consistency import rewrite

    import threading

    run_dir = tmp_path / "run1"
    write(run_dir / "model-5.pt", 2 * MiB)
    last = run_dir / "last.pt"
    rewrite(last, 0, 1)
    stop = threading.Event()

    def keep_rewriting():
        v = 0
        while not stop.is_set():
            v += 1
            rewrite(last, v, 1)

    writer = threading.Thread(target=keep_rewriting, daemon=True)
    writer.start()
    try:
        with pytest.raises(CheckpointChanging) as failed:
            runs.save_run(run_dir, bucket.name, settings=FAST.replace(streams=4))
    finally:
        stop.set()
        writer.join(timeout=60)
    assert str(last) in str(failed.value) and "\n" not in str(failed.value)
    assert names(bucket) == []


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("streams", [0, 10_000, -1, True, 2.5])
def test_a_bad_stream_count_is_one_line_before_anything_is_read(streams, bucket, tmp_path):
    run_dir = hf_run(tmp_path / "run1")
    with pytest.raises(InvalidValue, match=r"^streams= must be a whole number from 1 to 64") as refused:
        runs.save_run(run_dir, bucket.name, settings=FAST.replace(streams=streams))
    assert refused.value.param == "streams" and "\n" not in str(refused.value)
    assert names(bucket) == []


def test_bad_stream_counts_in_the_magics_the_cli_and_the_environment(ip, bucket, tmp_path, monkeypatch):
    run_dir = hf_run(tmp_path / "run1")
    with pytest.raises(UsageError, match=r"^--streams must be a whole number from 1 to 64, not 0"):
        ip.run_line_magic("gcs_save", f"{run_dir} gs://{bucket.name} --streams 0")
    with pytest.raises(UsageError, match=r"^--streams must be a whole number from 1 to 64, not 10000"):
        ip.run_cell_magic("gcs_archive", f"{run_dir} gs://{bucket.name} --streams 10000", "pass")
    ip.run_line_magic("config", "ColabMagics.streams = 0")
    with pytest.raises(UsageError, match="must be a whole number from 1 to 64"):
        ip.run_line_magic("gcs_save", f"{run_dir} gs://{bucket.name}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cli = subprocess.run([sys.executable, "-m", "colab_magics.cli", "save", str(run_dir), bucket.name,
                          "--streams", "10000"], env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and cli.stderr.count("\n") == 1 and "--streams must be" in cli.stderr
    env["COLAB_MAGICS_STREAMS"] = "0"
    run = subprocess.run([sys.executable, "-m", "colab_magics.cli", "run", str(run_dir), f"gs://{bucket.name}",
                          "--", "true"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "streams" in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert names(bucket) == []


def test_names_cloud_storage_refuses_are_one_line_and_parts_never_outgrow_the_limit(small_parts, bucket, tmp_path):
    odd = hf_run(tmp_path / "run\n1")
    with pytest.raises(InvalidBucketURL, match="line break") as refused:
        runs.save_run(odd, bucket.name, settings=FAST.replace(streams=4))
    assert "\n" not in str(refused.value).replace("run\\n1", "")
    run_dir = hf_run(tmp_path / "run1")
    with pytest.raises(InvalidBucketURL, match="over Cloud Storage's 1024"):
        runs.save_run(run_dir, f"gs://{bucket.name}/{'p' * 1100}", settings=FAST.replace(streams=4))
    assert names(bucket) == []
    # an archive name that fits, whose parts' longer names would not: one stream instead
    prefix = "q" * (1024 - len("/run1.7.zip") - 10)
    saved = runs.save_run(run_dir, f"gs://{bucket.name}/{prefix}", settings=FAST.replace(streams=4))
    assert isinstance(saved, runs.Saved) and saved.parts == 0
    assert names(bucket) == [f"{prefix}/run1.7.zip"]


def test_crc_combination_matches_zlib_and_crc32c():
    import zlib

    import google_crc32c

    rng = random.Random(5)
    for _ in range(30):
        a, b = rng.randbytes(rng.randrange(0, 3000)), rng.randbytes(rng.randrange(0, 3000))
        assert packing.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
        c = [int.from_bytes(google_crc32c.Checksum(x).digest(), "big") for x in (a, b, a + b)]
        assert packing.crc32c_combine(c[0], c[1], len(b)) == c[2]
