"""The storage core, told as a user's story: save a run's latest checkpoint, list it, restore it.

Everything talks to a real fake-gcs-server (conftest.emulator_host) through google-cloud-storage.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from colab_magics.settings import Settings
from colab_magics import checkpoints, runs
from colab_magics.errors import (
    ArchiveNotFound,
    BucketNotFound,
    CorruptArchive,
    InvalidBucketURL,
    NoCheckpointFound,
    RunDirError,
    StorageUnreachable,
    UnsafeArchive,
)
from conftest import free_port, poll, run_cell, sigkill_mid_way

FAST = Settings(chunk_size_mb=1, retry_deadline=5, progress=False)


def tree(root: Path) -> dict[str, str]:
    """Every file below root → sha256, to compare directories byte for byte."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write(path: Path, data: bytes | int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(data) if isinstance(data, int) else data)
    return path


# --- run directory layouts ----------------------------------------------------------------------
def tf1_run(root: Path) -> tuple[Path, set[str]]:
    """TF1 Saver layout with steps 100, 1000 (the step-prefix trap) and 200."""
    for step in (100, 200, 1000):
        write(root / f"model.ckpt-{step}.index", 300)
        write(root / f"model.ckpt-{step}.data-00000-of-00001", 50_000)
        write(root / f"model.ckpt-{step}.meta", b"graph" * 1000)
    (root / "checkpoint").write_text(
        f'model_checkpoint_path: "{root}/model.ckpt-1000"\nall_model_checkpoint_paths: "{root}/model.ckpt-1000"\n')
    return root, {"model.ckpt-1000.index", "model.ckpt-1000.data-00000-of-00001", "model.ckpt-1000.meta", "checkpoint"}


def tf2_run(root: Path):
    for n in (1, 2, 3):
        write(root / f"ckpt-{n}.index", 200)
        write(root / f"ckpt-{n}.data-00000-of-00001", 40_000)
    (root / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"\n')
    return root, {"ckpt-3.index", "ckpt-3.data-00000-of-00001", "checkpoint"}


def keras_run(root: Path):
    write(root / "ckpt-01.weights.h5", 30_000)
    write(root / "ckpt-02.weights.h5", 30_000)
    write(root / "model-03.keras", 30_000)
    return root, {"ckpt-02.weights.h5", "model-03.keras"}  # each series keeps its newest step


def pytorch_run(root: Path):
    write(root / "model_step5.pt", 20_000)
    write(root / "model_step12.pth", 20_000)
    write(root / "weights-12.safetensors", 10)  # step 12 too, but the newest file of step 12 wins
    return root, None


def huggingface_run(root: Path):
    for step in (500, 1000):
        write(root / f"checkpoint-{step}" / "model.safetensors", 40_000)
        write(root / f"checkpoint-{step}" / "trainer_state.json", b'{"global_step": %d}' % step)
        write(root / f"checkpoint-{step}" / "optimizer" / "state.pt", 5_000)
    return root, {"checkpoint-1000/model.safetensors", "checkpoint-1000/trainer_state.json",
                  "checkpoint-1000/optimizer/state.pt"}


def lightning_run(root: Path):
    write(root / "checkpoints" / "epoch=0-step=100.ckpt", 25_000)
    write(root / "checkpoints" / "epoch=1-step=250.ckpt", 25_000)
    return root, {"checkpoints/epoch=1-step=250.ckpt"}


LAYOUTS = {"tensorflow-v1": tf1_run, "tensorflow-v2": tf2_run, "keras": keras_run,
           "pytorch": pytorch_run, "huggingface": huggingface_run, "lightning": lightning_run}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_is_byte_exact_for_every_layout(layout, bucket, tmp_path):
    run_dir, expected = LAYOUTS[layout](tmp_path / "run1")
    latest = checkpoints.find_checkpoint(run_dir)
    saved = runs.save_run(run_dir, f"gs://{bucket.name}/exp", settings=FAST)
    assert isinstance(saved, runs.Saved)
    assert saved.url == f"gs://{bucket.name}/exp/run1.{latest.step}.zip"

    restored = runs.load_run(f"gs://{bucket.name}/exp/run1", tmp_path / "restored", settings=FAST)
    got = tree(tmp_path / "restored")
    original = tree(run_dir)
    if expected is not None:
        assert set(got) == expected
    for name, digest in got.items():
        if name != "checkpoint":  # the TF state file is rewritten to a relative path
            assert original[name] == digest, name
    assert restored.step == latest.step
    assert restored.checkpoint == tmp_path / "restored" / latest.path.relative_to(run_dir)
    assert restored.checkpoint.exists() or Path(str(restored.checkpoint) + ".index").exists()


def test_step_100_never_picks_up_step_1000_files(bucket, tmp_path):
    run_dir, _ = tf1_run(tmp_path / "run1")
    saved = runs.save_run(run_dir, bucket.name, step=100, settings=FAST)
    assert saved.url == f"gs://{bucket.name}/run1.100.zip"
    with zipfile.ZipFile(io.BytesIO(bucket.blob("run1.100.zip").download_as_bytes())) as zf:
        assert sorted(zf.namelist()) == ["checkpoint", "model.ckpt-100.data-00000-of-00001",
                                         "model.ckpt-100.index", "model.ckpt-100.meta"]


def test_restored_tf_state_file_names_the_restored_step_relatively(bucket, tmp_path):
    run_dir, _ = tf1_run(tmp_path / "run1")
    runs.save_run(run_dir, bucket.name, step=200, settings=FAST)
    restored = runs.load_run(f"gs://{bucket.name}/run1.200.zip", tmp_path / "elsewhere", settings=FAST)
    state = (tmp_path / "elsewhere" / "checkpoint").read_text()
    assert 'model_checkpoint_path: "model.ckpt-200"' in state
    assert str(run_dir) not in state
    assert restored.checkpoint == tmp_path / "elsewhere" / "model.ckpt-200"


def test_events_are_archived_only_when_asked(bucket, tmp_path):
    run_dir, _ = keras_run(tmp_path / "run1")
    write(run_dir / "train" / "events.out.tfevents.123.host", 2_000)
    write(run_dir / "validation" / "events.out.tfevents.124.host", 2_000)
    runs.save_run(run_dir, bucket.name, settings=FAST)
    names = zipfile.ZipFile(io.BytesIO(bucket.blob("run1.3.zip").download_as_bytes())).namelist()
    assert not any("events" in n for n in names)
    runs.save_run(run_dir, bucket.name, events=True, force=True, settings=FAST)
    names = zipfile.ZipFile(io.BytesIO(bucket.blob("run1.3.zip").download_as_bytes())).namelist()
    assert {"train/events.out.tfevents.123.host", "validation/events.out.tfevents.124.host"} <= set(names)


def test_existing_archive_is_skipped_unless_forced(bucket, tmp_path):
    run_dir, _ = keras_run(tmp_path / "run1")
    first = runs.save_run(run_dir, bucket.name, settings=FAST)
    generation = bucket.get_blob("run1.3.zip").generation
    again = runs.save_run(run_dir, bucket.name, settings=FAST)
    assert not again.uploaded and "force=" in str(again.note)
    assert bucket.get_blob("run1.3.zip").generation == generation
    forced = runs.save_run(run_dir, bucket.name, force=True, settings=FAST)
    assert isinstance(forced, runs.Saved) and forced.url == first.url
    assert bucket.get_blob("run1.3.zip").generation != generation


def test_keep_deletes_older_archives_of_the_same_run_only(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    other, _ = keras_run(tmp_path / "run10")
    runs.save_run(other, f"gs://{bucket.name}/p", settings=FAST)
    for step in (1, 2, 3, 4):
        write(run_dir / f"model-{step}.keras", 1_000)
        result = runs.save_run(run_dir, f"gs://{bucket.name}/p", keep=2, settings=FAST)
    assert [a.step for a in runs.list_archives(f"gs://{bucket.name}/p", "run1")] == [3, 4]
    assert result.deleted == (f"gs://{bucket.name}/p/run1.2.zip",)
    assert [a.run for a in runs.list_archives(f"gs://{bucket.name}/p")] == ["run1", "run1", "run10"]


def test_list_shows_runs_steps_and_sizes_directly_under_the_prefix(bucket, tmp_path):
    run_dir, _ = lightning_run(tmp_path / "my.run")
    runs.save_run(run_dir, f"gs://{bucket.name}/a", settings=FAST)
    runs.save_run(run_dir, f"gs://{bucket.name}/a/deeper", settings=FAST)
    bucket.blob("a/notes.txt").upload_from_string("not an archive")
    listed = runs.list_archives(f"gs://{bucket.name}/a")
    assert [(a.run, a.step) for a in listed] == [("my.run", 250)]
    assert listed[0].size == bucket.get_blob("a/my.run.250.zip").size > 0


def test_gcs_list_finds_archives_under_sub_prefixes_and_shows_where(ip, bucket, tmp_path):
    run_dir, _ = lightning_run(tmp_path / "my.run")
    runs.save_run(run_dir, f"gs://{bucket.name}/a", settings=FAST)
    runs.save_run(run_dir, f"gs://{bucket.name}/a/deeper", settings=FAST)
    listed = runs.list_archives(f"gs://{bucket.name}", recursive=True)
    assert [(a.prefix, a.run, a.step) for a in listed] == [("a", "my.run", 250), ("a/deeper", "my.run", 250)]

    shown = ip.run_line_magic("gcs_list", f"gs://{bucket.name}")  # the bucket root: nothing directly there
    assert [a.url for a in shown] == [a.url for a in listed]
    rows = [line.split()[:2] for line in str(shown.table).splitlines()]
    assert rows == [["prefix", "run"], ["a", "my.run"], ["a/deeper", "my.run"]]
    rows = [line.split()[0] for line in str(ip.run_line_magic("gcs_list", f"gs://{bucket.name}/a").table).splitlines()]
    assert rows == ["prefix", ".", "deeper"]


def test_load_of_the_original_tar_gz_format(bucket, tmp_path):
    """Later colab_utils versions (and GcsArchiveHook) wrote RUN.STEP.tar.gz archives."""
    payload = os.urandom(30_000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [("model.ckpt-7.index", b"i" * 100), ("model.ckpt-7.data-00000-of-00001", payload)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bucket.blob("old/run1.7.tar.gz").upload_from_string(buf.getvalue())
    restored = runs.load_run(f"gs://{bucket.name}/old/run1", tmp_path / "r", settings=FAST)
    assert (tmp_path / "r" / "model.ckpt-7.data-00000-of-00001").read_bytes() == payload
    assert restored.checkpoint == tmp_path / "r" / "model.ckpt-7"
    assert 'model_checkpoint_path: "model.ckpt-7"' in (tmp_path / "r" / "checkpoint").read_text()


def test_restore_into_an_existing_directory_keeps_other_files(bucket, tmp_path):
    run_dir, _ = keras_run(tmp_path / "run1")
    runs.save_run(run_dir, bucket.name, settings=FAST)
    target = tmp_path / "target"
    write(target / "notes.txt", b"mine")
    write(target / "model-03.keras", b"old bytes")
    runs.load_run(f"gs://{bucket.name}/run1", target, settings=FAST)
    assert (target / "notes.txt").read_bytes() == b"mine"
    assert (target / "model-03.keras").read_bytes() == (run_dir / "model-03.keras").read_bytes()


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["gs://My_Bucket", "gs://ab", "gs://-bucket", "gs://a..b", "gs://192.168.1.1",
                                 "gs://googlebucket", "s3://bucket", "gs://"])
def test_invalid_bucket_names_are_refused_with_the_rule(url, tmp_path):
    run_dir, _ = keras_run(tmp_path / "run1")
    with pytest.raises(InvalidBucketURL, match="bucket|gs://"):
        runs.save_run(run_dir, url, settings=FAST)


# Names Cloud Storage refuses, and the words that say why (bucket and object naming rules).
BAD_NAMES = {
    "gs://{bucket}\n": r"bucket '.*\\n' is not a valid name",  # `$` once matched before the newline
    "gs://{bucket}\n/exp": r"bucket '.*\\n' is not a valid name",
    "gs://{bucket}/exp\nrun": r"has a line break \(CR or LF\)",
    "gs://{bucket}/exp\r": r"has a line break \(CR or LF\)",
    "gs://{bucket}/exp\0run": "has a NUL character",
    "gs://{bucket}/" + "é" * 600: r"is 12\d\d bytes in UTF-8, over Cloud Storage's 1024",
    "gs://{bucket}/exp\udcff": "is not valid UTF-8",  # undecodable bytes of a command line
}


@pytest.mark.parametrize("url, expected", BAD_NAMES.items(), ids=lambda v: ascii(v)[:30])
def test_names_cloud_storage_refuses_are_one_line_in_python_and_the_magics(ip, bucket, tmp_path, url, expected):
    import shlex

    from colab_magics import archiver, mount, tensorboard

    run_dir, _ = keras_run(tmp_path / "run1")
    url, target = url.format(bucket=bucket.name), tmp_path / "back"
    calls = [
        lambda: runs.save_run(run_dir, url, settings=FAST),
        lambda: runs.load_run(url + "/run1", target, settings=FAST),
        lambda: runs.list_archives(url),
        lambda: archiver.Archiver(run_dir, url),
        lambda: mount.mount(url, tmp_path / "mnt"),
        lambda: tensorboard.serve(url, "local"),
    ]
    for call in calls:
        with pytest.raises(InvalidBucketURL, match=expected) as caught:
            call()
        assert "\n" not in str(caught.value)
    quoted = shlex.quote(url)
    for magic, line in [("gcs_save", f"{run_dir} {quoted}"), ("gcs_load", f"{quoted} {target}"),
                        ("gcs_list", quoted), ("gcs_archive", f"{run_dir} {quoted}"),
                        ("gcsfuse_mount", f"{quoted} {tmp_path / 'mnt'}"), ("tensorboard_tunnel", quoted),
                        ("gcs_resume", f"{run_dir} {quoted}")]:
        with pytest.raises(UsageError, match=expected) as caught:
            ip.run_line_magic(magic, line)
        assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value), magic
    assert list(bucket.list_blobs()) == [] and not target.exists()
    assert ip.run_line_magic("gcs_archive", "--status") == []


def test_a_mounts_only_dir_is_named_as_cloud_storage_names_objects(ip, bucket, tmp_path):
    from colab_magics import mount

    with pytest.raises(InvalidBucketURL, match="line break"):
        mount.mount(bucket.name, tmp_path / "mnt", only_dir="run1\n")
    with pytest.raises(UsageError, match=r"'\.\.' segment"):
        ip.run_line_magic("gcsfuse_mount", f"{bucket.name} {tmp_path / 'mnt'} --only-dir ../other")
    assert not (tmp_path / "mnt").exists()  # refused before the mount point was made


def test_an_archive_name_over_1024_bytes_is_refused_before_uploading(ip, bucket, tmp_path):
    run_dir, _ = keras_run(tmp_path / "run1")
    prefix = "p" * 1020  # a valid prefix (1 020 bytes), but PREFIX/run1.3.zip is 1 031

    with pytest.raises(UsageError, match=r"over Cloud Storage's 1024: use a shorter prefix or run name"):
        ip.run_line_magic("gcs_save", f"{run_dir} gs://{bucket.name}/{prefix}")

    assert list(bucket.list_blobs()) == []


@pytest.mark.parametrize("path", ["../../x", "exp/./runs", "exp//runs", "..", "exp/.."])
def test_dot_and_empty_segments_in_object_paths_are_refused(ip, bucket, tmp_path, path):
    run_dir, _ = keras_run(tmp_path / "run1")
    url = f"gs://{bucket.name}/{path}"
    with pytest.raises(UsageError, match=r"empty, '\.' or '\.\.' segment") as caught:
        ip.run_line_magic("gcs_save", f"{run_dir} {url}")
    assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match=r"'\.\.' segment"):
        ip.run_line_magic("gcs_load", f"{url}/run1 {tmp_path / 'back'}")
    with pytest.raises(UsageError, match=r"'\.\.' segment"):
        ip.run_line_magic("gcs_list", url)
    assert list(bucket.list_blobs()) == [] and not (tmp_path / "back").exists()


def test_run_dir_problems_are_named(gcs, tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        runs.save_run(tmp_path / "missing", "gs://some-bucket", settings=FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="is empty"):
        runs.save_run(tmp_path / "empty", "gs://some-bucket", settings=FAST)
    write(tmp_path / "nockpt" / "train" / "events.out.tfevents.1.host", b"hello")  # nothing but event files
    with pytest.raises(NoCheckpointFound, match=r"nothing to archive in .*nockpt: it holds only event files "
                                                r"\(left out without events=\); looked for numbered checkpoints"):
        runs.save_run(tmp_path / "nockpt", "gs://some-bucket", settings=FAST)
    run_dir, _ = keras_run(tmp_path / "run1")
    with pytest.raises(NoCheckpointFound, match="steps found: 1, 2, 3"):
        runs.save_run(run_dir, "gs://some-bucket", step=9, settings=FAST)


def test_unknown_bucket_and_unknown_run(gcs, bucket, tmp_path):
    run_dir, _ = keras_run(tmp_path / "run1")
    with pytest.raises(BucketNotFound, match="gs://no-such-bucket-here does not exist"):
        runs.save_run(run_dir, "gs://no-such-bucket-here", settings=FAST)
    with pytest.raises(ArchiveNotFound, match="no archives of run 'run9'"):
        runs.load_run(f"gs://{bucket.name}/run9", tmp_path / "t", settings=FAST)
    with pytest.raises(ArchiveNotFound, match="does not exist"):
        runs.load_run(f"gs://{bucket.name}/run9.5.zip", tmp_path / "t", settings=FAST)
    assert not (tmp_path / "t").exists()


def test_emulator_down_is_a_clear_error(gcs, monkeypatch, tmp_path):
    from colab_magics import auth, session

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    session.current().set_auth(auth.authenticate())
    run_dir, _ = keras_run(tmp_path / "run1")
    with pytest.raises(StorageUnreachable, match="does not answer"):
        runs.save_run(run_dir, "gs://any-bucket", settings=Settings(retry_deadline=1, progress=False))


# --- only complete objects ----------------------------------------------------------------------
SAVE_SCRIPT = textwrap.dedent("""
    import sys
    from colab_magics import runs
    from colab_magics.settings import Settings
    settings = Settings(chunk_size_mb=1, retry_deadline=30, progress=False)
    print(runs.save_run(sys.argv[1], sys.argv[2], settings=settings), flush=True)
""")


# The connections are cut by the proxy in front of an emulator of its own (conftest.proxied_gcs).
def test_a_connection_cut_mid_upload_is_retried_and_recovers(proxied_gcs, tmp_path):
    run_dir = tmp_path / "run1"
    write(run_dir / "model-5.keras", 6 * 1024 * 1024)
    proxied_gcs.proxy.cut_after(3 * 1024 * 1024)

    result = runs.save_run(run_dir, proxied_gcs.bucket.name, settings=FAST)  # one call: the retry recovers

    assert proxied_gcs.proxy.cuts == 1  # the connection was cut mid-upload
    assert isinstance(result, runs.Saved)
    runs.load_run(f"gs://{proxied_gcs.bucket.name}/run1", tmp_path / "back", settings=FAST)
    assert tree(tmp_path / "back") == tree(run_dir)


def test_an_endpoint_that_stays_down_fails_clearly_and_leaves_no_object(proxied_gcs, tmp_path):
    run_dir = tmp_path / "run1"
    write(run_dir / "model-5.keras", 4 * 1024 * 1024)
    proxied_gcs.proxy.cut_after(2 * 1024 * 1024, then_down=True)
    settings = Settings(chunk_size_mb=1, retry_deadline=2, progress=False)
    with pytest.raises(StorageUnreachable, match="does not answer"):
        runs.save_run(run_dir, proxied_gcs.bucket.name, settings=settings)
    proxied_gcs.proxy.go_up()  # (the emulator behind it is only reached through the proxy)
    assert proxied_gcs.bucket.get_blob("run1.5.zip") is None
    assert isinstance(runs.save_run(run_dir, proxied_gcs.bucket.name, settings=FAST), runs.Saved)


def test_a_save_killed_with_sigkill_leaves_no_object(proxied_gcs, tmp_path):
    run_dir = tmp_path / "run1"
    write(run_dir / "model-5.keras", 24 * 1024 * 1024)
    bucket = proxied_gcs.bucket
    env = dict(os.environ)
    child = subprocess.Popen([sys.executable, "-c", SAVE_SCRIPT, str(run_dir), bucket.name], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sigkill_mid_way(child, lambda: proxied_gcs.proxy.forwarded > 6 * 1024 * 1024, 60, message="upload under way")
    assert [b.name for b in bucket.list_blobs()] == []
    assert isinstance(runs.save_run(run_dir, bucket.name, settings=FAST), runs.Saved)


# --- hostile archives ---------------------------------------------------------------------------
def _zip(entries, mode=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", mode) as zf:
        for entry in entries:
            if isinstance(entry, zipfile.ZipInfo):
                zf.writestr(entry, b"../../../../etc/passwd")
            else:
                zf.writestr(entry[0], entry[1])
    return buf.getvalue()


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("model-1.keras")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _crc_mismatch() -> bytes:
    data = bytearray(_zip([("model-1.keras", b"A" * 5000)]))
    data[data.index(b"A" * 100) + 50] = ord("B")
    return bytes(data)


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _tar_info(name, kind=tarfile.REGTYPE, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


HOSTILE = {
    "zip-slip.zip": (_zip([("model-1.keras", b"ok"), ("../evil.txt", b"x")]), UnsafeArchive),
    "absolute.zip": (_zip([("/tmp/evil-absolute.txt", b"x")]), UnsafeArchive),
    "symlink.zip": (_zip([_symlink_entry()]), UnsafeArchive),
    "truncated.zip": (_zip([("model-1.keras", os.urandom(20_000))])[:15_000], CorruptArchive),
    "crc-mismatch.zip": (_crc_mismatch(), CorruptArchive),
    "slip.tar.gz": (_tar([(_tar_info("../evil.txt", size=1), b"x")]), UnsafeArchive),
    "symlink.tar.gz": (_tar([(_tar_info("model-1.keras", tarfile.SYMTYPE, linkname="/etc/passwd"), None)]), UnsafeArchive),
    "device.tar.gz": (_tar([(_tar_info("model-1.keras", tarfile.CHRTYPE), None)]), UnsafeArchive),
    "truncated.tar.gz": (_tar([(_tar_info("model-1.keras", size=20_000), os.urandom(20_000))])[:9_000], CorruptArchive),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_archives_are_refused_and_the_target_is_untouched(name, bucket, tmp_path):
    data, error = HOSTILE[name]
    run = name.split(".")[0]
    object_name = f"{run}.1.{name.split('.', 1)[1]}"
    bucket.blob(object_name).upload_from_string(data)
    target = tmp_path / "workdir" / "target"
    write(target / "model-0.keras", b"precious")
    before = tree(target)
    with pytest.raises(error):
        runs.load_run(f"gs://{bucket.name}/{object_name}", target, settings=FAST)
    assert tree(target) == before
    assert sorted(p.name for p in (tmp_path / "workdir").iterdir()) == ["target"]  # no staging left
    assert not (tmp_path / "workdir" / "evil.txt").exists() and not Path("/tmp/evil-absolute.txt").exists()


# --- the magics in a real IPython shell ----------------------------------------------------------
def test_magics_save_list_load_in_a_shell(ip, bucket, tmp_path, capsys):
    run_dir, _ = tf1_run(tmp_path / "run1")
    result = run_cell(ip, f"url = %gcs_save {run_dir} gs://{bucket.name}/exp --events")
    assert result.success
    assert ip.user_ns["url"] == f"gs://{bucket.name}/exp/run1.1000.zip"
    assert "Saved step 1000 of run1" in capsys.readouterr().out

    run_cell(ip, f"url2 = %gcs_save {run_dir} gs://{bucket.name}/exp")
    assert "Skipped" in capsys.readouterr().out

    run_cell(ip, f"listing = %gcs_list gs://{bucket.name}/exp")
    assert [(a.run, a.step) for a in ip.user_ns["listing"]] == [("run1", 1000)]
    run_cell(ip, f"%gcs_list gs://{bucket.name}/exp")
    shown = capsys.readouterr().out
    assert "run1" in shown and "1000" in shown and "step" in shown

    run_cell(ip, f"ckpt = %gcs_load gs://{bucket.name}/exp/run1 {tmp_path / 'restored'}")
    ckpt = ip.user_ns["ckpt"]
    assert str(ckpt) == os.fspath(ckpt) == str(tmp_path / "restored" / "model.ckpt-1000")
    assert ckpt.step == 1000 and ckpt.path == tmp_path / "restored" / "model.ckpt-1000"
    assert "Restored" in capsys.readouterr().out


@pytest.mark.parametrize("line, message", [
    ("%gcs_save {tmp}/missing gs://b-u-c", "does not exist"),
    ("%gcs_save {tmp} gs://Bad_Bucket", "is not a valid name"),
    ("%gcs_load gs://no-such-bucket-zz/run1 {tmp}/t", "does not exist"),
    ("%gcs_save", "the following arguments are required"),
])
def test_magic_errors_are_one_line_without_traceback(ip, gcs, tmp_path, capsys, line, message):
    write(tmp_path / "model-1.keras", 10)
    result = run_cell(ip, line.format(tmp=tmp_path))
    assert not result.success
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert message in text
    assert "Traceback" not in text


def test_gcs_auth_emulator_starts_the_bundled_emulator_and_unload_ends_it(shell, tmp_path, monkeypatch, capsys):
    import psutil

    from colab_magics import emulator

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    shell.run_line_magic("load_ext", "colab_magics")
    try:
        run_cell(shell, f"%config ColabMagics.emulator_dir = {str(tmp_path / 'emu')!r}")
        result = run_cell(shell, "%gcs_auth --emulator")
        assert result.success
        from colab_magics import session
        info = session.current().auth
        assert info.method == "emulator" and info.emulator_started
        assert "local emulator" in capsys.readouterr().out
        assert emulator.answers(info.emulator_host)
        assert "STORAGE_EMULATOR_HOST" not in os.environ  # the endpoint is the session's, not a global
        pid = emulator.ensure_running(tmp_path / "emu").pid  # reused, not a second one
        assert psutil.pid_exists(pid)
        write(tmp_path / "run1" / "model-1.keras", 100)
        from colab_magics import auth
        auth.storage_client().create_bucket("quick")
        assert run_cell(shell, f"%gcs_save {tmp_path / 'run1'} gs://quick").success
    finally:
        shell.run_line_magic("unload_ext", "colab_magics")
    poll(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10,
         message="the emulator to end")


def test_gcs_auth_without_credentials_says_which_options_exist(ip, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ADC file
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # no metadata server either
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    result = run_cell(ip, "%gcs_auth my-project")
    assert not result.success
    text = capsys.readouterr()
    assert "--emulator" in text.out + text.err and "--key-file" in text.out + text.err


def test_gcs_auth_with_a_bad_key_file(ip, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    key = tmp_path / "key.json"  # an OAuth client secret, not credentials
    key.write_text('{"installed": {"client_id": "c", "client_secret": "SECRET-TOKEN"}}')
    result = run_cell(ip, f"%gcs_auth p --key-file {key}")
    text = "".join(capsys.readouterr())
    assert not result.success and "not a credentials file google-auth can use" in text
    assert "SECRET-TOKEN" not in text


def test_load_ext_imports_nothing_heavy():
    code = ("import sys; from IPython.core.interactiveshell import InteractiveShell; "
            "InteractiveShell.instance().run_line_magic('load_ext', 'colab_magics'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'tensorflow', 'tensorboard', 'pyngrok', 'keras'} or m.startswith('google.cloud')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

