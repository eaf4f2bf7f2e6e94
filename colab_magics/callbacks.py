"""Training callbacks for PyTorch users: Hugging Face `Trainer` and Lightning keep their run archived.

- `HuggingFaceArchiveCallback(destination, every=None, keep=None, events=True)`: a
  `transformers.TrainerCallback`; after each checkpoint save (`on_save`) the newest `checkpoint-N`
  of the Trainer's `output_dir` is archived, and once more at `on_train_end`.
- `LightningArchiveCallback(destination, every=None, keep=None)`: a Lightning `Callback` (package
  `lightning` or `pytorch_lightning`); archives the `ModelCheckpoint`'s directory after each save,
  at the end of `fit` and when `fit` raises.

Both run the uploads in an `archiver.Archiver` thread, with its chief rules (only global rank 0
archives). `every=None` archives every save; `every="10m"` at most once per interval. The
libraries are imported when a class is first used (module `__getattr__`), so importing this module
costs nothing.
"""

from __future__ import annotations

import logging

from colab_magics.archiver import Archiver, ArchiveSummary
from colab_magics.errors import ColabMagicsError, MissingDependency, check_argument
from colab_magics.lazy import lazy_classes, require

log = logging.getLogger(__name__)

__all__ = ["HuggingFaceArchiveCallback", "LightningArchiveCallback"]


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

    def _start(self, run_dir) -> None:
        self._finish()  # a second fit() with the same callback starts afresh
        self.archiver = Archiver(run_dir, self.destination, self.every, events=self.events, keep=self.keep).start()

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
                     events: bool = True):
            self._setup_archiving(destination, every, keep, events)

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self._start(args.output_dir)

        def on_save(self, args, state, control, **kwargs):
            if self.archiver is not None:  # the Trainer calls on_save once checkpoint-N is written
                self.archiver.notify()

        def on_train_end(self, args, state, control, **kwargs):
            self._finish()

    HuggingFaceArchiveCallback.__module__ = __name__
    return HuggingFaceArchiveCallback


def _build_lightning():
    Callback = _lightning_callback_base()

    class LightningArchiveCallback(_ArchivingCallback, Callback):
        """Archive the `ModelCheckpoint`'s directory after each save, at the end of fit and on an exception.

        Lightning calls `on_save_checkpoint` *before* the file is written and runs `ModelCheckpoint`
        after every other callback, so a save is noted there and handed to the archiver at this
        callback's next hook (next batch, epoch or validation end), when the file is complete; the
        final archive at fit end (or on an exception) takes whatever was saved last.
        """

        def __init__(self, destination: str, every: float | str | None = None, keep: int | None = None):
            self._setup_archiving(destination, every, keep, False)
            self._saved = False

        def on_fit_start(self, trainer, pl_module) -> None:
            checkpoint = trainer.checkpoint_callback
            if checkpoint is None or getattr(checkpoint, "dirpath", None) is None:
                raise ColabMagicsError("LightningArchiveCallback needs a ModelCheckpoint with a directory: "
                                       "add ModelCheckpoint(dirpath=...) to the callbacks")
            self._saved = False
            if trainer.is_global_zero:
                self._start(checkpoint.dirpath)

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            self._saved = True  # the file is written after this returns

        def _hand_over(self) -> None:
            if self._saved and self.archiver is not None:
                self._saved = False
                self.archiver.notify()

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


__getattr__ = lazy_classes(__name__, globals(), {
    "HuggingFaceArchiveCallback": _build_hf, "LightningArchiveCallback": _build_lightning,
})
