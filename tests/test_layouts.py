"""What goes into an archive, on run directories written by the real libraries.

Each library's layout is made by the library itself (tiny models, a few steps), saved through
`runs.save_run` to the emulator, restored with `runs.load_run` into a fresh directory and loaded
back by the same library: the tensors must be equal. Each library is imported inside its test
(`pytest.importorskip`), so the rest of the suite stays fast; install them with the `layouts` extra.
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from colab_magics.settings import Settings
from colab_magics import checkpoints, runs
from colab_magics.errors import NotRegularFile, RunDirError

pytestmark = pytest.mark.layouts

FAST = Settings(chunk_size_mb=1, retry_deadline=10, progress=False)
SAVE_DEADLINE = 60  # seconds a save may take before the test calls it hung


def save_and_restore(run_dir: Path, bucket, target: Path, **options) -> tuple[runs.Saved, runs.Restored, list[str]]:
    """Save `run_dir` to the bucket, restore its archive into `target`; also return the archive's names."""
    saved = runs.save_run(run_dir, f"gs://{bucket.name}/exp", settings=FAST, **options)
    assert isinstance(saved, runs.Saved), saved
    restored = runs.load_run(saved.url, target, settings=FAST)
    blob = bucket.blob(saved.url.split("/", 3)[3])
    names = zipfile.ZipFile(io.BytesIO(blob.download_as_bytes())).namelist()
    return saved, restored, sorted(names)


def files_below(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- TensorFlow and Keras -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


def test_tf1_saver_archives_the_step_its_state_file_names(tf, bucket, tmp_path):
    run_dir = tmp_path / "run1"
    graph = tf.Graph()
    with graph.as_default():
        w = tf.compat.v1.get_variable("w", initializer=tf.zeros([3, 4]))
        bump = w.assign_add(tf.random.normal([3, 4]))
        saver = tf.compat.v1.train.Saver(max_to_keep=5)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for step in (100, 200, 1000):
                sess.run(bump)
                saver.save(sess, str(run_dir / "model.ckpt"), global_step=step)
            expected = sess.run(w)

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert saved.step == 1000 and saved.left_out_older == 6  # .index, .meta, .data of steps 100 and 200
    assert names == ["checkpoint", "model.ckpt-1000.data-00000-of-00001", "model.ckpt-1000.index",
                     "model.ckpt-1000.meta"]
    latest = tf.train.latest_checkpoint(str(tmp_path / "restored"))
    assert latest == str(restored.checkpoint)
    graph = tf.Graph()
    with graph.as_default():
        w = tf.compat.v1.get_variable("w", shape=[3, 4])
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, latest)
            assert (sess.run(w) == expected).all()


def test_tf2_checkpoint_manager_round_trip(tf, bucket, tmp_path):
    run_dir = tmp_path / "run1"
    v = tf.Variable(tf.zeros([5]))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(run_dir), max_to_keep=3)
    for _ in range(4):
        v.assign_add(tf.random.normal([5]))
        manager.save()

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert saved.step == 4
    assert names == ["checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    fresh = tf.Variable(tf.zeros([5]))
    tf.train.Checkpoint(v=fresh).restore(tf.train.latest_checkpoint(str(tmp_path / "restored"))).assert_consumed()
    assert (fresh.numpy() == v.numpy()).all()


def _tiny_keras_model():
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    return model


def test_keras_model_checkpoint_keeps_the_newest_epoch_of_each_series(tf, bucket, tmp_path):
    import keras
    import numpy as np

    run_dir = tmp_path / "run1"
    model = _tiny_keras_model()
    x, y = np.random.rand(16, 4), np.random.rand(16, 2)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[
        keras.callbacks.ModelCheckpoint(str(run_dir / "model-{epoch:02d}.keras")),
        keras.callbacks.ModelCheckpoint(str(run_dir / "weights.{epoch:02d}-{loss:.2f}.weights.h5"),
                                        save_weights_only=True),
    ])
    weights_file = next(run_dir.glob("weights.03-*.weights.h5")).name

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert saved.step == 3 and names == sorted(["model-03.keras", weights_file])
    assert saved.left_out_older == 4  # epochs 1 and 2 of both series
    expected = model.get_weights()
    loaded = keras.models.load_model(tmp_path / "restored" / "model-03.keras")
    fresh = _tiny_keras_model()
    fresh.load_weights(tmp_path / "restored" / weights_file)
    for a, b, c in zip(expected, loaded.get_weights(), fresh.get_weights()):
        assert (a == b).all() and (a == c).all()


def test_keras_backup_and_restore_keeps_its_epoch_metadata(tf, bucket, tmp_path):
    import keras
    import numpy as np

    run_dir = tmp_path / "backup"
    x, y = np.random.rand(16, 4), np.random.rand(16, 2)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.weights = self.model.get_weights()
                raise KeyboardInterrupt  # the VM goes away after the second epoch

    interrupt = Interrupt()
    with pytest.raises(KeyboardInterrupt):
        _tiny_keras_model().fit(x, y, epochs=5, verbose=0,
                                callbacks=[keras.callbacks.BackupAndRestore(str(run_dir)), interrupt])
    metadata = json.loads((run_dir / "training_metadata.json").read_text())

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert "training_metadata.json" in names
    assert json.loads((tmp_path / "restored" / "training_metadata.json").read_text()) == metadata

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            if not self.epochs:
                self.first_weights = self.model.get_weights()  # after BackupAndRestore loaded them
            self.epochs.append(epoch)

    record = Record()
    _tiny_keras_model().fit(x, y, epochs=5, verbose=0,
                            callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "restored")), record])
    assert record.epochs == [2, 3, 4]  # resumed after the two epochs done before the interruption
    for a, b in zip(interrupt.weights, record.first_weights):
        assert (a == b).all()


# --- PyTorch: transformers, accelerate, Lightning, DeepSpeed ------------------------------------
def _tiny_bert(seed: int = 0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=37)
    return transformers.BertForSequenceClassification(config)


def _same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_transformers_sharded_save_pretrained_goes_in_whole(bucket, tmp_path):
    model = _tiny_bert()
    run_dir = tmp_path / "bert"
    model.save_pretrained(run_dir, max_shard_size="30KB")
    shards = sorted(p.name for p in run_dir.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1  # the layout this test is about

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert names == sorted(files_below(run_dir))  # config, every shard and the index
    assert saved.left_out_older == 0
    assert restored.checkpoint == tmp_path / "restored"
    loaded = type(model).from_pretrained(restored.checkpoint)
    assert _same_tensors(model.state_dict(), loaded.state_dict())


class _Examples:
    """A few fixed classification examples, as a map-style dataset."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        import torch

        g = torch.Generator().manual_seed(i)
        return {"input_ids": torch.randint(0, 100, (8,), generator=g), "labels": torch.tensor(i % 2)}


def _training_args(output_dir: Path, max_steps: int):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(output_dir), save_steps=2, max_steps=max_steps, use_cpu=True,
                             report_to=[], per_device_train_batch_size=4, logging_strategy="no",
                             disable_tqdm=True)


def test_transformers_trainer_resumes_from_the_restored_checkpoint(bucket, tmp_path):
    from transformers import Trainer

    model = _tiny_bert()
    run_dir = tmp_path / "trainer"
    Trainer(model=model, args=_training_args(run_dir, 6), train_dataset=_Examples()).train()
    assert {p.name for p in run_dir.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4", "checkpoint-6"}

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert saved.step == 6 and restored.checkpoint == tmp_path / "restored" / "checkpoint-6"
    assert names == sorted(f"checkpoint-6/{n}" for n in files_below(run_dir / "checkpoint-6"))
    state = json.loads((restored.checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    loaded = type(model).from_pretrained(restored.checkpoint)
    assert _same_tensors(model.state_dict(), loaded.state_dict())

    resumed = Trainer(model=_tiny_bert(seed=1), args=_training_args(tmp_path / "restored", 8),
                      train_dataset=_Examples())
    resumed.train(resume_from_checkpoint=str(restored.checkpoint))
    assert resumed.state.global_step == 8


def test_accelerate_save_state_archives_the_last_checkpoint_dir(bucket, tmp_path):
    torch = pytest.importorskip("torch")
    accelerate = pytest.importorskip("accelerate")
    from accelerate.utils import ProjectConfiguration

    def prepared(project_dir: Path, seed: int):
        torch.manual_seed(seed)
        acc = accelerate.Accelerator(cpu=True, project_config=ProjectConfiguration(
            project_dir=str(project_dir), automatic_checkpoint_naming=True))
        model = torch.nn.Linear(4, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return (acc, *acc.prepare(model, optimizer))

    run_dir = tmp_path / "acc"
    acc, model, optimizer = prepared(run_dir, 0)
    for _ in range(2):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        acc.save_state()
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"checkpoint_0", "checkpoint_1"}

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert saved.step == 1 and restored.checkpoint == tmp_path / "restored" / "checkpoints" / "checkpoint_1"
    assert all(n.startswith("checkpoints/checkpoint_1/") for n in names)
    acc2, model2, optimizer2 = prepared(tmp_path / "restored", 1)
    acc2.load_state(str(restored.checkpoint))
    assert _same_tensors(model.state_dict(), model2.state_dict())
    momentum = [s["momentum_buffer"] for s in optimizer.state_dict()["state"].values()]
    momentum2 = [s["momentum_buffer"] for s in optimizer2.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, momentum2)) and momentum


def tiny_lightning_module(torch, lightning):
    """A two-parameter-tensor LightningModule; it logs `score`, best (max) at epoch 0 and never again."""

    class Tiny(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, _):
            x, y = batch
            self.log("score", -float(self.current_epoch))
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Tiny


def test_lightning_model_checkpoint_with_save_last(bucket, tmp_path):
    torch = pytest.importorskip("torch")
    lightning = pytest.importorskip("lightning")

    Tiny = tiny_lightning_module(torch, lightning)
    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 2)),
                                       batch_size=4)
    run_dir = tmp_path / "lit"
    model = Tiny()
    callback = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), save_last=True,
                                                           save_top_k=-1)
    trainer = lightning.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[callback], default_root_dir=str(run_dir))
    trainer.fit(model, data)
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {
        "epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"}

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert saved.step == 6 and names == ["checkpoints/epoch=2-step=6.ckpt", "checkpoints/last.ckpt"]
    assert restored.checkpoint == tmp_path / "restored" / "checkpoints" / "epoch=2-step=6.ckpt"
    for name in names:
        loaded = Tiny.load_from_checkpoint(tmp_path / "restored" / name)
        assert _same_tensors(model.state_dict(), loaded.state_dict())


def test_lightning_last_ckpt_wins_over_an_older_best_checkpoint(bucket, tmp_path):
    """The numbered file is the best epoch (0 here) while `last.ckpt` is newer: Lightning 1.x's
    `save_last=True` rewrote it every epoch, and `trainer.save_checkpoint("last.ckpt")` does so in any
    version (2.x rewrites it only beside a new numbered file). The archive is the step last.ckpt
    records inside, and a resume from it continues there."""
    torch = pytest.importorskip("torch")
    lightning = pytest.importorskip("lightning")

    Tiny = tiny_lightning_module(torch, lightning)
    def trainer(run_dir, epochs):
        best = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), monitor="score",
                                                           mode="max", save_top_k=1, save_last=True)
        return lightning.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                                 enable_model_summary=False, callbacks=[best], default_root_dir=str(run_dir))

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 2)),
                                       batch_size=4)
    run_dir = tmp_path / "lit"
    model = Tiny()
    training = trainer(run_dir, 3)
    training.fit(model, data)
    training.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # step 6, where training stopped
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"epoch=0-step=2.ckpt", "last.ckpt"}

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert saved.step == 6 and saved.url.endswith("/lit.6.zip")  # not 2, the best epoch's step
    assert names == ["checkpoints/epoch=0-step=2.ckpt", "checkpoints/last.ckpt"]
    assert restored.checkpoint == tmp_path / "restored" / "checkpoints" / "last.ckpt"
    assert (restored.step, restored.epoch) == (6, 3)  # as Lightning records it once fit() is done
    assert _same_tensors(model.state_dict(), Tiny.load_from_checkpoint(restored.checkpoint).state_dict())
    resumed = trainer(tmp_path / "restored", 4)
    resumed.fit(Tiny(), data, ckpt_path=str(restored))
    assert resumed.global_step == 8  # went on from step 6: one more epoch of two batches


def test_deepspeed_layout_archives_the_tag_latest_names(bucket, tmp_path):
    """DeepSpeed needs a GPU, so its layout is built here from its documented names
    (deepspeed/runtime/engine.py: save_checkpoint writes `global_step{N}/mp_rank_00_model_states.pt`
    and `zero_pp_rank_{r}_mp_rank_00_optim_states.pt`, then the `latest` file naming the tag, and
    copies `zero_to_fp32.py` beside them). `latest` names step 20 while step 30 is still being written."""
    torch = pytest.importorskip("torch")
    run_dir = tmp_path / "ds"
    states = {}
    for step in (10, 20, 30):
        states[step] = {"module": {"w": torch.randn(3, 3)}, "global_steps": step}
        (run_dir / f"global_step{step}").mkdir(parents=True)
        torch.save(states[step], run_dir / f"global_step{step}" / "mp_rank_00_model_states.pt")
        for rank in (0, 1):
            torch.save({"optimizer_state_dict": {"rank": rank}},
                       run_dir / f"global_step{step}" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (run_dir / "latest").write_text("global_step20")
    write(run_dir / "zero_to_fp32.py", b"# DeepSpeed's conversion script\n")

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert saved.step == 20 and restored.checkpoint == tmp_path / "restored" / "global_step20"
    assert names == ["global_step20/mp_rank_00_model_states.pt",
                     "global_step20/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                     "global_step20/zero_pp_rank_1_mp_rank_00_optim_states.pt", "latest", "zero_to_fp32.py"]
    tag = (tmp_path / "restored" / "latest").read_text().strip()
    loaded = torch.load(tmp_path / "restored" / tag / "mp_rank_00_model_states.pt")
    assert torch.equal(loaded["module"]["w"], states[20]["module"]["w"])


# --- JAX: Orbax ---------------------------------------------------------------------------------
def test_orbax_checkpoint_manager_round_trip(bucket, tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    ocp = pytest.importorskip("orbax.checkpoint")
    run_dir = tmp_path / "orbax"
    manager = ocp.CheckpointManager(run_dir, options=ocp.CheckpointManagerOptions(max_to_keep=3))
    for step in range(4):
        manager.save(step, args=ocp.args.StandardSave({"w": jnp.arange(6.0) * (step + 1)}))
    manager.wait_until_finished()
    manager.close()
    assert sorted(p.name for p in run_dir.iterdir()) == ["1", "2", "3"]

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert saved.step == 3 and restored.checkpoint == tmp_path / "restored" / "3"
    assert all(n.startswith("3/") for n in names)
    again = ocp.CheckpointManager(tmp_path / "restored")
    assert again.latest_step() == 3
    got = again.restore(3, args=ocp.args.StandardRestore({"w": jnp.zeros(6)}))
    again.close()
    assert (got["w"] == jnp.arange(6.0) * 4).all()


# --- names, refusals, files that are not files --------------------------------------------------
def test_pretrained_weights_next_to_checkpoints_are_kept_and_not_a_step(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    for name in ("resnet50.pth", "yolov8n.pt", "epoch4.pt", "epoch5.pt"):
        write(run_dir / name, os.urandom(1000))

    saved, restored, names = save_and_restore(run_dir, bucket, tmp_path / "restored")

    assert saved.step == 5 and names == ["epoch5.pt", "resnet50.pth", "yolov8n.pt"]
    assert restored.checkpoint == tmp_path / "restored" / "epoch5.pt"
    assert (tmp_path / "restored" / "resnet50.pth").read_bytes() == (run_dir / "resnet50.pth").read_bytes()


def test_a_fifo_never_blocks_the_save_and_is_reported(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    write(run_dir / "ckpt-1.pt")
    write(run_dir / "ckpt-2.pt")
    os.mkfifo(run_dir / "progress.pipe")  # nothing ever writes into it: opening it would block
    result: list = []
    worker = threading.Thread(target=lambda: result.append(
        runs.save_run(run_dir, f"gs://{bucket.name}", settings=FAST)), daemon=True)
    worker.start()
    worker.join(SAVE_DEADLINE)
    assert not worker.is_alive(), "the save blocked on the FIFO"
    assert isinstance(result[0], runs.Saved) and result[0].step == 2

    planned = runs.plan_save(run_dir, f"gs://{bucket.name}")
    [group] = [g for g in planned.left_out if g.kind == "not_regular"]
    assert group.files == (run_dir / "progress.pipe",) and "not a regular file (a FIFO)" == group.reason


def test_a_fifo_named_as_the_newest_checkpoint_is_one_line(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    write(run_dir / "ckpt-1.pt")
    os.mkfifo(run_dir / "ckpt-2.pt")
    with pytest.raises(NotRegularFile, match=r"ckpt-2.pt is a FIFO, not a regular file.*exclude='ckpt-2.pt'"):
        runs.save_run(run_dir, f"gs://{bucket.name}", settings=FAST)
    saved = runs.save_run(run_dir, f"gs://{bucket.name}", exclude=("ckpt-2.pt",), settings=FAST)
    assert saved.step == 1


def test_root_and_home_are_refused_at_once(gcs, tmp_path, monkeypatch):
    with pytest.raises(RunDirError, match="refusing to archive /"):
        runs.save_run("/", "gs://some-bucket", settings=FAST)
    home = tmp_path / "home"
    write(home / "ckpt-1.pt")
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(RunDirError, match="refusing"):
        runs.save_run("~", "gs://some-bucket", settings=FAST)
    with pytest.raises(RunDirError, match="refusing"):
        runs.save_run(tmp_path, "gs://some-bucket", settings=FAST)  # holds the home directory


def test_a_linked_directory_is_not_followed(bucket, tmp_path):
    outside = tmp_path / "outside"
    write(outside / "secret.txt", b"not part of the run")
    run_dir = tmp_path / "run1"
    write(run_dir / "ckpt-1.pt")
    (run_dir / "data").symlink_to(outside, target_is_directory=True)
    saved, _, names = save_and_restore(run_dir, bucket, tmp_path / "restored")
    assert names == ["ckpt-1.pt"]
    planned = runs.plan_save(run_dir, bucket.name)
    assert [g.reason for g in planned.left_out] == ["not a regular file (a link to a directory (not followed))"]


def test_exclude_and_include(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    for step in (2, 4, 6):
        write(run_dir / f"checkpoint-{step}" / "model.safetensors", os.urandom(100))
        write(run_dir / f"checkpoint-{step}" / "optimizer.pt", os.urandom(100))
    write(run_dir / "samples" / "sample_1.png")
    write(run_dir / "scratch.tmp")
    write(run_dir / "runs" / "train" / "events.out.tfevents.1.host")
    write(run_dir / "runs" / "eval" / "events.out.tfevents.2.host")

    saved, _, names = save_and_restore(
        run_dir, bucket, tmp_path / "restored",
        exclude=("*.tmp", "samples", "optimizer.pt"),
        include=("checkpoint-4", "runs/train/*", "checkpoint-6/optimizer.pt"))

    assert names == ["checkpoint-4/model.safetensors", "checkpoint-4/optimizer.pt", "checkpoint-6/model.safetensors",
                     "checkpoint-6/optimizer.pt", "runs/train/events.out.tfevents.1.host"]
    # checkpoint-2 is left out: its model as an older step, its optimizer.pt as excluded (the first reason
    # that applies); checkpoint-4 was put back whole, include winning over exclude
    assert saved.step == 6 and saved.left_out_older == 1


def test_dry_run_through_the_magic_shows_everything_and_uploads_nothing(ip, bucket, tmp_path, capsys):
    run_dir = tmp_path / "run1"
    for step in (100, 200):
        write(run_dir / f"model.ckpt-{step}.index", os.urandom(300))
        write(run_dir / f"model.ckpt-{step}.data-00000-of-00001", os.urandom(5000))
    (run_dir / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-200"\n')
    write(run_dir / "tokenizer.json", b"{}")
    write(run_dir / "notes.tmp", b"scratch")
    write(run_dir / "train" / "events.out.tfevents.1.host")

    out = ip.run_line_magic("gcs_save", f"{run_dir} gs://{bucket.name}/exp --dry-run --exclude '*.tmp'")

    text = capsys.readouterr().out
    assert out is None and list(bucket.list_blobs()) == []
    assert f"would save step 200 of run1 to gs://{bucket.name}/exp/run1.200.zip" in text
    assert "model.ckpt-200.data-00000-of-00001  4.9 KiB" in text and "tokenizer.json" in text
    assert "model.ckpt-100" not in text.split("Left out:")[0]
    left_out = text.split("Left out:")[1]
    assert "older step 100 of model.ckpt-{N}: 2 file(s)" in left_out
    assert "event file (use --events): 1 file(s)" in left_out
    assert "excluded by --exclude '*.tmp': 1 file(s) (notes.tmp)" in left_out

    url = ip.run_line_magic("gcs_save", f"{run_dir} gs://{bucket.name}/exp")
    assert url == f"gs://{bucket.name}/exp/run1.200.zip"
    assert "2 file(s) of older steps left out" in capsys.readouterr().out

    with pytest.raises(UsageError, match="refusing to archive /"):
        ip.run_line_magic("gcs_save", f"/ gs://{bucket.name} --dry-run")


def test_dry_run_from_the_command_line(bucket, emulator_host, tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "run1"
    write(run_dir / "ckpt-1.pt")
    write(run_dir / "ckpt-2.pt")
    write(run_dir / "scratch.tmp")
    result = subprocess.run([sys.executable, "-m", "colab_magics.cli", "save", str(run_dir), f"gs://{bucket.name}",
                             "--dry-run", "--exclude", "*.tmp"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "STORAGE_EMULATOR_HOST": emulator_host})
    assert result.returncode == 0, result.stderr
    assert "would save step 2 of run1" in result.stdout
    assert "older step 1 of ckpt-{N}.pt: 1 file(s)" in result.stdout
    assert "excluded by --exclude '*.tmp': 1 file(s) (scratch.tmp)" in result.stdout
    assert list(bucket.list_blobs()) == []


def test_plan_is_the_api_other_code_builds_on(tmp_path):
    run_dir = tmp_path / "run1"
    write(run_dir / "ckpt-1.weights.h5")
    write(run_dir / "ckpt-2.weights.h5")
    write(run_dir / "last.weights.h5")
    plan = checkpoints.plan(run_dir)
    assert (plan.step, plan.step_from, plan.layout, plan.path) == (2, "name", "keras", run_dir / "ckpt-2.weights.h5")
    assert plan.files == (run_dir / "ckpt-2.weights.h5", run_dir / "last.weights.h5")
    assert [(g.kind, g.reason, g.files) for g in plan.left_out] == [
        ("older", "older step 1 of ckpt-{N}.weights.h5", (run_dir / "ckpt-1.weights.h5",))]
    only_mtime = tmp_path / "run2"
    write(only_mtime / "model.keras")
    assert checkpoints.plan(only_mtime).step_from == "mtime"


@pytest.mark.parametrize("name, step", [
    ("ckpt-3.pt", 3), ("model_0003.pt", 3), ("epoch=5-step=1000.ckpt", 1000), ("epoch5.pt", 5),
    ("weights.05-0.31.hdf5", 5), ("model.ckpt-1000", 1000), ("global_step1000", 1000), ("checkpoint-7", 7),
    ("resnet50.pth", None), ("vgg16.h5", None), ("yolov8n.pt", None), ("gpt2.bin", None), ("model_v2.pt", None),
    ("model-00001-of-00004.safetensors", None), ("data-00000-of-00001", None), ("mp_rank_00_model_states.pt", None),
])
def test_what_is_a_step_in_a_name(name, step):
    assert checkpoints.step_from_name(name) == step


def test_directories_without_a_step_key_are_never_dropped(tmp_path):
    run_dir = tmp_path / "run1"
    for rel in ("lightning_logs/version_0/hparams.yaml", "lightning_logs/version_1/hparams.yaml",
                "fold_1/ckpt-1.pt", "fold_2/ckpt-1.pt", "fold_2/ckpt-2.pt"):
        write(run_dir / rel)
    plan = checkpoints.plan(run_dir)
    assert [f.relative_to(run_dir).as_posix() for f in plan.files] == [
        "fold_1/ckpt-1.pt", "fold_2/ckpt-2.pt", "lightning_logs/version_0/hparams.yaml",
        "lightning_logs/version_1/hparams.yaml"]
    assert [g.reason for g in plan.left_out] == ["older step 1 of fold_2/ckpt-{N}.pt"]


def test_gcs_archive_passes_exclude_and_include_to_every_archive(ip, bucket, tmp_path):
    run_dir = tmp_path / "run1"
    write(run_dir / "ckpt-1.pt")
    write(run_dir / "scratch.tmp")
    write(run_dir / "keep.tmp")
    ip.run_cell_magic("gcs_archive", f"{run_dir} gs://{bucket.name} --every 1h --exclude '*.tmp' --include keep.tmp",
                      "pass  # the training cell")
    [blob] = list(bucket.list_blobs())
    assert blob.name == "run1.1.zip"
    assert sorted(zipfile.ZipFile(io.BytesIO(blob.download_as_bytes())).namelist()) == ["ckpt-1.pt", "keep.tmp"]


def test_relative_run_and_target_directories(bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(Path("run1") / "ckpt-1.pt")
    write(Path("run1") / "ckpt-2.pt")
    saved = runs.save_run("run1", f"gs://{bucket.name}", settings=FAST)
    restored = runs.load_run(saved.url, "restored", settings=FAST)
    assert saved.step == 2 and restored.checkpoint == Path("restored") / "ckpt-2.pt"
    assert files_below(Path("restored")) == {"ckpt-2.pt"}


def test_files_of_a_save_in_progress_are_left_out(tmp_path):
    """Names from the writers' sources: TensorFlow file_io.atomic_write_string_to_file (`.tmp` + uuid hex),
    tensor_bundle.cc (`.tempstate` + a random number), functional_saver.py (`_temp/part`), Orbax
    atomicity_types.TMP_DIR_SUFFIX (`.orbax-checkpoint-tmp`)."""
    run_dir = tmp_path / "run1"
    for rel in ("ckpt-1.index", "ckpt-1.data-00000-of-00001", "checkpoint",
                "checkpoint.tmp" + "0123456789abcdef" * 2, "ckpt-2.data-00000-of-00001.tempstate123456",
                "ckpt-2_temp/part-00000-of-00001.index", "orbax/3/_CHECKPOINT_METADATA",
                "orbax/4.orbax-checkpoint-tmp-1700000000/_CHECKPOINT_METADATA"):
        write(run_dir / rel)
    plan = checkpoints.plan(run_dir)
    assert [f.relative_to(run_dir).as_posix() for f in plan.files] == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index", "orbax/3/_CHECKPOINT_METADATA"]
    [group] = plan.left_out
    assert group.kind == "unfinished" and len(group.files) == 4
