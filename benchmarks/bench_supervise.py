"""`colab-magics run` benchmark: what supervising costs a training script, and the final archive's time.

    python benchmarks/bench_supervise.py [--train-seconds 20] [--ckpt-mib 64] [--ckpt-every 3]
                                         [--archive-every 30s] [--repeats 3] [--final-gib 1]

1. Overhead. The CPU-bound loop of bench_archive.py (float32 matmuls on one BLAS thread, a
   `--ckpt-mib` checkpoint every `--ckpt-every` s, temporary file + rename, last three kept) runs as a
   plain script and as `colab-magics run RUN gs://bench/N --every ARCHIVE_EVERY -- python train.py`
   (through `python -m colab_magics.cli run`), in back-to-back pairs with alternating order.
   Reported: the median over pairs of the training loop's time ratio (target ≤ 1.03) and of the whole
   job's (which adds start-up and the final archive).
2. Preemption. A script writes one `--final-gib` GiB checkpoint (incompressible) and is SIGTERMed
   (through the supervisor, as GCE does) before the interval archive could take it: reported, the
   time from SIGTERM to the supervisor's exit with the archive in the bucket (target: within the
   default --final-timeout, 25 s).

Starts its own fake-gcs-server (memory backend) through the library; results also go to
benchmarks/results/supervise.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_archive import BUCKET, MiB, TRAIN_SOURCE, start_emulator  # noqa: E402

TARGET = 1.03
FINAL_TIMEOUT = 25.0
RESULTS = HERE / "results" / "supervise.json"

SCRIPT = TRAIN_SOURCE + '''
import json, sys
if __name__ == "__main__":
    run_dir, steps, ckpt_every, ckpt_bytes = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    if steps == 0:  # calibrate: the loop alone
        seconds, _ = train(run_dir, 400, 1e9, 4096)
        print(json.dumps({"steps_per_second": 400 / seconds}))
    else:
        seconds, last = train(run_dir, steps, ckpt_every, ckpt_bytes)
        print(json.dumps({"train_seconds": seconds, "last_step": last}), flush=True)
'''

PREEMPTED = r'''
import os, sys, time
import numpy as np
run_dir, size = sys.argv[1], int(sys.argv[2])
os.makedirs(run_dir, exist_ok=True)
weights = np.random.default_rng(0).bytes(size)
with open(os.path.join(run_dir, ".step-1.tmp"), "wb") as fh:
    fh.write(weights)
os.replace(os.path.join(run_dir, ".step-1.tmp"), os.path.join(run_dir, "step-1.pt"))
print("saved", flush=True)
time.sleep(3600)
'''


def child_env(host: str) -> dict:
    env = dict(os.environ, STORAGE_EMULATOR_HOST=host, COLAB_MAGICS_PROGRESS="false")
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def one_run(op: str, script: Path, run_dir: Path, args, steps: int, index: int, host: str) -> dict:
    command = [sys.executable, str(script), str(run_dir), str(steps), str(args.ckpt_every), str(args.ckpt_mib * MiB)]
    if op == "supervised":
        command = [sys.executable, "-m", "colab_magics.cli", "run", str(run_dir), f"gs://{BUCKET}/{index}",
                   "--every", args.archive_every, "--"] + command
    started = time.perf_counter()
    proc = subprocess.run(command, env=child_env(host), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
    job = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{op} run failed ({proc.returncode}):\n{proc.stderr.decode()[-3000:]}")
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    result["job_seconds"] = job
    if op == "supervised":
        result["archives"] = proc.stderr.decode().count("archived step")
    return result


def overhead(args, host: str, scratch: Path) -> dict:
    script = scratch / "train.py"
    script.write_text(SCRIPT)
    calib = subprocess.run([sys.executable, str(script), str(scratch / "calib"), "0", "0", "0"],
                           env=child_env(host), capture_output=True, timeout=300, check=True)
    steps = max(int(json.loads(calib.stdout)["steps_per_second"] * args.train_seconds), 10)
    runs: dict[str, list[dict]] = {"plain": [], "supervised": []}
    index = 0
    for repeat in range(args.repeats):
        for op in (("plain", "supervised") if repeat % 2 == 0 else ("supervised", "plain")):
            index += 1
            result = one_run(op, script, scratch / f"run{index}", args, steps, index, host)
            runs[op].append(result)
            print(f"  run {repeat + 1} {op:10s} train {result['train_seconds']:6.2f} s  job {result['job_seconds']:6.2f} s"
                  + (f"  archives {result['archives']}" if "archives" in result else ""), flush=True)
    pairs = list(zip(runs["plain"], runs["supervised"]))
    return {"steps": steps, "runs": runs,
            "train_ratio": statistics.median(b["train_seconds"] / a["train_seconds"] for a, b in pairs),
            "job_ratio": statistics.median(b["job_seconds"] / a["job_seconds"] for a, b in pairs)}


def preemption(args, host: str, scratch: Path) -> dict:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    script, run_dir = scratch / "preempted.py", scratch / "big" / "run1"
    script.write_text(PREEMPTED)
    size = int(args.final_gib * 1024 * MiB)
    log = scratch / "preempted.log"
    env = child_env(host)
    if args.final_chunk_mib:
        env["COLAB_MAGICS_CHUNK_SIZE_MB"] = str(args.final_chunk_mib)
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "colab_magics.cli", "run", str(run_dir), f"gs://{BUCKET}/big",
                                 "--every", "1h", "--", sys.executable, str(script), str(run_dir), str(size)],
                                env=env, stdout=subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"saved":
        raise SystemExit(f"the preempted script did not save:\n{log.read_text()[-2000:]}")
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)  # at once: before the archiver saw the step settle
    code = proc.wait(timeout=300)
    seconds = time.perf_counter() - sent
    os.environ["STORAGE_EMULATOR_HOST"] = host
    client = storage.Client(project="bench", credentials=AnonymousCredentials())
    blob = client.bucket(BUCKET).get_blob("big/run1.1.zip")
    return {"exit_code": code, "seconds": seconds, "archived_bytes": blob.size if blob else 0,
            "checkpoint_bytes": size, "log": log.read_text()[-1500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-seconds", type=float, default=20.0, help="Length of one training run.")
    parser.add_argument("--ckpt-mib", type=int, default=64, help="Checkpoint size in MiB.")
    parser.add_argument("--ckpt-every", type=float, default=3.0, help="Seconds between checkpoints.")
    parser.add_argument("--archive-every", default="30s", help="colab-magics run --every.")
    parser.add_argument("--repeats", type=int, default=3, help="Pairs of runs (plain, supervised).")
    parser.add_argument("--final-gib", type=float, default=1.0, help="Checkpoint size of the preemption test (GiB).")
    parser.add_argument("--skip-overhead", action="store_true", help="Only the preemption measurement.")
    parser.add_argument("--final-chunk-mib", type=int, default=0,
                        help="COLAB_MAGICS_CHUNK_SIZE_MB for the preemption run (0: the default, 100).")
    args = parser.parse_args()

    host, _ = start_emulator(0)
    with tempfile.TemporaryDirectory(prefix="bench-supervise-") as scratch:
        over = None if args.skip_overhead else overhead(args, host, Path(scratch))
        final = preemption(args, host, Path(scratch))

    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if over:
        print(f"loop: {over['steps']} steps, {args.ckpt_mib} MiB checkpoint every {args.ckpt_every:g} s; "
              f"colab-magics run --every {args.archive_every}; medians of {args.repeats} pairs")
        print(f"  training loop ratio (supervised / plain) {over['train_ratio']:.3f}   target <= {TARGET}: "
              f"{'OK' if over['train_ratio'] <= TARGET else 'MISSED'}")
        print(f"  whole job ratio (start-up + final archive) {over['job_ratio']:.3f}")
    ok = final["exit_code"] == 143 and final["archived_bytes"] >= final["checkpoint_bytes"] and final["seconds"] <= FINAL_TIMEOUT
    print(f"SIGTERM → exit with the {args.final_gib:g} GiB step archived "
          f"({args.final_chunk_mib or 100} MiB upload chunks): {final['seconds']:.1f} s "
          f"(exit code {final['exit_code']}, archive {final['archived_bytes'] / MiB:.0f} MiB)   "
          f"target <= {FINAL_TIMEOUT:g} s: {'OK' if ok else 'MISSED'}")
    if not ok:
        print(final["log"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "overhead": over, "preemption": final}, indent=2))


if __name__ == "__main__":
    main()
