"""Which files of a run directory go into an archive: everything, minus the other steps.

A run directory holds checkpoints of several steps next to files that belong to no step (configs,
tokenizers, shard indexes, `latest`, `training_metadata.json`, pretrained weights). An archive takes
everything under RUN_DIR except:

- the other steps of each *step series*: checkpoint files or directories whose names differ only by
  a step number (`ckpt-{N}.weights.h5`, `model.ckpt-{N}.*`, `checkpoint-{N}/`, `global_step{N}/`,
  an Orbax `{N}/`, and any keyed name whatever its extension: `step_{N}.npz`, `ckpt-{N}.pkl`, flax's
  `checkpoint_{N}`). Each series keeps its newest step, or the step its framework names as latest
  (TensorFlow's `checkpoint` state file, DeepSpeed's `latest`), or `step`'s — and the steps the
  training library records as worth keeping: the best checkpoint in Hugging Face's
  `trainer_state.json`, the `best_k_models`/`best_model_path`/`last_model_path` of a Lightning
  `ModelCheckpoint` (recorded in its `.ckpt` files, or `pinned` by a caller holding the callback);
- TensorBoard event files, unless `events=True`;
- what `exclude` globs name (`include` globs add anything back);
- what cannot be read as a file: FIFOs, sockets, devices, broken links, linked directories.

Ask the library first: its records (`trainer_state.json`, a `.ckpt`'s callback state, Keras
`BackupAndRestore`'s `training_metadata.json`, TF's state file, DeepSpeed's `latest`, Orbax's
`_CHECKPOINT_METADATA`) decide; names are the fallback. Records are data from a file that may come
from a bucket: read bounded, cached per file version, and any failure means "no record".

A step is a number set off by a delimiter or a key (`ckpt-3`, `model_0003`, `epoch=5-step=1000`,
`epoch5`, `weights.05-0.31.hdf5`), never digits glued to letters (`resnet50`, `yolov8n`, `gpt2`,
`model_v2`), never a shard or rank counter (`-00001-of-00004`, `rank_0`), never more than 15
digits. A file of another format is a step only when its number has a key (`ckpt`, `checkpoint`,
`step`, `epoch`, `iter`) or it is an array or pickle file (`.npz`, `.npy`, `.pkl`, ...); images,
audio, video and reports (`sample_5.png`, `metrics_step_9.csv`) never are. Directories are steps
only with a key (`checkpoint-N`, `checkpoint_N`, `global_stepN`, `step_N`, `epoch=N`), or all
digits *with Orbax's metadata inside*, so `version_0/`, `fold_2/` or a dated `logs/20241123/` are
never dropped. With no checkpoint at all, the archive is the whole directory, named by the newest
file's mtime. The walk is one `os.scandir` pass with no per-file stat.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import os
import re
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable

from colab_magics.errors import NoCheckpointFound, NotRegularFile, Param, RunDirError
from colab_magics.torchfile import MAX_STEP, read_record, recorded_progress, sane_step

STATE_FILE = "checkpoint"  # TensorFlow's state file, naming its latest checkpoint prefix
DEEPSPEED_LATEST = "latest"  # DeepSpeed's file naming its latest global_stepN directory
EVENTS_GLOB = "events.out.tfevents.*"
_EVENTS_PREFIX = EVENTS_GLOB[:-1]

# checkpoint files (a numbered one starts a step series; an unnumbered one is a candidate by mtime)
_CHECKPOINT_SUFFIXES = {
    ".weights.h5": "keras", ".keras": "keras", ".h5": "keras", ".hdf5": "keras",
    ".safetensors": "pytorch", ".pt": "pytorch", ".pth": "pytorch", ".bin": "pytorch",
    ".ckpt": "pytorch", ".msgpack": "flax",
}
_SUFFIX_TUPLE = tuple(_CHECKPOINT_SUFFIXES)
_TF_FILE = re.compile(r"^(?P<prefix>.+?)\.(?:index|meta|data-\d+-of-\d+)$")
_COUNTER = re.compile(r"\d+-of-\d+|(?:rank|process|proc|shard|part|worker|gpu|device|node)[-_]?\d+", re.I)
_NUMBER = re.compile(r"\d+(?:\.\d+)*")
_KEY_BEFORE = re.compile(
    r"(?:^|[^A-Za-z])(?P<key>global_step|globalstep|steps|step|iteration|iter|epoch|ep|checkpoint|ckpt)[-_=]?$",
    re.I)
_KEY_RANK = {"global_step": 0, "globalstep": 0, "step": 0, "steps": 0, "iteration": 0, "iter": 0,
             "epoch": 1, "ep": 1, "checkpoint": 2, "ckpt": 2}
_STEP_DIR = re.compile(
    r"^(?P<head>(?:.*?[-_.])?(?P<key>checkpoint|ckpt|global_step|step|iteration|iter|epoch)[-_=]?)(?P<n>\d+)$",
    re.I)
_DIR_LAYOUTS = {"checkpoint-": "huggingface", "checkpoint_": "accelerate", "global_step": "deepspeed"}
# saves in progress: Orbax's `{N}.orbax-checkpoint-tmp-*`, transformers' `tmp-checkpoint-N` (4.36-4.38),
# TensorFlow's `{prefix}_temp/` (sharded save), `*.tempstate{n}` (bundle writer), `*.tmp{uuid}` (atomic write)
_UNFINISHED_DIR = re.compile(r"\.orbax-checkpoint-tmp|^tmp-checkpoint-\d+$|(?:ckpt|-\d+)_temp$")
_UNFINISHED_FILE = re.compile(r"\.tempstate\d+$|\.tmp[0-9a-f]{32}$")
_LIGHTNING_LAST = re.compile(r"^last(?:-v\d+)?\.ckpt$")
_LIGHTNING_VERSION = re.compile(r"^version_\d+$")
_STATE_LINE = re.compile(r'^\s*model_checkpoint_path:\s*"(?P<path>.*)"\s*$', re.M)
_TF_PREFIX_STEP = re.compile(r"-(\d+)$")
_SMALL = 64 * 1024  # state files read to find a framework's latest are at most this big
# a file of another format is a step when its number has one of these keys, or it is an array/pickle file
_STEP_KEYS = {"global_step", "globalstep", "steps", "step", "iteration", "iter", "epoch", "checkpoint", "ckpt"}
_DATA_SUFFIXES = (".npz", ".npy", ".pkl", ".pickle", ".joblib", ".pt.tar", ".pth.tar", ".ckpt.tar", ".flax")
# ... never images, audio, video, logs and reports, whatever their names say
_NEVER_STEPS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".svg", ".webp", ".tif", ".tiff", ".mp4", ".avi", ".mov",
                ".webm", ".wav", ".mp3", ".flac", ".ogg", ".csv", ".tsv", ".log", ".html", ".htm", ".pdf", ".md")
_MAX_DIGITS = len(str(MAX_STEP)) - 1  # a longer number is an id or a timestamp in ns, not a step
TRAINER_STATE = "trainer_state.json"  # Hugging Face Trainer: global_step, best_model_checkpoint
KERAS_BACKUP = ("training_metadata.json", "latest.weights.h5")  # Keras BackupAndRestore: epoch, weights
ORBAX_METADATA = ("_CHECKPOINT_METADATA", "commit_success.txt")  # in each Orbax step directory
_ORBAX_ITEM_METADATA = ("_METADATA", "checkpoint", "manifest.ocdbt")  # an item of an older Orbax step
_MAX_RECORD = 32 * 1024 * 1024  # a JSON record (trainer_state.json grows with log_history) read at most
LOOKED_FOR = ("numbered checkpoints (ckpt-{N}.*, checkpoint-{N}/, model.ckpt-{N}.*, step_{N}.npz, an Orbax {N}/ "
              "…), checkpoint files (*.pt, *.ckpt, *.keras, *.safetensors …) or, failing those, any file that "
              "is not left out")


# --- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """One step's files. `path` is what a framework loads: a TF prefix, a file or a directory."""

    step: int
    path: Path
    files: tuple[Path, ...]
    layout: str  # "tensorflow", "keras", "pytorch", "lightning", "huggingface", "accelerate", "deepspeed", "orbax",
    #              "file" (a numbered file of another format), "directory" (no checkpoint: the whole run directory)
    step_from: str = "name"  # "name", "record" (the library's own record), "flag" (--step) or "mtime" (no number)
    designated: bool = False  # a framework's pointer (TF's state file, DeepSpeed's `latest`) names this step:
    #                           the library writes that pointer only once the step is whole

    @property
    def mtime(self) -> float:
        """The newest mtime of its files (for the whole directory, named by its mtime: that)."""
        return max((f.stat().st_mtime for f in self.files), default=float(self.step))


@dataclass(frozen=True)
class LeftOut:
    """Files not archived, and why. `kind`: older, newer, events, excluded, unfinished, not_regular."""

    reason: str
    kind: str
    paths: tuple[str, ...] = field(repr=False)  # absolute, sorted; as Paths in `files`

    @cached_property
    def files(self) -> tuple[Path, ...]:
        return tuple(map(Path, self.paths))  # made on demand: most callers only count them


@dataclass(frozen=True)
class Kept:
    """A checkpoint archived beside the newest because the training library keeps it (its best)."""

    path: Path  # absolute: a step directory, a file or a TF prefix
    step: int | None
    why: str  # where the library records it, e.g. "best_model_checkpoint in checkpoint-6/trainer_state.json"


@dataclass(frozen=True)
class Plan:
    """What an archive of `root` holds: `files` (sorted, absolute), what was `left_out`, and the
    checkpoints `kept` beside the newest because the library records them."""

    root: Path
    checkpoint: Checkpoint
    files: tuple[Path, ...]
    left_out: tuple[LeftOut, ...] = ()
    kept: tuple[Kept, ...] = ()

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def step_from(self) -> str:
        return self.checkpoint.step_from

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    @property
    def layout(self) -> str:
        return self.checkpoint.layout

    def left_out_count(self, *kinds: str) -> int:
        """How many files were left out for these reasons (all reasons when none is given)."""
        return sum(len(g.paths) for g in self.left_out if not kinds or g.kind in kinds)


# --- public API ---------------------------------------------------------------------------------
def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """The run directory as an absolute Path, or a RunDirError saying what is wrong with it."""
    path = Path(os.path.abspath(Path(run_dir).expanduser()))
    if not path.exists():
        raise RunDirError(f"run directory {path} does not exist: check the path")
    if not path.is_dir():
        raise RunDirError(f"{path} is a file, not a run directory: pass the directory it is in")
    resolved, home = path.resolve(), Path.home().resolve()
    if resolved == Path(resolved.anchor) or resolved == home or resolved in home.parents:
        what = ("the root directory" if resolved == Path(resolved.anchor) else
                "your home directory" if resolved == home else "above your home directory")
        raise RunDirError(f"refusing to archive {path} as a run directory ({what}): pass the directory "
                          "your training writes checkpoints into")
    if not any(path.iterdir()):
        raise RunDirError(f"run directory {path} is empty: train first, or check the path")
    return path


def plan(
    run_dir: str | os.PathLike,
    *,
    step: int | None = None,
    events: bool = False,
    exclude: Iterable[str] = (),
    include: Iterable[str] = (),
    pinned: Iterable[str | os.PathLike] = (),
) -> Plan:
    """Every file an archive of `run_dir` holds, the checkpoint it is named after, and what is left out.

    `exclude`/`include` are globs matched against paths relative to RUN_DIR, their file names and
    their parent directories (`'*.tmp'`, `'samples'`, `'checkpoint-2/*'`); include wins. `pinned`
    names checkpoints (files, step directories, TF prefixes) that go in whatever their step, as a
    caller holding the library's callback knows them (Lightning's `best_k_models`).
    """
    scan, chosen = _scan_and_choose(run_dir, step, tuple(exclude), tuple(include), events)
    return scan.select(chosen, step, events, tuple(include), tuple(map(os.fspath, pinned)))


def find_checkpoint(run_dir: str | os.PathLike, step: int | None = None, *,
                    exclude: Iterable[str] = (), include: Iterable[str] = (), events: bool = False) -> Checkpoint:
    """The checkpoint of `step`, else the one its framework names latest, else the highest step in
    the names (or the library's records), else (no number anywhere) the newest checkpoint file by
    mtime, else the whole directory."""
    return _scan_and_choose(run_dir, step, tuple(exclude), tuple(include), events)[1]


def run_name(run_dir: str | os.PathLike) -> str:
    """The RUN of a run directory's archives: its name, with the `version_N` of a Lightning default
    `dirpath` (`lightning_logs/version_3/checkpoints` → `version_3-checkpoints`), so two runs of one
    project never share a name."""
    path = Path(os.path.abspath(Path(run_dir).expanduser())).resolve()
    if path.name == "checkpoints" and _LIGHTNING_VERSION.match(path.parent.name):
        return f"{path.parent.name}-{path.name}"
    return path.name


def _scan_and_choose(run_dir, step: int | None, exclude: tuple[str, ...], include: tuple[str, ...],
                     events: bool = False):
    root = check_run_dir(run_dir)
    scan = _Scan(root, exclude, include, events)
    chosen = scan.choose(step)
    irregular = {Path(e.path): e.what for e in scan.entries if e.kind != "file"}
    bad = next((f for f in chosen.files if f in irregular), None)
    if bad is not None:
        raise NotRegularFile(f"the checkpoint {_rel(bad, root)} is {irregular[bad]}, not a regular file: it cannot "
                             "be archived (pass ", Param("step"), " for another step, or ",
                             Param("exclude", _rel(bad, root)), ")")
    return scan, chosen


def step_from_name(name: str) -> int | None:
    """The step a file or directory name carries, if any (`epoch=3-step=1200.ckpt` → 1200)."""
    parsed = _parse_name(name)
    return parsed[0] if parsed else None


def tf_state_path(text: str) -> str | None:
    """The checkpoint prefix a TensorFlow `checkpoint` state file names (`model_checkpoint_path`)."""
    match = _STATE_LINE.search(text)
    return match.group("path") if match else None


def tf_prefix_step(prefix: str | None) -> int | None:
    """The step a TensorFlow checkpoint prefix ends with (`.../model.ckpt-1000` → 1000)."""
    match = _TF_PREFIX_STEP.search(str(prefix or ""))
    return int(match.group(1)) if match else None


def write_tf_state(directory: Path, prefix_name: str) -> Path:
    """A `checkpoint` state file naming `prefix_name`, relative, so the directory can move."""
    state = directory / STATE_FILE
    text = f'model_checkpoint_path: "{prefix_name}"\nall_model_checkpoint_paths: "{prefix_name}"\n'
    tmp = state.with_name(STATE_FILE + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, state)
    return state


# --- the walk -----------------------------------------------------------------------------------
@dataclass(eq=False)
class _Unit:
    """One step of one series: a step directory, a TF prefix or a single checkpoint file."""

    series: tuple[str, str]  # (parent directory, name template): what the steps of a series share
    step: int | None
    path: str  # absolute, like every path below: Path objects are made only for what is returned
    layout: str
    files: list[str] = field(default_factory=list)
    step_from: str = "name"  # "record": the step is the library's record, not in the name

    def mtime(self) -> float:
        times = []
        for f in self.files:
            try:
                times.append(os.stat(f).st_mtime)
            except OSError:
                pass
        return max(times, default=0.0)


@dataclass(slots=True)
class _Entry:
    path: str  # absolute
    parent: str  # posix, relative to the run directory ("" at the top)
    name: str
    kind: str  # "file" (regular, or a link to one), "dir", or "other"
    what: str = ""  # for "other": "a FIFO", "a socket", "a broken link", "a link to a directory", ...
    unfinished: bool = False  # below an unfinished save's temporary directory
    unit: _Unit | None = None  # the step (directory, TF prefix or file) it belongs to
    excluded: str | None = None  # the --exclude glob that names it

    @property
    def rel(self) -> str:
        return f"{self.parent}/{self.name}" if self.parent else self.name


def _walk(root: Path):
    """Every entry below root; linked directories are not followed and nothing is opened.

    An entry starts with the `unit` of its directory; a consumer that sets a directory entry's
    `unit` before asking for the next entry hands it on to everything below (a step directory).
    """
    stack: list[_Entry] = [_Entry(str(root), "", "", "dir")]
    while stack:
        top = stack.pop()
        rel_dir, unit, unfinished = top.rel, top.unit, top.unfinished
        try:
            entries = list(os.scandir(top.path))
        except OSError:
            continue  # vanished meanwhile, or unreadable: nothing of it can be archived anyway
        for entry in entries:
            name, path = entry.name, entry.path
            try:
                if entry.is_dir(follow_symlinks=False):
                    inner = unfinished or bool(_UNFINISHED_DIR.search(name))
                    found = _Entry(path, rel_dir, name, "dir", "", inner, unit)
                    yield found
                    stack.append(found)
                    continue
                if entry.is_file(follow_symlinks=False):
                    yield _Entry(path, rel_dir, name, "file", "", unfinished or bool(_UNFINISHED_FILE.search(name)),
                                 unit)
                    continue
                link = entry.is_symlink()
                mode = entry.stat(follow_symlinks=True).st_mode  # a link, FIFO, socket or device
            except FileNotFoundError:
                if entry.is_symlink():
                    yield _Entry(path, rel_dir, name, "other", "a broken link", unfinished, unit)
                continue  # vanished meanwhile
            if stat.S_ISREG(mode):
                yield _Entry(path, rel_dir, name, "file", "", unfinished, unit)
            else:
                what = ("a directory (not followed)" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                        else "a socket" if stat.S_ISSOCK(mode) else "a device")
                yield _Entry(path, rel_dir, name, "other", f"a link to {what}" if link else what, unfinished, unit)


class _Scan:
    """One walk of a run directory: its files, its step series and what frameworks record about them."""

    def __init__(self, root: Path, exclude: tuple[str, ...] = (), include: tuple[str, ...] = (),
                 events: bool = False):
        self.root, self.events, self.include = root, events, include
        self.entries: list[_Entry] = []  # every non-directory entry
        self.series: dict[tuple[str, str], dict[int, list[_Unit]]] = {}
        self.unnumbered: list[_Unit] = []  # checkpoint files without a step: candidates by mtime
        self.designated: dict[tuple[str, str], int] = {}  # series → the step its framework names latest
        self.named_by: dict[tuple[str, str], str] = {}  # series → the file that names it (`checkpoint`, `latest`)
        self._tf_units: dict[tuple[str, str], _Unit] = {}  # (parent, prefix) → unit
        self._dir_units: dict[str, _Unit] = {}  # rel path → step directory unit
        self._states: list[_Entry] = []
        by_dir: dict[str, list[_Entry]] = {}
        for entry in _walk(root):
            if exclude:
                entry.excluded = _excluded_by(entry.rel, exclude, include)
            owner = entry.unit  # the step directory it lies in, if any
            if entry.kind == "dir":
                if owner is None and not entry.unfinished and entry.excluded is None:
                    entry.unit = self._maybe_step_dir(entry)
                continue
            self.entries.append(entry)
            if entry.excluded is not None or entry.unfinished:
                entry.unit = None
                continue
            if owner is not None:
                owner.files.append(entry.path)
            else:
                self._classify(entry)
                by_dir.setdefault(entry.parent, []).append(entry)
        self._read_designations()
        self._huggingface_dirs(by_dir)
        self._keras_backups(by_dir)

    # units ---------------------------------------------------------------------------------------
    def _maybe_step_dir(self, entry: _Entry) -> _Unit | None:
        parent, name = entry.parent, entry.name
        if name.isdigit():
            if len(name) > _MAX_DIGITS or not _is_orbax_step(entry.path):
                return None  # a date (`logs/20241123/`) or an id: a step only where Orbax's metadata says so
            unit = _Unit((parent, "{N}/"), int(name), entry.path, "orbax")
        else:
            match = _STEP_DIR.match(name)
            if not match or len(match.group("n")) > _MAX_DIGITS:
                return None
            head = match.group("head")
            layout = next((v for k, v in _DIR_LAYOUTS.items() if head.lower().endswith(k)), "directory")
            unit = _Unit((parent, head + "{N}/"), int(match.group("n")), entry.path, layout)
        self._dir_units[entry.rel] = unit
        self._add(unit)
        return unit

    def _classify(self, entry: _Entry) -> None:
        parent, name = entry.parent, entry.name
        if name in (STATE_FILE, DEEPSPEED_LATEST):
            self._states.append(entry)
            return
        if _is_events(name):
            return
        tf = _TF_FILE.match(name)
        if tf:
            prefix = tf.group("prefix")
            unit = self._tf_units.get((parent, prefix))
            if unit is None:
                parsed = _parse_name(prefix)
                unit = _Unit((parent, parsed[1] if parsed else prefix), parsed[0] if parsed else None,
                             os.path.join(os.path.dirname(entry.path), prefix), "tensorflow")
                self._tf_units[(parent, prefix)] = unit
                self._add(unit)
            entry.unit = unit
            unit.files.append(entry.path)
            return
        lower = name.lower()
        if not lower.endswith(_SUFFIX_TUPLE):
            self._maybe_other_format(entry)
            return
        suffix = next(s for s in _CHECKPOINT_SUFFIXES if lower.endswith(s))
        stem = name[: -len(suffix)]
        parsed = _parse_name(stem)
        layout = _CHECKPOINT_SUFFIXES[suffix]
        if suffix == ".ckpt" and (stem == "last" or re.search(r"(?:^|[-_])(?:step|epoch)=\d", stem)):
            layout = "lightning"
        template = (parsed[1] if parsed else stem) + name[len(stem):]
        entry.unit = _Unit((parent, template), parsed[0] if parsed else None, entry.path, layout, [entry.path])
        self._add(entry.unit)

    def _maybe_other_format(self, entry: _Entry) -> None:
        """A numbered file of any other format (`step_100.npz`, `ckpt-6.pkl`, flax's `checkpoint_100`) is
        a step when its number has a key or it is an array or pickle file; media and reports never are."""
        lower = entry.name.lower()
        if lower.endswith(_NEVER_STEPS):
            return
        parsed = _parse(entry.name)
        if parsed is None or not (parsed[2] in _STEP_KEYS or lower.endswith(_DATA_SUFFIXES)):
            return
        entry.unit = _Unit((entry.parent, parsed[1]), parsed[0], entry.path, "file", [entry.path])
        self._add(entry.unit)

    def _add(self, unit: _Unit) -> None:
        if unit.step is None:
            self.unnumbered.append(unit)
        else:
            self.series.setdefault(unit.series, {}).setdefault(unit.step, []).append(unit)

    def _read_designations(self) -> None:
        """TensorFlow's `checkpoint` and DeepSpeed's `latest` name their latest step: it wins.

        The state file itself belongs to no step: TensorFlow rewrites it at every save, so counting it
        among the latest step's files would make that step look changed whenever a newer one appears."""
        for entry in self._states:
            if entry.kind != "file":
                continue
            text = _small_text(entry.path)
            if text is None:
                continue
            parent = entry.parent
            if entry.name == STATE_FILE:
                named = tf_state_path(text)
                unit = self._tf_units.get((parent, Path(named).name)) if named else None
            else:
                tag = text.strip()
                unit = self._dir_units.get(f"{parent}/{tag}" if parent else tag)
            if unit is not None and unit.step is not None:
                self.designated[unit.series] = unit.step
                self.named_by[unit.series] = entry.rel

    def _huggingface_dirs(self, by_dir: dict[str, list[_Entry]]) -> None:
        """A `save_pretrained` directory (config.json beside weights) is one checkpoint, not its shards."""
        for parent, entries in by_dir.items():
            if not any(e.name == "config.json" for e in entries):
                continue
            weights = [u for u in self.unnumbered
                       if u.series[0] == parent and u.path.endswith((".safetensors", ".bin"))]
            if weights:
                self.unnumbered = [u for u in self.unnumbered if u not in weights]
                self.unnumbered.append(_Unit((parent, ""), None, str(self.root / parent if parent else self.root),
                                             "huggingface", [e.path for e in entries if e.kind == "file"]))

    def _keras_backups(self, by_dir: dict[str, list[_Entry]]) -> None:
        """Keras `BackupAndRestore` records the epochs done beside `latest.weights.h5`: that is its step
        when the backup was taken at an epoch's end (mid-epoch backups stay named by mtime)."""
        metadata_name, weights_name = KERAS_BACKUP
        for parent, entries in by_dir.items():
            metadata = next((e for e in entries if e.name == metadata_name and e.kind == "file"), None)
            weights = next((u for u in self.unnumbered if u.series[0] == parent
                            and os.path.basename(u.path) == weights_name), None) if metadata else None
            if weights is None:
                continue
            record = json_record(metadata.path)
            epoch, batch = sane_step(record.get("epoch")), record.get("batch", 0)
            if epoch is None or batch not in (0, None):
                continue
            self.unnumbered.remove(weights)
            weights.step, weights.step_from, weights.files = epoch, "record", [weights.path, metadata.path]
            self._add(weights)

    # choosing ------------------------------------------------------------------------------------
    def _numbered(self) -> list[_Unit]:
        return [u for steps in self.series.values() for units in steps.values() for u in units if u.files]

    def choose(self, step: int | None) -> Checkpoint:
        numbered = self._numbered()
        if step is not None:
            return self._choose_step(numbered, step)
        named = [u for u in numbered if self.designated.get(u.series) == u.step]
        if named:
            return dataclasses.replace(_checkpoint(_newest(named), "name"), designated=True)
        best = None
        known = [u for u in numbered if u.layout != "file"] or numbered  # other formats only without a known one
        if known:
            top = max(u.step for u in known)
            best = _checkpoint(_newest([u for u in known if u.step == top]), "name")
        last = self._lightning_last(after=best)
        if last is not None or best is not None:
            return last or best
        candidates = [u for u in self.unnumbered if u.files]
        if candidates:
            newest = _newest(candidates)
            return _checkpoint(newest, "mtime", step=int(newest.mtime()))
        return self._whole_directory(None)

    def _choose_step(self, numbered: list[_Unit], step: int) -> Checkpoint:
        matching = [u for u in numbered if u.step == step]
        if matching:
            return _checkpoint(_newest(matching), "flag")
        last = self._lightning_last(after=None, step=step)
        if last is not None:
            return last
        if not numbered:  # no series to pick from: the newest checkpoint file, or the directory, named as asked
            candidates = [u for u in self.unnumbered if u.files]
            return _checkpoint(_newest(candidates), "flag", step=step) if candidates else self._whole_directory(step)
        found = sorted({u.step for u in numbered})
        raise NoCheckpointFound(f"no checkpoint of step {step} in {self.root}: steps found: {_short(found) or 'none'}")

    def _whole_directory(self, step: int | None) -> Checkpoint:
        """No checkpoint of any layout: the directory itself, every file that is not left out."""
        files = [e.path for e in self.entries if e.kind == "file" and e.excluded is None and
                 (not (e.unfinished or (_is_events(e.name) and not self.events))
                  or any(_matches(p, e.rel) for p in self.include))]
        if not files:
            raise NoCheckpointFound(f"nothing to archive in {self.root}: ", *_nothing_there(self.entries),
                                    f"; looked for {LOOKED_FOR}")
        # no file is "the checkpoint": none must hold still while read, and the directory counts as settled
        # once its newest mtime (the archive's name) stays the same
        newest = int(_Unit(("", ""), None, "", "directory", files).mtime())
        return Checkpoint(newest if step is None else step, self.root, (), "directory",
                          "mtime" if step is None else "flag")

    def _lightning_last(self, after: Checkpoint | None, step: int | None = None) -> Checkpoint | None:
        """Lightning's `last.ckpt` when the step it records is past `after`'s (or is `step`): it wins.

        Its name has no step, but the file records one (`global_step`, read without torch by
        `torchfile`, cached per file version): a run whose numbered file is its *best* epoch goes on
        in `last.ckpt` (Lightning 1.x's `save_last`, or `trainer.save_checkpoint("last.ckpt")`).
        """
        found = None
        for unit in self.unnumbered:
            if unit.layout != "lightning" or not _LIGHTNING_LAST.match(os.path.basename(unit.path)) or not unit.files:
                continue
            recorded, _ = recorded_progress(unit.path)
            if recorded is None or (step is not None and recorded != step) or \
                    (after is not None and recorded <= after.step):
                continue
            if found is None or recorded > found.step:
                found = _checkpoint(unit, "name" if step is None else "flag", step=recorded)
        return found

    def _kept_steps(self, step: int | None) -> dict[tuple[str, str], int | None]:
        """The step of each series that goes in: `step`'s (or the newest below it), else the one its
        framework names latest, else the newest."""
        kept = {}
        for series, steps in self.series.items():
            present = [s for s, units in steps.items() if any(u.files for u in units)]
            if step is not None:
                kept[series] = max((s for s in present if s <= step), default=None)
            else:
                named = self.designated.get(series)
                kept[series] = named if named in present else max(present, default=None)
        return kept

    # what the library records as worth keeping ----------------------------------------------------
    def _library_keeps(self, kept: dict[tuple[str, str], int | None], pinned: tuple[str, ...]) -> dict[_Unit, str]:
        """The checkpoints the training library keeps beside the newest (its best ones), and why."""
        units = self._units_by_path()
        keeps: dict[_Unit, str] = {}

        def keep(path: str, why: str) -> None:
            unit = units.get(path)
            if unit is not None and unit.step is not None and unit.files and unit not in keeps:
                keeps[unit] = why

        for series, step in kept.items():
            for unit in self.series[series].get(step, ()) if step is not None else ():
                if unit.layout == "huggingface":  # checkpoint-N/trainer_state.json names the best checkpoint
                    best = json_record(os.path.join(unit.path, TRAINER_STATE)).get("best_model_checkpoint")
                    if isinstance(best, str) and best:
                        keep(os.path.join(os.path.dirname(unit.path), _basename(best)),
                             f"best_model_checkpoint in {self._rel(unit.path)}/{TRAINER_STATE}")
                elif unit.path.endswith(".ckpt"):
                    self._lightning_keeps(unit, keep)
        for unit in self.unnumbered:
            if unit.layout == "lightning" and unit.files:
                self._lightning_keeps(unit, keep)
        for path in pinned:
            keep(self._inside(path), "as the training callback reports")
        return keeps

    def _lightning_keeps(self, unit: _Unit, keep) -> None:
        """A `.ckpt`'s ModelCheckpoint state: `best_k_models`, `best_model_path`, `last_model_path`."""
        home = os.path.dirname(unit.path)
        for path in read_record(unit.path).kept:  # absolute where training ran: matched by name, here
            keep(os.path.join(home, _basename(path)), f"kept by ModelCheckpoint, as {self._rel(unit.path)} records")

    def _units_by_path(self) -> dict[str, _Unit]:
        found = {u.path: u for steps in self.series.values() for units in steps.values() for u in units}
        found.update((u.path, u) for u in self.unnumbered)
        return found

    def _inside(self, path: str) -> str:
        """A path the caller gives, as the walk names it (below the run directory as given)."""
        path = os.path.abspath(path)
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if real == real_root or real.startswith(real_root + os.sep):
            return os.path.join(str(self.root), os.path.relpath(real, real_root))
        return path

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    # selecting -----------------------------------------------------------------------------------
    def select(self, chosen: Checkpoint, step: int | None, events: bool, include: tuple[str, ...],
               pinned: tuple[str, ...] = ()) -> Plan:
        kept = self._kept_steps(step)
        library = self._library_keeps(kept, pinned)
        files: list[str] = []
        groups: dict[tuple[str, object], list[str]] = {}
        other_steps: dict[tuple[str, object], set[int]] = {}
        for entry in sorted(self.entries, key=lambda e: e.rel.split("/")):  # as Paths sort, far faster
            if entry.kind != "file":
                groups.setdefault(("not_regular", entry.what), []).append(entry.path)
                continue
            unit, reason = entry.unit, None
            if entry.excluded is not None:
                reason = ("excluded", entry.excluded)
            elif entry.unfinished:
                reason = ("unfinished", None)
            elif unit is not None and unit.step is not None and unit.step != kept.get(unit.series) \
                    and unit not in library:
                top = kept.get(unit.series)
                reason = ("older" if top is not None and unit.step < top else "newer", unit.series)
                other_steps.setdefault(reason, set()).add(unit.step)
            elif not events and _is_events(entry.name):
                reason = ("events", None)
            if reason is not None and reason[0] != "excluded" and include and \
                    any(_matches(p, entry.rel) for p in include):
                reason = None
            if reason is None:
                files.append(entry.path)
            else:
                groups.setdefault(reason, []).append(entry.path)
        left_out = []
        for key, paths in groups.items():
            reason = _reason(key, other_steps.get(key), step)
            if key[0] == "newer" and step is None and key[1] in self.named_by:
                reason += f" ({self.named_by[key[1]]} names step {kept[key[1]]})"
            left_out.append(LeftOut(reason, key[0], tuple(paths)))
        left_out.sort(key=lambda g: (_KINDS.index(g.kind), g.reason))
        also = tuple(Kept(Path(u.path), u.step, why) for u, why in library.items()
                     if u.step != kept.get(u.series) and Path(u.path) != chosen.path)
        return Plan(self.root, chosen, tuple(map(Path, files)), tuple(left_out), tuple(sorted(also, key=_by_path)))


def _by_path(kept: Kept) -> str:
    return kept.path.as_posix()


def _basename(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rpartition("/")[2]


def _nothing_there(entries: list[_Entry]) -> tuple:
    """Why a run directory holds nothing to archive, as message parts."""
    kinds = {"excluded" if e.excluded is not None else "events" if e.kind == "file" and _is_events(e.name) else
             "unfinished" if e.unfinished else "other" for e in entries}
    if not kinds:
        return ("it is empty",)
    words = {"events": ("event files (left out without ", Param("events"), ")"), "excluded": ("excluded files",),
             "unfinished": ("files of a save in progress",), "other": ("what is not a regular file",)}
    parts: list = ["it holds only "]
    for i, kind in enumerate(sorted(kinds)):
        parts += ([" and "] if i else []) + list(words[kind])
    return tuple(parts)


_KINDS = ("older", "newer", "events", "excluded", "unfinished", "not_regular")


def _reason(key: tuple[str, object], steps: set[int] | None, step: int | None) -> str:
    kind, detail = key
    if kind in ("older", "newer"):
        numbers = sorted(steps or ())
        text = f"{kind} step{'s' if len(numbers) > 1 else ''} {_short(numbers)} of {_template(detail)}"
        return text + (f" (--step {step})" if step is not None and kind == "newer" else "")
    if kind == "excluded":
        return f"excluded by --exclude {detail!r}"
    if kind == "events":
        return "event file (use --events)"
    if kind == "unfinished":
        return "unfinished save (a temporary file or directory of TensorFlow, Orbax or transformers)"
    return f"not a regular file ({detail})"


def _checkpoint(unit: _Unit, step_from: str, step: int | None = None) -> Checkpoint:
    if step_from == "name" and step is None:
        step_from = unit.step_from  # "record": the library's record gave the step, not the name
    return Checkpoint(unit.step if step is None else step, Path(unit.path), tuple(map(Path, sorted(set(unit.files)))),
                      unit.layout, step_from)


# --- records ------------------------------------------------------------------------------------
def _small_text(path: str) -> str | None:
    """A state file's text (`checkpoint`, `latest`), or None when it is unreadable or too big for one."""
    try:
        if os.stat(path).st_size > _SMALL:
            return None
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(_SMALL)
    except OSError:
        return None


def json_record(path: str | os.PathLike) -> dict:
    """A JSON record's top-level object (`trainer_state.json`, `training_metadata.json`), or {}; read
    bounded, once per file version, and only from a regular file (a FIFO would block)."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    if not stat.S_ISREG(st.st_mode):
        return {}
    return _json_cached(os.fspath(path), st.st_mtime_ns, st.st_size, st.st_ino)


@functools.lru_cache(maxsize=256)
def _json_cached(path: str, mtime_ns: int, size: int, ino: int) -> dict:  # noqa: ARG001  (the cache key)
    if size > _MAX_RECORD:
        return {}
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(_MAX_RECORD))
    except (OSError, ValueError, RecursionError, MemoryError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_orbax_step(path: str) -> bool:
    """An all-digit directory is an Orbax step when Orbax's metadata is in it (`_CHECKPOINT_METADATA`;
    older versions: an item directory holding `_METADATA`, `checkpoint` or `manifest.ocdbt`)."""
    if any(os.path.isfile(os.path.join(path, name)) for name in ORBAX_METADATA):
        return True
    try:
        with os.scandir(path) as children:
            items = [c.path for c in children if c.is_dir(follow_symlinks=False)]
    except OSError:
        return False
    return any(os.path.isfile(os.path.join(item, name)) for item in items[:16] for name in _ORBAX_ITEM_METADATA)


def _excluded_by(rel: str, exclude: tuple[str, ...], include: tuple[str, ...]) -> str | None:
    pattern = next((p for p in exclude if _matches(p, rel)), None)
    if pattern is None or any(_matches(p, rel) for p in include):
        return None
    return pattern


# --- names --------------------------------------------------------------------------------------
def _parse_name(stem: str) -> tuple[int, str] | None:
    """(step, template) of a name: the step number replaced by {N}, other keyed numbers and decimals
    by *; None when the name carries no step."""
    parsed = _parse(stem)
    return parsed[:2] if parsed else None


def _parse(stem: str) -> tuple[int, str, str] | None:
    """(step, template, key) of a name; key is the step's key in lower case (`ckpt`, `step`), or ""."""
    masked = _COUNTER.sub(lambda m: "x" * len(m.group(0)), stem)
    candidates = []  # (rank, start, end, key)
    wildcards = []
    for match in _NUMBER.finditer(masked):
        start, end = match.span()
        after = masked[end:end + 1]
        if after.isalpha() or "." in match.group(0):
            if "." in match.group(0) and not after.isalpha():
                wildcards.append((start, end))
            continue
        if end - start > _MAX_DIGITS:
            continue  # an id or a timestamp, never a step
        before = masked[start - 1:start]
        key = _KEY_BEFORE.search(masked[:start])
        if key:
            candidates.append((_KEY_RANK[key.group("key").lower()], start, end, key.group("key").lower()))
        elif not before.isalpha():
            candidates.append((3, start, end, ""))
    if not candidates:
        return None
    rank, start, end, key = min(candidates, key=lambda c: (c[0], c[1]))
    spans = [(start, end, "{N}")]
    spans += [(s, e, "*") for r, s, e, k in candidates if k and s != start]
    spans += [(s, e, "*") for s, e in wildcards]
    template = stem
    for s, e, text in sorted(spans, reverse=True):
        template = template[:s] + text + template[e:]
    return int(stem[start:end]), template, key


def _is_events(name: str) -> bool:
    return name.startswith(_EVENTS_PREFIX)  # EVENTS_GLOB, without fnmatch's cost per file


def _matches(pattern: str, rel: str) -> bool:
    """A glob names a file by its relative path, its name, or any directory it lies in."""
    pattern = pattern.rstrip("/")
    if fnmatch.fnmatchcase(rel, pattern) or fnmatch.fnmatchcase(rel.rpartition("/")[2], pattern):
        return True
    parent = rel.rpartition("/")[0]
    while parent:
        if fnmatch.fnmatchcase(parent, pattern) or fnmatch.fnmatchcase(parent.rpartition("/")[2], pattern):
            return True
        parent = parent.rpartition("/")[0]
    return False


def _template(series: tuple[str, str]) -> str:
    parent, name = series
    return f"{parent}/{name}" if parent else name


def _newest(units: list[_Unit]) -> _Unit:
    return units[0] if len(units) == 1 else max(units, key=lambda u: u.mtime())


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _short(steps: list[int]) -> str:
    shown = ", ".join(map(str, steps[-10:]))
    return ("…, " + shown) if len(steps) > 10 else shown
