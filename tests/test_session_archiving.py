"""Session-wide archiving (`%gcs_archive` as a line magic) and one-line resume (`%gcs_resume`).

A real IPython shell with the extension loaded, the fake-gcs-server emulator, checkpoints written
by later cells as training across many cells would; a kernel ended by a real SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import poll, run_cell
from IPython.core.error import UsageError

from colab_magics.settings import Settings
from colab_magics import archiver, checkpoints, runs
from tests.test_archiver import names, write_step

NO_PROGRESS = Settings(progress=False)


def test_line_form_archives_across_cells_until_stop(ip, bucket, tmp_path, capsys):
    run_dir = tmp_path / "run1"
    ip.run_line_magic("gcs_archive", f"{run_dir} gs://{bucket.name}/exp --every 0.2s")
    assert "in the background" in capsys.readouterr().out

    for step in (1, 2):  # two "cells" of training, after the magic returned
        write_step(run_dir, step)
        poll(lambda: f"exp/run1.{step}.zip" in names(bucket), 20, message=f"step {step} archived")
    # the object appears before the worker has finished its save (retention, the summary): wait for that
    poll(lambda: archiver.background()[0].summary().archives == 2, 20, message="the summary of step 2")

    status = ip.run_line_magic("gcs_archive", "--status")
    assert len(status.table.rows) == 1
    row = dict(zip(status.table.columns, status.table.rows[0]))
    assert (row["run dir"], row["archives"], row["last step"], row["last error"]) == (str(run_dir), "2", "2", "-")
    assert row["archived at"].endswith("UTC")

    write_step(run_dir, 3)
    ip.run_line_magic("gcs_archive", "--stop")

    assert "exp/run1.3.zip" in names(bucket)  # the final archive, made by --stop
    assert f"Archived 3 checkpoint(s) of run1 to gs://{bucket.name}/exp; last step 3" in capsys.readouterr().out
    assert ip.run_line_magic("gcs_archive", "--status") == []
    write_step(run_dir, 4)
    assert "exp/run1.4.zip" not in names(bucket)  # stopped means stopped


def test_status_shows_the_last_error(ip, gcs, tmp_path):
    run_dir = tmp_path / "run1"
    doomed = gcs.create_bucket("doomed-bucket-for-status")
    ip.run_line_magic("gcs_archive", f"{run_dir} gs://{doomed.name} --every 0.2s")
    doomed.delete()  # the bucket goes away after archiving started
    write_step(run_dir, 1)
    try:
        poll(lambda: ip.run_line_magic("gcs_archive", "--status").table.rows[0][-1] != "-", 20,
             message="a failed attempt in --status")
        row = ip.run_line_magic("gcs_archive", "--status").table.rows[0]
        assert "does not exist" in row[-1] and row[2] == "0"
    finally:
        ip.run_line_magic("gcs_archive", f"--stop {run_dir}")


def test_unloading_the_extension_makes_the_final_archive(ip, bucket, tmp_path):
    run_dir = tmp_path / "run1"
    write_step(run_dir, 1)
    ip.run_line_magic("gcs_archive", f"{run_dir} gs://{bucket.name} --every 1h")
    poll(lambda: names(bucket) == {"run1.1.zip"}, 20, message="the first archive")
    write_step(run_dir, 2)

    ip.run_line_magic("unload_ext", "colab_magics")  # as at the end of the kernel
    ip.run_line_magic("load_ext", "colab_magics")

    assert names(bucket) == {"run1.1.zip", "run1.2.zip"}
    assert ip.run_line_magic("gcs_archive", "--status") == []


@pytest.mark.parametrize("line, message", [
    ("{run_dir}", "give RUN_DIR and gs://BUCKET"),
    ("--stop {run_dir}", "is not archived in the background"),
    ("{run_dir} gs://{bucket} --every soon", "is not an interval"),
])
def test_line_form_bad_input_is_one_line(ip, bucket, tmp_path, line, message):
    with pytest.raises(UsageError, match=message) as caught:
        ip.run_line_magic("gcs_archive", line.format(run_dir=tmp_path / "run1", bucket=bucket.name))

    assert "\n" not in str(caught.value)
    assert ip.run_line_magic("gcs_archive", "--status") == []


def test_line_form_checks_the_bucket_before_it_starts(ip, gcs, tmp_path, capsys):
    run_dir = tmp_path / "run1"
    write_step(run_dir, 1)

    with pytest.raises(UsageError, match="bucket gs://no-such-bucket does not exist") as caught:
        ip.run_line_magic("gcs_archive", f"{run_dir} gs://no-such-bucket --every 0.2s")

    assert "\n" not in str(caught.value)
    assert ip.run_line_magic("gcs_archive", "--status") == []  # nothing started
    assert "in the background" not in capsys.readouterr().out


def test_line_form_on_a_non_chief_worker_does_not_ask_the_bucket(ip, gcs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")  # torch.distributed's second worker archives nothing

    ip.run_line_magic("gcs_archive", f"{tmp_path / 'run1'} gs://no-such-bucket")

    assert "Archiving skipped: not the chief worker" in capsys.readouterr().out


def test_one_background_archiver_per_run_dir(ip, bucket, tmp_path):
    run_dir = tmp_path / "run1"
    ip.run_line_magic("gcs_archive", f"{run_dir} gs://{bucket.name}")
    try:
        with pytest.raises(UsageError, match="already archived in the background"):
            ip.run_line_magic("gcs_archive", f"{run_dir} gs://{bucket.name}/other")
    finally:
        ip.run_line_magic("gcs_archive", "--stop")


def test_the_cell_form_refuses_line_only_flags(ip, bucket, tmp_path):
    result = run_cell(ip, f"%%gcs_archive {tmp_path / 'run1'} gs://{bucket.name} --status\ncell_ran_here = 1\n")

    assert isinstance(result.error_in_exec, UsageError)
    assert "cell_ran_here" not in ip.user_ns  # the cell did not run


KERNEL = r"""
import os, sys, time
from pathlib import Path
from IPython.core.interactiveshell import InteractiveShell

run_dir, destination = Path(sys.argv[1]), sys.argv[2]
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "colab_magics")
shell.run_line_magic("gcs_archive", f"{run_dir} {destination} --every 0.2s")
run_dir.mkdir(parents=True, exist_ok=True)
for step in range(1, 10_000):  # later cells train; the magic returned long ago
    shell.run_cell(f"from pathlib import Path; import os\n"
                   f"Path({str(run_dir)!r}, '.tmp').write_bytes(os.urandom(1 << 20))\n"
                   f"os.replace(Path({str(run_dir)!r}, '.tmp'), Path({str(run_dir)!r}, 'step-{step}.pt'))\n"
                   f"print({step}, flush=True)")
    time.sleep(0.05)
"""


def test_a_kernel_ended_by_sigterm_archives_its_newest_step(bucket, emulator_host, tmp_path):
    script, run_dir, log = tmp_path / "kernel.py", tmp_path / "run1", tmp_path / "kernel.log"
    script.write_text(KERNEL)
    env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator_host, COLAB_MAGICS_PROGRESS="false")
    with open(log, "wb") as out:
        kernel = subprocess.Popen([sys.executable, str(script), str(run_dir), f"gs://{bucket.name}"],
                                  stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        poll(lambda: names(bucket), 30, message="a first archive from the kernel")
        poll(lambda: len(log.read_text().split()) >= 8, 30, message="the kernel's step 8")
        kernel.send_signal(signal.SIGTERM)
        assert kernel.wait(timeout=40) == -signal.SIGTERM, log.read_text()
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait(timeout=10)
    newest = checkpoints.find_checkpoint(run_dir).step
    assert f"run1.{newest}.zip" in names(bucket), (sorted(names(bucket)), log.read_text())


# --- %gcs_resume --------------------------------------------------------------------------------
def test_resume_restores_the_latest_archive_and_returns_its_record(ip, bucket, tmp_path, capsys):
    earlier = tmp_path / "vm1" / "run1"
    for step in (3, 8):
        write_step(earlier, step)
        runs.save_run(earlier, f"gs://{bucket.name}/exp", settings=NO_PROGRESS)
    run_dir = tmp_path / "vm2" / "run1"  # after a reset: nothing on disk

    resumed = ip.run_line_magic("gcs_resume", f"{run_dir} gs://{bucket.name}/exp")

    assert resumed and resumed.step == 8
    assert (run_dir / "step-8.pt").read_bytes() == (earlier / "step-8.pt").read_bytes()
    assert f"Restored gs://{bucket.name}/exp/run1.8.zip into {run_dir}" in capsys.readouterr().out


def test_resume_with_nothing_archived_is_a_falsy_fresh_start(ip, bucket, tmp_path, capsys):
    resumed = ip.run_line_magic("gcs_resume", f"{tmp_path / 'run1'} gs://{bucket.name}/exp")

    assert not resumed and resumed.step is None
    note = f"no archive of run1 under gs://{bucket.name}/exp: starting fresh"
    assert str(resumed) == note and note in capsys.readouterr().out
    assert not (tmp_path / "run1").exists()


def test_resume_from_a_missing_bucket_is_an_error(ip, gcs, tmp_path):
    with pytest.raises(UsageError, match="bucket gs://no-such-bucket-resume does not exist"):
        ip.run_line_magic("gcs_resume", f"{tmp_path / 'run1'} gs://no-such-bucket-resume")


def test_resume_from_python_is_the_same_first_line_on_both_runs(bucket, tmp_path):
    run_dir = tmp_path / "run1"
    first = runs.resume(run_dir, f"gs://{bucket.name}", settings=NO_PROGRESS)
    assert isinstance(first, runs.FreshStart) and not first
    write_step(run_dir, 5)
    runs.save_run(run_dir, f"gs://{bucket.name}", settings=NO_PROGRESS)
    (run_dir / "step-5.pt").unlink()

    second = runs.resume(run_dir, f"gs://{bucket.name}", settings=NO_PROGRESS)

    assert second and second.step == 5 and (run_dir / "step-5.pt").exists()
