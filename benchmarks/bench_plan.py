"""Planning benchmark: how long `checkpoints.plan()` takes on a run directory of many small files,
and what reading the training libraries' records adds to it.

    python benchmarks/bench_plan.py [--files 20000] [--repeats 5]

Builds (once, in a temporary directory) a run directory like a long training run leaves behind:
TensorBoard event files in many sub-directories, Hugging Face `checkpoint-N/` steps with sharded
weights and a real `trainer_state.json` (log history, best checkpoint), TF `model.ckpt-N.*` steps,
Lightning `.ckpt` files written by `torch.save` with a ModelCheckpoint's state, a Keras
`BackupAndRestore` directory, Orbax step directories with their metadata, numbered Keras files and
plain files (tokenizer, configs), about `--files` files in all. Then times, interleaved:

- `plan()` as it runs (the walk, the records, the selection: what every `%gcs_save` and every
  archiver poll does), with the records cached from the previous call (an archiver's next poll);
- the same with the record caches emptied first (the first look at new checkpoints);
- `plan()` with the records not read at all (names only, as before records existed).

Targets: plan() < 1 s for 20 000 files (issue 11); reading the records adds <= 20 ms per check (issue 19).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from colab_magics import checkpoints  # noqa: E402


def build(root: Path, files: int) -> int:
    """A run directory of about `files` small files; returns how many were written."""
    count = 0

    def write(rel: str) -> None:
        nonlocal count
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        count += 1

    for name in ("config.json", "tokenizer.json", "vocab.txt", "special_tokens_map.json", "latest"):
        write(name)
    quarter = files // 4
    for i in range(quarter):  # event files, 50 per run sub-directory
        write(f"logs/run_{i // 50}/train/events.out.tfevents.{1700000000 + i}.host.{i}.v2")
    steps = quarter // 10
    for step in range(1, steps + 1):  # HF steps: 4 shards + index + states
        base = f"checkpoint-{step * 100}"
        for k in range(1, 5):
            write(f"{base}/model-{k:05d}-of-00004.safetensors")
        for name in ("model.safetensors.index.json", "optimizer.pt", "scheduler.pt",
                     "trainer_state.json", "rng_state.pth", "training_args.bin"):
            write(f"{base}/{name}")
    for step in range(1, quarter // 3 + 1):  # TF v1 steps
        for suffix in ("index", "meta", "data-00000-of-00001"):
            write(f"tf/model.ckpt-{step * 10}.{suffix}")
    records(root, write)
    while count < files:  # Keras epochs with the loss in the name, and samples
        write(f"keras/w.{count:05d}-0.{count % 97:02d}.weights.h5")
        if count < files:
            write(f"samples/sample_{count}.png")
    return count


def records(root: Path, write) -> None:
    """The libraries' own records, as they write them (real trainer_state.json, torch.save'd .ckpt)."""
    import torch

    steps = sorted(int(p.name.split("-")[1]) for p in root.glob("checkpoint-*"))
    history = [{"epoch": i / 10, "grad_norm": 1.5, "learning_rate": 5e-05, "loss": 2.1, "step": i * 10}
               for i in range(300)]
    for step in steps:  # each step's state names the best one (the first), as load_best_model_at_end does
        state = {"best_global_step": steps[0], "best_metric": 0.9,
                 "best_model_checkpoint": str(root / f"checkpoint-{steps[0]}"), "epoch": step / 100,
                 "global_step": step, "log_history": history, "max_steps": 100000}
        (root / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(50)])
    lightning = root / "lightning"
    lightning.mkdir()
    for epoch in range(20):
        path = lightning / f"epoch={epoch}-step={(epoch + 1) * 100}.ckpt"
        best = {str(lightning / "epoch=0-step=100.ckpt"): torch.tensor(1.0), str(path): torch.tensor(0.5)}
        state = {"best_model_path": str(lightning / "epoch=0-step=100.ckpt"), "best_k_models": best,
                 "last_model_path": str(lightning / "last.ckpt"), "dirpath": str(lightning)}
        torch.save({"epoch": epoch, "global_step": (epoch + 1) * 100, "state_dict": model.state_dict(),
                    "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": state}}, path)
    write("keras_backup/latest.weights.h5")
    (root / "keras_backup" / "training_metadata.json").write_text('{"epoch": 7, "batch": 0}')
    for step in range(0, 2000, 100):
        write(f"orbax/{step}/_CHECKPOINT_METADATA")
        write(f"orbax/{step}/default/_METADATA")


def without_records():
    """plan() as names alone decide: no record read (the baseline the records are measured against)."""
    scan = checkpoints._Scan
    saved = scan._library_keeps, scan._keras_backups, checkpoints._is_orbax_step
    scan._library_keeps = lambda self, kept, pinned: {}
    scan._keras_backups = lambda self, by_dir: None
    checkpoints._is_orbax_step = lambda path: True
    return saved


class RecordClock:
    """Time spent inside the record readers during plan() calls: what asking the libraries adds."""

    def __init__(self):
        self.seconds = 0.0
        self._saved = []

    def _timed(self, owner, name):
        original = getattr(owner, name)
        self._saved.append((owner, name, original))

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        setattr(owner, name, timed)

    def __enter__(self):
        for owner, name in ((checkpoints._Scan, "_library_keeps"), (checkpoints._Scan, "_keras_backups"),
                            (checkpoints._Scan, "_lightning_last"), (checkpoints, "_is_orbax_step")):
            self._timed(owner, name)
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


def restore(saved) -> None:
    checkpoints._Scan._library_keeps, checkpoints._Scan._keras_backups, checkpoints._is_orbax_step = saved


def clear_caches() -> None:
    from colab_magics import torchfile

    checkpoints._json_cached.cache_clear()
    torchfile._cached.cache_clear()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-plan-")) / "run"
    try:
        written = build(root, args.files)
        times, cold, names, floors, inside, inside_cold = [], [], [], [], [], []
        result = checkpoints.plan(root)  # fills the record caches
        for _ in range(args.repeats):  # interleaved, so all see the same machine load
            with RecordClock() as clock:
                started = time.perf_counter()
                result = checkpoints.plan(root)
                times.append(time.perf_counter() - started)
            inside.append(clock.seconds)
            clear_caches()
            with RecordClock() as clock:
                started = time.perf_counter()
                checkpoints.plan(root)
                cold.append(time.perf_counter() - started)
            inside_cold.append(clock.seconds)
            saved = without_records()
            try:
                started = time.perf_counter()
                checkpoints.plan(root)
                names.append(time.perf_counter() - started)
            finally:
                restore(saved)
            started = time.perf_counter()
            listed = sum(len(files) for _, _, files in os.walk(root))
            floors.append(time.perf_counter() - started)
        median, floor = statistics.median(times), statistics.median(floors)
        added = [t - n for t, n in zip(times, names)]
        added_cold = [c - n for c, n in zip(cold, names)]
        print(f"plan() of {written} files: median {median:.3f} s over {args.repeats} runs "
              f"(min {min(times):.3f}, max {max(times):.3f}); target < 1 s {'✓' if median < 1 else '✗'}")
        print(f"  bare os.walk listing the same {listed} files: {floor:.3f} s; "
              f"plan() ÷ os.walk = {median / floor:.2f}")
        per_check = statistics.median(inside)
        print(f"  time inside the record readers per check (cached, as an archiver's next poll): "
              f"{per_check * 1000:.1f} ms (max {max(inside) * 1000:.1f}); target <= 20 ms "
              f"{'✓' if per_check <= 0.020 else '✗'}")
        print(f"  ... at a first look (caches emptied): {statistics.median(inside_cold) * 1000:.1f} ms")
        print(f"  plan() with records ÷ names only, same load: {median / statistics.median(names):.3f} "
              f"(paired differences {', '.join(f'{a * 1000:+.0f}' for a in added)} ms cached, "
              f"{', '.join(f'{a * 1000:+.0f}' for a in added_cold)} ms first read)")
        print(f"  step {result.step} ({result.layout}), {len(result.files)} files in, "
              f"{result.left_out_count()} left out in {len(result.left_out)} groups, "
              f"{len(result.kept)} kept as the libraries' best: {', '.join(k.path.name for k in result.kept)}")
        return 0 if median < 1 and per_check <= 0.020 else 1
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
