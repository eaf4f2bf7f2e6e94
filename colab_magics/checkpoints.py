"""Which files of a run directory go into an archive: everything, minus the other steps.

A run directory holds checkpoints of several steps next to files that belong to no step (configs,
tokenizers, shard indexes, `latest`, `training_metadata.json`, pretrained weights). An archive takes
everything under RUN_DIR except:

- the other steps of each *step series*: checkpoint files or directories whose names differ only by
  a step number (`ckpt-{N}.weights.h5`, `model.ckpt-{N}.*`, `checkpoint-{N}/`, `global_step{N}/`,
  an Orbax `{N}/`). Each series keeps its newest step, or the step its framework names as latest
  (TensorFlow's `checkpoint` state file, DeepSpeed's `latest`), or `step`'s;
- TensorBoard event files, unless `events=True`;
- what `exclude` globs name (`include` globs add anything back);
- what cannot be read as a file: FIFOs, sockets, devices, broken links, linked directories.

A step is a number set off by a delimiter or a key (`ckpt-3`, `model_0003`, `epoch=5-step=1000`,
`epoch5`, `weights.05-0.31.hdf5`), never digits glued to letters (`resnet50`, `yolov8n`, `gpt2`,
`model_v2`), never a shard or rank counter (`-00001-of-00004`, `rank_0`). Directories are steps only
with a key (`checkpoint-N`, `checkpoint_N`, `global_stepN`, `step_N`, `epoch=N`) or all digits, so
`version_0/` or `fold_2/` are never dropped. The walk is one `os.scandir` pass with no per-file stat.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable

from colab_magics.errors import NoCheckpointFound, NotRegularFile, RunDirError

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
_STATE_LINE = re.compile(r'^\s*model_checkpoint_path:\s*"(?P<path>.*)"\s*$', re.M)
_SMALL = 64 * 1024  # state files read to find a framework's latest are at most this big


# --- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """One step's files. `path` is what a framework loads: a TF prefix, a file or a directory."""

    step: int
    path: Path
    files: tuple[Path, ...]
    layout: str  # "tensorflow", "keras", "pytorch", "lightning", "huggingface", "accelerate", "deepspeed", "orbax", ...
    step_from: str = "name"  # "name", "flag" (--step) or "mtime" (no number: the newest file's mtime)

    @property
    def mtime(self) -> float:
        return max(f.stat().st_mtime for f in self.files)


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
class Plan:
    """What an archive of `root` holds: `files` (sorted, absolute) and what was `left_out`."""

    root: Path
    checkpoint: Checkpoint
    files: tuple[Path, ...]
    left_out: tuple[LeftOut, ...] = ()

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
) -> Plan:
    """Every file an archive of `run_dir` holds, the checkpoint it is named after, and what is left out.

    `exclude`/`include` are globs matched against paths relative to RUN_DIR, their file names and
    their parent directories (`'*.tmp'`, `'samples'`, `'checkpoint-2/*'`); include wins.
    """
    scan, chosen = _scan_and_choose(run_dir, step, tuple(exclude), tuple(include))
    return scan.select(chosen, step, events, tuple(include))


def find_checkpoint(run_dir: str | os.PathLike, step: int | None = None, *,
                    exclude: Iterable[str] = (), include: Iterable[str] = ()) -> Checkpoint:
    """The checkpoint of `step`, else the one its framework names latest, else the highest step in
    the names, else (no number anywhere) the newest checkpoint file by mtime."""
    return _scan_and_choose(run_dir, step, tuple(exclude), tuple(include))[1]


def _scan_and_choose(run_dir, step: int | None, exclude: tuple[str, ...], include: tuple[str, ...]):
    root = check_run_dir(run_dir)
    scan = _Scan(root, exclude, include)
    chosen = scan.choose(step)
    irregular = {Path(e.path): e.what for e in scan.entries if e.kind != "file"}
    bad = next((f for f in chosen.files if f in irregular), None)
    if bad is not None:
        raise NotRegularFile(f"the checkpoint {_rel(bad, root)} is {irregular[bad]}, not a regular file: it cannot "
                             f"be archived (pass --step N for another step, or --exclude {_rel(bad, root)!r})")
    return scan, chosen


def step_from_name(name: str) -> int | None:
    """The step a file or directory name carries, if any (`epoch=3-step=1200.ckpt` → 1200)."""
    parsed = _parse_name(name)
    return parsed[0] if parsed else None


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
    """One walk of a run directory: its files, its step series and what frameworks name as latest."""

    def __init__(self, root: Path, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()):
        self.root = root
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

    # units ---------------------------------------------------------------------------------------
    def _maybe_step_dir(self, entry: _Entry) -> _Unit | None:
        parent, name = entry.parent, entry.name
        if name.isdigit():
            unit = _Unit((parent, "{N}/"), int(name), entry.path, "orbax")
        else:
            match = _STEP_DIR.match(name)
            if not match:
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
            return  # belongs to no step: always archived
        suffix = next(s for s in _CHECKPOINT_SUFFIXES if lower.endswith(s))
        stem = name[: -len(suffix)]
        parsed = _parse_name(stem)
        layout = _CHECKPOINT_SUFFIXES[suffix]
        if suffix == ".ckpt" and (stem == "last" or re.search(r"(?:^|[-_])(?:step|epoch)=\d", stem)):
            layout = "lightning"
        template = (parsed[1] if parsed else stem) + name[len(stem):]
        entry.unit = _Unit((parent, template), parsed[0] if parsed else None, entry.path, layout, [entry.path])
        self._add(entry.unit)

    def _add(self, unit: _Unit) -> None:
        if unit.step is None:
            self.unnumbered.append(unit)
        else:
            self.series.setdefault(unit.series, {}).setdefault(unit.step, []).append(unit)

    def _read_designations(self) -> None:
        """TensorFlow's `checkpoint` and DeepSpeed's `latest` name their latest step: it wins."""
        for entry in self._states:
            if entry.kind != "file":
                continue
            try:
                if os.stat(entry.path).st_size > _SMALL:
                    continue
                with open(entry.path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
            except OSError:
                continue
            parent = entry.parent
            if entry.name == STATE_FILE:
                match = _STATE_LINE.search(text)
                unit = self._tf_units.get((parent, Path(match.group("path")).name)) if match else None
                if unit is not None:
                    unit.files.append(entry.path)  # part of that checkpoint, as TensorFlow reads it
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

    # choosing ------------------------------------------------------------------------------------
    def _numbered(self) -> list[_Unit]:
        return [u for steps in self.series.values() for units in steps.values() for u in units if u.files]

    def choose(self, step: int | None) -> Checkpoint:
        numbered = self._numbered()
        if step is not None:
            matching = [u for u in numbered if u.step == step]
            last = None if matching else self._lightning_last(after=None, step=step)
            if last is not None:
                return last
            if not matching:
                found = sorted({u.step for u in numbered})
                raise NoCheckpointFound(f"no checkpoint of step {step} in {self.root}: steps found: "
                                        f"{_short(found) or 'none'}")
            return _checkpoint(_newest(matching), "flag")
        named = [u for u in numbered if self.designated.get(u.series) == u.step]
        if named:
            return _checkpoint(_newest(named), "name")
        best = None
        if numbered:
            top = max(u.step for u in numbered)
            best = _checkpoint(_newest([u for u in numbered if u.step == top]), "name")
        last = self._lightning_last(after=best)
        if last is not None or best is not None:
            return last or best
        candidates = [u for u in self.unnumbered if u.files]
        if not candidates:
            raise NoCheckpointFound(
                f"no checkpoint found in {self.root}: expected TensorFlow, Keras, PyTorch, Lightning, "
                "Hugging Face, accelerate, DeepSpeed or Orbax checkpoint files (or pass --step for a numbered one)")
        best = _newest(candidates)
        return _checkpoint(best, "mtime", step=int(best.mtime()))

    def _lightning_last(self, after: Checkpoint | None, step: int | None = None) -> Checkpoint | None:
        """Lightning's `last.ckpt` when the step it records is past `after`'s (or is `step`): it wins.

        Its name has no step, but the file records one (`global_step`, read without torch by
        `torchfile`, cached per file version): a run whose numbered file is its *best* epoch goes on
        in `last.ckpt` (Lightning 1.x's `save_last`, or `trainer.save_checkpoint("last.ckpt")`).
        """
        from colab_magics.torchfile import recorded_progress

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

    # selecting -----------------------------------------------------------------------------------
    def select(self, chosen: Checkpoint, step: int | None, events: bool, include: tuple[str, ...]) -> Plan:
        kept = self._kept_steps(step)
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
            elif unit is not None and unit.step is not None and unit.step != kept.get(unit.series):
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
        return Plan(self.root, chosen, tuple(map(Path, files)), tuple(left_out))


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
    return Checkpoint(unit.step if step is None else step, Path(unit.path), tuple(map(Path, sorted(set(unit.files)))),
                      unit.layout, step_from)


def _excluded_by(rel: str, exclude: tuple[str, ...], include: tuple[str, ...]) -> str | None:
    pattern = next((p for p in exclude if _matches(p, rel)), None)
    if pattern is None or any(_matches(p, rel) for p in include):
        return None
    return pattern


# --- names --------------------------------------------------------------------------------------
def _parse_name(stem: str) -> tuple[int, str] | None:
    """(step, template) of a name: the step number replaced by {N}, other keyed numbers and decimals
    by *; None when the name carries no step."""
    masked = _COUNTER.sub(lambda m: "x" * len(m.group(0)), stem)
    candidates = []  # (rank, position, start, end)
    wildcards = []
    for match in _NUMBER.finditer(masked):
        start, end = match.span()
        after = masked[end:end + 1]
        if after.isalpha() or "." in match.group(0):
            if "." in match.group(0) and not after.isalpha():
                wildcards.append((start, end))
            continue
        before = masked[start - 1:start]
        key = _KEY_BEFORE.search(masked[:start])
        if key:
            candidates.append((_KEY_RANK[key.group("key").lower()], start, end, True))
        elif not before.isalpha():
            candidates.append((3, start, end, False))
    if not candidates:
        return None
    rank, start, end, _ = min(candidates, key=lambda c: (c[0], c[1]))
    spans = [(start, end, "{N}")]
    spans += [(s, e, "*") for r, s, e, keyed in candidates if keyed and s != start]
    spans += [(s, e, "*") for s, e in wildcards]
    template = stem
    for s, e, text in sorted(spans, reverse=True):
        template = template[:s] + text + template[e:]
    return int(stem[start:end]), template


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
