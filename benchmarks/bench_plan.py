"""Planning benchmark: how long `checkpoints.plan()` takes on a run directory of many small files.

    python benchmarks/bench_plan.py [--files 20000] [--repeats 5]

Builds (once, in a temporary directory) a run directory like a long training run leaves behind:
TensorBoard event files in many sub-directories, Hugging Face `checkpoint-N/` steps with sharded
weights, TF `model.ckpt-N.*` steps, numbered Keras files and plain files (tokenizer, configs), about
`--files` files of a few bytes in all. Then times `plan()` (the walk plus the selection, what every
`%gcs_save` and every archiver poll does) `--repeats` times and prints the median. Target: < 1 s for
20 000 files (issue 11).
"""

from __future__ import annotations

import argparse
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
    while count < files:  # Keras epochs with the loss in the name, and samples
        write(f"keras/w.{count:05d}-0.{count % 97:02d}.weights.h5")
        if count < files:
            write(f"samples/sample_{count}.png")
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-plan-")) / "run"
    try:
        written = build(root, args.files)
        times, floors = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            started = time.perf_counter()
            result = checkpoints.plan(root)
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            listed = sum(len(files) for _, _, files in os.walk(root))
            floors.append(time.perf_counter() - started)
        median, floor = statistics.median(times), statistics.median(floors)
        print(f"plan() of {written} files: median {median:.3f} s over {args.repeats} runs "
              f"(min {min(times):.3f}, max {max(times):.3f}); target < 1 s {'✓' if median < 1 else '✗'}")
        print(f"  bare os.walk listing the same {listed} files: {floor:.3f} s; "
              f"plan() ÷ os.walk = {median / floor:.2f}")
        print(f"  step {result.step} ({result.layout}), {len(result.files)} files in, "
              f"{result.left_out_count()} left out in {len(result.left_out)} groups")
        return 0 if median < 1 else 1
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
