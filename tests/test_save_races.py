"""Saves of real training runs: steps the library deletes mid-upload, neighbours rewritten in place,
concurrent savers with --keep, and another run's archive under the same name.

Real fake-gcs-server (a throttling TCP proxy in front of it where an upload must be slow: tests/
netproxy.py), real transformers and torch writing real checkpoints.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import shutil
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from colab_magics import runs, snapshot
from colab_magics.errors import ArchiveConflict, CheckpointChanging
from colab_magics.settings import Settings
from conftest import poll

KiB, MiB = 1024, 1024 * 1024
FAST = Settings(chunk_size_mb=1, retry_deadline=20, progress=False)


def write(path: Path, data: bytes | int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(data) if isinstance(data, int) else data)
    return path


def snapshots_beside(run_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(run_dir.parent) if n.startswith(f".{run_dir.name}.{snapshot.STATE}-"))


def opened_by_me(path: Path) -> bool:
    from test_consistency import opened_by_me as opened

    return opened(path)


# --- a step deleted while it is uploaded -------------------------------------------------------------
def test_a_step_deleted_mid_upload_is_archived_whole_from_its_snapshot(proxied_gcs, tmp_path, caplog):
    run_dir = tmp_path / "run1"
    weights = write(run_dir / "checkpoint-2" / "model.safetensors", 3 * MiB)  # read chunk by chunk (1 MiB)
    write(run_dir / "checkpoint-2" / "trainer_state.json", b'{"global_step": 2}')
    expected = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proxied_gcs.proxy.rate = MiB  # the upload takes ~3 s
    result = {}
    saver = threading.Thread(target=lambda: result.update(saved=runs.save_run(
        run_dir, proxied_gcs.bucket.name, settings=FAST)))
    with caplog.at_level(logging.INFO, logger="colab_magics"):
        saver.start()
        poll(lambda: opened_by_me(weights), 30, interval=0.005, message="the save to read the weights")
        assert snapshots_beside(run_dir)
        shutil.rmtree(run_dir / "checkpoint-2")  # what save_total_limit does at the next save
        saver.join(60)
    proxied_gcs.proxy.rate = None  # the check below at full speed
    saved = result["saved"]
    assert isinstance(saved, runs.Saved) and saved.url.endswith("/run1.2.zip")
    with zipfile.ZipFile(io.BytesIO(proxied_gcs.bucket.blob("run1.2.zip").download_as_bytes())) as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == expected
    assert snapshots_beside(run_dir) == []  # the links went with the save
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture()
def other_filesystem(tmp_path):
    """A run directory on a tmpfs of its own, so no hard link can reach its parent (EXDEV)."""
    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(run_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield run_dir
    subprocess.run(["umount", "-l", str(run_dir)], capture_output=True, timeout=30)


def test_without_hard_links_a_step_deleted_mid_upload_is_skipped_in_one_info_line(other_filesystem, proxied_gcs,
                                                                                   caplog):
    run_dir = other_filesystem
    weights = write(run_dir / "checkpoint-2" / "model.safetensors", 3 * MiB)
    proxied_gcs.proxy.rate = MiB
    result = {}
    saver = threading.Thread(target=lambda: result.update(saved=runs.save_run(
        run_dir, proxied_gcs.bucket.name, settings=FAST)))
    with caplog.at_level(logging.INFO, logger="colab_magics"):
        saver.start()
        poll(lambda: opened_by_me(weights), 30, interval=0.005, message="the save to read the weights")
        shutil.rmtree(run_dir / "checkpoint-2")
        saver.join(60)
    skipped = result["saved"]
    assert skipped.outcome == "vanished" and not skipped.uploaded
    assert "deleted while it was saved" in str(skipped.note) and "\n" not in str(skipped.note)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("hard-linked" in m for m in said)  # the one line saying the files are read in place
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert proxied_gcs.names() == []


def test_snapshots_of_killed_saves_are_removed_and_live_ones_left_alone(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    write(run_dir / "model-3.pt", 10 * KiB)
    dead = tmp_path / f".run1.{snapshot.STATE}-0123456789ab"
    write(dead / "model-3.pt", 10)
    live = tmp_path / f".run1.{snapshot.STATE}-ba9876543210"
    write(live / "model-3.pt", 10)
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)  # another save, in another process, is reading through it
    try:
        assert isinstance(runs.save_run(run_dir, bucket.name, settings=FAST), runs.Saved)
        assert snapshots_beside(run_dir) == [live.name]
    finally:
        os.close(held)


# --- Hugging Face rotation races the archiver ----------------------------------------------------
@pytest.mark.layouts
def test_hugging_face_rotation_never_breaks_an_archive(proxied_gcs, tmp_path, caplog, monkeypatch):
    """save_total_limit=2 with load_best_model_at_end, saves every 2 steps, uploads slower than that:
    the step being uploaded is rotated out under the archiver, and is archived whole all the same."""
    monkeypatch.setenv("COLAB_MAGICS_CHUNK_SIZE_MB", "1")  # the files are read as the upload goes
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from colab_magics.callbacks import HuggingFaceArchiveCallback

    run_dir = tmp_path / "bert1"
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=256, num_labels=2)  # ~5 MB a checkpoint, optimizer included
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(1, 1000, (8,), generator=g), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(32)]
    args = transformers.TrainingArguments(
        output_dir=str(run_dir), use_cpu=True, report_to=[], max_steps=10, per_device_train_batch_size=4,
        save_steps=2, eval_strategy="steps", eval_steps=2, save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="score", greater_is_better=True, logging_steps=1000, disable_tqdm=True)
    saved_steps: list[int] = []

    class Watch(transformers.TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            saved_steps.append(state.global_step)
            if state.global_step == 2:  # the archiver is reading checkpoint-2 (slowly) before training goes on
                poll(lambda: snapshots_beside(run_dir), 30, interval=0.005, message="the archiver's snapshot")

    archiving = HuggingFaceArchiveCallback(f"gs://{proxied_gcs.bucket.name}/hf")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:8],
                                   compute_metrics=lambda _: {"score": trainer.state.global_step},
                                   callbacks=[archiving, Watch()])
    proxied_gcs.proxy.rate = 2 * MiB  # one archive takes ~2.5 s; training saves every ~0.2 s
    with caplog.at_level(logging.INFO):
        trainer.train()
    summary = archiving.summary

    archived = sorted(a.step for a in runs.list_archives(f"gs://{proxied_gcs.bucket.name}/hf", "bert1"))
    on_disk = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
    assert summary.failures == 0 and summary.last_step == 10 and archived[-1] == 10
    assert 2 in archived and 2 not in on_disk  # rotated out while it was uploaded, archived whole
    assert all(any(a >= s for a in archived) for s in saved_steps)  # every save archived or superseded
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    restored = runs.load_run(f"gs://{proxied_gcs.bucket.name}/hf/bert1.2.zip", tmp_path / "back", settings=FAST)
    state = torch.load(restored.checkpoint / "optimizer.pt", weights_only=True)
    assert state["state"] and (restored.checkpoint / "model.safetensors").stat().st_size > 0


# --- every member is read consistently --------------------------------------------------------------
@pytest.mark.parametrize("streams", [1, 4])
def test_a_last_checkpoint_rewritten_in_place_by_torch_is_never_archived_torn(streams, bucket, tmp_path,
                                                                             monkeypatch):
    """`torch.save(state, "last.ckpt")` truncates and writes in place (Lightning's save_last without a
    transaction does too) while the numbered checkpoint is archived: every archive holds a whole
    last.ckpt, or the save fails with CheckpointChanging and leaves nothing."""
    torch = pytest.importorskip("torch")
    from colab_magics import composite

    monkeypatch.setattr(composite, "PART_MIN", 128 * KiB)
    monkeypatch.setattr(composite, "PARALLEL_MIN", 512 * KiB)
    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    torch.save({"step": 10, "w": torch.randn(300_000)}, run_dir / "epoch=0-step=10.ckpt")
    last = run_dir / "last.ckpt"
    torch.save({"version": 0, "w": torch.full((400_000,), 0.0)}, last)
    stop = threading.Event()

    def lightning_like_saves():  # a new last.ckpt every ~1.5 s, written in place
        v = 0
        while not stop.wait(1.5):
            v += 1
            torch.save({"version": v, "w": torch.full((400_000,), float(v))}, last)

    writer = threading.Thread(target=lightning_like_saves, daemon=True)
    writer.start()
    outcomes = []
    try:
        for _ in range(4):
            try:
                outcomes.append(runs.save_run(run_dir, bucket.name, force=True,
                                              settings=FAST.replace(streams=streams)))
            except CheckpointChanging as exc:
                outcomes.append(exc)
            if isinstance(outcomes[-1], runs.Saved):
                data = bucket.blob("run1.10.zip").download_as_bytes()
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    state = torch.load(io.BytesIO(zf.read("last.ckpt")), weights_only=True)
                assert bool((state["w"] == float(state["version"])).all()), "a torn last.ckpt was archived"
    finally:
        stop.set()
        writer.join(30)
    assert any(isinstance(o, runs.Saved) for o in outcomes)
    assert all("\n" not in str(o) for o in outcomes if isinstance(o, CheckpointChanging))


# --- two savers, --keep 1 ------------------------------------------------------------------------
def test_retention_never_deletes_an_archive_finished_during_the_save(proxied_gcs, tmp_path):
    """A slow save of step 100 and a fast one of step 200, both --keep 1: the slow one, finishing last,
    must not prune step 200 (it was not there when the slow save started)."""
    slow_dir, fast_dir = tmp_path / "a" / "run1", tmp_path / "b" / "run1"
    write(slow_dir / "model-100.pt", 768 * KiB)
    write(fast_dir / "model-200.pt", 2 * KiB)
    bucket = proxied_gcs.bucket
    proxied_gcs.proxy.rate = 256 * KiB  # every connection: the 768 KiB take ~3 s, the 2 KiB nothing
    write(tmp_path / "c" / "run1" / "model-50.pt", 2 * KiB)
    runs.save_run(tmp_path / "c" / "run1", bucket.name, settings=FAST)  # an older archive: the one to prune
    result = {}
    seen = len(proxied_gcs.proxy.requests)
    slow = threading.Thread(target=lambda: result.update(saved=runs.save_run(
        slow_dir, bucket.name, keep=1, settings=FAST)))
    slow.start()
    poll(lambda: any(r.method == "PUT" and "upload_id=" in r.target for r in proxied_gcs.proxy.requests[seen:]), 30,
         message="the slow save to be uploading")
    fast = runs.save_run(fast_dir, bucket.name, keep=1, settings=FAST)
    assert slow.is_alive()  # still uploading: it finishes after the fast one
    slow.join(60)
    assert fast.deleted == ("gs://%s/run1.50.zip" % bucket.name,)
    assert result["saved"].deleted == ()
    assert proxied_gcs.names() == ["run1.100.zip", "run1.200.zip"]


# --- "already in the bucket" means the same content ---------------------------------------------
def test_another_runs_archive_under_the_same_name_is_never_counted_as_ours(bucket, tmp_path):
    """Two Lightning runs with the default dirpath both archive as checkpoints.STEP.zip."""
    first = tmp_path / "v0" / "checkpoints"
    write(first / "epoch=0-step=100.ckpt", 64 * KiB)
    runs.save_run(first, bucket.name, settings=FAST)
    generation = bucket.get_blob("checkpoints.100.zip").generation
    second = tmp_path / "v1" / "checkpoints"
    write(second / "epoch=0-step=100.ckpt", 64 * KiB)
    os.utime(second / "epoch=0-step=100.ckpt", (time.time() + 10, time.time() + 10))

    with pytest.raises(ArchiveConflict) as refused:
        runs.save_run(second, bucket.name, settings=FAST)

    said = str(refused.value)
    assert "\n" not in said and "already holds an archive of other files" in said and "force=" in said
    assert bucket.get_blob("checkpoints.100.zip").generation == generation
    again = runs.save_run(first, bucket.name, settings=FAST)  # the first run's own step: the same content
    assert again.outcome == "exists" and not again.uploaded
    assert isinstance(runs.save_run(second, bucket.name, force=True, settings=FAST), runs.Saved)


def test_a_restored_step_is_already_in_the_bucket(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    weights = write(run_dir / "checkpoint-4" / "model.safetensors", 100 * KiB)
    odd = int(time.time()) // 2 * 2 + 1.9  # an odd second: a zip keeps 2 s steps, a restore gives those back
    os.utime(weights, (odd, odd))
    write(run_dir / "train.log", b"first lines\n")
    runs.save_run(run_dir, bucket.name, settings=FAST)
    back = tmp_path / "fresh" / "run1"
    runs.load_run(f"gs://{bucket.name}/run1", back, settings=FAST)
    with open(back / "train.log", "ab") as log:  # training goes on: the neighbours change, not the step
        log.write(b"more lines\n")
    again = runs.save_run(back, bucket.name, settings=FAST)
    assert not again.uploaded and "already in the bucket" in str(again.note)


def test_an_archive_without_a_content_hash_is_compared_by_its_index(bucket, tmp_path):
    """Archives written before the content hash (or by another tool) are judged by their zip index."""
    run_dir = tmp_path / "run1"
    weights = write(run_dir / "model-5.keras", 20 * KiB)
    ours = io.BytesIO()
    with zipfile.ZipFile(ours, "w") as zf:
        zf.write(weights, "model-5.keras")
    bucket.blob("run1.5.zip").upload_from_string(ours.getvalue())
    assert not runs.save_run(run_dir, bucket.name, settings=FAST).uploaded
    os.utime(weights, (time.time() + 10, time.time() + 10))
    with pytest.raises(ArchiveConflict):
        runs.save_run(run_dir, bucket.name, settings=FAST)
