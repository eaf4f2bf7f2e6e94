"""An archive holds what a resume needs, as the training library records it: its best checkpoints
beside the newest, any numbered format, the right run name — with the real libraries.

Each run directory is written by the library itself (tiny models on CPU), archived to the emulator,
the run directory deleted (a VM reset), restored into the same place, and training resumed: what the
library then loads (`load_best_model_at_end`, `ckpt_path="best"`) must be the true best. The records
come from a bucket too, so hostile ones are read in a child process under a memory and time bound.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
from conftest import poll

from colab_magics import archiver, checkpoints, runs, torchfile
from colab_magics.settings import Settings

pytestmark = pytest.mark.layouts

FAST = Settings(chunk_size_mb=1, retry_deadline=10, progress=False)
ROOT = Path(__file__).resolve().parent.parent


def archive_names(bucket, prefix: str = "") -> set[str]:
    return {b.name for b in bucket.client.list_blobs(bucket.name, prefix=prefix or None)}


def members(bucket, url: str) -> list[str]:
    blob = bucket.blob(url.split("/", 3)[3])
    return sorted(zipfile.ZipFile(io.BytesIO(blob.download_as_bytes())).namelist())


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def reset_and_restore(run_dir: Path, url: str) -> runs.Restored:
    """A VM reset: the run directory is gone; the run's latest archive comes back into the same place."""
    shutil.rmtree(run_dir)
    return runs.load_run(url, run_dir, settings=FAST)


# --- Hugging Face: the best checkpoint the Trainer keeps -------------------------------------------
SCORES = {2: 0.9, 4: 0.1, 6: 0.2, 8: 0.3, 10: 0.05}  # the score each evaluation reports: step 2 is the best


def hf_trainer(hf, output_dir: Path, max_steps: int, callbacks=()):
    transformers, torch = hf
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, num_labels=2)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(1, 100, (8,), generator=g), "labels": torch.tensor(i % 2)} for i in range(16)]

    class Score(transformers.TrainerCallback):
        """The evaluation's metric, as a real one would report it (the Trainer picks the best by it)."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics["eval_score"] = SCORES[state.global_step]

    args = transformers.TrainingArguments(
        output_dir=str(output_dir), use_cpu=True, report_to=[], max_steps=max_steps, per_device_train_batch_size=4,
        save_steps=2, eval_strategy="steps", eval_steps=2, save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="score", greater_is_better=True, logging_strategy="no", disable_tqdm=True)
    return transformers.Trainer(model=transformers.BertForSequenceClassification(config), args=args,
                                train_dataset=data, eval_dataset=data[:4], callbacks=[Score(), *callbacks])


def same_state(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hugging_face_best_checkpoint_is_archived_and_loaded_at_the_end_after_a_restore(hf, bucket, tmp_path):
    transformers, _ = hf
    run_dir = tmp_path / "bert"
    hf_trainer(hf, run_dir, 8).train()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-8"]  # best + newest
    best = transformers.BertForSequenceClassification.from_pretrained(run_dir / "checkpoint-2").state_dict()

    saved = runs.save_run(run_dir, f"gs://{bucket.name}/hf", settings=FAST)

    assert saved.step == 8 and saved.kept == ("checkpoint-2",)
    assert {n.split("/")[0] for n in members(bucket, saved.url)} == {"checkpoint-2", "checkpoint-8"}
    restored = reset_and_restore(run_dir, f"gs://{bucket.name}/hf/bert")
    assert restored.checkpoint == run_dir / "checkpoint-8" and restored.step == 8

    resumed = hf_trainer(hf, run_dir, 10)  # step 10 scores lower than step 2
    resumed.train(resume_from_checkpoint=str(restored))
    assert resumed.state.best_model_checkpoint == str(run_dir / "checkpoint-2")
    assert same_state(resumed.model.state_dict(), best)  # load_best_model_at_end found the true best


def test_dry_run_names_the_best_checkpoint_and_where_it_is_recorded(hf, ip, bucket, tmp_path, capsys):
    run_dir = tmp_path / "bert"
    hf_trainer(hf, run_dir, 6).train()
    capsys.readouterr()

    ip.run_line_magic("gcs_save", f"{run_dir} gs://{bucket.name} --dry-run")

    out = capsys.readouterr().out
    assert "would save step 6 of bert" in out
    assert ("Also kept, as the training library records: checkpoint-2 "
            "(best_model_checkpoint in checkpoint-6/trainer_state.json)") in out
    ip.run_line_magic("gcs_save", f"{run_dir} gs://{bucket.name}")
    assert "with checkpoint-2, kept by the training library (its best)" in capsys.readouterr().out


def test_hugging_face_saves_made_without_on_save_are_archived_as_they_happen(hf, bucket, tmp_path):
    """A save the Trainer makes outside its save strategy (here a callback's own `_save_checkpoint`,
    as plugins do) calls no `on_save`: the callback sees the new `checkpoint-N` at the next step."""
    from colab_magics.callbacks import HuggingFaceArchiveCallback

    transformers, _ = hf
    callback = HuggingFaceArchiveCallback(f"gs://{bucket.name}")
    trainer = hf_trainer(hf, tmp_path / "bert", 6, [callback])
    trainer.args.save_strategy = trainer.args.eval_strategy = "no"  # only the saves below
    trainer.args.load_best_model_at_end = False

    class SaveAndWait(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (3, 5):  # the save of the step before has been handed over by now
                wanted = f"bert.{state.global_step - 1}.zip"
                poll(lambda: wanted in archive_names(bucket), 30, message=wanted)
            if state.global_step in (2, 4):
                trainer._save_checkpoint(trainer.model, None)

    trainer.add_callback(SaveAndWait())
    trainer.train()
    assert archive_names(bucket) == {"bert.2.zip", "bert.4.zip"}


# --- Lightning -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pl():
    torch = pytest.importorskip("torch")
    lightning = pytest.importorskip("lightning.pytorch")
    return torch, lightning


def tiny_module(pl, seen: list | None = None, scores=None):
    torch, lightning = pl

    class Tiny(lightning.LightningModule):
        """Logs `score`: by default -epoch, so epoch 0 is the best and stays so."""

        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, _):
            self.log("score", scores[self.current_epoch] if scores else -float(self.current_epoch))
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch, _):
            if seen is not None:
                seen.append({k: v.clone() for k, v in self.state_dict().items()})

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Tiny


def data(pl):
    torch, _ = pl
    torch.manual_seed(0)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 2)),
                                       batch_size=4)


def test_lightning_top_k_with_an_older_best_restores_for_ckpt_path_best(pl, bucket, tmp_path):
    torch, lightning = pl
    run_dir = tmp_path / "lit"

    def trainer(epochs):
        top = lightning.callbacks.ModelCheckpoint(dirpath=str(run_dir), monitor="score", mode="max", save_top_k=2,
                                                  save_last=True)
        return lightning.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                                 enable_model_summary=False, callbacks=[top], limit_val_batches=1)

    Tiny = tiny_module(pl)
    trainer(4).fit(Tiny(), data(pl))
    assert sorted(p.name for p in run_dir.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]
    best = torch.load(run_dir / "epoch=0-step=2.ckpt", weights_only=False)["state_dict"]

    saved = runs.save_run(run_dir, f"gs://{bucket.name}", settings=FAST)

    # Lightning 2.x rewrites last.ckpt only beside a new numbered file: step 4; its record keeps epoch 0 too
    assert saved.step == 4 and saved.kept == ("epoch=0-step=2.ckpt",)
    assert members(bucket, saved.url) == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]
    reset_and_restore(run_dir, f"gs://{bucket.name}/lit")

    seen: list = []
    resumed = trainer(5)
    resumed.fit(tiny_module(pl)(), data(pl), ckpt_path="last")
    resumed.validate(tiny_module(pl, seen)(), data(pl), ckpt_path="best")  # loads best_model_path
    assert resumed.checkpoint_callback.best_model_path == str(run_dir / "epoch=0-step=2.ckpt")
    assert seen and same_state(seen[0], best)


def test_lightning_weights_only_saves_are_archived_as_they_happen(pl, bucket, tmp_path):
    """Lightning skips `on_save_checkpoint` for `save_weights_only=True`: the callback sees the save in
    the ModelCheckpoint's own state instead, and each archive holds the best checkpoints it keeps."""
    from colab_magics.callbacks import LightningArchiveCallback

    _, lightning = pl
    run_dir = tmp_path / "weights"
    archived_during_fit = []

    class Wait(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            saved = sorted(int(p.stem.rpartition("=")[2]) for p in run_dir.glob("epoch=*.ckpt"))
            if saved:
                wanted = {f"weights.{saved[-1]}.zip"}
                poll(lambda: wanted <= archive_names(bucket), 30, message=f"archive {wanted}")
                archived_during_fit.append(saved[-1])

    checkpoint = lightning.callbacks.ModelCheckpoint(dirpath=str(run_dir), save_weights_only=True, monitor="score",
                                                     mode="max", save_top_k=2, every_n_train_steps=2)
    callback = LightningArchiveCallback(f"gs://{bucket.name}")
    scores = {0: -1.0, 1: 0.0, 2: -0.5, 3: -4.0}  # saved: steps 2, 4 (the best), 6 (step 2 then removed); not 8
    lightning.Trainer(max_steps=8, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[callback, Wait(), checkpoint]).fit(
        tiny_module(pl, scores=scores)(), data(pl))

    assert archived_during_fit[:1] == [2]  # archived as saved, not only when fit ended
    assert archive_names(bucket) == {"weights.2.zip", "weights.4.zip", "weights.6.zip"}
    assert callback.summary.last_step == 6 and callback.summary.failures == 0
    # the newest and the older best the callback keeps (no callback state in a weights-only file)
    assert members(bucket, callback.summary.last_url) == ["epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt"]


def test_two_default_dirpath_runs_archive_under_distinct_names(pl, bucket, tmp_path):
    from colab_magics.callbacks import LightningArchiveCallback

    _, lightning = pl
    urls = []
    for _ in range(2):  # the same project, trained twice: lightning_logs/version_0, then version_1
        callback = LightningArchiveCallback(f"gs://{bucket.name}/exp")
        lightning.Trainer(max_epochs=1, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=str(tmp_path), callbacks=[callback]).fit(tiny_module(pl)(), data(pl))
        urls.append(callback.summary.last_url)

    assert urls == [f"gs://{bucket.name}/exp/version_0-checkpoints.2.zip",
                    f"gs://{bucket.name}/exp/version_1-checkpoints.2.zip"]
    assert checkpoints.run_name(tmp_path / "lightning_logs" / "version_1" / "checkpoints") == "version_1-checkpoints"
    resumed = runs.resume(tmp_path / "lightning_logs" / "version_0" / "checkpoints", f"gs://{bucket.name}/exp",
                          settings=FAST)
    assert resumed.url == urls[0]


# --- TensorFlow: saves faster than the archiver looks ----------------------------------------------
def test_tf_checkpoint_manager_saving_every_0_4_s_is_archived_while_it_trains(bucket, tmp_path):
    """The archiver looks every 2 s (its most, with the default 10 min interval) and sees a new step
    each time: it takes the previous newest once that one looks unchanged. TensorFlow's `checkpoint`
    state file, rewritten at every save, is no part of any step, or no step would ever look unchanged."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    run_dir = tmp_path / "tf"
    v = tf.Variable(tf.zeros([64]))
    state = tf.train.Checkpoint(v=v)
    manager = tf.train.CheckpointManager(state, str(run_dir), max_to_keep=5)
    deadline = time.monotonic() + 15
    with archiver.Archiver(run_dir, f"gs://{bucket.name}", every="10m") as worker:
        while not archive_names(bucket) and time.monotonic() < deadline:
            v.assign_add(tf.ones([64]))
            manager.save()
            time.sleep(0.4)  # the training's save interval, shorter than the archiver's 2 s poll
        during = archive_names(bucket)
        first = worker.summary()
    assert len(during) == 1, "nothing archived in 15 s of saves every 0.4 s"
    restored = runs.load_run(first.last_url, tmp_path / "back", settings=FAST)
    fresh = tf.Variable(tf.zeros([64]))
    tf.train.Checkpoint(v=fresh).restore(tf.train.latest_checkpoint(str(tmp_path / "back"))).assert_consumed()
    assert restored.step == first.last_step and float(fresh[0]) == first.last_step  # each save added one
    assert worker.summary().last_step == int(state.save_counter)  # and the final archive the newest


# --- any numbered series, or the whole directory ---------------------------------------------------
def test_numpy_pickle_text_and_extensionless_series(bucket, tmp_path):
    import numpy as np

    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    for step in (100, 200, 300):
        write(run_dir / "flax" / f"checkpoint_{step}", f"flax bytes {step}".encode())  # flax's legacy name
    for step in (100, 200, 300):
        np.savez(run_dir / f"step_{step}.npz", w=np.full(4, step))
    for step in (5, 6):
        with open(run_dir / f"ckpt-{step}.pkl", "wb") as fh:
            pickle.dump({"step": step}, fh)
    write(run_dir / "ckpt-3.txt", b"3")
    write(run_dir / "samples" / "sample_5.png")  # never a step
    write(run_dir / "samples" / "sample_6.png")

    saved = runs.save_run(run_dir, bucket.name, settings=FAST)

    assert saved.url.endswith("/run1.300.zip")  # the highest step of the keyed series
    assert members(bucket, saved.url) == ["ckpt-3.txt", "ckpt-6.pkl", "flax/checkpoint_300", "samples/sample_5.png",
                                          "samples/sample_6.png", "step_300.npz"]
    restored = runs.load_run(saved.url, tmp_path / "back", settings=FAST)
    assert restored.path == tmp_path / "back" / "step_300.npz"
    assert (np.load(restored.path)["w"] == 300).all()

    older = runs.save_run(run_dir, bucket.name, step=200, include=("ckpt-5.pkl",), settings=FAST)
    assert members(bucket, older.url) == ["ckpt-3.txt", "ckpt-5.pkl", "ckpt-6.pkl", "flax/checkpoint_200",
                                          "samples/sample_5.png", "samples/sample_6.png", "step_200.npz"]


def test_without_any_checkpoint_the_whole_directory_goes_in_named_by_its_mtime(ip, bucket, tmp_path, capsys):
    run_dir = tmp_path / "plain"
    write(run_dir / "results.csv", b"epoch,loss\n1,0.5\n")
    write(run_dir / "notes" / "readme.txt", b"hello")
    os.utime(run_dir / "results.csv", (1_800_000_000, 1_800_000_000))
    os.utime(run_dir / "notes" / "readme.txt", (1_700_000_000, 1_700_000_000))

    url = ip.run_line_magic("gcs_save", f"{run_dir} gs://{bucket.name}")

    assert url == f"gs://{bucket.name}/plain.mtime-1800000000.zip"
    assert "no step number in the names: named by the newest file's time" in capsys.readouterr().out
    assert members(bucket, url) == ["notes/readme.txt", "results.csv"]
    named = runs.save_run(run_dir, bucket.name, step=7, settings=FAST)  # a step given names it
    assert named.url.endswith("/plain.7.zip")


def test_dated_log_directories_are_no_steps(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    for day in ("20241122", "20241123"):
        write(run_dir / "logs" / day / "events.out.tfevents.1.host")
    write(run_dir / "ckpt-5.pt")
    plan = checkpoints.plan(run_dir, events=True)
    assert plan.step == 5 and [f.relative_to(run_dir).as_posix() for f in plan.files] == [
        "ckpt-5.pt", "logs/20241122/events.out.tfevents.1.host", "logs/20241123/events.out.tfevents.1.host"]
    orbax = run_dir / "orbax"
    for step in (3, 4):
        write(orbax / str(step) / "_CHECKPOINT_METADATA", b"{}")
    assert checkpoints.plan(orbax).path == orbax / "4"


def test_keras_backup_and_restore_is_named_by_the_epoch_it_records(bucket, tmp_path):
    pytest.importorskip("tensorflow")
    import keras
    import numpy as np

    run_dir = tmp_path / "backup"
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    model.fit(np.random.rand(8, 4), np.random.rand(8, 2), epochs=3, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(str(run_dir), delete_checkpoint=False)])
    saved = runs.save_run(run_dir, bucket.name, settings=FAST)
    assert saved.url.endswith("/backup.3.zip") and saved.step_from == "record"
    restored = runs.load_run(saved.url, tmp_path / "back", settings=FAST)
    assert restored.epoch == 3


# --- the first look says when there is nothing to archive -------------------------------------------
def test_the_first_look_warns_in_one_line_when_nothing_would_be_archived(ip, bucket, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="colab_magics.archiver")
    events_only = tmp_path / "logs"
    write(events_only / "train" / "events.out.tfevents.1.host")
    ip.run_cell_magic("gcs_archive", f"{events_only} gs://{bucket.name} --every 1h", "pass")
    [line] = [r.getMessage() for r in caplog.records if r.name == "colab_magics.archiver"]
    assert "nothing to archive in" in line and "event files (left out without events=)" in line
    assert "looked for numbered checkpoints" in line and "\n" not in line

    caplog.clear()
    worker = archiver.Archiver(tmp_path / "not-yet", f"gs://{bucket.name}", every="1h").start()
    poll(lambda: caplog.records, 10, message="the first look's warning")
    write(tmp_path / "not-yet" / "ckpt-1.pt")
    summary = worker.stop(final=True)
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"nothing to archive yet: {tmp_path / 'not-yet'} does not exist; looking for")
    assert summary.last_step == 1  # one warning, then archiving as usual


# --- hostile records: data, bounded ---------------------------------------------------------------
def torch_zip(path: Path, pickled: bytes) -> Path:
    """A file laid out as torch.save writes it: a stored zip whose first member is `archive/data.pkl`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/version", "3\n")
    return path


def memo_bomb() -> bytes:
    """141 bytes that make the C unpickler allocate a memo of 2^27 slots (1 GiB) and more."""
    return b"\x80\x02}r" + struct.pack("<I", 2**27) + b"."


def colliding_keys(n: int = 40_000) -> bytes:
    """A dict of `n` int keys that all hash alike (multiples of 2^61 - 1): quadratic to insert."""
    out = io.BytesIO()
    out.write(b"\x80\x02}(")
    for i in range(1, n + 1):
        number = pickle.encode_long(i * (2**61 - 1))
        out.write(b"\x8a" + bytes([len(number)]) + number + b"N")
    out.write(b"u.")
    return out.getvalue()


def record(global_step) -> bytes:
    return pickle.dumps({"global_step": global_step, "epoch": global_step}, protocol=2)


HOSTILE = {
    "memo index 2^27": memo_bomb(),
    "40 000 colliding keys": colliding_keys(),
    "global_step True": record(True),
    "global_step -5": record(-5),
    "global_step of 4 000 digits": record(10**3999),
    "truncated": record(7)[:-3],
    "nesting 100 000 deep": b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".",
    "a million empty dicts": b"\x80\x02(" + b"}" * 1_000_000 + b"l.",
}

BOUNDED = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from colab_magics import checkpoints, position, torchfile
    run_dir = Path(sys.argv[1])
    started = time.monotonic()
    found = []
    for path in sorted(run_dir.iterdir()):
        found.append([torchfile.recorded_progress(path),
                      list(position.read_position(path, run_dir).__dict__.values())])
    plan = checkpoints.plan(run_dir)
    peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024
    print(json.dumps({"found": found, "seconds": time.monotonic() - started, "peak_mib": peak,
                      "files": len(plan.files)}))
""")


def test_hostile_records_are_no_records_within_a_memory_and_time_bound(tmp_path):
    run_dir = tmp_path / "hostile"
    for i, pickled in enumerate(HOSTILE.values()):
        torch_zip(run_dir / f"last-v{i}.ckpt", pickled)
    write(run_dir / "trainer_state.json", b'{"global_step": true, "epoch": NaN, "best_model_checkpoint": 5}')
    assert len((run_dir / "last-v0.ckpt").read_bytes()) < 300

    out = subprocess.run([sys.executable, "-c", BOUNDED, str(run_dir)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})

    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["found"] == [[[None, None], [None, None]]] * len(HOSTILE) + [[[None, None], [None, None]]]
    assert result["files"] == len(HOSTILE) + 1  # every file still goes in
    assert result["seconds"] < 20, result  # the C unpickler took 26 s on the collisions alone
    assert result["peak_mib"] < 400, result  # and 2 GiB on the memo index


def test_a_hostile_last_ckpt_in_an_archive_restores_with_no_record(bucket, emulator_host, tmp_path):
    run_dir = tmp_path / "run1"
    torch_zip(run_dir / "last.ckpt", memo_bomb())
    torch_zip(run_dir / "epoch=0-step=7.ckpt", record(10**3999))
    saved = runs.save_run(run_dir, bucket.name, settings=FAST)
    assert saved.url.endswith("/run1.7.zip")
    code = (f"from colab_magics import runs; r = runs.load_run({saved.url!r}, {str(tmp_path / 'back')!r}); "
            "peak = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) // 1024; "
            "print(r.step, r.epoch, len(r.files), peak)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "STORAGE_EMULATOR_HOST": emulator_host})
    assert out.returncode == 0, out.stderr
    step, epoch, files, peak = out.stdout.split()
    assert (step, epoch, files) == ("7", "0", "2") and int(peak) < 400  # as the name says: no record


def test_a_real_lightning_record_is_read_quickly_and_only_once(pl, tmp_path):
    torch, lightning = pl
    run_dir = tmp_path / "lit"
    checkpoint = lightning.callbacks.ModelCheckpoint(dirpath=str(run_dir), monitor="score", mode="max", save_top_k=2)
    lightning.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[checkpoint]).fit(tiny_module(pl)(), data(pl))
    newest = run_dir / "epoch=1-step=4.ckpt"
    found = torchfile.read_record(newest)
    assert (found.step, found.epoch) == (4, 1)
    assert sorted(map(os.path.basename, found.kept)) == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt"]
    assert torchfile.read_record(newest) is found  # cached per file version
