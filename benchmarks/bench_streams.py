"""Saves through many streams, measured against a per-connection limit (issue 20).

    python benchmarks/bench_streams.py [--size-mib 512] [--shards 4] [--rate-mib 20] [--repeats 3]
                                       [--final-gib 1] [--final-rate-mib 40]
                                       [--only proxy,direct,snapshot,sigterm]

Real Cloud Storage caps what one connection carries; to model it, a TCP proxy (tests/netproxy.py, in a
process of its own) throttles each connection to `--rate-mib` MiB/s, both ways, with at most 50 ms of
credit (an idle keep-alive connection cannot save up and burst). fake-gcs-server is started with the
proxy's URL as `-external-url`, so the resumable-upload sessions it hands out lead through the proxy
too: the whole client's traffic is throttled.

1. proxy: a save_pretrained-shaped run (`--shards` incompressible float shards, `--size-mib` in all,
   a config and an index) saved by `runs.save_run` at default settings (16 streams) vs a raw
   single-stream upload of the same bytes as one object (`blob.upload_from_filename`) vs gcsfs
   `put(recursive=True)` — the tool a user would otherwise pick (it sends the files in parallel).
   Interleaved rounds (A B C, B C A, C A B), each operation in a fresh process.
   Targets: save ≤ 0.35 × raw upload, and ≤ gcsfs put.
2. direct: the same save and raw upload straight to the emulator, no proxy. Targets: save ≤ 1.15 ×
   raw upload; peak RSS of the save (VmHWM of its process) ≤ 600 MiB.
3. snapshot: the same direct save with and without its hard-link snapshot (links made: the default;
   without: files read in place), interleaved; and the snapshot alone (link every file, remove them)
   timed on the run directory. Target: the snapshot adds <= 5 % to the save.
4. sigterm: `colab-magics run RUN gs://bench/final --every 1h -- python writer.py` behind a
   `--final-rate-mib` proxy; the writer saves a `--final-gib` GiB step, then the supervisor gets
   SIGTERM (as on preemption) before its interval archive could run. Target: exit with the step
   archived within 25 s. The emulator is first made to hold that many bytes once (a fresh
   fake-gcs-server is seconds slower on its first big object: its own heap growing).

Results: benchmarks/results/streams.json (and the README's Benchmarks section).
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
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

MiB = 1024 * 1024
BUCKET = "bench"
RESULTS = HERE / "results" / "streams.json"
FINAL_TIMEOUT = 25.0
TARGETS = {"save_vs_raw_proxied": 0.35, "save_vs_gcsfs_proxied": 1.0, "save_vs_raw_direct": 1.15,
           "save_peak_rss_mib": 600}


def _ratio_line(ratio: dict, target: float) -> str:
    """"0.190 (rounds 0.19, 0.20, 0.18)  target <= 0.35: OK" for one measured ratio."""
    rounds = ", ".join(f"{r:.2f}" for r in ratio["rounds"])
    verdict = "OK" if ratio["median"] <= target else "MISSED"
    return f"{ratio['median']:.3f} (rounds {rounds})  target <= {target:g}: {verdict}"


WRITER = r'''
import os, sys, time
run_dir, size = sys.argv[1], int(sys.argv[2])
os.makedirs(run_dir, exist_ok=True)
block = os.urandom(64 * 1024 * 1024)
with open(os.path.join(run_dir, ".step-1.tmp"), "wb") as fh:
    for _ in range(size // len(block)):
        fh.write(block[:-1] + os.urandom(1))  # incompressible, and no two blocks alike
os.replace(os.path.join(run_dir, ".step-1.tmp"), os.path.join(run_dir, "model-1.pt"))
print("saved", flush=True)
time.sleep(3600)
'''


# --- the child: one operation, timed, with its peak RSS ---------------------------------------------
def child(spec: dict) -> dict:
    os.environ["STORAGE_EMULATOR_HOST"] = spec["host"]
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from colab_magics import runs, settings, snapshot

    if spec["op"] == "save_in_place":  # the A/B of the snapshot: no links, the files read where they are
        snapshot.Snapshot._link_all = lambda self: None
    client = storage.Client(project="bench", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": spec["host"]})
    if spec["op"] == "gcsfs_put":
        import gcsfs

        fs = gcsfs.GCSFileSystem(endpoint_url=spec["host"], token="anon", project="bench")
    baseline = peak_rss_mib()
    started = time.perf_counter()
    if spec["op"] == "raw_upload":
        client.bucket(BUCKET).blob(f"{spec['prefix']}/raw.bin").upload_from_filename(spec["big"])
    elif spec["op"] in ("our_save", "save_in_place"):
        result = runs.save_run(spec["run_dir"], f"gs://{BUCKET}/{spec['prefix']}", client=client,
                               settings=settings.from_env().replace(progress=False))
        if not isinstance(result, runs.Saved):
            raise SystemExit(f"the save did not happen: {result}")
        extra = {"parts": result.parts, "archive_bytes": result.size}
    elif spec["op"] == "gcsfs_put":
        fs.put(spec["run_dir"], f"{BUCKET}/{spec['prefix']}/", recursive=True)
    seconds = time.perf_counter() - started
    out = {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline}
    if spec["op"] in ("our_save", "save_in_place"):
        out.update(extra)
    return out


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_child(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLAB_MAGICS_PROGRESS="false")
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode:
        raise SystemExit(f"{spec['op']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- emulator and proxy -------------------------------------------------------------------------------
class Stack:
    """fake-gcs-server (memory), behind a throttling proxy process when `rate_mib` is given."""

    def __init__(self, rate_mib: float | None):
        from colab_magics import emulator
        from colab_magics.net import free_port

        from netproxy import ProxyProcess

        self.procs: list[subprocess.Popen] = []
        self.port = port = free_port()
        self.proxy = ProxyProcess(port, rate=rate_mib * MiB) if rate_mib else None
        self.host = f"http://127.0.0.1:{self.proxy.port if self.proxy else port}"
        argv = emulator.command(port)
        argv[argv.index("-external-url") + 1] = self.host
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_answering(f"{self.host}/storage/v1/b")
        emulator.create_bucket(self.host, BUCKET)

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="bench", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.host})

    def warm(self, size: int) -> None:
        """Have the emulator hold `size` bytes once (8 MiB single-request uploads, straight to its port),
        then free them: a fresh fake-gcs-server spends seconds growing its heap on its first big
        upload, a cost of the emulator, not of the save measured next."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        direct = storage.Client(project="bench", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": f"http://127.0.0.1:{self.port}"})
        block = os.urandom(8 * MiB)
        for i in range(size // len(block)):
            direct.bucket(BUCKET).blob(f"warm/{i}").upload_from_string(block)
        self.empty()

    def empty(self) -> None:
        """Delete every object (the emulator holds them in memory)."""
        client = self.client()
        for blob in list(client.list_blobs(BUCKET)):
            blob.delete()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            proc.wait(timeout=30)
        if self.proxy is not None:
            self.proxy.close()


def wait_answering(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} does not answer")
            time.sleep(0.1)


# --- the data -----------------------------------------------------------------------------------------
def make_run(scratch: Path, size_mib: int, shards: int) -> tuple[Path, Path]:
    """A save_pretrained-shaped run directory, and one file of the same weights for the raw upload."""
    run_dir = scratch / "run1"
    run_dir.mkdir()
    big = scratch / "raw.bin"
    shard_bytes = size_mib * MiB // shards
    index = {"weight_map": {}}
    with open(big, "wb") as raw:
        for i in range(1, shards + 1):
            name = f"model-{i:05d}-of-{shards:05d}.safetensors"
            with open(run_dir / name, "wb") as out:
                for _ in range(shard_bytes // (16 * MiB)):
                    block = os.urandom(16 * MiB)
                    out.write(block)
                    raw.write(block)
            index["weight_map"][f"layer.{i}"] = name
    (run_dir / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 1024}))
    (run_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    return run_dir, big


# --- the measurements ------------------------------------------------------------------------------
def interleaved(stack: Stack, ops: list[str], repeats: int, run_dir: Path, big: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {op: [] for op in ops}
    for repeat in range(repeats):
        order = ops[repeat % len(ops):] + ops[:repeat % len(ops)]
        for op in order:
            result = run_child({"op": op, "host": stack.host, "run_dir": str(run_dir), "big": str(big),
                                "prefix": f"{op}-{repeat}"})
            found[op].append(result)
            print(f"  round {repeat + 1} {op:11s} {result['seconds']:7.2f} s   peak RSS {result['peak_rss_mib']:6.0f} MiB"
                  + (f"   {result['parts']} parts" if "parts" in result else ""), flush=True)
            stack.empty()
    return found


def ratios(found: dict[str, list[dict]], a: str, b: str) -> dict:
    per_round = [x["seconds"] / y["seconds"] for x, y in zip(found[a], found[b])]
    return {"median": statistics.median(per_round), "rounds": per_round,
            "medians_of_times": statistics.median(x["seconds"] for x in found[a])
            / statistics.median(y["seconds"] for y in found[b])}


def snapshot_alone(run_dir: Path, times: int = 21) -> float:
    """Median seconds to link every file of `run_dir` beside it and remove the links again."""
    from colab_magics import snapshot

    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        with snapshot.Snapshot(run_dir, files) as snap:
            assert len(snap.links) == len(files)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def sigterm(args, scratch: Path) -> dict:
    stack = Stack(args.final_rate_mib)
    try:
        stack.warm(int(args.final_gib * 1024 * MiB))
        writer = scratch / "writer.py"
        writer.write_text(WRITER)
        run_dir = scratch / "final" / "run1"
        size = int(args.final_gib * 1024 * MiB)
        log = scratch / "sigterm.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), STORAGE_EMULATOR_HOST=stack.host, COLAB_MAGICS_PROGRESS="false")
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "colab_magics.cli", "run", str(run_dir),
                                     f"gs://{BUCKET}/final", "--every", "1h", "--", sys.executable, str(writer),
                                     str(run_dir), str(size)], env=env, stdout=subprocess.PIPE, stderr=err)
            if proc.stdout.readline().strip() != b"saved":
                raise SystemExit(f"the writer did not save:\n{log.read_text()[-2000:]}")
            sent = time.perf_counter()
            proc.send_signal(signal.SIGTERM)  # at once: before the archiver saw the step settle
            code = proc.wait(timeout=300)
            seconds = time.perf_counter() - sent
        blob = stack.client().bucket(BUCKET).get_blob("final/run1.1.zip")
        return {"exit_code": code, "seconds": seconds, "archived_bytes": blob.size if blob else 0,
                "checkpoint_bytes": size, "rate_mib_per_connection": args.final_rate_mib,
                "log": log.read_text()[-1500:]}
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rate-mib", type=float, default=20.0, help="Per-connection cap of the proxy, MiB/s.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--final-gib", type=float, default=1.0)
    parser.add_argument("--final-rate-mib", type=float, default=40.0)
    parser.add_argument("--only", default="proxy,direct,snapshot,sigterm", help="Which parts to run (comma-separated).")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    parts = set(args.only.split(","))
    report: dict = {"args": vars(args), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                    f"Python {platform.python_version()}", "load_before": open("/proc/loadavg").read().split()[:3]}
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as scratch:
        scratch = Path(scratch)
        if parts & {"proxy", "direct", "snapshot"}:
            run_dir, big = make_run(scratch, args.size_mib, args.shards)
        if "proxy" in parts:
            print(f"behind a {args.rate_mib:g} MiB/s-per-connection proxy, {args.size_mib} MiB in {args.shards} shards:")
            stack = Stack(args.rate_mib)
            try:
                found = interleaved(stack, ["our_save", "raw_upload", "gcsfs_put"], args.repeats, run_dir, big)
            finally:
                stack.close()
            report["proxy"] = {"runs": found, "save_vs_raw": ratios(found, "our_save", "raw_upload"),
                               "save_vs_gcsfs": ratios(found, "our_save", "gcsfs_put")}
        if "direct" in parts:
            print(f"directly on the emulator, {args.size_mib} MiB:")
            stack = Stack(None)
            try:
                found = interleaved(stack, ["our_save", "raw_upload"], args.repeats, run_dir, big)
            finally:
                stack.close()
            report["direct"] = {"runs": found, "save_vs_raw": ratios(found, "our_save", "raw_upload"),
                                "save_peak_rss_mib": max(r["peak_rss_mib"] for r in found["our_save"]),
                                "raw_peak_rss_mib": max(r["peak_rss_mib"] for r in found["raw_upload"])}
        if "snapshot" in parts:
            print(f"the hard-link snapshot, directly on the emulator, {args.size_mib} MiB:")
            stack = Stack(None)
            try:
                found = interleaved(stack, ["our_save", "save_in_place"], max(args.repeats, 5), run_dir, big)
            finally:
                stack.close()
            alone = snapshot_alone(run_dir)
            report["snapshot"] = {"runs": found, "with_vs_without": ratios(found, "our_save", "save_in_place"),
                                  "snapshot_seconds": alone,
                                  "snapshot_share": alone / statistics.median(r["seconds"] for r in found["our_save"])}
        if "sigterm" in parts:
            print(f"SIGTERM → final archive of {args.final_gib:g} GiB behind {args.final_rate_mib:g} MiB/s per connection:")
            report["sigterm"] = sigterm(args, scratch)
    report["load_after"] = open("/proc/loadavg").read().split()[:3]

    print()
    print(f"machine: {report['machine']}; load average before {' '.join(report['load_before'])}, "
          f"after {' '.join(report['load_after'])}")
    if "proxy" in report:
        p = report["proxy"]
        print(f"proxy {args.rate_mib:g} MiB/s/conn: save / raw upload "
              + _ratio_line(p["save_vs_raw"], TARGETS["save_vs_raw_proxied"]))
        print("                  save / gcsfs put  " + _ratio_line(p["save_vs_gcsfs"], TARGETS["save_vs_gcsfs_proxied"]))
    if "direct" in report:
        d = report["direct"]
        print("direct: save / raw upload " + _ratio_line(d["save_vs_raw"], TARGETS["save_vs_raw_direct"]))
        print(f"        peak RSS of the save {d['save_peak_rss_mib']:.0f} MiB (raw upload {d['raw_peak_rss_mib']:.0f} MiB)"
              f"  target <= {TARGETS['save_peak_rss_mib']}: "
              f"{'OK' if d['save_peak_rss_mib'] <= TARGETS['save_peak_rss_mib'] else 'MISSED'}")
    if "snapshot" in report:
        n = report["snapshot"]
        print(f"snapshot: save with / without links {n['with_vs_without']['median']:.3f} (rounds "
              f"{', '.join(f'{r:.2f}' for r in n['with_vs_without']['rounds'])}); the snapshot alone "
              f"{n['snapshot_seconds'] * 1000:.1f} ms = {n['snapshot_share'] * 100:.2f} % of the save  target <= 5 %: "
              f"{'OK' if n['snapshot_share'] <= 0.05 else 'MISSED'}")
    if "sigterm" in report:
        s = report["sigterm"]
        ok = s["exit_code"] == 143 and s["archived_bytes"] >= s["checkpoint_bytes"] and s["seconds"] <= FINAL_TIMEOUT
        print(f"SIGTERM → exit with {s['checkpoint_bytes'] / MiB:.0f} MiB archived: {s['seconds']:.1f} s (exit "
              f"{s['exit_code']}, archive {s['archived_bytes'] / MiB:.0f} MiB)  target <= 25 s: {'OK' if ok else 'MISSED'}")
        if not ok:
            print(s["log"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    previous.update({k: v for k, v in report.items()})
    RESULTS.write_text(json.dumps(previous, indent=2))


if __name__ == "__main__":
    main()
