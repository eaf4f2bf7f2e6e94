"""The TensorFlow and Keras hooks: real training, real archives in the emulator, real resumption.

Kept small (a one-variable graph, a one-layer model) so the module runs in seconds once
TensorFlow is imported.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")

from colab_magics.settings import Settings
from colab_magics import callbacks, checkpoints, runs, tf_hooks  # noqa: E402

pytestmark = pytest.mark.tf

NO_PROGRESS = Settings(progress=False)


def archives(bucket, prefix: str) -> set[str]:
    return {b.name for b in bucket.client.list_blobs(bucket.name, prefix=prefix)}


def checkpoint_bytes(directory: Path, step: int) -> dict[str, bytes]:
    """The files of TF step `step` (not the `checkpoint` state file, which a restore rewrites)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.startswith(f"model.ckpt-{step}.")}


def train(run_dir: Path, until: int, hooks=(), saver_callback=None, seconds_per_step: float = 0.0):
    """Train w towards 3.0 with MonitoredTrainingSession, saving every 10 steps; return (first step, w)."""
    with tf.Graph().as_default():
        step = tf.compat.v1.train.get_or_create_global_step()
        w = tf.compat.v1.get_variable("w", initializer=tf.constant([0.0]))
        loss = tf.reduce_sum((w - 3.0) ** 2)
        train_op = tf.compat.v1.train.GradientDescentOptimizer(0.05).minimize(loss, global_step=step)
        saver = tf_hooks.SaverWithCallback(saver_callback, max_to_keep=3, save_relative_paths=True)
        saver_hook = tf.compat.v1.train.CheckpointSaverHook(str(run_dir), save_steps=10, saver=saver)
        with tf.compat.v1.train.MonitoredTrainingSession(
            checkpoint_dir=str(run_dir), chief_only_hooks=[saver_hook], hooks=list(hooks),
            save_checkpoint_secs=None, save_checkpoint_steps=None, save_summaries_steps=None,
            save_summaries_secs=None, log_step_count_steps=None,
        ) as sess:
            first = sess.run(step)
            while sess.run(step) < until:
                sess.run(train_op)
                time.sleep(seconds_per_step)
            value = sess.run(w)
    return first, value


def test_monitored_training_with_gcs_archive_hook_archives_tar_gz_and_resumes(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    saves = []

    def after_save(sess, save_path, checkpoint_path, checkpoint_step):
        saves.append((checkpoint_step, checkpoint_path, Path(checkpoint_path + ".index").exists()))

    hook = tf_hooks.GcsArchiveHook(str(run_dir), bucket=f"gs://{bucket.name}/tf", every_n_secs=0.5)
    first, _ = train(run_dir, 60, hooks=[hook], saver_callback=after_save, seconds_per_step=0.04)
    assert first == 0

    # SaverWithCallback: one call per save, after the files exist, with the original's keywords
    assert [s[0] for s in saves] == [0, 10, 20, 30, 40, 50, 60]
    assert all(path.endswith(f"model.ckpt-{step}") and written for step, path, written in saves)

    # GcsArchiveHook: tar.gz archives during training (every 0.5 s) and the last step at end()
    names = archives(bucket, "tf/")
    assert "tf/run1.60.tar.gz" in names
    assert len(names) >= 2 and all(n.endswith(".tar.gz") for n in names), names
    assert hook.summary.last_step == 60 and hook.summary.archives == len(names)

    # the archive restores byte for byte, events included
    expected = checkpoint_bytes(run_dir, 60)
    restored_dir = tmp_path / "restored"
    restored = runs.load_run(f"gs://{bucket.name}/tf/run1", restored_dir, settings=NO_PROGRESS)
    assert restored.step == 60 and restored.checkpoint == restored_dir / "model.ckpt-60"
    assert checkpoint_bytes(restored_dir, 60) == expected
    assert list(restored_dir.rglob(checkpoints.EVENTS_GLOB))  # the hook archives events too
    assert tf.train.latest_checkpoint(str(restored_dir)) == str(restored_dir / "model.ckpt-60")
    assert "w" in tf.train.load_checkpoint(restored).get_variable_to_shape_map()  # the record is a path

    # training resumes from the archived step in the restored directory, not from zero
    shutil.rmtree(run_dir)
    first, w = train(restored_dir, 80)
    assert first == 60
    assert abs(float(w[0]) - 3.0) < 0.1


def test_keras_fit_with_gcs_archive_callback_archives_and_resumes(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    rng = np.random.default_rng(0)
    x = rng.random((64, 4), dtype="float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")

    def model():
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        m.compile(optimizer="sgd", loss="mse")
        return m

    trained = model()
    saver = keras.callbacks.ModelCheckpoint(str(run_dir / "ckpt-{epoch:03d}.weights.h5"), save_weights_only=True)
    archive = callbacks.KerasArchiveCallback(run_dir, f"gs://{bucket.name}/keras", every_n_epochs=2)
    trained.fit(x, y, epochs=5, batch_size=16, callbacks=[saver, archive], verbose=0)

    names = archives(bucket, "keras/")
    assert "keras/run1.5.zip" in names and len(names) >= 2, names  # every 2 epochs, then the last
    assert archive.summary.last_step == 5

    restored = runs.load_run(f"gs://{bucket.name}/keras/run1", tmp_path / "restored", settings=NO_PROGRESS)
    assert restored.checkpoint.read_bytes() == (run_dir / "ckpt-005.weights.h5").read_bytes()

    resumed = model()
    resumed.load_weights(restored.checkpoint)
    np.testing.assert_allclose(resumed.predict(x, verbose=0), trained.predict(x, verbose=0))
    history = resumed.fit(x, y, epochs=restored.step + 1, initial_epoch=restored.step, batch_size=16,
                          callbacks=[keras.callbacks.ModelCheckpoint(
                              str(tmp_path / "restored" / "ckpt-{epoch:03d}.weights.h5"),
                              save_weights_only=True)], verbose=0)
    assert history.epoch == [5]  # the sixth epoch, continuing where the archive left off
    assert (tmp_path / "restored" / "ckpt-006.weights.h5").exists()


def test_the_module_imports_without_touching_tensorflow():
    import subprocess
    import sys

    code = ("import sys, colab_magics.tf_hooks as h; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
            "print(h.checkpoint_step('/x/model.ckpt-120'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "120"
