"""How much `%tensorboard_tunnel` adds to TensorBoard's own start-up, and how fast a re-run is.

Side by side, alternating, each round on a fresh logdir with a real event file:
  - TensorBoard alone: `python -m tensorboard.main` → first HTTP 200 on 127.0.0.1;
  - the magic with --provider local → first HTTP 200 on the URL it returns;
  - the magic with --provider ngrok (the stand-in agent in tests/standins, since no ngrok cloud is
    reachable here) → first HTTP 200 through the tunnel with the credentials it showed;
then re-running the magic for the running logdir (target ≤ 0.5 s).

Run:  python benchmarks/bench_tunnel.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_tensorboard import write_events  # noqa: E402  (TensorBoard's own writer, no TF)

STANDINS = ROOT / "tests" / "standins"


def first_200(url: str, auth: tuple[str, str] | None = None, timeout: float = 120) -> None:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tensorboard_alone(logdir: Path) -> float:
    port = free_port()
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first_200(f"http://127.0.0.1:{port}/")
        return time.monotonic() - began
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def magic(shell, line: str, auth_from_output: bool) -> tuple[float, str, str]:
    out = io.StringIO()
    began = time.monotonic()
    with contextlib.redirect_stdout(out):
        url = shell.run_line_magic("tensorboard_tunnel", line)
    auth = None
    if auth_from_output:
        auth = ("tensorboard", re.search(r"Password: (\S+)", out.getvalue()).group(1))
    first_200(url, auth)
    return time.monotonic() - began, url, out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from IPython.core.interactiveshell import InteractiveShell

    work = Path(tempfile.mkdtemp(prefix="bench-tunnel-"))
    os.environ["TMPDIR"] = str(work)  # TensorBoard's info files stay here
    os.environ["NGROK_AUTHTOKEN"] = "bench-standin-token"
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "colab_magics")
    shell.run_line_magic("config", f"ColabMagics.ngrok_bin_dir = {str(STANDINS)!r}")

    alone, local, ngrok, rerun = [], [], [], []
    for n in range(args.rounds):
        for kind in ("alone", "local", "ngrok"):
            logdir = work / f"{kind}{n}"
            write_events(logdir / "run1")
            if kind == "alone":
                alone.append(tensorboard_alone(logdir))
            else:
                seconds, url, _ = magic(shell, f"{logdir} --provider {kind}", kind == "ngrok")
                (local if kind == "local" else ngrok).append(seconds)
                began = time.monotonic()
                with contextlib.redirect_stdout(io.StringIO()):
                    again = shell.run_line_magic("tensorboard_tunnel", f"{logdir} --provider {kind}")
                rerun.append(time.monotonic() - began)
                assert again == url
                with contextlib.redirect_stdout(io.StringIO()):
                    shell.run_line_magic("tensorboard_tunnel", f"{logdir} --stop")
    shell.run_line_magic("unload_ext", "colab_magics")

    base = statistics.median(alone)
    print(f"rounds: {args.rounds} (medians; TensorFlow importable: "
          f"{__import__('importlib.util').util.find_spec('tensorflow') is not None})")
    print(f"TensorBoard alone → first 200          {base:6.2f} s")
    for name, values in (("magic, local", local), ("magic, ngrok stand-in", ngrok)):
        med = statistics.median(values)
        print(f"{name:<22} → first 200 {med:6.2f} s   ratio {med / base:4.2f}   {med - base:+5.2f} s "
              f"(target ≤ +1 s: {'ok' if med - base <= 1 else 'MISSED'})")
    worst = max(rerun)
    print(f"re-run for a running logdir           {statistics.median(rerun) * 1000:6.0f} ms median, "
          f"{worst * 1000:.0f} ms worst (target ≤ 500 ms: {'ok' if worst <= 0.5 else 'MISSED'})")


if __name__ == "__main__":
    main()
