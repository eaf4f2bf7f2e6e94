"""Storage benchmark: %gcs_save / %gcs_load against raw google-cloud-storage calls, side by side.

    python benchmarks/bench_storage.py [--size-mib 1024] [--repeats 3]

Starts its own fake-gcs-server (memory backend, random port on 127.0.0.1), builds a run directory
of incompressible weights laid out as a TensorFlow checkpoint, does a warm-up upload, then runs
every timed measurement `--repeats` times, interleaved (A B C, B C A, C A B, ...). Each one runs in
a fresh child process that imports the same modules first, so its peak RSS (read at the end of
the child; see peak_rss_kib) is comparable across operations; the child times only the operation.

Prints a table of ratios (medians) against the targets of issue 8 and writes the same as JSON to
benchmarks/results/storage.json. Ratios, not absolute times, are what carries from machine to machine.
"""

from __future__ import annotations

from colab_magics.settings import Settings
import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
BUCKET = "bench"
RUN = "run"  # the run directory's name, hence the archive name run.1000.zip
STEP = 1000
ARCHIVE = f"x/{RUN}.{STEP}.zip"
RAW_OBJECT = "raw/model.ckpt-1000.data-00000-of-00001"
HEAVY = ("google.cloud.storage", "tensorflow", "tensorboard", "pyngrok")
CHILD_TIMEOUT = 600.0
RESULTS = Path(__file__).resolve().parent / "results" / "storage.json"

TARGETS = {  # name: (comparison, limit)
    "save_vs_raw_upload": ("<=", 1.15),
    "original_vs_ours_speedup": (">=", 5.0),
    "save_vs_raw_upload_peak_rss": ("<=", 1.1),
    "load_vs_raw_download": ("<=", 1.2),
    "load_vs_raw_download_peak_rss": ("<=", 1.1),
    "load_ext_seconds": ("<=", 0.15),
}


# --- the child: one operation, timed, with its peak RSS -------------------------------------------
def child(spec: dict) -> dict:
    """Run one operation in this (fresh) process; return its time and peak RSS.

    Every operation imports the same modules first, so the RSS baselines are the same.
    """
    import resource
    import zipfile

    import google_crc32c  # noqa: F401  (used by our load; imported by every child alike)
    import tqdm.auto  # noqa: F401
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from colab_magics import packing, runs, storage  # noqa: F401

    client = gcs.Client(project="bench", credentials=AnonymousCredentials())
    bucket = client.bucket(BUCKET)
    baseline_kib = peak_rss_kib()
    op, run_dir, scratch = spec["op"], Path(spec["run_dir"]), Path(spec["scratch"])
    big = run_dir / f"model.ckpt-{STEP}.data-00000-of-00001"

    started = time.perf_counter()
    if op == "raw_upload":
        bucket.blob(RAW_OBJECT).upload_from_filename(str(big))
    elif op == "our_save":
        settings = Settings(progress=False, chunk_size_mb=spec["chunk_mib"])
        result = runs.save_run(run_dir, f"gs://{BUCKET}/x", settings=settings, client=client)
        if not isinstance(result, runs.Saved):
            raise SystemExit(f"save did not happen: {result}")
    elif op == "original_save":
        # colab_utils' approach: zip the checkpoint files with DEFLATE into a file, then upload it.
        with tempfile.NamedTemporaryFile(suffix=".zip", dir=scratch) as tmp:
            with zipfile.ZipFile(tmp.name, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(run_dir.iterdir()):
                    zf.write(path, arcname=path.name)
            bucket.blob(f"orig/{RUN}.{STEP}.zip").upload_from_filename(tmp.name)
    elif op == "raw_download":
        bucket.blob(ARCHIVE).download_to_filename(str(scratch / "raw.zip"))
    elif op == "our_load":
        restored = runs.load_run(f"gs://{BUCKET}/{ARCHIVE}", scratch / "restored", client=client,
                                 settings=Settings(progress=False))
        if len(restored.files) != 4:
            raise SystemExit(f"load restored {len(restored.files)} files, expected 4")
    else:
        raise SystemExit(f"unknown operation {op!r}")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss_mib": peak_rss_kib() / 1024, "baseline_rss_mib": baseline_kib / 1024,
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def peak_rss_kib() -> int:
    """This process's own peak RSS in KiB.

    VmHWM, not ru_maxrss, where /proc exists: Linux carries the parent's peak into the child's
    ru_maxrss across fork/vfork + exec, so every child would report at least the parent's peak
    (seen here: all children showed the parent's 195 MiB). VmHWM belongs to the child's own memory.
    """
    import resource

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


LOAD_EXT_CODE = r"""
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
started = time.perf_counter()
shell.run_line_magic("load_ext", "colab_magics")
seconds = time.perf_counter() - started
heavy = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps({"seconds": seconds, "heavy_modules": heavy}))
"""


# --- the parent: emulator, data, schedule, report -------------------------------------------------
def start_emulator() -> str:
    """fake-gcs-server in memory on a random port, through the library (tracked, ended at exit)."""
    from colab_magics import emulator

    return emulator.start(None).host


def make_run_dir(root: Path, size: int) -> Path:
    """A TF checkpoint of incompressible weights: one big data file plus index, meta and state."""
    run_dir = root / RUN
    run_dir.mkdir(parents=True)
    prefix = f"model.ckpt-{STEP}"
    block = 16 * MiB
    with open(run_dir / f"{prefix}.data-00000-of-00001", "wb") as fh:
        left = size
        while left:
            n = min(block, left)
            fh.write(os.urandom(n))
            left -= n
    (run_dir / f"{prefix}.index").write_bytes(os.urandom(24 * 1024))
    (run_dir / f"{prefix}.meta").write_bytes(os.urandom(200 * 1024))
    (run_dir / "checkpoint").write_text(
        f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')
    return run_dir


def run_child(spec: dict, env: dict) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    if done.returncode != 0:
        raise SystemExit(f"{spec['op']} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_ext_child() -> dict:
    code = f"HEAVY = {HEAVY!r}\n" + LOAD_EXT_CODE
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"%load_ext child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rotated(specs: dict, rep: int) -> list:
    """Round `rep`'s order: A B C, then B C A, ... so no operation always runs first or last."""
    items = list(specs.items())
    k = rep % len(items)
    return items[k:] + items[:k]


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarise(samples: list[dict]) -> dict:
    return {
        "seconds": [round(s["seconds"], 3) for s in samples],
        "median_seconds": round(median([s["seconds"] for s in samples]), 3),
        "peak_rss_mib": [round(s["peak_rss_mib"], 1) for s in samples],
        "median_peak_rss_mib": round(median([s["peak_rss_mib"] for s in samples]), 1),
        "baseline_rss_mib": round(median([s["baseline_rss_mib"] for s in samples]), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the big weights file (MiB)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each measurement (>= 3)")
    parser.add_argument("--small-chunk-mib", type=int, default=40, help="the smaller chunk size compared")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")

    from colab_magics import storage as cm_storage

    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.workdir))
    atexit.register(shutil.rmtree, work, True)
    size = args.size_mib * MiB
    print(f"building a {args.size_mib} MiB run directory in {work} ...", flush=True)
    run_dir = make_run_dir(work, size)
    scratch = work / "scratch"
    scratch.mkdir()
    host = start_emulator()
    os.environ["STORAGE_EMULATOR_HOST"] = host
    env = dict(os.environ)

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(project="bench", credentials=AnonymousCredentials())
    bucket = client.create_bucket(BUCKET)
    big = run_dir / f"model.ckpt-{STEP}.data-00000-of-00001"

    def clear() -> None:
        """The emulator keeps objects in memory: delete them between runs."""
        for blob in client.list_blobs(BUCKET):
            blob.delete()
        for path in scratch.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    print("warm-up upload ...", flush=True)
    bucket.blob(RAW_OBJECT).upload_from_filename(str(big))
    clear()

    default_mib = cm_storage.DEFAULT_CHUNK_SIZE // MiB
    small_mib = args.small_chunk_mib
    base = {"run_dir": str(run_dir), "scratch": str(scratch)}
    saves = {
        "raw_upload": {"op": "raw_upload"},
        "our_save": {"op": "our_save", "chunk_mib": default_mib},
        "original_save": {"op": "original_save"},
        f"our_save_{small_mib}mib": {"op": "our_save", "chunk_mib": small_mib},
    }
    if small_mib == default_mib:
        del saves[f"our_save_{small_mib}mib"]
    loads = {"raw_download": {"op": "raw_download"}, "our_load": {"op": "our_load"}}
    samples: dict[str, list[dict]] = {name: [] for name in (*saves, *loads)}

    for rep in range(args.repeats):
        for name, spec in rotated(saves, rep):
            result = run_child({**base, **spec}, env)
            samples[name].append(result)
            print(f"  save round {rep + 1}: {name:<18} {result['seconds']:7.2f} s  "
                  f"peak RSS {result['peak_rss_mib']:7.1f} MiB", flush=True)
            clear()
    run_child({**base, **saves["our_save"]}, env)  # the archive the loads read
    for rep in range(args.repeats):
        for name, spec in rotated(loads, rep):
            result = run_child({**base, **spec}, env)
            samples[name].append(result)
            print(f"  load round {rep + 1}: {name:<18} {result['seconds']:7.2f} s  "
                  f"peak RSS {result['peak_rss_mib']:7.1f} MiB", flush=True)
            for path in scratch.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    load_ext = [load_ext_child() for _ in range(max(5, args.repeats))]
    clear()

    summary = {name: summarise(values) for name, values in samples.items()}
    t = {name: s["median_seconds"] for name, s in summary.items()}
    rss = {name: s["median_peak_rss_mib"] for name, s in summary.items()}
    heavy = sorted({m for r in load_ext for m in r["heavy_modules"]})
    ratios = {
        "save_vs_raw_upload": t["our_save"] / t["raw_upload"],
        "original_vs_raw_upload": t["original_save"] / t["raw_upload"],
        "original_vs_ours_speedup": t["original_save"] / t["our_save"],
        "save_vs_raw_upload_peak_rss": rss["our_save"] / rss["raw_upload"],
        "load_vs_raw_download": t["our_load"] / t["raw_download"],
        "load_vs_raw_download_peak_rss": rss["our_load"] / rss["raw_download"],
        "load_ext_seconds": median([r["seconds"] for r in load_ext]),
    }
    def per_round(a: str, b: str) -> list[float]:
        return [round(x["seconds"] / y["seconds"], 3) for x, y in zip(samples[a], samples[b])]

    paired = {  # the same ratios round by round: how much of a ratio is the emulator's noise
        "save_vs_raw_upload": per_round("our_save", "raw_upload"),
        "original_vs_ours_speedup": per_round("original_save", "our_save"),
        "load_vs_raw_download": per_round("our_load", "raw_download"),
    }
    small = f"our_save_{small_mib}mib"
    if small in summary:
        ratios[f"save_{small_mib}mib_vs_{default_mib}mib_time"] = t[small] / t["our_save"]
        ratios[f"save_{small_mib}mib_vs_{default_mib}mib_peak_rss"] = rss[small] / rss["our_save"]
    checks = {}
    for name, (op, limit) in TARGETS.items():
        value = ratios[name]
        checks[name] = {"value": round(value, 3), "target": f"{op} {limit}",
                        "met": value <= limit if op == "<=" else value >= limit}
    checks["load_ext_heavy_modules"] = {"value": heavy, "target": "none", "met": not heavy}

    report = {
        "size_mib": args.size_mib,
        "repeats": args.repeats,
        "default_chunk_mib": default_mib,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "google_cloud_storage": gcs.__version__},
        "measurements": summary,
        "load_ext": {"seconds": [round(r["seconds"], 4) for r in load_ext], "heavy_modules": heavy},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "ratios_per_round": paired,
        "targets": checks,
        "wall_seconds": round(time.monotonic() - began, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report, small_mib, default_mib)
    print(f"\nwritten to {args.out} ({report['wall_seconds']} s)")
    return 0 if all(c["met"] for c in checks.values()) else 1


def print_table(report: dict, small_mib: int, default_mib: int) -> None:
    m, r, c = report["measurements"], report["ratios"], report["targets"]
    print(f"\n{report['size_mib']} MiB of incompressible weights, medians of {report['repeats']} interleaved runs")
    print(f"{'measurement':<28}{'median s':>10}{'peak RSS MiB':>14}")
    for name, s in m.items():
        print(f"{name:<28}{s['median_seconds']:>10.2f}{s['median_peak_rss_mib']:>14.1f}")
    print(f"\n{'ratio':<40}{'value':>8}  {'target':<8} met")
    for name, value in r.items():
        target = c.get(name, {}).get("target", "")
        met = {True: "yes", False: "NO"}.get(c.get(name, {}).get("met"), "")
        print(f"{name:<40}{value:>8.3f}  {target:<8} {met}")
    heavy = c["load_ext_heavy_modules"]
    print(f"{'heavy modules after %load_ext':<40}{', '.join(heavy['value']) or 'none':>8}  "
          f"{'none':<8} {'yes' if heavy['met'] else 'NO'}")
    print("\nper round (A/B of the same round):")
    for name, values in report["ratios_per_round"].items():
        print(f"  {name:<38}{', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    sys.exit(main())
