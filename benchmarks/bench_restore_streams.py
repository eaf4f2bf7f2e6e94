"""Parallel restore benchmark (issue 20): `%gcs_load` (a zip by N ranged reads) against a raw
single-stream download of the same object and against gcsfs `get(recursive=True)` of the same files,
behind a proxy that caps each connection (a model of Cloud Storage's per-stream limit) and directly.

    pip install gcsfs        # the baseline a user would otherwise pick
    python benchmarks/bench_restore_streams.py [--size-mib 512] [--rate-mib 20] [--repeats 3]

A save_pretrained-shaped run (`--shards` float32-like shards of random bytes, an index and a config)
is archived once by `%gcs_save` and also uploaded file by file (for gcsfs). Two fake-gcs-servers
hold the same objects: one reached through the tests' proxy (`tests/netproxy.py`, a process of its
own; each connection capped at `--rate-mib` MiB/s downwards, bursts of at most 50 ms; the emulator's
`-external-url` is the proxy's, so media downloads go through it too), one directly. Every timed
operation runs in a fresh child process (fresh connections, comparable peak RSS), interleaved round
by round (A B C D, B C D A, ...).

Targets: behind the proxy, restore ≤ 0.35× the raw single-stream download and ≤ gcsfs get; directly,
restore ≤ 1.2× the raw download. Results: benchmarks/results/restore-streams.json.
"""

from __future__ import annotations

import argparse
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

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from netproxy import ProxyProcess  # noqa: E402

MiB = 1024 * 1024
BUCKET = "bench"
RUN = "bert"
RESULTS = HERE / "results" / "restore-streams.json"
OPS = ("restore", "raw_download", "gcsfs_get", "restore_1_stream")
TARGETS = {  # name: (comparison, limit)
    "throttled_restore_vs_raw": ("<=", 0.35),
    "throttled_restore_vs_gcsfs": ("<=", 1.0),
    "direct_restore_vs_raw": ("<=", 1.2),
}


# --- the child: one operation, timed, with its peak RSS ---------------------------------------------
def child(spec: dict) -> dict:
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    import gcsfs  # noqa: F401  (imported by every child alike, so RSS baselines compare)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from colab_magics import runs
    from colab_magics.settings import Settings

    endpoint, op, dest = spec["endpoint"], spec["op"], Path(spec["dest"])
    client = gcs.Client(project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint})
    baseline = _peak_kib()
    started = time.perf_counter()
    if op in ("restore", "restore_1_stream"):
        settings = Settings(progress=False, streams=1 if op == "restore_1_stream" else Settings().streams)
        runs.load_run(f"gs://{BUCKET}/{spec['archive']}", dest, settings=settings, client=client)
    elif op == "raw_download":
        dest.mkdir(parents=True)
        client.bucket(BUCKET).blob(spec["archive"]).download_to_filename(str(dest / "archive.zip"))
    elif op == "gcsfs_get":
        fs = gcsfs.GCSFileSystem(endpoint_url=endpoint, token="anon", project="bench")
        fs.get(f"{BUCKET}/files/{RUN}/", str(dest) + "/", recursive=True)
    else:
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - started
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return {"seconds": seconds, "peak_kib": _peak_kib(), "baseline_kib": baseline, "bytes": written}


def _peak_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def run_child(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode:
        raise SystemExit(f"{spec['op']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the parent -------------------------------------------------------------------------------------
def start_emulator(port: int, external_port: int) -> subprocess.Popen:
    from colab_magics import emulator

    argv = emulator.command(port)
    argv[argv.index("-external-url") + 1] = f"http://127.0.0.1:{external_port}"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not emulator.answers(f"http://127.0.0.1:{external_port}"):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("the emulator did not start")
        time.sleep(0.1)
    return proc


def make_run(root: Path, size_mib: int, shards: int) -> Path:
    run = root / RUN
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 1024}))
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    for name in names:
        with open(run / name, "wb") as out:
            for _ in range(size_mib // shards):
                out.write(os.urandom(MiB))
    index = {"weight_map": {f"w{i}": name for i, name in enumerate(names)}}
    (run / "model.safetensors.index.json").write_text(json.dumps(index))
    return run


def populate(endpoint: str, run: Path) -> str:
    """The run archived by save_run (the archive's object name) and its files as objects for gcsfs."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from colab_magics import runs
    from colab_magics.settings import Settings

    client = gcs.Client(project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint})
    bucket = client.create_bucket(BUCKET)
    saved = runs.save_run(run, f"gs://{BUCKET}", settings=Settings(progress=False), client=client)
    for path in sorted(run.iterdir()):
        bucket.blob(f"files/{RUN}/{path.name}").upload_from_filename(str(path))
    return saved.url.rsplit("/", 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rate-mib", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from colab_magics.net import free_port

    scratch = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    procs = []
    try:
        run = make_run(scratch / "src", args.size_mib, args.shards)
        endpoints = {}
        throttled_port = free_port()
        with ProxyProcess(throttled_port, down_rate=args.rate_mib * MiB) as proxy:  # setup uploads at full speed
            procs.append(start_emulator(throttled_port, proxy.port))
            endpoints["throttled"] = f"http://127.0.0.1:{proxy.port}"
            direct_port = free_port()
            procs.append(start_emulator(direct_port, direct_port))
            endpoints["direct"] = f"http://127.0.0.1:{direct_port}"
            archive = {name: populate(url, run) for name, url in endpoints.items()}
            load_before = open("/proc/loadavg").read().split()[:3]
            results = {scenario: {op: [] for op in OPS} for scenario in endpoints}
            for round_ in range(args.repeats):
                order = OPS[round_ % len(OPS):] + OPS[: round_ % len(OPS)]
                for scenario, endpoint in endpoints.items():
                    for op in order:
                        dest = scratch / "dest"
                        shutil.rmtree(dest, ignore_errors=True)
                        result = run_child({"endpoint": endpoint, "op": op, "dest": str(dest),
                                            "archive": archive[scenario]})
                        results[scenario][op].append(result)
                        grown = (result["peak_kib"] - result["baseline_kib"]) / 1024
                        print(f"round {round_ + 1} {scenario:9} {op:17} {result['seconds']:7.2f} s  "
                              f"peak {result['peak_kib'] / 1024:6.0f} MiB (+{grown:.0f})", flush=True)
            load_after = open("/proc/loadavg").read().split()[:3]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)

    def ratios(scenario: str, a: str, b: str) -> list[float]:
        return [x["seconds"] / y["seconds"] for x, y in zip(results[scenario][a], results[scenario][b])]

    medians = {scenario: {op: statistics.median(r["seconds"] for r in rs) for op, rs in ops.items()}
               for scenario, ops in results.items()}
    measured = {
        "throttled_restore_vs_raw": medians["throttled"]["restore"] / medians["throttled"]["raw_download"],
        "throttled_restore_vs_gcsfs": medians["throttled"]["restore"] / medians["throttled"]["gcsfs_get"],
        "direct_restore_vs_raw": medians["direct"]["restore"] / medians["direct"]["raw_download"],
    }
    rounds = {
        "throttled_restore_vs_raw": ratios("throttled", "restore", "raw_download"),
        "throttled_restore_vs_gcsfs": ratios("throttled", "restore", "gcsfs_get"),
        "direct_restore_vs_raw": ratios("direct", "restore", "raw_download"),
    }
    print()
    for name, (op, limit) in TARGETS.items():
        value = measured[name]
        ok = value <= limit if op == "<=" else value >= limit
        print(f"{name:28} {value:5.2f} (rounds {', '.join(f'{r:.2f}' for r in rounds[name])})  "
              f"target {op} {limit}  {'ok' if ok else 'MISSED'}")
    growth = [(r["peak_kib"] - r["baseline_kib"]) / 1024 for s in results for r in results[s]["restore"]]
    print(f"restore peak RSS growth: {max(growth):.0f} MiB at most (16 streams); load {load_before} -> {load_after}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "args": vars(args), "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                        "loadavg_before": load_before, "loadavg_after": load_after},
        "median_seconds": medians, "ratios": measured, "ratios_by_round": rounds, "targets": TARGETS,
        "restore_peak_rss_growth_mib": growth, "runs": results,
    }, indent=2) + "\n")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
