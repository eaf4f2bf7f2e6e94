"""TensorFlow 1 hooks that keep a run archived while it trains (colab_utils' names).

- `SaverWithCallback(callback_op, **kwargs)`: a `tf.compat.v1.train.Saver` calling
  `callback_op(sess, save_path, checkpoint_path=..., checkpoint_step=...)` after each save; a
  callback that raises is logged as a warning and training goes on (as in colab_utils).
- `GcsArchiveHook(log_dir, project, bucket, every_n_secs=3600, delay_n_secs=None, start=None)`
  (colab_utils' order; `log=` is accepted for `log_dir=`): a `SessionRunHook` that archives the run
  directory's newest checkpoint and events as RUN.STEP.tar.gz every N seconds and at `end()`.
Both run the uploads in an `archiver.Archiver` thread. TensorFlow is imported when one of these
names is first used (module `__getattr__`), so importing this module costs nothing and works
without it. The Keras 3 callback is `callbacks.KerasArchiveCallback`, beside the other frameworks'.
"""

from __future__ import annotations

import logging
import os
import time

from colab_magics import auth, checkpoints
from colab_magics.archiver import Archiver, ArchiveSummary
from colab_magics.errors import ColabMagicsError, InvalidArgument, check_argument
from colab_magics.lazy import lazy_classes, require

log = logging.getLogger(__name__)

__all__ = ["SaverWithCallback", "GcsArchiveHook"]  # noqa: F822  (made by __getattr__)



def _tf():
    return require("tensorflow", "tensorflow", "tf")


checkpoint_step = checkpoints.tf_prefix_step  # the step a TF prefix ends with: its callbacks' argument


# --- TensorFlow 1 style ---------------------------------------------------------------------------
def _build_saver():
    tf = _tf()

    class SaverWithCallback(tf.compat.v1.train.Saver):
        """A Saver that calls `callback_op(sess, save_path, checkpoint_path=, checkpoint_step=)` after
        each `save()` (e.g. `Archiver.notify`, to archive the checkpoint just written).

        A callback that raises is logged as a warning with its reason; the checkpoint stays saved
        and training goes on, as in colab_utils. `callback=` is accepted for `callback_op=`.
        """

        def __init__(self, callback_op=None, *args, callback=None, **kwargs):
            if callback_op is not None and callback is not None:
                raise InvalidArgument("SaverWithCallback: give callback_op or callback, not both")
            super().__init__(*args, **kwargs)
            self.set_callback(callback_op if callback_op is not None else callback)

        def set_callback(self, callback_op) -> None:
            if callback_op is not None and not callable(callback_op):
                raise InvalidArgument(f"SaverWithCallback: callback_op must be a function "
                                      f"(sess, save_path, **kwargs), not {type(callback_op).__name__}")
            self._callback = callback_op

        def save(self, sess, save_path, *args, **kwargs):
            path = super().save(sess, save_path, *args, **kwargs)
            if path is not None and self._callback is not None:
                try:
                    self._callback(sess, save_path, checkpoint_path=path, checkpoint_step=checkpoint_step(path))
                except Exception as exc:  # the checkpoint is on disk: a failed upload must not end training
                    reason = (str(exc).strip().splitlines() or [""])[0]
                    log.warning("SaverWithCallback: the callback failed after saving %s: %s", path,
                                f"{type(exc).__name__}: {reason}" if not isinstance(exc, ColabMagicsError) else reason)
            return path

    SaverWithCallback.__module__ = __name__
    return SaverWithCallback


def _build_hook():
    tf = _tf()

    class GcsArchiveHook(tf.compat.v1.train.SessionRunHook):
        """Archive LOG_DIR's newest checkpoint and events to BUCKET as RUN.STEP.tar.gz every N seconds.

        The first archive comes `delay_n_secs` (default `every_n_secs`) after `start` (a
        `time.time()`, e.g. when the notebook began; default now), then at most once per interval,
        and a final one at `end()`. Give it in `hooks=` of MonitoredTrainingSession: those end after
        its checkpoint hook, so the final archive holds the last save. Non-chief workers archive
        nothing. Arguments in colab_utils' order; `log=` is accepted for `log_dir=`.
        """

        def __init__(self, log_dir=None, project: str | None = None, bucket: str | None = None,
                     every_n_secs: float = 3600, delay_n_secs: float | None = None, start: float | None = None,
                     *, log: str | None = None, keep: int | None = None):
            call = "GcsArchiveHook"
            if log_dir is not None and log is not None and str(log_dir) != str(log):
                raise InvalidArgument(f"{call}: give log_dir or log, not both")
            log_dir = log_dir if log_dir is not None else log
            if isinstance(log_dir, (int, float)):
                raise InvalidArgument(f"{call}: log_dir must be the run directory, not {log_dir!r}: the arguments "
                                      "are (log_dir, project, bucket, every_n_secs=3600, ...); pass the interval "
                                      "as every_n_secs=")
            check_argument(call, "log_dir", log_dir, (str, os.PathLike), "the run directory (a path)")
            check_argument(call, "bucket", bucket, (str,), "a bucket name or gs://BUCKET[/PREFIX] (str)")
            number = (int, float)
            check_argument(call, "every_n_secs", every_n_secs, number, "a number of seconds")
            check_argument(call, "delay_n_secs", delay_n_secs, number + (type(None),), "a number of seconds or None")
            check_argument(call, "start", start, number + (type(None),), "a time.time() value or None")
            if every_n_secs <= 0 or (delay_n_secs is not None and delay_n_secs < 0):
                raise InvalidArgument(f"{call}: every_n_secs must be more than 0 and delay_n_secs at least 0 seconds")
            auth.use_project(project, call)
            self.every_n_secs, self.log, self.bucket, self.keep = float(every_n_secs), str(log_dir), bucket, keep
            self.project = project
            self.delay_n_secs = self.every_n_secs if delay_n_secs is None else float(delay_n_secs)
            self.start = time.time() if start is None else float(start)
            self.archiver: Archiver | None = None
            self.summary: ArchiveSummary | None = None
            Archiver(self.log, bucket, self.every_n_secs, keep=keep)  # check the arguments now

        def begin(self) -> None:
            elapsed = max(time.time() - self.start, 0.0)  # the first archive at the next multiple of the delay
            after = self.delay_n_secs
            delay = after - (elapsed % after) if after > 0 else 0.0
            self.archiver = Archiver(self.log, self.bucket, self.every_n_secs, events=True, keep=self.keep,
                                     fmt="tar.gz", delay=delay).start()

        def end(self, session) -> None:
            if self.archiver is not None:
                self.summary = self.archiver.stop(final=True)
                log.info("GcsArchiveHook: %s archive(s), last step %s at %s", self.summary.archives,
                         self.summary.last_step, self.summary.last_url)

    GcsArchiveHook.__module__ = __name__
    return GcsArchiveHook


__getattr__ = lazy_classes(__name__, globals(), {"SaverWithCallback": _build_saver, "GcsArchiveHook": _build_hook})
