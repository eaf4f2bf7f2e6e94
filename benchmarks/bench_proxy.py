"""What the password proxy costs: latency of TensorBoard requests and throughput of a 50 MB answer.

Side by side, alternating request by request, direct vs through `authproxy.AuthProxy`:
  - latency: a real TensorBoard (`python -m tensorboard.main`, a logdir with a real event file),
    GET / and GET /data/runs on one keep-alive connection each way, as a browser does;
    target: the proxy adds ≤ 5 ms to the median;
  - throughput: TensorBoard's answer for a 50 MB image summary (`individualImage`, the raw blob),
    read whole; target ≥ 90 % of direct. Also, as a stress case beyond TensorBoard's own speed, the
    same size from a plain in-memory HTTP server (the proxy's ceiling on this machine).
Three processes, as in use: the upstream server (TensorBoard or the in-memory server), the proxy
(in a process of its own, as it lives in the notebook kernel), and this client.

Run:  python benchmarks/bench_proxy.py [--requests 300] [--downloads 7] [--mb 50]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_tensorboard import write_events  # noqa: E402  (TensorBoard's own writer, no TF)

from colab_magics.net import free_port, http_ok  # noqa: E402
from colab_magics.processes import wait_until  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "proxy.json"
USER, PASSWORD = "tensorboard", "bench-password-0123456789"
HEADERS = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}

PROXY = """
import os, sys, time
from colab_magics.authproxy import AuthProxy
user, password = os.environ.pop("BENCH_PROXY_AUTH").split(":", 1)  # never on a command line
proxy = AuthProxy(int(sys.argv[1]), user, password).start()
print(proxy.port, flush=True)
time.sleep(3600)
"""

BIG = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
body = bytes(range(256)) * (int(sys.argv[2]) // 256)

class Big(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        view = memoryview(body)
        for start in range(0, len(body), 1 << 20):  # 1 MiB writes, like a file server
            self.wfile.write(view[start:start + (1 << 20)])
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Big).serve_forever()
"""


def start(argv: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    return subprocess.Popen(argv, env=env, start_new_session=True, **kwargs)


def start_proxy(target: int) -> tuple[subprocess.Popen, int]:
    proc = start([sys.executable, "-c", PROXY, str(target)], {"BENCH_PROXY_AUTH": f"{USER}:{PASSWORD}"},
                 stdout=subprocess.PIPE)
    port = int(proc.stdout.readline())
    return proc, port


def timed_get(conn: http.client.HTTPConnection, path: str, headers: dict) -> tuple[float, int]:
    began = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    size = 0
    while chunk := response.read(1 << 20):
        size += len(chunk)
    if response.status != 200:
        raise SystemExit(f"GET {path}: HTTP {response.status}")
    return time.perf_counter() - began, size


def latency(tb_port: int, proxy_port: int, requests: int) -> dict:
    out = {}
    for path in ("/", "/data/runs"):
        direct = http.client.HTTPConnection("127.0.0.1", tb_port, timeout=30)
        proxied = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
        times = {"direct": [], "proxied": []}
        for i in range(requests + 10):
            order = (("direct", direct, {}), ("proxied", proxied, HEADERS))
            for name, conn, headers in (order if i % 2 == 0 else order[::-1]):
                seconds, _ = timed_get(conn, path, headers)
                if i >= 10:  # the first few warm up both connections and TensorBoard's caches
                    times[name].append(seconds)
        direct.close()
        proxied.close()
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        out[path] = {"direct_ms": med["direct"], "proxied_ms": med["proxied"], "added_ms": med["proxied"] - med["direct"]}
    return out


def write_big_image(run_dir: Path, size: int) -> None:
    """An event file holding one image summary of `size` random bytes (TensorBoard serves it raw)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    image = summary_pb2.Summary.Image(height=1, width=1, colorspace=3, encoded_image_string=os.urandom(size))
    event = event_pb2.Event(step=1, wall_time=time.time(),
                            summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="big", image=image)]))
    with open(run_dir / f"events.out.tfevents.{int(time.time())}.big", "wb") as out:
        RecordWriter(out).write(event.SerializeToString())


def image_path(tb_port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", tb_port, timeout=60)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # TensorBoard loads the event files in the background
        conn.request("GET", "/data/plugin/images/images?run=run1&tag=big")
        response = conn.getresponse()
        body = response.read()
        if response.status == 200 and body.startswith(b"[{"):
            return "/data/plugin/images/individualImage?" + json.loads(body)[0]["query"]
        time.sleep(0.5)
    raise SystemExit("TensorBoard did not load the image summary")


def throughput(big_port: int, proxy_port: int, downloads: int, path: str = "/big") -> dict:
    rates = {"direct": [], "proxied": []}
    for i in range(downloads):
        order = (("direct", big_port, {}), ("proxied", proxy_port, HEADERS))
        for name, port, headers in (order if i % 2 == 0 else order[::-1]):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            seconds, size = timed_get(conn, path, headers)
            conn.close()
            rates[name].append(size / seconds / 1e6)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"direct_MBps": med["direct"], "proxied_MBps": med["proxied"], "ratio": med["proxied"] / med["direct"],
            "rounds": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="Requests per path and way (latency).")
    parser.add_argument("--downloads", type=int, default=7, help="Downloads per way (throughput).")
    parser.add_argument("--mb", type=int, default=50, help="Size of the big answer in MB.")
    args = parser.parse_args()
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-proxy-") as scratch:
            write_events(Path(scratch) / "runs" / "run1")
            write_big_image(Path(scratch) / "runs" / "run1", args.mb * 1_000_000)
            tb_port = free_port()
            with open(Path(scratch) / "tb.log", "wb") as log:
                procs.append(start([sys.executable, "-m", "tensorboard.main", "--logdir", f"{scratch}/runs",
                                    "--host", "127.0.0.1", "--port", str(tb_port)], stdout=log, stderr=log,
                                   cwd=scratch))
            if not wait_until(lambda: http_ok(f"http://127.0.0.1:{tb_port}/"), timeout=120):
                raise SystemExit("TensorBoard did not answer")
            tb_proxy, tb_proxy_port = start_proxy(tb_port)
            procs.append(tb_proxy)
            big_port = free_port()
            procs.append(start([sys.executable, "-c", BIG, str(big_port), str(args.mb * 1_000_000)]))
            if not wait_until(lambda: _listening(big_port), timeout=30):
                raise SystemExit("the 50 MB server did not start")
            big_proxy, big_proxy_port = start_proxy(big_port)
            procs.append(big_proxy)

            lat = latency(tb_port, tb_proxy_port, args.requests)
            tb_thr = throughput(tb_port, tb_proxy_port, args.downloads, image_path(tb_port))
            thr = throughput(big_port, big_proxy_port, args.downloads)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"TensorBoard request latency (median of {args.requests}, keep-alive connections):")
    for path, r in lat.items():
        print(f"  GET {path:12s} direct {r['direct_ms']:6.2f} ms   proxied {r['proxied_ms']:6.2f} ms   "
              f"added {r['added_ms']:5.2f} ms   target <= 5 ms: {'OK' if r['added_ms'] <= 5 else 'MISSED'}")
    print(f"TensorBoard, {args.mb} MB image (median of {args.downloads}): direct {tb_thr['direct_MBps']:.0f} MB/s, "
          f"proxied {tb_thr['proxied_MBps']:.0f} MB/s, ratio {tb_thr['ratio']:.3f}   "
          f"target >= 0.90: {'OK' if tb_thr['ratio'] >= 0.9 else 'MISSED'}")
    print(f"in-memory server, {args.mb} MB (stress, median of {args.downloads}): direct {thr['direct_MBps']:.0f} MB/s, "
          f"proxied {thr['proxied_MBps']:.0f} MB/s, ratio {thr['ratio']:.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "latency": lat, "tensorboard_throughput": tb_thr,
                                   "stress_throughput": thr}, indent=2))


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
