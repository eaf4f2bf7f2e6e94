"""Every archive is complete and consistent; retention and "latest" go by upload recency; a restore
says where training stopped.

Real fake-gcs-server (conftest), real files rewritten by real threads while a save reads them.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path

import pytest

from colab_magics.settings import Settings
from colab_magics import packing, position, runs, ziplayout
from colab_magics.errors import ArchiveNotFound, CheckpointChanging, ColabMagicsError, RunDirError
from conftest import poll, run_cell

MiB = 1024 * 1024
SETTINGS = Settings(chunk_size_mb=8, retry_deadline=10, progress=False)
FAST = Settings(chunk_size_mb=1, retry_deadline=5, progress=False)


def write(path: Path, data: bytes | int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(data) if isinstance(data, int) else data)
    return path


def version_block(version: int) -> bytes:
    """1 MiB that names its version in every byte pattern and does not compress (so it is STORED)."""
    import random

    return random.Random(version).randbytes(MiB)


def rewrite(path: Path, version: int, mib: int) -> None:
    """What torch.save / Keras ModelCheckpoint do: truncate the file, then write it again in place."""
    block = version_block(version)
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(block)


def which_version(data: bytes, mib: int, versions: range) -> int | None:
    """The version whose full content `data` is, or None for a prefix or a mix of versions."""
    for v in versions:
        if len(data) == mib * MiB and data == version_block(v) * mib:
            return v
    return None


def opened_by_me(path: Path) -> bool:
    """True while this process holds `path` open (the save is reading it, maybe through a hard link of
    its snapshot: the same inode under another name)."""
    try:
        wanted = os.stat(path)
    except FileNotFoundError:
        return False
    for fd in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
    return False


# --- torn reads ---------------------------------------------------------------------------------
def test_a_file_rewritten_in_place_throughout_the_save_is_never_archived_torn(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    ckpt = run_dir / "last-7.pt"
    rewrite(ckpt, 0, 100)
    stop, versions = threading.Event(), []

    def keep_rewriting():
        v = 0
        while not stop.is_set():
            v += 1
            rewrite(ckpt, v, 100)
            versions.append(v)

    writer = threading.Thread(target=keep_rewriting, daemon=True)
    writer.start()
    try:
        outcome = runs.save_run(run_dir, f"gs://{bucket.name}/exp", settings=SETTINGS)
    except CheckpointChanging as exc:
        outcome = exc
    finally:
        stop.set()
        writer.join(timeout=60)
    assert len(versions) >= 2  # the file really changed while the save ran
    if isinstance(outcome, CheckpointChanging):
        assert "\n" not in str(outcome) and str(ckpt) in str(outcome) and "kept changing" in str(outcome)
        assert [b.name for b in bucket.list_blobs()] == []  # no object, not even a torn one
    else:  # read whole between two rewrites: then it must be one complete version
        restored = runs.load_run(outcome.url, tmp_path / "back", settings=SETTINGS)
        assert which_version((tmp_path / "back" / "last-7.pt").read_bytes(), 100, range(max(versions) + 1)) \
            is not None, f"restored a torn file from {restored.url}"


def test_a_file_that_changes_once_while_read_is_read_again_and_saved_whole(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    ckpt = run_dir / "model-5.keras"
    rewrite(ckpt, 1, 48)
    rewritten = threading.Event()

    def rewrite_once_while_read():
        poll(lambda: opened_by_me(ckpt), 60, interval=0.001, message="the save to open the file")
        rewrite(ckpt, 2, 48)
        rewritten.set()

    writer = threading.Thread(target=rewrite_once_while_read, daemon=True)
    writer.start()
    saved = runs.save_run(run_dir, bucket.name, settings=SETTINGS)
    writer.join(timeout=60)
    assert rewritten.is_set() and isinstance(saved, runs.Saved)
    assert saved.reread and set(saved.reread) == {"model-5.keras"}
    runs.load_run(saved.url, tmp_path / "back", settings=SETTINGS)
    assert which_version((tmp_path / "back" / "model-5.keras").read_bytes(), 48, range(1, 3)) == 2


def test_a_file_changed_mid_archive_never_gets_a_central_directory(tmp_path):
    """The zip writer stops writing at the change: no end record, so no upload fed by it can finish."""
    root = tmp_path / "run"
    first = write(root / "model-1.keras", os.urandom(3 * MiB))
    second = write(root / "model-1.index", os.urandom(MiB))
    out = io.BytesIO()
    touched = []

    def change_first_file_once(n):
        if not touched:
            touched.append(n)
            with open(first, "r+b") as fh:
                fh.write(b"changed")

    with pytest.raises(packing.FileChanged) as caught:
        ziplayout.write_zip(out, root, [first, second], strict={first, second}, on_bytes=change_first_file_once)
    assert caught.value.path == first
    assert b"PK\x05\x06" not in out.getvalue() and b"PK\x01\x02" not in out.getvalue()


def test_event_logs_that_grow_while_read_are_taken_as_they_were_when_opened(tmp_path):
    root = tmp_path / "run"
    events = write(root / "events.out.tfevents.1.host", os.urandom(MiB))
    weights = write(root / "model-1.keras", os.urandom(MiB))
    before = events.read_bytes()

    def append(n):
        with open(events, "ab") as fh:
            fh.write(b"more")

    out = io.BytesIO()
    ziplayout.write_zip(out, root, [events, weights], strict={weights}, on_bytes=append)
    with zipfile.ZipFile(out) as zf:
        assert zf.read(events.name) == before and zf.read(weights.name) == weights.read_bytes()


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_a_fifo_among_the_files_fails_in_one_line_and_never_blocks(tmp_path, fmt):
    root = tmp_path / "run"
    weights = write(root / "model-1.keras", 1000)
    fifo = root / "model-2.keras"
    os.mkfifo(fifo)
    failure = []

    def archive():
        writer = ziplayout.write_zip if fmt == "zip" else packing.write_targz
        try:
            writer(io.BytesIO(), root, [weights, fifo])
        except RunDirError as exc:
            failure.append(exc)

    thread = threading.Thread(target=archive, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "archiving blocked on a FIFO"
    assert failure and "not a regular file" in str(failure[0]) and str(fifo) in str(failure[0])


# --- retention and latest by recency ------------------------------------------------------------
def test_a_lower_step_saved_after_a_higher_one_is_kept_and_loaded(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    write(run_dir / "model-200.keras", b"step 200")
    write(run_dir / "model-150.keras", b"step 150, restarted from an earlier checkpoint")
    url = f"gs://{bucket.name}/exp"
    runs.save_run(run_dir, url, settings=FAST)
    saved = runs.save_run(run_dir, url, step=150, keep=1, settings=FAST)
    assert isinstance(saved, runs.Saved) and saved.url == f"{url}/run1.150.zip"
    assert saved.deleted == (f"{url}/run1.200.zip",)
    assert [a.step for a in runs.list_archives(url, "run1")] == [150]
    restored = runs.load_run(f"{url}/run1", tmp_path / "back", settings=FAST)
    assert restored.url == saved.url and restored.path.read_bytes().startswith(b"step 150")


def test_mtime_steps_are_named_as_such_and_never_outrank_named_steps(ip, bucket, tmp_path, capsys):
    run_dir = tmp_path / "run1"
    url = f"gs://{bucket.name}/exp"
    for step in (3, 5):
        write(run_dir / f"model-{step}.keras", b"step %d" % step)
        runs.save_run(run_dir, url, settings=FAST)
        (run_dir / f"model-{step}.keras").unlink()
    write(run_dir / "model.keras", b"no step in the name")
    unnamed = runs.save_run(run_dir, url, settings=FAST)
    assert unnamed.step_from == "mtime"
    assert unnamed.url == f"{url}/run1.mtime-{int((run_dir / 'model.keras').stat().st_mtime)}.zip"

    listed = runs.list_archives(url, "run1")
    assert [(a.step_from, a.url) for a in listed] == [
        ("name", f"{url}/run1.3.zip"), ("name", f"{url}/run1.5.zip"), ("mtime", unnamed.url)]
    run_cell(ip, f"%gcs_list {url}")
    shown = capsys.readouterr().out
    assert "(mtime " in shown and str(unnamed.step) not in shown.replace(unnamed.url, "")

    assert runs.load_run(f"{url}/run1", tmp_path / "a", step=5, settings=FAST).path.read_bytes() == b"step 5"
    with pytest.raises(ArchiveNotFound, match="steps archived: 3, 5"):
        runs.load_run(f"{url}/run1", tmp_path / "b", step=unnamed.step, settings=FAST)

    (run_dir / "model.keras").unlink()
    write(run_dir / "model-4.keras", b"step 4")
    saved = runs.save_run(run_dir, url, keep=2, settings=FAST)  # by step number, 4 would be the one deleted
    assert saved.deleted == (f"{url}/run1.3.zip", f"{url}/run1.5.zip")
    assert [a.url for a in runs.list_archives(url, "run1")] == [unnamed.url, saved.url]
    assert runs.load_run(f"{url}/run1", tmp_path / "c", settings=FAST).path.read_bytes() == b"step 4"


def test_step_and_an_archive_url_together_are_refused(gcs, tmp_path):
    with pytest.raises(ColabMagicsError, match="give the run's URL"):
        runs.load_run("gs://some-bucket/exp/run1.5.zip", tmp_path / "t", step=5, settings=FAST)


def test_magics_save_line_names_what_keep_deleted_and_load_takes_a_step(ip, bucket, tmp_path, capsys):
    run_dir = tmp_path / "run1"
    for step in (1, 2):
        write(run_dir / f"model-{step}.keras", b"step %d" % step)
        assert run_cell(ip, f"%gcs_save {run_dir} gs://{bucket.name} --keep 1").success
    assert "deleted run1.1.zip" in capsys.readouterr().out
    write(run_dir / "model-3.keras", b"step 3")
    run_cell(ip, f"%gcs_save {run_dir} gs://{bucket.name}")
    result = run_cell(ip, f"ckpt = %gcs_load gs://{bucket.name}/run1 {tmp_path / 'back'} --step 2")
    assert result.success
    ckpt = ip.user_ns["ckpt"]
    assert ckpt.step == 2 and Path(ckpt).read_bytes() == b"step 2" and open(ckpt, "rb").read() == b"step 2"
    assert "step 2" in capsys.readouterr().out


# --- where training stopped ---------------------------------------------------------------------
def test_the_restore_record_reads_step_and_epoch_from_the_layout(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    state = b'{"global_step": 1000, "epoch": 2.0, "log_history": []}'
    write(run_dir / "checkpoint-500" / "trainer_state.json", b'{"global_step": 500, "epoch": 1.0}')
    write(run_dir / "checkpoint-1000" / "trainer_state.json", state)
    write(run_dir / "checkpoint-1000" / "model.safetensors", 5000)
    saved = runs.save_run(run_dir, bucket.name, settings=FAST)
    ckpt = runs.load_run(saved.url, tmp_path / "back", settings=FAST)
    assert (ckpt.step, ckpt.epoch) == (1000, 2)
    assert ckpt.path == tmp_path / "back" / "checkpoint-1000" == Path(ckpt)
    assert set(ckpt.files) == {tmp_path / "back" / "checkpoint-1000" / n for n in ("trainer_state.json", "model.safetensors")}
    assert ckpt.url == saved.url and ckpt.target == tmp_path / "back"
    assert repr(ckpt).startswith("Restored(") and "epoch=2" in repr(ckpt)


@pytest.mark.parametrize("files, checkpoint, expected", [
    ({"checkpoints/epoch=4-step=500.ckpt": b"x"}, "checkpoints/epoch=4-step=500.ckpt", (500, 4)),
    ({"backup/latest.weights.h5": b"x", "backup/training_metadata.json": b'{"epoch": 7, "batch": 0}'},
     "backup/latest.weights.h5", (None, 7)),
    ({"epoch-003.keras": b"x"}, "epoch-003.keras", (None, 3)),
    ({"global_step1200/mp_rank_00_model_states.pt": b"x"}, "global_step1200", (1200, None)),
    ({"model.ckpt-300.index": b"x", "checkpoint": b'model_checkpoint_path: "model.ckpt-300"\n'},
     "model.ckpt-300", (300, None)),
    ({"ckpt-3.weights.h5": b"x"}, "ckpt-3.weights.h5", (None, None)),  # a bare number is no epoch
    ({"checkpoint-9/trainer_state.json": b"not json"}, "checkpoint-9", (None, None)),
])
def test_progress_is_read_from_what_each_layout_records(tmp_path, files, checkpoint, expected):
    for name, data in files.items():
        write(tmp_path / name, data)
    found = position.read_position(tmp_path / checkpoint, tmp_path)
    assert (found.step, found.epoch) == expected


# --- crc32c end to end, through the library's BlobWriter ----------------------------------------
class FlippingProxy:
    """A TCP proxy to the emulator that flips one byte of `marker` in what the client sends, once."""

    def __init__(self, upstream_port: int, marker: bytes):
        import socket

        self.upstream_port, self.marker, self.flipped = upstream_port, marker, False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._sockets: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src, dst, outgoing: bool):
        tail = b""
        try:
            while data := src.recv(65536):
                if outgoing and not self.flipped:
                    window = tail + data
                    at = window.find(self.marker)
                    if at >= len(tail):  # the marker starts in this piece: flip its first byte
                        data = data[: at - len(tail)] + bytes([data[at - len(tail)] ^ 0xFF]) + data[at - len(tail) + 1:]
                        self.flipped = True
                    tail = window[-len(self.marker):]
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            s.close()

    def close(self):
        self.server.close()
        for s in self._sockets:
            s.close()


def test_bytes_corrupted_on_the_way_never_leave_an_object(bucket, emulator_host, tmp_path, monkeypatch):
    from colab_magics import auth, session
    from colab_magics.errors import StorageError

    marker = b"MARKER-" + os.urandom(25).hex().encode()
    data = bytearray(os.urandom(3 * MiB))
    data[2 * MiB: 2 * MiB + len(marker)] = marker  # in the last chunk, past a sample that does not compress
    write(tmp_path / "run1" / "model-5.keras", bytes(data))
    proxy = FlippingProxy(int(emulator_host.rsplit(":", 1)[1]), marker)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.port}")
    session.current().set_auth(auth.authenticate())
    try:
        with pytest.raises(StorageError) as caught:
            runs.save_run(tmp_path / "run1", bucket.name, settings=FAST)
    finally:
        proxy.close()
    assert proxy.flipped and "\n" not in str(caught.value)
    assert [b.name for b in bucket.list_blobs()] == []


# --- step and epoch from layouts written by the real libraries ----------------------------------
def test_progress_of_a_keras_backup_and_restore_directory(tmp_path):
    keras = pytest.importorskip("keras")
    np = pytest.importorskip("numpy")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
    model.fit(np.zeros((8, 4), "float32"), np.zeros((8, 1), "float32"), epochs=3, callbacks=[backup], verbose=0)
    found = position.read_position(tmp_path / "backup" / "latest.weights.h5", tmp_path)
    assert found.epoch == 3  # epochs done: what fit(initial_epoch=...) takes, as BackupAndRestore itself does


def test_progress_of_hugging_face_trainer_and_lightning_checkpoints(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    lightning = pytest.importorskip("lightning")

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, num_labels=2)
    data = [{"input_ids": torch.tensor([1, 5, 7, 2]), "labels": torch.tensor(i % 2)} for i in range(8)]
    args = transformers.TrainingArguments(str(tmp_path / "hf"), use_cpu=True, report_to=[], save_steps=2,
                                          max_steps=6, per_device_train_batch_size=4)
    transformers.Trainer(model=transformers.BertForSequenceClassification(config), args=args,
                         train_dataset=data).train()
    found = position.read_position(tmp_path / "hf" / "checkpoint-6", tmp_path / "hf")
    assert (found.step, found.epoch) == (6, 3)  # 6 steps of 4 out of 8 examples: 3 epochs

    class Tiny(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(6, 2)), batch_size=2)
    trainer = lightning.Trainer(default_root_dir=str(tmp_path / "pl"), max_epochs=2, logger=False,
                                enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), loader)
    (ckpt,) = (tmp_path / "pl" / "checkpoints").iterdir()
    found = position.read_position(ckpt, tmp_path / "pl")
    assert (found.step, found.epoch) == (trainer.global_step, trainer.current_epoch - 1)  # epoch=E counts from 0
