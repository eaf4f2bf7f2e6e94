"""`colab-magics run`: a training command survives preemption with its newest step in the bucket.

The real entry point runs as a subprocess (`python -m colab_magics.cli run`) against the
fake-gcs-server emulator; the supervised command is a real Python script writing checkpoints the way
frameworks should (temporary file, then rename), and a real SIGTERM is sent to the supervisor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
from conftest import free_port, poll

from colab_magics.settings import Settings
from colab_magics import checkpoints, runs

NO_PROGRESS = Settings(progress=False)

TRAIN = r"""
import os, sys, time
from pathlib import Path

run_dir, steps, code = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
Path(os.environ["MARKER"]).write_text(str(os.getpid()))
run_dir.mkdir(parents=True, exist_ok=True)
restored = sorted(p.name for p in run_dir.glob("step-*.pt"))
print("restored:", " ".join(restored) or "-", flush=True)
first = max((int(name[5:-3]) for name in restored), default=0) + 1
for step in range(first, first + steps):
    tmp = run_dir / f".step-{step}.tmp"
    tmp.write_bytes(os.urandom(256 * 1024))
    os.replace(tmp, run_dir / f"step-{step}.pt")
    print("step", step, flush=True)
    time.sleep(0.05)
sys.exit(code)
"""


def names(bucket) -> set[str]:
    return {blob.name for blob in bucket.client.list_blobs(bucket.name)}


@pytest.fixture()
def job(tmp_path, emulator_host):
    """Run `colab-magics run` as a job scheduler would: `job.start(...)` → Popen, output in `job.log`."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)

    class Job:
        run_dir = tmp_path / "run1"
        marker = tmp_path / "marker"
        log = tmp_path / "job.log"
        err = tmp_path / "job.err"
        env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator_host, COLAB_MAGICS_PROGRESS="false",
                   MARKER=str(tmp_path / "marker"))
        procs: list[subprocess.Popen] = []

        def argv(self, destination, *options, steps=10_000, code=0, command=None):
            command = command or [sys.executable, str(script), str(self.run_dir), str(steps), str(code)]
            return [sys.executable, "-m", "colab_magics.cli", "run", str(self.run_dir), destination,
                    *options, "--", *command]

        def start(self, destination, *options, **kw) -> subprocess.Popen:
            with open(self.log, "wb") as out, open(self.err, "wb") as err:
                proc = subprocess.Popen(self.argv(destination, *options, **kw), stdout=out, stderr=err, env=self.env)
            self.procs.append(proc)
            return proc

        def run(self, destination, *options, timeout=60, **kw) -> int:
            return self.start(destination, *options, **kw).wait(timeout=timeout)

        def output(self) -> str:
            return self.log.read_text()

        def errors(self) -> str:
            return self.err.read_text()

    job = Job()
    yield job
    for proc in job.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_reaches_the_command_and_the_newest_step_is_archived(job, bucket, signum):
    proc = job.start(f"gs://{bucket.name}/exp", "--every", "0.2s")
    poll(lambda: names(bucket), 30, message="a first archive while the command runs")
    poll(lambda: job.output().count("step") >= 8, 30, message="the command's step 8")

    proc.send_signal(signum)  # SIGTERM: as GCE does at preemption; SIGINT: Ctrl-C; SIGHUP: a closed terminal

    assert proc.wait(timeout=40) == 128 + signum, job.errors()
    newest = checkpoints.find_checkpoint(job.run_dir).step
    assert f"exp/run1.{newest}.zip" in names(bucket), (sorted(names(bucket)), job.errors())
    assert f"step {newest}\n" in job.output()  # the command's own output, passed through
    assert f"last step {newest}: gs://{bucket.name}/exp/run1.{newest}.zip" in job.errors()


def test_the_command_ends_when_the_supervisor_is_killed(job, bucket):
    proc = job.start(f"gs://{bucket.name}", "--every", "1h")
    poll(lambda: job.marker.exists() and job.marker.read_text(), 30, message="the command started")
    command = psutil.Process(int(job.marker.read_text()))

    proc.kill()  # SIGKILL: no handler runs, yet the command must not run on unsupervised
    proc.wait(timeout=10)

    poll(lambda: not command.is_running() or command.status() == psutil.STATUS_ZOMBIE, 20,
         message="the command ended with its supervisor")


# --- the whole process tree --------------------------------------------------------------------
TREE = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # deaf to SIGTERM, and so to a parent-death SIGTERM
child = subprocess.Popen(["sleep", "7777"])
daemon = subprocess.Popen(["sleep", "7778"], start_new_session=True)  # left the command's session
open(sys.argv[1] + ".tmp", "w").write(f"{os.getpid()} {child.pid} {daemon.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(3600)
"""

DEAF = r"""
import os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
run_dir = Path(sys.argv[1])
run_dir.mkdir(parents=True, exist_ok=True)
for step in (1, 2, 3):
    (run_dir / f"step-{step}.pt").write_bytes(os.urandom(64 * 1024))
Path(os.environ["MARKER"]).write_text(str(os.getpid()))
time.sleep(3600)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_all(pids) -> None:
    for pid in pids:
        if not gone(pid):
            psutil.Process(pid).kill()


def test_nothing_of_the_tree_survives_a_sigkill_of_the_supervisor(job, bucket, tmp_path):
    """bash → python (deaf to SIGTERM) → sleep, and a daemon in a session of its own: all of it dies
    with the supervisor, whose handlers never run."""
    script, pids = tmp_path / "tree.py", tmp_path / "pids"
    script.write_text(TREE)
    proc = job.start(f"gs://{bucket.name}", "--every", "1h",
                     command=["bash", "-c", f"{sys.executable} {script} {pids}; echo after"])
    poll(pids.exists, 30, message="the tree started")
    tree = psutil.Process(proc.pid).children(recursive=True)  # the watchdog, bash, python and both sleeps
    names = sorted(p.name() for p in tree)
    try:
        assert {int(pid) for pid in pids.read_text().split()} <= {p.pid for p in tree}, names

        proc.kill()
        proc.wait(timeout=10)

        poll(lambda: all(gone(p.pid) for p in tree), 20, message=f"every process of the tree ending: {names}")
    finally:
        kill_all(p.pid for p in tree)


def test_a_background_job_left_by_the_command_is_ended_when_it_exits(job, bucket, tmp_path):
    pids = tmp_path / "pids"
    code = job.run(f"gs://{bucket.name}", "--every", "1h", command=[
        "bash", "-c", f"sleep 7777 & echo $! >> {pids}; setsid sleep 7778 & echo $! >> {pids}; exit 0"])
    left = [int(pid) for pid in pids.read_text().split()]
    try:
        assert code == 0, job.errors()
        assert all(gone(pid) for pid in left)  # ended before the supervisor exited, not after
        assert "the command left 2 process(es) running: ended them (SIGTERM)" in job.errors()
    finally:
        kill_all(left)


@pytest.mark.parametrize("signals", [1, 2])
def test_a_command_deaf_to_sigterm_is_killed_after_the_final_timeout_and_archived(job, bucket, tmp_path, signals):
    script = tmp_path / "deaf.py"
    script.write_text(DEAF)
    proc = job.start(f"gs://{bucket.name}", "--every", "1h", "--final-timeout", "5s",
                     command=[sys.executable, str(script), str(job.run_dir)])
    poll(job.marker.exists, 30, message="the command's checkpoints")
    command = int(job.marker.read_text())

    for _ in range(signals):  # a second SIGTERM does not restart the countdown
        proc.send_signal(signal.SIGTERM)
        poll(lambda: job.output().count("SIGTERM ignored") >= _ + 1, 10, message="the command's handler")

    assert proc.wait(timeout=60) == 128 + signal.SIGKILL, job.errors()
    assert gone(command)
    assert "run1.3.zip" in names(bucket), job.errors()  # the final archive was made anyway
    assert "the command did not end within 5 s of SIGTERM: killing it (SIGKILL)" in job.errors()
    assert "last step 3: " in job.errors()


def test_the_python_api_leaves_the_process_as_it_found_it(job, bucket, tmp_path):
    """`supervise.run` twice from a script: then SIGTERM does what it did before (nothing of ours is
    left installed), and the process is no longer a child subreaper."""
    script = tmp_path / "twice.py"
    script.write_text(f"""
import ctypes, signal, sys
from colab_magics import supervise
from colab_magics.settings import Settings
for _ in range(2):
    done = supervise.run({str(job.run_dir)!r}, "gs://{bucket.name}", ["true"], every="1h",
                         settings=Settings(progress=False))
    assert done.code == 0, done
flag = ctypes.c_int(-1)
ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
defaults = (signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
print("subreaper", flag.value, "default handlers", defaults, flush=True)
signal.raise_signal(signal.SIGTERM)
print("still alive")
""")
    proc = subprocess.run([sys.executable, str(script)], env=job.env, capture_output=True, text=True, timeout=120)

    assert "subreaper 0 default handlers True" in proc.stdout, proc.stderr
    assert proc.returncode == -signal.SIGTERM and "still alive" not in proc.stdout


def test_the_commands_exit_code_is_ours_after_a_final_archive(job, bucket, tmp_path):
    code = job.run(f"gs://{bucket.name}", "--every", "1h", steps=3, code=3)

    assert code == 3, job.errors()
    assert "run1.3.zip" in names(bucket)  # the final archive holds the last step
    restored = runs.load_run(f"gs://{bucket.name}/run1", tmp_path / "back", settings=NO_PROGRESS)
    assert (restored.target / "step-3.pt").read_bytes() == (job.run_dir / "step-3.pt").read_bytes()


def test_resume_restores_the_latest_archive_before_the_command_starts(job, bucket, tmp_path):
    earlier = tmp_path / "earlier" / "run1"  # the same run, on a VM that was since reset
    earlier.mkdir(parents=True)
    for step in (4, 7):
        (earlier / f"step-{step}.pt").write_bytes(os.urandom(1024))
        runs.save_run(earlier, f"gs://{bucket.name}/exp", settings=NO_PROGRESS)

    code = job.run(f"gs://{bucket.name}/exp", "--resume", "--every", "1h", steps=2)

    assert code == 0, job.errors()
    assert "restored: step-7.pt\n" in job.output()  # the command saw the newest archive's files
    assert (job.run_dir / "step-7.pt").read_bytes() == (earlier / "step-7.pt").read_bytes()
    assert "resumed from" in job.errors() and "(step 7)" in job.errors()
    assert "exp/run1.9.zip" in names(bucket)  # it went on from step 8 and was archived


def test_resume_with_nothing_in_the_bucket_is_a_fresh_start(job, bucket):
    code = job.run(f"gs://{bucket.name}/exp", "--resume", steps=1)

    assert code == 0, job.errors()
    assert "restored: -\n" in job.output()
    assert f"no archive of run1 under gs://{bucket.name}/exp: starting fresh" in job.errors()
    assert names(bucket) == {"exp/run1.1.zip"}


def test_only_the_chief_archives(job, bucket):
    job.env["RANK"] = "1"

    assert job.run(f"gs://{bucket.name}", steps=2) == 0, job.errors()

    assert names(bucket) == set()
    assert "archiving skipped: not the chief worker (RANK=1)" in job.errors()


@pytest.mark.parametrize("case, expected, message", [
    ("no --", 2, "no command: put it after --"),
    ("not found", 2, "command 'no-such-trainer' is not on PATH"),
    ("bad interval", 2, "is not an interval"),
    ("run dir is a file", 1, "is a file"),
    ("no bucket", 1, "does not exist"),
    ("unreachable", 1, "does not answer"),
])
def test_bad_input_is_one_line_and_the_command_never_starts(job, bucket, case, expected, message):
    destination, options, command = f"gs://{bucket.name}", [], None
    if case == "not found":
        command = ["no-such-trainer", "--lr", "3e-4"]
    elif case == "bad interval":
        options = ["--every", "soon"]
    elif case == "run dir is a file":
        job.run_dir.write_text("not a directory")
    elif case == "no bucket":
        destination = "gs://no-such-bucket-here"
    elif case == "unreachable":
        job.env["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    argv = job.argv(destination, *options, command=command)
    if case == "no --":
        argv.remove("--")

    proc = subprocess.run(argv, env=job.env, capture_output=True, text=True, timeout=90)

    assert proc.returncode == expected, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not job.marker.exists()  # the command never started
    if expected == 2:
        assert "colab-magics run --help" in proc.stderr


def test_help_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "colab_magics.cli", "run", "--help"],
                          capture_output=True, text=True, timeout=60)

    assert proc.returncode == 0 and "--final-timeout" in proc.stdout
