"""Where training stood when a checkpoint was written, as its own layout records it: step and epoch.

Read after a restore so a resume is one line (`initial_epoch=ckpt.epoch`). Each number comes from
the first source that has it:

- Hugging Face Trainer: `trainer_state.json` in the checkpoint directory (`global_step`, `epoch`,
  epochs completed, fractional mid-epoch);
- Keras `BackupAndRestore`: `training_metadata.json` beside the weights (`epoch`, epochs completed:
  what `fit(initial_epoch=...)` takes);
- names with a key, in the checkpoint's path below the target: Lightning `epoch=E-step=S.ckpt` (its
  E counts from 0), `epoch-003.keras`, `global_step1000/`, `step_500.pt`;
- TensorFlow's `checkpoint` state file: the number ending the prefix it names (`model.ckpt-1000`).

Nothing is guessed: a number without a key (`ckpt-3`) is not called an epoch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from colab_magics.checkpoints import KERAS_BACKUP, STATE_FILE, TRAINER_STATE, json_record, tf_prefix_step, tf_state_path
from colab_magics.torchfile import MAX_STEP, recorded_progress, sane_step

_EPOCH = re.compile(r"(?:^|[^a-z])epoch[=_-]?(\d+)", re.I)
_STEP = re.compile(r"(?:^|[^a-z])(?:global_?)?step[=_-]?(\d+)", re.I)


@dataclass(frozen=True)
class Position:
    step: int | None = None
    epoch: int | float | None = None


def read_position(checkpoint: Path, target: Path) -> Position:
    """The step and epoch recorded for `checkpoint` (a file, TF prefix or directory below `target`)."""
    step = epoch = None
    for found in (_trainer_state(checkpoint), _keras_backup(checkpoint), _from_names(checkpoint, target),
                  _tf_state(checkpoint), _lightning_record(checkpoint)):
        step = found.step if step is None else step
        epoch = found.epoch if epoch is None else epoch
    return Position(step, epoch)


def _home(checkpoint: Path) -> Path:
    """The directory that holds the checkpoint's metadata files."""
    return checkpoint if checkpoint.is_dir() else checkpoint.parent


_MAX_READ = 32 * 1024 * 1024  # a record larger than this is no record


def _read(path: Path) -> str | None:
    """A small text file's content, or None; only regular files are opened (a FIFO would block)."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_READ:
            return None
        return path.read_text(errors="replace")
    except OSError:
        return None


def _number(value) -> int | float | None:
    """A step or epoch as a record holds it: a non-negative int or finite float of sane size, else None
    (a record may come from a bucket: `true`, -5, NaN or a 4 000-digit number is no epoch)."""
    if type(value) is int:
        return sane_step(value)
    if type(value) is not float or not math.isfinite(value) or not 0 <= value <= MAX_STEP:
        return None
    return int(value) if value.is_integer() else value


def _trainer_state(checkpoint: Path) -> Position:
    state = json_record(_home(checkpoint) / TRAINER_STATE)
    step = _number(state.get("global_step"))
    return Position(int(step) if step is not None else None, _number(state.get("epoch")))


def _keras_backup(checkpoint: Path) -> Position:
    return Position(epoch=_number(json_record(_home(checkpoint) / KERAS_BACKUP[0]).get("epoch")))


def _from_names(checkpoint: Path, target: Path) -> Position:
    try:
        parts = checkpoint.relative_to(target).parts
    except ValueError:
        parts = (checkpoint.name,)
    step = epoch = None
    for part in reversed(parts):  # the innermost name wins
        if epoch is None and (match := _EPOCH.search(part)):
            epoch = _digits(match.group(1))
        if step is None and (match := _STEP.search(part)):
            step = _digits(match.group(1))
    return Position(step, epoch)


def _lightning_record(checkpoint: Path) -> Position:
    """What a Lightning `.ckpt` records inside (`last.ckpt` has no step in its name)."""
    if checkpoint.suffix != ".ckpt" or not checkpoint.is_file():
        return Position()
    return Position(*recorded_progress(checkpoint))


def _tf_state(checkpoint: Path) -> Position:
    text = _read(_home(checkpoint) / STATE_FILE)
    step = tf_prefix_step(Path(tf_state_path(text) or "").name) if text else None
    return Position(step=sane_step(step) if step is not None else None)


def _digits(text: str) -> int | None:
    return sane_step(int(text)) if len(text) <= len(str(MAX_STEP)) else None
