"""The PyTorch callbacks with the real libraries on CPU: Hugging Face Trainer and Lightning train a tiny
model, the callbacks archive each save to the emulator, and training resumes from the archive at the
archived global step."""

from __future__ import annotations

import subprocess
import sys

import pytest

from colab_magics.settings import Settings
from colab_magics import runs
from conftest import poll

pytestmark = pytest.mark.layouts

NO_PROGRESS = Settings(progress=False)


def archive_names(bucket, prefix: str) -> set[str]:
    return {b.name for b in bucket.client.list_blobs(bucket.name, prefix=prefix)}


def wait_until_archived(bucket, prefix: str, run: str, steps) -> None:
    """Hold training (called from a test callback) until every step saved so far is in the bucket.

    The tiny models save faster than an upload takes, and the archiver always takes the newest
    step; real training saves minutes apart. Waiting here makes "each save is archived" testable."""
    wanted = {f"{prefix}{run}.{step}.zip" for step in steps}
    poll(lambda: wanted <= archive_names(bucket, prefix), 30, message=f"archives {sorted(wanted)}")


def test_importing_the_callbacks_module_imports_no_library():
    code = ("import sys, colab_magics.callbacks; "
            "assert not {'torch', 'transformers', 'lightning', 'pytorch_lightning'} & set(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# --- Hugging Face ---------------------------------------------------------------------------------
def hf_trainer(hf, output_dir, max_steps: int, callbacks):
    transformers, torch = hf
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(1, 100, (8,), generator=g), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(32)]
    args = transformers.TrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to=[], save_steps=2,
                                          max_steps=max_steps, per_device_train_batch_size=4, logging_steps=1000,
                                          disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)


def test_hugging_face_trainer_archives_each_save_and_resumes_at_the_archived_step(hf, bucket, tmp_path):
    from colab_magics.callbacks import HuggingFaceArchiveCallback

    transformers, _ = hf
    run_dir = tmp_path / "bert1"
    callback = HuggingFaceArchiveCallback(f"gs://{bucket.name}/hf")

    class Wait(transformers.TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            wait_until_archived(bucket, "hf/", "bert1", [state.global_step])

    hf_trainer(hf, run_dir, 6, [callback, Wait()]).train()

    assert archive_names(bucket, "hf/") == {"hf/bert1.2.zip", "hf/bert1.4.zip", "hf/bert1.6.zip"}
    assert callback.summary.last_step == 6 and callback.summary.failures == 0

    # a VM reset: the run directory is gone; the archive brings back checkpoint-6 and training goes on
    restored = runs.load_run(f"gs://{bucket.name}/hf/bert1", tmp_path / "fresh", settings=NO_PROGRESS)
    assert restored.checkpoint == tmp_path / "fresh" / "checkpoint-6"
    assert (restored.checkpoint / "optimizer.pt").read_bytes() == (run_dir / "checkpoint-6" / "optimizer.pt").read_bytes()

    steps = []

    class Steps(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    trainer = hf_trainer(hf, tmp_path / "fresh", 8, [Steps()])
    trainer.train(resume_from_checkpoint=str(restored.checkpoint))
    assert steps == [7, 8] and trainer.state.global_step == 8


def test_hugging_face_callback_archives_nothing_on_a_non_chief_worker(hf, bucket, tmp_path, monkeypatch):
    from colab_magics.callbacks import HuggingFaceArchiveCallback

    monkeypatch.setenv("RANK", "1")  # the archiver's chief rule (torchrun sets RANK)
    callback = HuggingFaceArchiveCallback(f"gs://{bucket.name}/hf")
    hf_trainer(hf, tmp_path / "bert2", 2, [callback]).train()
    assert archive_names(bucket, "hf/") == set()
    assert "not the chief worker (RANK=1)" in callback.summary.skipped


# --- Lightning ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pl():
    pytest.importorskip("torch")
    return pytest.importorskip("lightning.pytorch")


def lightning_fit(pl, run_dir, max_steps: int, callbacks, ckpt_path=None, fail_at: int | None = None):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            if fail_at is not None and self.global_step == fail_at:
                raise RuntimeError("out of memory (simulated)")
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=4)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(run_dir), every_n_train_steps=2, save_top_k=-1)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[*callbacks, checkpoint])
    trainer.fit(Tiny(), data, ckpt_path=ckpt_path)
    return trainer


def test_lightning_archives_each_checkpoint_and_resumes_at_the_archived_step(pl, bucket, tmp_path):
    from colab_magics.callbacks import LightningArchiveCallback

    run_dir = tmp_path / "lit1"
    callback = LightningArchiveCallback(f"gs://{bucket.name}/lit")

    class Wait(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            saved = [int(p.stem.rpartition("=")[2]) for p in run_dir.glob("*.ckpt")]
            wait_until_archived(bucket, "lit/", "lit1", saved)

    lightning_fit(pl, run_dir, 6, [callback, Wait()])

    assert archive_names(bucket, "lit/") == {"lit/lit1.2.zip", "lit/lit1.4.zip", "lit/lit1.6.zip"}
    assert callback.summary.last_step == 6

    restored = runs.load_run(f"gs://{bucket.name}/lit/lit1", tmp_path / "fresh", settings=NO_PROGRESS)
    assert restored.checkpoint.name == "epoch=0-step=6.ckpt"

    started = []

    class Start(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            started.append(trainer.global_step)

    trainer = lightning_fit(pl, tmp_path / "fresh", 8, [Start()], ckpt_path=str(restored.checkpoint))
    assert started == [6] and trainer.global_step == 8


def test_lightning_archives_the_last_save_when_fit_raises(pl, bucket, tmp_path):
    from colab_magics.callbacks import LightningArchiveCallback

    callback = LightningArchiveCallback(f"gs://{bucket.name}/lit", every="1h")  # the first step, then the end
    with pytest.raises(RuntimeError, match="simulated"):
        lightning_fit(pl, tmp_path / "lit2", 10, [callback], fail_at=5)

    assert "lit/lit2.4.zip" in archive_names(bucket, "lit/") <= {"lit/lit2.2.zip", "lit/lit2.4.zip"}
    assert callback.summary.last_step == 4


def test_lightning_without_a_checkpoint_directory_is_one_line(pl, bucket, tmp_path):
    from colab_magics.callbacks import LightningArchiveCallback
    from colab_magics.errors import ColabMagicsError

    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[LightningArchiveCallback(f"gs://{bucket.name}/lit")])
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    with pytest.raises(ColabMagicsError, match="needs a ModelCheckpoint"):
        trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(4, 1)), batch_size=2))


@pytest.mark.parametrize("name, library", [("HuggingFaceArchiveCallback", "hf"), ("LightningArchiveCallback", "pl")])
def test_bad_destination_or_interval_fails_before_training(name, library, request):
    from colab_magics import callbacks
    from colab_magics.errors import ColabMagicsError, InvalidArgument, InvalidBucketURL, InvalidInterval

    request.getfixturevalue(library)  # skips without the library
    cls = getattr(callbacks, name)
    with pytest.raises(InvalidBucketURL):
        cls("gs://Not_A_Bucket")
    with pytest.raises(InvalidInterval):
        cls("gs://fine-bucket", every="soon")
    with pytest.raises(InvalidArgument, match="destination must be"):
        cls(None)
    with pytest.raises(ColabMagicsError, match="keep= must be a whole number of at least 1"):
        cls("gs://fine-bucket", keep=0)


def test_without_the_library_the_error_names_the_extra_to_install():
    code = ("import sys; sys.modules['transformers'] = None; sys.modules['lightning'] = None; "
            "sys.modules['pytorch_lightning'] = None\n"
            "from colab_magics import callbacks\n"
            "for name in ('HuggingFaceArchiveCallback', 'LightningArchiveCallback'):\n"
            "    try:\n"
            "        getattr(callbacks, name)\n"
            "    except Exception as exc:\n"
            "        print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'MissingDependency transformers is not installed: run  pip install "colab-magics[hf]"' in out.stdout
    assert 'MissingDependency lightning is not installed: run  pip install "colab-magics[lightning]"' in out.stdout
