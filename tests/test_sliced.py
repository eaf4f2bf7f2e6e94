"""Parallel restore (issue 20): a zip comes back by N ranged reads at once, each slice checked, and the
result is the same as one stream's, byte for byte; a spoiled answer is refused with TARGET_DIR
untouched. Everything runs against the real fake-gcs-server; the spoiled answers come from the TCP
proxy in front of one (conftest.proxied_gcs, tests/netproxy.py), which also shows which byte ranges
were asked for.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from colab_magics import packing, runs, sliced
from colab_magics.errors import ColabMagicsError, CorruptArchive, DownloadFailed, InvalidValue, PermissionDenied
from colab_magics.settings import MAX_STREAMS, Settings
from netproxy import Answer, CutAnswer, FlipAnswer, Once
from test_hostile import _child_env, debris, one_line_error, precious_target, snapshot

KiB, MiB = 1024, 1024 * 1024
PART = 64 * KiB  # slices this small cut a small archive as 8-64 MiB slices cut a big one
FAST = Settings(progress=False, retry_deadline=10)


@pytest.fixture()
def small_slices(monkeypatch):
    """Slices of 64 KiB instead of 8 to 64 MiB, so a test's archive of a few hundred KiB is cut in many."""
    monkeypatch.setattr(sliced, "MIN_PART", PART)
    monkeypatch.setattr(sliced, "MAX_PART", PART)


def make_run(root: Path) -> Path:
    """A run directory whose archive (from %gcs_save) has every shape of member a slice can meet."""
    (root / "logs").mkdir(parents=True)
    (root / "model-3.keras").write_bytes(os.urandom(600 * KiB))  # stored, cut across ~9 slices
    (root / "optimizer.bin").write_bytes(os.urandom(70 * KiB))  # stored, straddles a cut
    (root / "empty.txt").write_bytes(b"")  # zero bytes
    (root / "config.json").write_bytes(b'{"layer": 1}\n' * 40_000)  # deflated, longer than a slice: never cut
    for i in range(300):  # many small members in one slice
        (root / "logs" / f"note-{i:03d}.txt").write_text(f"step {i}\n" * i)
    (root / "deep" / "a" / "b").mkdir(parents=True)
    (root / "deep" / "a" / "b" / "tensor.bin").write_bytes(os.urandom(PART + 1))
    return root


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def media_ranges(proxy, name: str) -> list[tuple[int, int]]:
    """The byte ranges of `name` the restore asked the proxy for, in order."""
    found = []
    for request in proxy.requests:
        if "/download/" in request.target and f"/o/{name}" in request.target.replace("%2F", "/"):
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("range", ""))
            if match:
                found.append((int(match.group(1)), int(match.group(2))))
    return found


def ranged_from(start: int):
    """A request matcher: a ranged read that begins at byte `start`."""
    return lambda request: request.headers.get("range", "").startswith(f"bytes={start}-")


def error(status: int) -> Answer:
    return Answer(status, {"error": {"code": status, "message": f"HTTP {status} from the fault proxy"}})


def plan_of(blob) -> packing.ZipPlan:
    data = blob.download_as_bytes()
    return packing.ZipPlan(zipfile.ZipFile(io.BytesIO(data)))


# --- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("streams", [1, 2, 8])
def test_a_saved_run_comes_back_byte_for_byte_at_any_stream_count(proxied_gcs, tmp_path, small_slices, streams):
    """The archive of today's single-stream save, restored by 1, 2 and 8 parallel ranged reads."""
    run = make_run(tmp_path / "run1")
    saved = runs.save_run(run, f"gs://{proxied_gcs.bucket.name}/exp", settings=FAST, client=proxied_gcs.client)
    proxied_gcs.proxy.requests.clear()
    restored = runs.load_run(saved.url, tmp_path / "restored", settings=FAST.replace(streams=streams),
                             client=proxied_gcs.client)
    assert tree(tmp_path / "restored") == tree(run)
    assert len(restored.files) == len(tree(run))
    ranges = media_ranges(proxied_gcs.proxy, "exp/run1.3.zip")
    size = proxied_gcs.bucket.get_blob("exp/run1.3.zip").size
    index_read = ranges[0]
    assert index_read[1] == size - 1  # the tail first: every name is checked before a byte is written
    covered = sorted(ranges[1:])
    if streams == 1:
        assert len(covered) == 1  # one GET, as before
    else:
        assert len(covered) >= 6  # cut into many slices
    # every byte asked for once: the slices up to where the index read began, which holds the rest
    assert covered[0][0] == 0 and all(a[1] + 1 == b[0] for a, b in zip(covered, covered[1:]))
    assert covered[-1][1] + 1 == index_read[0]


def test_slices_cut_big_stored_members_and_never_a_deflated_one(gcs, bucket, tmp_path):
    run = make_run(tmp_path / "run1")
    saved = runs.save_run(run, f"gs://{bucket.name}", settings=FAST, client=gcs)
    plan = plan_of(bucket.get_blob(saved.url.rsplit("/", 1)[1]))
    slices = plan.slices(PART)
    assert slices[0].start == 0 and slices[-1].end == plan.start_dir
    assert all(a.end == b.start for a, b in zip(slices, slices[1:]))
    by_name = {m.entry.info.filename: m.entry.info for m in plan.members}
    model, config = by_name["model-3.keras"], by_name["config.json"]
    assert model.compress_type == zipfile.ZIP_STORED and config.compress_type == zipfile.ZIP_DEFLATED
    inside = [s for s in slices if s.inside]
    assert sum(1 for s in inside if plan.members[s.first].entry.info is model) >= 3
    assert not any(plan.members[s.first].entry.info is config for s in inside)


def test_a_zip_written_by_zipfile_with_zip64_headers_comes_back(gcs, bucket, tmp_path, small_slices):
    """No data descriptors, zip64 extras in the local headers, explicit directory entries."""
    files = {"weights/a.bin": os.urandom(200 * KiB), "weights/b.bin": os.urandom(3), "readme.txt": b"hi " * 5000}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(zipfile.ZipInfo("weights/"), b"")
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED if name.endswith(".txt") else zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as out:
                out.write(data)
    bucket.blob("run1.7.zip").upload_from_string(buffer.getvalue())
    runs.load_run(f"gs://{bucket.name}/run1.7.zip", tmp_path / "restored", settings=FAST.replace(streams=8), client=gcs)
    assert tree(tmp_path / "restored") == {n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())}


def test_a_response_cut_part_way_is_resumed_where_it_stopped(proxied_gcs, tmp_path, small_slices):
    run = make_run(tmp_path / "run1")
    saved = runs.save_run(run, f"gs://{proxied_gcs.bucket.name}", settings=FAST, client=proxied_gcs.client)
    piece = next(s for s in plan_of(proxied_gcs.bucket.get_blob("run1.3.zip")).slices(PART) if s.end - s.start > PART)
    proxied_gcs.proxy.requests.clear()
    proxied_gcs.proxy.fault = Once(ranged_from(piece.start), CutAnswer(5000))
    runs.load_run(saved.url, tmp_path / "restored", settings=FAST.replace(streams=4), client=proxied_gcs.client)
    assert tree(tmp_path / "restored") == tree(run)
    asked = media_ranges(proxied_gcs.proxy, "run1.3.zip")
    assert (piece.start + 5000, piece.end - 1) in asked  # asked again from the first byte it did not get


# --- spoiled answers ----------------------------------------------------------------------------
def _local_header(blob, info: zipfile.ZipInfo) -> tuple[int, int]:
    """(offset of the member's data, offset of its end) as its local header says."""
    head = blob.download_as_bytes(start=info.header_offset, end=info.header_offset + 29)
    name, extra = struct.unpack("<HH", head[26:30])
    start = info.header_offset + 30 + name + extra
    return start, start + info.compress_size


@pytest.mark.parametrize("where", ["stored data", "deflated data", "a local header", "a data descriptor"])
def test_a_flipped_byte_in_one_ranged_read_is_refused_and_the_target_untouched(ip, proxied_gcs, tmp_path, capsys,
                                                                              small_slices, where):
    run = make_run(tmp_path / "run1")
    saved = runs.save_run(run, f"gs://{proxied_gcs.bucket.name}", settings=FAST, client=proxied_gcs.client)
    blob = proxied_gcs.bucket.get_blob("run1.3.zip")
    plan = plan_of(blob)
    infos = {m.entry.info.filename: m.entry.info for m in plan.members}
    model_start, _ = _local_header(blob, infos["model-3.keras"])
    config_start, config_end = _local_header(blob, infos["config.json"])
    offset = {"stored data": model_start + 100_000, "deflated data": config_start + 300,
              "a local header": infos["model-3.keras"].header_offset + 1, "a data descriptor": config_end + 6}[where]
    assert offset < blob.size - packing.INDEX_TAIL  # in a slice read for itself, not in the index read
    piece = next(s for s in plan.slices(PART) if s.start <= offset < s.end)
    flip = proxied_gcs.proxy.fault = Once(ranged_from(piece.start), FlipAnswer(offset - piece.start))
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    text = one_line_error(ip, capsys, f"%gcs_load {saved.url} {target} --streams 8", (DownloadFailed, CorruptArchive))
    print(f"{where}: {text}")
    assert "crc32c check" in text or "corrupt" in text, text
    assert snapshot(target) == before and debris(target) == []
    assert not flip.pending


@pytest.mark.parametrize("status", [429, 503])
def test_a_passing_error_on_one_slice_is_retried(proxied_gcs, tmp_path, small_slices, status):
    run = make_run(tmp_path / "run1")
    saved = runs.save_run(run, f"gs://{proxied_gcs.bucket.name}", settings=FAST, client=proxied_gcs.client)
    piece = plan_of(proxied_gcs.bucket.get_blob("run1.3.zip")).slices(PART)[2]
    refused = proxied_gcs.proxy.fault = Once(ranged_from(piece.start), error(status))
    runs.load_run(saved.url, tmp_path / "restored", settings=FAST.replace(streams=8), client=proxied_gcs.client)
    assert tree(tmp_path / "restored") == tree(run) and not refused.pending


def test_a_ranged_read_refused_is_one_line_and_the_target_untouched(ip, proxied_gcs, tmp_path, capsys, small_slices):
    run = make_run(tmp_path / "run1")
    saved = runs.save_run(run, f"gs://{proxied_gcs.bucket.name}", settings=FAST, client=proxied_gcs.client)
    piece = plan_of(proxied_gcs.bucket.get_blob("run1.3.zip")).slices(PART)[2]
    proxied_gcs.proxy.fault = Once(ranged_from(piece.start), error(403))
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    text = one_line_error(ip, capsys, f"%gcs_load {saved.url} {target}", PermissionDenied)
    assert f"permission denied to download {saved.url}" in text
    assert snapshot(target) == before and debris(target) == []


# --- bad stream counts --------------------------------------------------------------------------
@pytest.mark.parametrize("streams", [0, 10_000])
def test_a_stream_count_out_of_range_is_one_line_before_anything_is_read(ip, gcs, bucket, tmp_path, capsys, streams):
    bucket.blob("run1.1.zip").upload_from_string(b"not read")
    url, target = f"gs://{bucket.name}/run1.1.zip", tmp_path / "target"
    expected = f"must be a whole number from 1 to {MAX_STREAMS}, not {streams}"
    text = one_line_error(ip, capsys, f"%gcs_load {url} {target} --streams {streams}", InvalidValue)
    assert text.startswith("UsageError: --streams ") and expected in text
    text = one_line_error(ip, capsys, f"%gcs_resume {target} gs://{bucket.name} --streams {streams}", InvalidValue)
    assert text.startswith("UsageError: --streams ") and expected in text
    with pytest.raises(InvalidValue, match=rf"^streams= {re.escape(expected)}"):
        runs.load_run(url, target, settings=FAST.replace(streams=streams), client=gcs)
    done = subprocess.run([sys.executable, "-m", "colab_magics.cli", "load", url, str(target),
                           "--streams", str(streams)], env=_child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and f"--streams {expected}" in done.stderr
    assert not target.exists()


def test_the_streams_setting_is_read_from_config_and_the_environment(ip, gcs, bucket, tmp_path, capsys, monkeypatch):
    bucket.blob("run1.1.zip").upload_from_string(b"not read")
    url = f"gs://{bucket.name}/run1.1.zip"
    monkeypatch.setenv("COLAB_MAGICS_STREAMS", "0")
    assert "not 0" in one_line_error(ip, capsys, f"%gcs_load {url} {tmp_path / 't'}", InvalidValue)
    ip.run_line_magic("config", "ColabMagics.streams = 100")
    assert "not 100" in one_line_error(ip, capsys, f"%gcs_load {url} {tmp_path / 't'}", InvalidValue)


# --- memory -------------------------------------------------------------------------------------
MEASURE = textwrap.dedent("""
    import json, sys
    from colab_magics import runs
    from colab_magics.settings import Settings
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    def peak():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))

    client = storage.Client(project="p", credentials=AnonymousCredentials())
    client.bucket(sys.argv[1]).get_blob(sys.argv[2])  # the client's own first request, before the baseline
    before = peak()
    runs.load_run(f"gs://{sys.argv[1]}/{sys.argv[2]}", sys.argv[3], client=client,
                  settings=Settings(progress=False, streams=int(sys.argv[4])))
    print(json.dumps({"before_kib": before, "peak_kib": peak()}))
""")


def test_a_parallel_restore_holds_about_two_blocks_per_stream(gcs, bucket, tmp_path):
    """96 MiB of incompressible weights at 16 streams: the peak grows by about 16 x 2 MiB, not by slices."""
    run = tmp_path / "run1"
    run.mkdir()
    for i in range(3):
        (run / f"model-{i:05d}-of-00003.safetensors").write_bytes(os.urandom(32 * MiB))
    (run / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    saved = runs.save_run(run, f"gs://{bucket.name}", settings=FAST, client=gcs)
    done = subprocess.run([sys.executable, "-c", MEASURE, bucket.name, saved.url.rsplit("/", 1)[1],
                           str(tmp_path / "restored"), "16"], env=_child_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    grown = (report["peak_kib"] - report["before_kib"]) / 1024
    print(f"peak RSS growth of a 96 MiB restore at 16 streams: {grown:.1f} MiB")
    assert grown < 16 * 2 + 24
    assert tree(tmp_path / "restored") == tree(run)


def test_one_failing_slice_stops_the_others_and_leaves_no_thread(proxied_gcs, tmp_path, small_slices):
    import threading

    run = make_run(tmp_path / "run1")
    saved = runs.save_run(run, f"gs://{proxied_gcs.bucket.name}", settings=FAST, client=proxied_gcs.client)
    proxied_gcs.proxy.fault = Once(ranged_from(0), FlipAnswer(2))  # the first local header
    target = precious_target(tmp_path / "target")
    before = snapshot(target)
    with pytest.raises(ColabMagicsError):
        runs.load_run(saved.url, target, settings=FAST.replace(streams=8), client=proxied_gcs.client)
    assert snapshot(target) == before and debris(target) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("colab-magics-slice")]
