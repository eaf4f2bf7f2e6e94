"""Nothing we start outlives the interpreter that started it: SIGTERM, SIGHUP or SIGKILL.

A child Python process (a stand-in for a kernel) starts a real TensorBoard, an ngrok tunnel (the
real pyngrok driving tests/standins/ngrok), and a real rclone mount on the emulator; then it is
killed. Within 10 s every process it started is gone, the mount is gone, and (unless SIGKILL left no
chance) the ngrok config dir holding the token is removed. After SIGKILL, the next start at that
mount point works and leaves nothing mounted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from conftest import poll
from test_tensorboard import write_events

STANDINS = Path(__file__).parent / "standins"
TOKEN = "2abcStandInAuthtoken_lifecycle_9xyz"

fuse_usable = pytest.mark.skipif(shutil.which("rclone") is None or not os.access("/dev/fuse", os.R_OK | os.W_OK),
                                 reason="needs rclone and a usable /dev/fuse")

KERNEL = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from colab_magics import mount, session, tensorboard, tunnels

    logdir, mount_point, bucket, standins, mode = sys.argv[1:6]
    if mode == "remount":  # the next start after a kill: mount at the same place, then exit cleanly
        mount.mount(bucket, mount_point, backend="rclone")
        print("REMOUNTED", flush=True)
        sys.exit(0)
    board = tensorboard.start(logdir)
    tunnel = tunnels.open_tunnel("ngrok", board.instance.port,
                                 tunnels.TunnelOptions(bin_dir=Path(standins), timeout=30))
    mount.mount(bucket, mount_point, backend="rclone")
    from colab_magics.tunnels import ngrok

    (agent,) = session.current().items(ngrok.Agent)
    config_dir = Path(agent.tracked.argv[agent.tracked.argv.index("--config") + 1]).parent
    print("READY " + json.dumps({"tunnel": tunnel.url, "token_dir": str(config_dir)}), flush=True)
    while True:
        time.sleep(3600)
""")


def mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_kernel(tmp_path: Path, bucket: str, mode: str, env: dict) -> subprocess.Popen:
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL)
    log = open(tmp_path / f"kernel-{mode}.log", "ab")
    with log:
        return subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs"), str(tmp_path / "mnt"),
                                 bucket, str(STANDINS), mode], stdout=log, stderr=subprocess.STDOUT, env=env)


@pytest.mark.fuse
@fuse_usable
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_everything_the_kernel_started_ends_with_it(bucket, emulator_host, tmp_path, signum):
    write_events(tmp_path / "runs" / "run1")
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator_host, TMPDIR=str(tmp_path / "tmp"),
               NGROK_AUTHTOKEN=TOKEN, STANDIN_NGROK_EXPECT_TOKEN=TOKEN)
    where, log = tmp_path / "mnt", tmp_path / "kernel-run.log"
    kernel = run_kernel(tmp_path, bucket.name, "run", env)
    try:
        ready = poll(lambda: next((line for line in log.read_text().splitlines() if line.startswith("READY ")),
                                  None) or (kernel.poll() is not None and "exited"), 120, message="the kernel ready")
        assert ready != "exited", log.read_text()
        facts = json.loads(ready[len("READY "):])
        started = psutil.Process(kernel.pid).children(recursive=True)
        names = sorted(" ".join(p.cmdline()[:3]) for p in started)
        assert len(started) >= 3, names  # TensorBoard, the ngrok agent, rclone
        assert mounted(where) and not Path(facts["token_dir"]).exists()  # the agent's config: read, removed

        kernel.send_signal(signum)
        assert kernel.wait(timeout=60) == -signum, log.read_text()  # it still dies of the signal

        poll(lambda: not any(alive(p) for p in started), 10,
             message=f"the kernel's children to end: {[p.pid for p in started if alive(p)]}")
        # SIGKILL: the agent died by PR_SET_PDEATHSIG like every child; the mount may need the next start
        if signum != signal.SIGKILL:  # shut down in order: unmounted
            assert not mounted(where)
        assert "Traceback" not in log.read_text(), log.read_text()

        # the next start at the same mount point works (cleaning a dead mount if one was left)
        again = run_kernel(tmp_path, bucket.name, "remount", env)
        assert again.wait(timeout=60) == 0, (tmp_path / "kernel-remount.log").read_text()
        assert "REMOUNTED" in (tmp_path / "kernel-remount.log").read_text()
        assert not mounted(where)
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait(timeout=10)
        if mounted(where):
            subprocess.run(["fusermount3", "-uz", str(where)], check=False, timeout=30)


def test_unload_flushes_archivers_before_ending_the_emulator_they_write_to(ip, tmp_path, monkeypatch):
    from colab_magics import archiver, session

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    ip.run_line_magic("config", f"ColabMagics.emulator_dir = {str(tmp_path / 'emulator')!r}")
    ip.run_line_magic("gcs_auth", "--emulator")
    (emulator,) = [p for p in session.current().processes.all() if p.ends_last]  # the emulator
    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    (run_dir / "model-7.keras").write_bytes(os.urandom(256 * 1024))
    worker = archiver.Archiver(run_dir, "gs://local-bucket/exp", every=None).start()  # archives at the end
    try:
        ip.run_line_magic("unload_ext", "colab_magics")

        # the final archive went up before the emulator it writes to was ended
        assert emulator is not None and not emulator.alive()
        summary = worker.summary()
        assert (summary.archives, summary.last_step, summary.failures) == (1, 7, 0), summary
        assert not worker.active and session.current().items(archiver.Archiver) == []
    finally:
        session.current().shutdown()
        session.current().set_auth(None)
        ip.run_line_magic("load_ext", "colab_magics")  # the fixture unloads it again
