"""%%gcs_archive and the Archiver: a training cell keeps its newest checkpoint in the bucket.

Everything is real: an IPython shell running the cell, the fake-gcs-server emulator receiving the
archives, a child Python process killed with a real SIGTERM. Checkpoints are written the way
frameworks should (temporary file, then rename), one file per step: `step-N.pt`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import poll, run_cell

from colab_magics.settings import Settings
from colab_magics import archiver, checkpoints, runs
from colab_magics import chief as chief_module

STEP_BYTES = 64 * 1024
NO_PROGRESS = Settings(progress=False)


def write_step(run_dir: Path, step: int, size: int = STEP_BYTES) -> Path:
    """One checkpoint, written atomically (temporary name, then rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / f"step-{step}.pt"
    tmp = run_dir / f".step-{step}.pt.tmp"
    tmp.write_bytes(os.urandom(size))
    os.replace(tmp, target)
    return target


def names(bucket) -> set[str]:
    return {blob.name for blob in bucket.client.list_blobs(bucket.name)}


@pytest.fixture()
def uploads(monkeypatch):
    """Every archive upload, in order, by object name (the upload is real); `.saves` holds the
    monotonic time of each save_run call the archiver makes."""
    seen = _Uploads()
    real_upload, real_save = runs._upload_archive, runs.save_run

    def counting_upload(blob, *args, **kwargs):
        seen.append(blob.name)
        return real_upload(blob, *args, **kwargs)

    def timed_save(*args, **kwargs):
        seen.saves.append(time.monotonic())
        return real_save(*args, **kwargs)

    monkeypatch.setattr(runs, "_upload_archive", counting_upload)
    monkeypatch.setattr(runs, "save_run", timed_save)
    return seen


class _Uploads(list):
    def __init__(self):
        super().__init__()
        self.saves: list[float] = []


@pytest.fixture()
def cell_helpers(ip, tmp_path, bucket):
    """Names a training cell uses: its run directory, `write_step`, and `wait_for(predicate)`."""
    run_dir = tmp_path / "run1"

    def wait_for(predicate, timeout=20, message="condition"):
        return poll(predicate, timeout, message=message)

    ip.user_ns.update(run_dir=run_dir, write_step=write_step, wait_for=wait_for,
                      in_bucket=lambda name: name in names(bucket), archived=lambda: names(bucket))
    return run_dir


def restored_bytes(bucket, url: str, tmp_path: Path, step: int) -> bytes:
    target = tmp_path / f"restored-{uuid.uuid4().hex[:6]}"
    result = runs.load_run(url, target, settings=NO_PROGRESS)
    return (result.target / f"step-{step}.pt").read_bytes()


# --- the cell magic -----------------------------------------------------------------------------
def test_normal_end_archives_the_newest_step_once(ip, bucket, cell_helpers, uploads, capsys, tmp_path):
    run_dir = cell_helpers
    before = signal.getsignal(signal.SIGTERM)
    result = run_cell(ip, textwrap.dedent(f"""\
        %%gcs_archive {run_dir} gs://{bucket.name}/exp --every 1h
        for step in range(1, 6):
            write_step(run_dir, step)
        "trained"
        """))
    assert result.success, result.error_in_exec
    assert result.result == "trained"  # the cell's last value is still its Out
    assert names(bucket) == {"exp/run1.5.zip"}
    assert uploads == ["exp/run1.5.zip"]
    out = capsys.readouterr().out
    assert f"Archived 1 checkpoint(s) of run1 to gs://{bucket.name}/exp; last step 5: " \
           f"gs://{bucket.name}/exp/run1.5.zip" in out
    assert restored_bytes(bucket, f"gs://{bucket.name}/exp/run1", tmp_path, 5) == (run_dir / "step-5.pt").read_bytes()
    assert signal.getsignal(signal.SIGTERM) == before  # the SIGTERM hook lives only while the cell runs


def test_new_steps_are_archived_during_the_cell_at_most_once_per_interval(ip, bucket, cell_helpers, uploads):
    run_dir = cell_helpers
    result = run_cell(ip, textwrap.dedent(f"""\
        %%gcs_archive {run_dir} gs://{bucket.name} --every 0.5s
        for step in (1, 2, 3):
            write_step(run_dir, step)
            wait_for(lambda: in_bucket(f"run1.{{step}}.zip"), message=f"step {{step}} archived")
        """))
    assert result.success, result.error_in_exec
    assert uploads == ["run1.1.zip", "run1.2.zip", "run1.3.zip"]  # the final archive re-sent nothing
    starts = uploads.saves[:3]
    assert all(b - a >= 0.5 for a, b in zip(starts, starts[1:])), starts


def test_checkpoints_faster_than_the_poll_still_get_archived_during_the_cell(ip, bucket, cell_helpers):
    run_dir = cell_helpers  # a new step every ~10 ms: the newest never looks the same twice
    result = run_cell(ip, textwrap.dedent(f"""\
        %%gcs_archive {run_dir} gs://{bucket.name} --every 0.3s
        import time
        step = 0
        while not archived():
            step += 1
            write_step(run_dir, step, 4096)
            time.sleep(0.01)
            assert step < 1500, "nothing archived while training"
        """))
    assert result.success, result.error_in_exec


def test_an_exception_reaches_the_user_unchanged_after_the_final_archive(ip, bucket, cell_helpers, capsys, tmp_path):
    run_dir = cell_helpers
    result = run_cell(ip, textwrap.dedent(f"""\
        %%gcs_archive {run_dir} gs://{bucket.name} --every 1h
        for step in range(1, 4):
            write_step(run_dir, step)
        failure = ValueError("loss is NaN at step 3")
        raise failure
        """))
    assert result.error_in_exec is ip.user_ns["failure"]  # the very object the cell raised
    assert names(bucket) == {"run1.3.zip"}
    shown = capsys.readouterr().out
    assert "Archived 1 checkpoint(s) of run1" in shown
    assert shown.index("Archived 1 checkpoint(s)") < shown.index("ValueError")  # summary, then the error
    assert 'raise failure' in shown and "loss is NaN at step 3" in shown  # the user's own line
    assert "colab_magics" not in shown.split("Traceback", 1)[1]  # our frames are hidden


def test_the_stop_button_still_leaves_the_newest_step(ip, bucket, cell_helpers):
    run_dir = cell_helpers
    main = threading.main_thread().ident

    def press_stop():  # what Jupyter's Stop button does: SIGINT to the kernel while the cell runs
        poll(lambda: (run_dir / "step-3.pt").exists(), 20, message="step 3")
        signal.pthread_kill(main, signal.SIGINT)

    presser = threading.Thread(target=press_stop)
    presser.start()
    result = run_cell(ip, textwrap.dedent(f"""\
        %%gcs_archive {run_dir} gs://{bucket.name} --every 1h
        import time
        for step in range(1, 400):
            write_step(run_dir, step)
            time.sleep(0.05)
        """))
    presser.join(timeout=30)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    newest = checkpoints.find_checkpoint(run_dir).step
    assert 3 <= newest < 399
    assert f"run1.{newest}.zip" in names(bucket)


def test_upload_failures_are_reported_and_retried_without_stopping_training(ip, gcs, tmp_path, caplog, capsys):
    caplog.set_level(logging.WARNING, logger="colab_magics.archiver")
    run_dir = tmp_path / "run1"
    missing = f"test-late-{uuid.uuid4().hex[:8]}"  # created only after the first upload failed
    ip.user_ns.update(run_dir=run_dir, write_step=write_step, wait_for=lambda p, m: poll(p, 20, message=m),
                      failed=lambda: any("archiving step 1" in r.getMessage() for r in caplog.records),
                      create_bucket=lambda: gcs.create_bucket(missing),
                      in_bucket=lambda name: name in {b.name for b in gcs.list_blobs(missing)})
    result = run_cell(ip, textwrap.dedent(f"""\
        %%gcs_archive {run_dir} gs://{missing} --every 0.3s
        write_step(run_dir, 1)
        wait_for(failed, "a reported failure")
        create_bucket()
        wait_for(lambda: in_bucket("run1.1.zip"), "the retry of step 1")
        write_step(run_dir, 2)
        finished = True
        """))
    assert result.success, result.error_in_exec
    assert ip.user_ns["finished"] is True
    warning = next(r.getMessage() for r in caplog.records if "archiving step 1" in r.getMessage())
    assert "does not exist" in warning and "retrying in" in warning
    assert {b.name for b in gcs.list_blobs(missing)} == {"run1.1.zip", "run1.2.zip"}
    assert "failed attempt(s)" in capsys.readouterr().out


def test_non_chief_workers_archive_nothing(ip, bucket, cell_helpers, monkeypatch, caplog, capsys):
    caplog.set_level(logging.INFO, logger="colab_magics.archiver")
    monkeypatch.setenv("RANK", "1")
    run_dir = cell_helpers
    result = run_cell(ip, f"%%gcs_archive {run_dir} gs://{bucket.name} --every 0.1s\n"
                          "write_step(run_dir, 1)\nwrite_step(run_dir, 2)\n")
    assert result.success, result.error_in_exec
    assert names(bucket) == set()
    assert "Archiving skipped: not the chief worker (RANK=1)" in capsys.readouterr().out
    assert [r.getMessage() for r in caplog.records if "not the chief" in r.getMessage()] == [
        f"not the chief worker (RANK=1): archiving of {run_dir} skipped"]


def test_bad_interval_is_a_one_line_error_before_the_cell_runs(ip, bucket, tmp_path):
    from IPython.core.error import UsageError

    ip.user_ns["ran"] = False
    with pytest.raises(UsageError, match=r"'10x' is not an interval: write seconds \(90\)"):
        ip.run_cell_magic("gcs_archive", f"{tmp_path} gs://{bucket.name} --every 10x", "ran = True\n")
    assert ip.user_ns["ran"] is False


def test_tf_hooks_without_tensorflow_name_the_extra_to_install():
    code = textwrap.dedent("""\
        import sys
        sys.modules["tensorflow"] = sys.modules["keras"] = None  # as if not installed
        from colab_magics import tf_hooks
        from colab_magics.errors import MissingDependency
        from colab_magics import callbacks
        for module, name in ((tf_hooks, "SaverWithCallback"), (tf_hooks, "GcsArchiveHook"),
                             (callbacks, "KerasArchiveCallback")):
            try:
                getattr(module, name)
            except MissingDependency as exc:
                print(exc)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['tensorflow is not installed: run  pip install "colab-magics[tf]"  and retry'] * 2 \
        + ['keras is not installed: run  pip install "colab-magics[tf]"  and retry']


@pytest.mark.parametrize("text, seconds", [("90", 90), ("30s", 30), ("10m", 600), ("1h", 3600), ("1.5h", 5400),
                                           ("0.5s", 0.5), (" 2 min ", 120)])
def test_parse_interval(text, seconds):
    assert archiver.parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10 days", "-5", "0"])
def test_parse_interval_refuses(text):
    with pytest.raises(archiver.InvalidInterval):
        archiver.parse_interval(text)


@pytest.mark.parametrize("env, chief", [
    ({}, True),
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),
    ({"RANK": "3"}, False),
    ({"LOCAL_RANK": "1"}, False),
    ({"RANK": "0", "LOCAL_RANK": "1"}, True),  # RANK is the global one: LOCAL_RANK only counts alone
    ({"TF_CONFIG": '{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}'}, True),
    ({"TF_CONFIG": '{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}'}, False),
    ({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}'}, True),
    ({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}'}, False),
    ({"TF_CONFIG": '{"cluster": {"worker": ["a:1"], "ps": ["c:1"]}, "task": {"type": "ps", "index": 0}}'}, False),
])
def test_who_is_chief(env, chief):
    assert chief_module.is_chief(env) is chief


def test_archiver_from_python_archive_now_and_final_archive(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    write_step(run_dir, 1)
    with archiver.Archiver(run_dir, f"gs://{bucket.name}/py", every=None) as worker:
        worker.archive_now(wait=True, timeout=30)
        assert names(bucket) == {"py/run1.1.zip"}  # done when archive_now(wait=True) returns
        write_step(run_dir, 2)
    summary = worker.summary()
    assert names(bucket) == {"py/run1.1.zip", "py/run1.2.zip"}
    assert (summary.archives, summary.last_step, summary.newest_step) == (2, 2, 2)
    assert not worker.active


def test_a_saver_callback_notify_archives_without_an_interval(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    worker = archiver.Archiver(run_dir, f"gs://{bucket.name}", every=None).start()
    watcher = archiver.Archiver(run_dir, f"gs://{bucket.name}/watcher", every=0.1).start()
    try:
        write_step(run_dir, 10)
        # a worker with no interval and no news must not archive on its own: in the time one with
        # an interval saw step 10, let it settle and archived it, the first one archived nothing
        poll(lambda: names(bucket) == {"watcher/run1.10.zip"}, 20, message="the watcher's archive")
        watcher.stop(final=False)
        assert names(bucket) == {"watcher/run1.10.zip"}
        worker.notify(None, str(run_dir), checkpoint_path=str(run_dir / "step-10.pt"), checkpoint_step=10)
        poll(lambda: "run1.10.zip" in names(bucket), 20, message="the notified step archived")
    finally:
        worker.stop(final=False)
        watcher.stop(final=False)
    assert names(bucket) == {"run1.10.zip", "watcher/run1.10.zip"}


@pytest.mark.parametrize("content", ["random", "compressible"])
def test_tar_gz_archives_round_trip_byte_exact(bucket, tmp_path, content):
    run_dir = tmp_path / "run1"
    write_step(run_dir, 7, 3 * 1024 * 1024)
    if content == "compressible":  # gzip level 1 instead of stored blocks
        (run_dir / "step-7.pt").write_bytes(b"weights " * 400_000)
    (run_dir / "events.out.tfevents.1.host").write_bytes(b"event " * 1000)
    saved = runs.save_run(run_dir, f"gs://{bucket.name}/tgz", events=True, fmt="tar.gz", settings=NO_PROGRESS)
    assert saved.url == f"gs://{bucket.name}/tgz/run1.7.tar.gz" and saved.files == 2
    restored = runs.load_run(f"gs://{bucket.name}/tgz/run1", tmp_path / "back", settings=NO_PROGRESS)
    for name in ("step-7.pt", "events.out.tfevents.1.host"):
        assert (restored.target / name).read_bytes() == (run_dir / name).read_bytes()
    assert restored.step == 7


# --- last-chance flush in a process of its own --------------------------------------------------
CHILD = r"""
import os, sys, time
from pathlib import Path
from colab_magics.archiver import Archiver

run_dir, destination, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
run_dir.mkdir(parents=True, exist_ok=True)

def write(step):
    tmp = run_dir / f".step-{step}.tmp"
    tmp.write_bytes(os.urandom(4 * 1024 * 1024))
    os.replace(tmp, run_dir / f"step-{step}.pt")

write(1)
if mode == "magic":  # a kernel: the training loop is a %%gcs_archive cell in an IPython shell
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "colab_magics")
    shell.user_ns["write"] = write
    shell.run_cell(f"%%gcs_archive {run_dir} {destination} --every 0.2s\n"
                   "import time\nfor step in range(2, 10_000):\n    write(step)\n"
                   "    print(step, flush=True)\n    time.sleep(0.05)\n")
    sys.exit(0)
if mode == "chain":  # a handler of the program's own: it must still run, after the flush
    import signal
    signal.signal(signal.SIGTERM, lambda signum, frame: (print("own handler", flush=True), sys.exit(3)))
Archiver(run_dir, destination, every=0.2, last_chance_timeout=20).start()
for step in range(2, 10_000):
    write(step)
    print(step, flush=True)
    if mode == "exit" and step == 6:
        sys.exit(0)  # no stop(): the atexit hook must archive step 6
    time.sleep(0.05)
"""


@pytest.mark.parametrize("mode", ["sigterm", "magic", "chain", "exit"])
def test_a_killed_or_exiting_process_flushes_its_newest_step(bucket, emulator_host, tmp_path, mode):
    script = tmp_path / "train.py"
    script.write_text(CHILD)
    run_dir, log = tmp_path / "run1", tmp_path / "child.log"
    env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator_host, COLAB_MAGICS_PROGRESS="false")
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, str(script), str(run_dir), f"gs://{bucket.name}", mode],
                                 stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        if mode != "exit":
            poll(lambda: names(bucket), 30, message="a first archive from the child")
            poll(lambda: len(log.read_text().split()) >= 8, 30, message="the child's step 9")
            child.send_signal(signal.SIGTERM)  # while it keeps archiving every 0.2 s
            expected = 3 if mode == "chain" else -signal.SIGTERM  # dies of SIGTERM, or as its handler says
            assert child.wait(timeout=40) == expected, log.read_text()
        else:
            assert child.wait(timeout=40) == 0, log.read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    newest = checkpoints.find_checkpoint(run_dir).step
    if mode == "exit":
        assert newest == 6
    assert f"run1.{newest}.zip" in names(bucket), (sorted(names(bucket)), log.read_text())
    if mode != "exit":
        assert "SIGTERM: archiving the newest step" in log.read_text()
    if mode == "chain":
        assert log.read_text().index("SIGTERM: archiving") < log.read_text().index("own handler")
