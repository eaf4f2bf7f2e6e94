"""Find the latest checkpoint of a run directory, whatever framework wrote it.

Known layouts: TensorFlow (`checkpoint` state file, `PREFIX-N.index/.data-*/.meta`, TF2 `ckpt-N.*`),
Keras (`*.weights.h5`, `*.keras`), PyTorch (`*.pt`, `*.pth`, `*.ckpt`, `*.safetensors`), Lightning
(`epoch=E-step=S.ckpt`) and Hugging Face Trainer (`checkpoint-N/` directories).
The files of a step are matched exactly: step 100 never picks up `model.ckpt-1000.*`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from colab_magics.errors import NoCheckpointFound, RunDirError

STATE_FILE = "checkpoint"
EVENTS_GLOB = "events.out.tfevents.*"

_TF_FILE = re.compile(r"^(?P<prefix>.+-(?P<step>\d+))\.(?:index|meta|data-\d+-of-\d+)$")
_HF_DIR = re.compile(r"^checkpoint-(?P<step>\d+)$")
_SINGLE_FILE_SUFFIXES = (".weights.h5", ".keras", ".safetensors", ".pt", ".pth", ".ckpt")
_STEP_PATTERNS = (
    re.compile(r"(?:^|[^a-z])(?:global_)?step[=_-]?(\d+)", re.I),
    re.compile(r"(?:^|[^a-z])(?:epoch|ep)[=_-]?(\d+)", re.I),
    re.compile(r"(?:ckpt|checkpoint|model|weights)[=_.-]?(\d+)", re.I),
    re.compile(r"(\d+)"),
)
_STATE_LINE = re.compile(r'^\s*model_checkpoint_path:\s*"(?P<path>.*)"\s*$', re.M)


@dataclass(frozen=True)
class Checkpoint:
    """One step's files. `path` is what a framework loads: a TF prefix, a file or a directory."""

    step: int
    path: Path
    files: tuple[Path, ...]
    layout: str  # "tensorflow", "keras", "pytorch", "lightning", "huggingface"
    step_from: str = "name"  # "name", "flag" or "mtime"

    @property
    def mtime(self) -> float:
        return max(f.stat().st_mtime for f in self.files)


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """The run directory as a Path, or a RunDirError saying what is wrong with it."""
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise RunDirError(f"run directory {path} does not exist: check the path")
    if not path.is_dir():
        raise RunDirError(f"{path} is a file, not a run directory: pass the directory it is in")
    if not any(path.iterdir()):
        raise RunDirError(f"run directory {path} is empty: train first, or check the path")
    return path


def find_checkpoint(run_dir: str | os.PathLike, step: int | None = None) -> Checkpoint:
    """The checkpoint of `step`, else of the highest step in the names, else the newest by mtime."""
    root = check_run_dir(run_dir)
    candidates = list(_candidates(root))
    if not candidates:
        raise NoCheckpointFound(
            f"no checkpoint found in {root}: expected TensorFlow, Keras, PyTorch, Lightning or "
            "Hugging Face checkpoint files (or pass --step for a numbered one)"
        )
    if step is not None:
        chosen = [c for c in candidates if c.step == step]
        if not chosen:
            steps = sorted({c.step for c in candidates if c.step_from == "name"})
            raise NoCheckpointFound(
                f"no checkpoint of step {step} in {root}: steps found: {_short(steps) or 'none'}"
            )
        best = max(chosen, key=lambda c: c.mtime)
        return Checkpoint(step, best.path, best.files, best.layout, "flag")
    named = [c for c in candidates if c.step_from == "name"]
    if named:
        top = max(c.step for c in named)
        return max((c for c in named if c.step == top), key=lambda c: c.mtime)
    return max(candidates, key=lambda c: c.mtime)


def event_files(run_dir: str | os.PathLike) -> list[Path]:
    """Every TensorBoard event file below the run directory."""
    return sorted(p for p in Path(run_dir).rglob(EVENTS_GLOB) if p.is_file())


def step_from_name(name: str) -> int | None:
    """The step a file or directory name carries, if any (`epoch=3-step=1200.ckpt` → 1200)."""
    for pattern in _STEP_PATTERNS:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return None


def write_tf_state(directory: Path, prefix_name: str) -> Path:
    """A `checkpoint` state file naming `prefix_name`, relative, so the directory can move."""
    state = directory / STATE_FILE
    text = f'model_checkpoint_path: "{prefix_name}"\nall_model_checkpoint_paths: "{prefix_name}"\n'
    tmp = state.with_name(STATE_FILE + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, state)
    return state


def _candidates(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in dirnames:
            match = _HF_DIR.match(name)
            if match:
                files = tuple(sorted(p for p in (here / name).rglob("*") if p.is_file()))
                if files:
                    yield Checkpoint(int(match.group("step")), here / name, files, "huggingface")
        if _HF_DIR.match(here.name) and here != root:
            continue  # the inside of a Hugging Face checkpoint is part of that checkpoint
        dirnames[:] = [d for d in dirnames if not _HF_DIR.match(d)]
        yield from _tf_candidates(here, filenames)
        yield from _single_file_candidates(here, filenames)


def _tf_candidates(here: Path, filenames: list[str]):
    prefixes: dict[str, int] = {}
    for name in filenames:
        match = _TF_FILE.match(name)
        if match:
            prefixes[match.group("prefix")] = int(match.group("step"))
    state = here / STATE_FILE if STATE_FILE in filenames else None
    for prefix, step in prefixes.items():
        files = [here / n for n in filenames if n.startswith(prefix + ".")]
        if not any(n.endswith(".index") or n.endswith(".meta") for n in (f.name for f in files)):
            continue
        if state is not None:
            files.append(state)
        yield Checkpoint(step, here / prefix, tuple(sorted(files)), "tensorflow")
    if state is not None and not prefixes:
        yield from _tf_state_only(here, state)


def _tf_state_only(here: Path, state: Path):
    """A state file naming a prefix without a step (`model.ckpt`): use its files and their mtime."""
    match = _STATE_LINE.search(state.read_text(errors="replace"))
    if not match:
        return
    prefix = Path(match.group("path")).name
    files = [p for p in here.iterdir() if p.is_file() and p.name.startswith(prefix + ".")]
    if files:
        step = int(max(f.stat().st_mtime for f in files))
        yield Checkpoint(step, here / prefix, tuple(sorted(files + [state])), "tensorflow", "mtime")


def _single_file_candidates(here: Path, filenames: list[str]):
    for name in filenames:
        suffix = next((s for s in _SINGLE_FILE_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            continue
        path = here / name
        stem = name[: -len(suffix)]
        if suffix == ".ckpt":
            layout = "lightning" if re.search(r"step=\d+", stem) else "pytorch"
        else:
            layout = "keras" if suffix in (".weights.h5", ".keras") else "pytorch"
        step = step_from_name(stem)
        if step is None:
            yield Checkpoint(int(path.stat().st_mtime), path, (path,), layout, "mtime")
        else:
            yield Checkpoint(step, path, (path,), layout)


def _short(steps: list[int]) -> str:
    shown = ", ".join(map(str, steps[-10:]))
    return ("…, " + shown) if len(steps) > 10 else shown
