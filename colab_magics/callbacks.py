"""Training callbacks: Keras, Hugging Face `Trainer` and Lightning keep their run archived.

One signature for all three: the run's `destination` (gs://BUCKET[/PREFIX]), `every` (the shortest
time between two archives; None: every save), `keep` and `events` (False: event files stay out,
as for `%gcs_save`).

- `KerasArchiveCallback(run_dir, destination, every_n_epochs=1, every=None, keep=None, events=False)`:
  a Keras 3 callback (any backend) archiving the checkpoints a `keras.callbacks.ModelCheckpoint`
  writes into RUN_DIR every N epochs (and/or per `every`), with a final archive in `on_train_end`.

- `HuggingFaceArchiveCallback(destination, every=None, keep=None, events=False)`: a
  `transformers.TrainerCallback`; after each checkpoint save the newest `checkpoint-N` of the
  Trainer's `output_dir` is archived with the best one the Trainer keeps (`best_model_checkpoint`),
  and once more at `on_train_end`. A save is seen at `on_save`, and at the next step's end when a
  new `checkpoint-N` appeared without one (a listing of `output_dir` per step).
- `LightningArchiveCallback(destination, every=None, keep=None, events=False)`: a Lightning `Callback` (package
  `lightning` or `pytorch_lightning`); archives the `ModelCheckpoint`'s directory after each save,
  with the checkpoints it keeps (`best_k_models`, `best_model_path`, `last_model_path`), at the end
  of `fit` and when `fit` raises. A save is seen from the callback's state (its paths and their
  files changing), so weights-only saves count too: Lightning skips `on_save_checkpoint` for those.

All run the uploads in an `archiver.Archiver` thread, with its chief rules (only global rank 0
archives). `every=None` archives every save; `every="10m"` at most once per interval. The
libraries are imported when a class is first used (module `__getattr__`), so importing this module
costs nothing.
"""

from __future__ import annotations

import logging
import os

from colab_magics.archiver import Archiver, ArchiveSummary
from colab_magics.errors import ColabMagicsError, InvalidValue, MissingDependency, Param, check_argument
from colab_magics.lazy import lazy_classes, require

log = logging.getLogger(__name__)

__all__ = ["KerasArchiveCallback", "HuggingFaceArchiveCallback", "LightningArchiveCallback"]  # noqa: F822  (made by __getattr__)


def _keras():
    return require("keras", "keras", "tf")


def _transformers():
    return require("transformers", "transformers", "hf")


def _lightning_callback_base():
    """`lightning.pytorch.Callback`, else the older `pytorch_lightning.Callback`."""
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise MissingDependency("lightning", "lightning") from None
    return Callback


class _ArchivingCallback:
    """What both callbacks share: arguments checked at construction, one archiver per training run."""

    def _setup_archiving(self, destination: str, every, keep, events: bool) -> None:
        check_argument(type(self).__name__, "destination", destination, (str,), "gs://BUCKET[/PREFIX] (str)")
        self.destination, self.every, self.keep, self.events = destination, every, keep, events
        self.archiver: Archiver | None = None
        self.summary: ArchiveSummary | None = None
        Archiver(".", destination, every, keep=keep)  # bad URL, interval or keep: one line, before training

    def _start(self, run_dir, pinned=None) -> None:
        self._finish()  # a second fit() with the same callback starts afresh
        self.archiver = Archiver(run_dir, self.destination, self.every, events=self.events, keep=self.keep,
                                 pinned=pinned).start()

    def _finish(self) -> None:
        archiver, self.archiver = self.archiver, None
        if archiver is not None:
            self.summary = archiver.stop(final=True)
            log.info("%s: %s archive(s) of %s, last step %s at %s", type(self).__name__, self.summary.archives,
                     archiver.run_dir, self.summary.last_step, self.summary.last_url)


def _build_hf():
    transformers = _transformers()

    class HuggingFaceArchiveCallback(_ArchivingCallback, transformers.TrainerCallback):
        """Archive the newest `checkpoint-N` of the Trainer's `output_dir` after each save and at the end.

        `trainer = Trainer(..., callbacks=[HuggingFaceArchiveCallback("gs://my-bucket/runs")])`;
        archives are OUTPUT_DIR_NAME.STEP.zip. Only the main process archives.
        """

        def __init__(self, destination: str, every: float | str | None = None, keep: int | None = None,
                     events: bool = False):
            self._setup_archiving(destination, every, keep, events)
            self._state, self._seen = None, frozenset()

        def on_train_begin(self, args, state, control, **kwargs):
            self._state, self._seen = state, _checkpoint_dirs(args.output_dir)
            if state.is_world_process_zero:
                self._start(args.output_dir, pinned=self._kept)

        def _kept(self) -> list[str]:
            state = self._state
            return [state.best_model_checkpoint] if state is not None and state.best_model_checkpoint else []

        def _hand_over(self, args) -> None:
            """Notify the archiver when a `checkpoint-N` appeared since the last look."""
            found = _checkpoint_dirs(args.output_dir)
            if self.archiver is not None and found - self._seen:
                self.archiver.notify()
            self._seen = found

        def on_save(self, args, state, control, **kwargs):
            self._state = state
            self._hand_over(args)  # the Trainer calls on_save once checkpoint-N is written

        def on_step_end(self, args, state, control, **kwargs):
            # a save the Trainer made without on_save (a subclass, a plugin, a callback's own save)
            self._state = state
            self._hand_over(args)

        def on_train_end(self, args, state, control, **kwargs):
            self._state = state
            self._finish()

    HuggingFaceArchiveCallback.__module__ = __name__
    return HuggingFaceArchiveCallback


def _build_lightning():
    Callback = _lightning_callback_base()

    class LightningArchiveCallback(_ArchivingCallback, Callback):
        """Archive the `ModelCheckpoint`'s directory after each save, at the end of fit and on an exception.

        Lightning runs `ModelCheckpoint` after every other callback, so a save made in one hook is
        seen at this callback's next hook (next batch, epoch or validation end), when the file is
        complete: from the checkpoint callbacks' own state (`last_model_path`, `best_model_path`,
        `best_k_models` and those files' size and mtime), which changes with every save, weights-only
        ones included (Lightning calls `on_save_checkpoint` only for full saves), or from
        `on_save_checkpoint` for a `trainer.save_checkpoint` of the user's. Every archive holds the
        checkpoints the callbacks keep; the final archive at fit end (or on an exception) takes
        whatever was saved last.
        """

        def __init__(self, destination: str, every: float | str | None = None, keep: int | None = None,
                     events: bool = False):
            self._setup_archiving(destination, every, keep, events)
            self._saved, self._trainer, self._seen = False, None, None

        def on_fit_start(self, trainer, pl_module) -> None:
            checkpoint = trainer.checkpoint_callback
            if checkpoint is None or getattr(checkpoint, "dirpath", None) is None:
                raise ColabMagicsError("LightningArchiveCallback needs a ModelCheckpoint with a directory: "
                                       "add ModelCheckpoint(dirpath=...) to the callbacks")
            self._saved, self._trainer = False, trainer
            self._seen = self._saves()
            if trainer.is_global_zero:
                self._start(checkpoint.dirpath, pinned=self._kept)

        def _callbacks(self) -> list:
            trainer = self._trainer
            return [c for c in (getattr(trainer, "checkpoint_callbacks", None) or []) if hasattr(c, "best_k_models")]

        def _kept(self) -> list[str]:
            """What the checkpoint callbacks keep: every archive holds it (`ckpt_path="best"` after a restore)."""
            kept = []
            for callback in self._callbacks():
                kept += [callback.best_model_path, callback.last_model_path, *callback.best_k_models]
            return [p for p in kept if p]

        def _saves(self) -> tuple:
            """What changes when a checkpoint callback saves: its paths, and the files' size and mtime."""
            seen = []
            for callback in self._callbacks():
                paths = (callback.last_model_path, callback.best_model_path)
                seen.append((paths, tuple(callback.best_k_models), tuple(map(_file_version, paths))))
            return tuple(seen)

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            self._saved = True  # a full save (the file is written after this returns)

        def _hand_over(self) -> None:
            saves = self._saves()
            if (self._saved or saves != self._seen) and self.archiver is not None:
                self.archiver.notify()
            self._saved, self._seen = False, saves

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._hand_over()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._hand_over()

        def on_validation_end(self, trainer, pl_module) -> None:
            self._hand_over()

        def on_fit_end(self, trainer, pl_module) -> None:
            self._finish()

        def on_exception(self, trainer, pl_module, exception) -> None:
            self._finish()

    LightningArchiveCallback.__module__ = __name__
    return LightningArchiveCallback


def _checkpoint_dirs(output_dir: str) -> frozenset:
    """The `checkpoint-N` names in a Trainer's output directory (a listing of a few entries)."""
    try:
        with os.scandir(output_dir) as entries:
            return frozenset(e.name for e in entries if e.name.startswith("checkpoint-"))
    except OSError:
        return frozenset()


def _file_version(path: str) -> tuple | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if st else None


def _build_keras():
    keras = _keras()

    class KerasArchiveCallback(_ArchivingCallback, keras.callbacks.Callback):
        """Archive RUN_DIR's newest checkpoint to DESTINATION every N epochs (and/or `every`) and at the end.

        The checkpoints are the ones a `keras.callbacks.ModelCheckpoint` writes into RUN_DIR: list
        it before this callback, so each epoch's file exists when this one runs. Works with any
        Keras backend; uploads happen in a background thread.
        """

        def __init__(self, run_dir, destination: str, every_n_epochs: int | None = 1,
                     every: float | str | None = None, keep: int | None = None, events: bool = False):
            super().__init__()
            if every_n_epochs is not None and (isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int)
                                               or every_n_epochs < 1):
                raise InvalidValue(Param("every_n_epochs"), " must be at least 1 (or None to archive by time only)",
                                   param="every_n_epochs")
            self.run_dir, self.every_n_epochs = run_dir, every_n_epochs
            self._setup_archiving(destination, every, keep, events)

        def on_train_begin(self, logs=None) -> None:
            self._start(self.run_dir)

        def on_epoch_end(self, epoch, logs=None) -> None:
            if self.archiver is not None and self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
                self.archiver.archive_now()  # returns at once: the worker uploads

        def on_train_end(self, logs=None) -> None:
            self._finish()

    KerasArchiveCallback.__module__ = __name__
    return KerasArchiveCallback


__getattr__ = lazy_classes(__name__, globals(), {
    "KerasArchiveCallback": _build_keras, "HuggingFaceArchiveCallback": _build_hf,
    "LightningArchiveCallback": _build_lightning,
})
