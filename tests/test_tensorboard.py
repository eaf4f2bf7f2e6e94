"""TensorBoard management with the real TensorBoard server and a real event file.

Each test gets its own TMPDIR, so tensorboard.manager's info files never mix with a user's.
The event file is written with TensorBoard's own record writer and protos (no TensorFlow import).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError

from colab_magics import tensorboard
from colab_magics.errors import LogDirError, MissingDependency, TensorBoardError
from conftest import poll


def write_events(run_dir: Path, steps: int = 3) -> Path:
    """A real TensorBoard event file with a `loss` scalar, written without TensorFlow."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"events.out.tfevents.{int(time.time())}.test"
    with path.open("wb") as out:
        writer = RecordWriter(out)
        writer.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        for step in range(steps):
            value = summary_pb2.Summary.Value(tag="loss", simple_value=1.0 / (step + 1))
            event = event_pb2.Event(step=step, wall_time=time.time(), summary=summary_pb2.Summary(value=[value]))
            writer.write(event.SerializeToString())
    return path


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def runs_listed(base_url: str) -> list[str]:
    status, body = get(base_url + "data/runs")
    return json.loads(body) if status == 200 else []


def pid_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path, monkeypatch):
    """TensorBoard's info files (under $TMPDIR/.tensorboard-info) stay in this test's directory."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield tmp
    tensorboard.stop()


@pytest.fixture()
def logdir(tmp_path) -> Path:
    root = tmp_path / "runs"
    write_events(root / "run1")
    return root


def test_tensorboard_serves_the_run_in_the_logdir(logdir):
    result = tensorboard.start(logdir)

    assert isinstance(result, tensorboard.Launched)
    status, page = get(result.instance.url)
    assert status == 200 and b"<!doctype html>" in page.lower()
    # TensorBoard loads event files in the background: poll its data API for the run.
    poll(lambda: "run1" in runs_listed(result.instance.url), 30, message="run1 in /data/runs")


def test_second_start_reuses_the_live_instance(logdir):
    # how fast a reuse is: benchmarks/bench_tunnel.py (re-run of the magic)
    first = tensorboard.start(logdir)

    again = tensorboard.start(logdir)

    assert isinstance(again, tensorboard.Reused)
    assert again.instance.port == first.instance.port and again.instance.pid == first.instance.pid
    assert [i.pid for i in tensorboard.running()] == [first.instance.pid]


def test_dead_instance_is_not_reused(logdir):
    first = tensorboard.start(logdir)
    os.kill(first.instance.pid, signal.SIGKILL)
    poll(lambda: not first.instance.alive(), 10, message="TensorBoard to die")

    second = tensorboard.start(logdir)

    assert isinstance(second, tensorboard.Launched)
    assert second.instance.pid != first.instance.pid
    assert get(second.instance.url)[0] == 200


def test_busy_port_is_replaced_by_a_free_one(logdir):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]

        result = tensorboard.start(logdir, port=busy)

    assert result.instance.port != busy
    assert "busy" in result.note
    assert get(result.instance.url)[0] == 200


def test_extra_flags_reach_tensorboard(logdir):
    result = tensorboard.start(logdir, extra_args=["--window_title", "My experiment"])

    status, body = get(result.instance.url + "data/environment")
    assert status == 200 and json.loads(body)["window_title"] == "My experiment"


def test_stop_leaves_no_process(logdir):
    result = tensorboard.start(logdir)

    ended = tensorboard.stop(logdir)

    assert [i.pid for i in ended] == [result.instance.pid]
    assert not pid_running(result.instance.pid)
    assert tensorboard.running() == []


def test_tensorboard_that_dies_explains_why(logdir):
    # A flag TensorBoard does not know makes the real server exit at once.
    with pytest.raises(TensorBoardError, match="no_such_flag"):
        tensorboard.start(logdir, extra_args=["--no_such_flag"])


def test_missing_logdir_parent_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")

    with pytest.raises(LogDirError, match="cannot create logdir"):
        tensorboard.start(blocker / "runs")


def test_logdir_is_created_when_missing(tmp_path):
    result = tensorboard.start(tmp_path / "new" / "runs")

    assert (tmp_path / "new" / "runs").is_dir()
    assert get(result.instance.url)[0] == 200


def test_no_tensorboard_installed(monkeypatch, tmp_path):
    # Simulated: a None entry in sys.modules makes `import tensorboard` fail as if not installed.
    monkeypatch.setitem(sys.modules, "tensorboard", None)

    with pytest.raises(MissingDependency, match=r'pip install "colab-magics\[tensorboard\]"'):
        tensorboard.start(tmp_path / "runs")


# --- through the magic ---------------------------------------------------------------------------
def test_magic_local_shows_link_lists_and_stops(ip, logdir, capsys):
    url = ip.run_line_magic("tensorboard_tunnel", f"{logdir} --provider local")

    assert url.startswith("http://127.0.0.1:") and get(url)[0] == 200
    assert url in capsys.readouterr().out
    listing = ip.run_line_magic("tensorboard_tunnel", "--list")
    assert any(row[0] == "tensorboard" and row[1] == str(logdir) for row in listing)
    pid = tensorboard.running()[0].pid

    ip.run_line_magic("tensorboard_tunnel", f"{logdir} --stop")

    assert not pid_running(pid)
    assert ip.run_line_magic("tensorboard_tunnel", "--list") == []


def test_magic_rerun_for_running_logdir_reuses_it(ip, logdir):
    # how fast a re-run is: benchmarks/bench_tunnel.py
    url = ip.run_line_magic("tensorboard_tunnel", f"{logdir} --provider local")
    pids = [i.pid for i in tensorboard.running()]

    again = ip.run_line_magic("tensorboard_tunnel", f"{logdir} --provider local")

    assert again == url and [i.pid for i in tensorboard.running()] == pids and len(pids) == 1


@pytest.mark.parametrize("line, message", [
    ("{tmp}/not-a-dir/runs --provider local", "cannot create logdir"),
    ("{tmp}/runs --provider carrier-pigeon", "unknown tunnel provider 'carrier-pigeon'"),
    ("--provider local", "give the LOGDIR"),
])
def test_magic_bad_input_is_one_line(ip, tmp_path, line, message):
    (tmp_path / "not-a-dir").write_text("")

    with pytest.raises(UsageError, match=message) as caught:
        ip.run_line_magic("tensorboard_tunnel", line.format(tmp=tmp_path))

    assert "\n" not in str(caught.value)
    assert tensorboard.running() == []


def test_magic_without_tensorboard_installed(ip, monkeypatch, tmp_path):
    # Simulated: `import tensorboard` fails as if the package were not installed.
    monkeypatch.setitem(sys.modules, "tensorboard", None)

    with pytest.raises(UsageError, match=r'tensorboard is not installed: run  pip install'):
        ip.run_line_magic("tensorboard_tunnel", f"{tmp_path / 'runs'} --provider local")


def test_magic_passes_flags_after_double_dash_to_tensorboard(ip, logdir):
    url = ip.run_line_magic("tensorboard_tunnel",
                            f'{logdir} --provider local -- --window_title "Run 7"')

    status, body = get(url + "data/environment")
    assert status == 200 and json.loads(body)["window_title"] == "Run 7"


@pytest.mark.parametrize("flags", [["--host", "0.0.0.0"], ["--host=0.0.0.0"], ["--bind_all"], ["--bind-all"],
                                   ["--reload_interval", "5", "--hos", "::"]])
def test_magic_refuses_flags_that_bind_beyond_loopback(ip, logdir, flags):
    line = f"{logdir} --provider local -- " + " ".join(flags)

    with pytest.raises(UsageError, match=r"is refused: TensorBoard listens on 127\.0\.0\.1 only.*tunnel") as caught:
        ip.run_line_magic("tensorboard_tunnel", line)
    assert "\n" not in str(caught.value)
    assert tensorboard.running() == []


# --- gs:// logdirs: TensorBoard reads them itself ------------------------------------------------------
def test_gs_logdir_goes_to_tensorboard_as_it_is_and_is_reused_and_stopped(ip, tmp_path, monkeypatch):
    # TensorBoard reads gs:// through its own GCS client, which cannot be pointed at the emulator:
    # what is tested is what colab_magics does with the URL, with the real TensorBoard serving.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    url = ip.run_line_magic("tensorboard_tunnel", "gs://my-logs-bucket/experiments/logs --provider local")

    [instance] = tensorboard.running()
    argv = instance.tracked.argv
    assert argv[argv.index("--logdir") + 1] == "gs://my-logs-bucket/experiments/logs"
    assert list(cwd.iterdir()) == []  # no ./gs:/my-logs-bucket/... directory
    assert get(url)[0] == 200

    again = ip.run_line_magic("tensorboard_tunnel", "gs://my-logs-bucket/experiments/logs/ --provider local")
    assert again == url and [i.pid for i in tensorboard.running()] == [instance.pid]  # reused, slash or not

    ip.run_line_magic("tensorboard_tunnel", "gs://my-logs-bucket/experiments/logs --stop")
    assert tensorboard.running() == [] and not pid_running(instance.pid)


def test_gs_logdir_with_a_bad_bucket_name_is_one_line(ip):
    with pytest.raises(UsageError, match="not a valid name") as caught:
        ip.run_line_magic("tensorboard_tunnel", "gs://My_Bucket/logs --provider local")
    assert "\n" not in str(caught.value)
    assert tensorboard.running() == []
