"""TensorFlow and Keras hooks that keep a run archived while it trains (colab_utils' names).

- `SaverWithCallback(callback, *args, **kwargs)`: a `tf.compat.v1.train.Saver` calling
  `callback(sess, save_path, checkpoint_path=..., checkpoint_step=...)` after each save.
- `GcsArchiveHook(every_n_secs, log, bucket, project=None, start=None)`: a `SessionRunHook` that
  archives the run directory's newest checkpoint and events as RUN.STEP.tar.gz every N seconds
  and at `end()`.
- `GcsArchiveCallback(run_dir, bucket, every_n_epochs=1, every_n_secs=None, keep=None)`: a Keras 3
  callback (any backend) doing the same as zips, with a final archive in `on_train_end`.

All three run the uploads in an `archiver.Archiver` thread. TensorFlow and Keras are imported when
one of these names is first used (module `__getattr__`), so importing this module costs nothing and
works without them.
"""

from __future__ import annotations

import logging
import re
import time

from colab_magics.archiver import Archiver, ArchiveSummary
from colab_magics.errors import ColabMagicsError, MissingDependency

log = logging.getLogger(__name__)

__all__ = ["SaverWithCallback", "GcsArchiveHook", "GcsArchiveCallback"]

_PREFIX_STEP = re.compile(r"-(\d+)$")


def __getattr__(name: str):
    builders = {"SaverWithCallback": _build_saver, "GcsArchiveHook": _build_hook,
                "GcsArchiveCallback": _build_keras_callback}
    if name not in builders:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = builders[name]()
    globals()[name] = cls  # built once; later lookups do not come back here
    return cls


def _tf():
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingDependency("tensorflow", "tf") from None
    return tf


def _keras():
    try:
        import keras
    except ImportError:
        raise MissingDependency("keras", "tf") from None
    return keras


def checkpoint_step(path: str | None) -> int | None:
    """The step a TF checkpoint prefix ends with (`.../model.ckpt-1000` → 1000)."""
    match = _PREFIX_STEP.search(str(path or ""))
    return int(match.group(1)) if match else None


def _use_project(project: str | None) -> None:
    """colab_utils' hooks took a project: authenticate with it unless %gcs_auth already ran."""
    if project is None:
        return
    from colab_magics import auth, session

    current = session.current()
    if current.auth is None:
        current.set_auth(auth.authenticate(project))


# --- TensorFlow 1 style ---------------------------------------------------------------------------
def _build_saver():
    tf = _tf()

    class SaverWithCallback(tf.compat.v1.train.Saver):
        """A Saver that calls `callback(sess, save_path, checkpoint_path=, checkpoint_step=)` after
        each `save()` (e.g. `Archiver.notify`, to archive the checkpoint just written)."""

        def __init__(self, callback, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._callback = callback

        def set_callback(self, callback) -> None:
            self._callback = callback

        def save(self, sess, save_path, *args, **kwargs):
            path = super().save(sess, save_path, *args, **kwargs)
            if path is not None and self._callback is not None:
                self._callback(sess, save_path, checkpoint_path=path, checkpoint_step=checkpoint_step(path))
            return path

    SaverWithCallback.__module__ = __name__
    return SaverWithCallback


def _build_hook():
    tf = _tf()

    class GcsArchiveHook(tf.compat.v1.train.SessionRunHook):
        """Archive LOG's newest checkpoint and events to BUCKET as RUN.STEP.tar.gz every N seconds.

        The first archive comes `every_n_secs` after `start` (a `time.time()`, e.g. when the
        notebook began; default now), then at most once per interval, and a final one at `end()`.
        Give it in `hooks=` of MonitoredTrainingSession: those end after its checkpoint hook, so
        the final archive holds the last save. Non-chief workers archive nothing.
        """

        def __init__(self, every_n_secs: float, log: str, bucket: str, project: str | None = None,
                     start: float | None = None, *, keep: int | None = None):
            if every_n_secs is None or every_n_secs <= 0:
                raise ColabMagicsError("every_n_secs must be a positive number of seconds")
            _use_project(project)
            self.every_n_secs, self.log, self.bucket, self.keep = float(every_n_secs), str(log), bucket, keep
            self.start = time.time() if start is None else float(start)
            self.archiver: Archiver | None = None
            self.summary: ArchiveSummary | None = None
            Archiver(self.log, bucket, self.every_n_secs, keep=keep)  # check the arguments now

        def begin(self) -> None:
            elapsed = max(time.time() - self.start, 0.0)
            delay = self.every_n_secs - (elapsed % self.every_n_secs)
            self.archiver = Archiver(self.log, self.bucket, self.every_n_secs, events=True, keep=self.keep,
                                     fmt="tar.gz", delay=delay).start()

        def end(self, session) -> None:
            if self.archiver is not None:
                self.summary = self.archiver.stop(final=True)
                log.info("GcsArchiveHook: %s archive(s), last step %s at %s", self.summary.archives,
                         self.summary.last_step, self.summary.last_url)

    GcsArchiveHook.__module__ = __name__
    return GcsArchiveHook


# --- Keras 3 --------------------------------------------------------------------------------------
def _build_keras_callback():
    keras = _keras()

    class GcsArchiveCallback(keras.callbacks.Callback):
        """Archive RUN_DIR's newest checkpoint to BUCKET every N epochs (and/or seconds) and at the end.

        The checkpoints are the ones a `keras.callbacks.ModelCheckpoint` writes into RUN_DIR: list
        it before this callback, so each epoch's file exists when this one runs. Works with any
        Keras backend; uploads happen in a background thread.
        """

        def __init__(self, run_dir, bucket: str, every_n_epochs: int | None = 1,
                     every_n_secs: float | None = None, keep: int | None = None, events: bool = False):
            super().__init__()
            if every_n_epochs is not None and every_n_epochs < 1:
                raise ColabMagicsError("every_n_epochs must be at least 1 (or None for time-based archiving only)")
            self.run_dir, self.bucket, self.every_n_epochs = run_dir, bucket, every_n_epochs
            self.every_n_secs, self.keep, self.events = every_n_secs, keep, events
            self.archiver: Archiver | None = None
            self.summary: ArchiveSummary | None = None
            Archiver(run_dir, bucket, every_n_secs, keep=keep)  # check the arguments now

        def on_train_begin(self, logs=None) -> None:
            self.archiver = Archiver(self.run_dir, self.bucket, self.every_n_secs, events=self.events,
                                     keep=self.keep).start()

        def on_epoch_end(self, epoch, logs=None) -> None:
            if self.archiver is not None and self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
                self.archiver.archive_now()  # returns at once: the worker uploads

        def on_train_end(self, logs=None) -> None:
            if self.archiver is not None:
                self.summary = self.archiver.stop(final=True)

    GcsArchiveCallback.__module__ = __name__
    return GcsArchiveCallback
