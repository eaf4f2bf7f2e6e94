"""Listings show themselves and return their rows: `%gcs_list`, `%gcs_archive --status`,
`%gcsfuse_mount --list` and `%tensorboard_tunnel --list` display their table even when assigned
(`rows = %gcs_list …`) or run from `ipython script.ipy`, and are shown once when they are the
cell's value. A real IPython shell, an `ipython` process running a script, a real kernel (nbclient).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from colab_magics import runs
from colab_magics.settings import Settings
from tests.test_archiver import write_step

ROOT = Path(__file__).resolve().parent.parent
FAST = Settings(chunk_size_mb=1, retry_deadline=5, progress=False)
EMPTY = {
    "gcs_archive --status": "no background archiving",
    "gcsfuse_mount --list": "no bucket mounts",
    "tensorboard_tunnel --list": "no TensorBoard or tunnel running",
}


@pytest.fixture()
def archived(bucket, tmp_path):
    """A bucket holding one archive, run1.1.zip; its URL."""
    run_dir = tmp_path / "run1"
    write_step(run_dir, 1, size=1000)
    return runs.save_run(run_dir, f"gs://{bucket.name}/exp", settings=FAST).url


def cell(shell, code: str):
    """A cell as a notebook runs it (execution count and history kept)."""
    result = shell.run_cell(code, store_history=True)
    result.raise_error()
    return result


def test_an_assigned_listing_shows_its_table_and_returns_its_rows(ip, bucket, archived, capsys):
    cell(ip, f"rows = %gcs_list gs://{bucket.name}")

    out = capsys.readouterr().out
    assert "prefix  run" in out and archived in out
    rows = ip.user_ns["rows"]
    assert isinstance(rows, list) and [a.url for a in rows] == [archived]


def test_a_listing_that_is_the_cells_value_is_shown_once_and_again_later(ip, bucket, archived, capsys):
    cell(ip, f"%gcs_list gs://{bucket.name}")
    assert capsys.readouterr().out.count(archived) == 1

    cell(ip, f"rows = %gcs_list gs://{bucket.name}")
    capsys.readouterr()
    cell(ip, "rows")  # a later cell asks for the rows again: shown again
    assert capsys.readouterr().out.count(archived) == 1


@pytest.mark.parametrize("line", sorted(EMPTY))
def test_every_listing_shows_itself_when_assigned(ip, capsys, line):
    cell(ip, f"rows = %{line}")

    assert EMPTY[line] in capsys.readouterr().out
    assert ip.user_ns["rows"] == []


def test_status_of_a_running_archiver_is_shown_when_assigned(ip, bucket, tmp_path, capsys):
    run_dir = tmp_path / "run1"
    ip.run_line_magic("gcs_archive", f"{run_dir} gs://{bucket.name} --every 1h")
    try:
        capsys.readouterr()
        cell(ip, "status = %gcs_archive --status")
        out = capsys.readouterr().out
        assert "run dir" in out and str(run_dir) in out
        assert [w.run_dir for w in ip.user_ns["status"]] == [run_dir]
    finally:
        ip.run_line_magic("gcs_archive", "--stop")


def test_a_script_run_by_ipython_shows_every_listing(bucket, archived, emulator_host, tmp_path):
    script = tmp_path / "listings.ipy"
    script.write_text("%load_ext colab_magics\n"
                      f"rows = %gcs_list gs://{bucket.name}\n"
                      "print('returned', len(rows), 'row(s)')\n"
                      + "".join(f"%{line}\n" for line in sorted(EMPTY)))
    env = dict(os.environ, STORAGE_EMULATOR_HOST=emulator_host, IPYTHONDIR=str(tmp_path / "ipython"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

    result = subprocess.run([sys.executable, "-m", "IPython", "--no-banner", str(script)], capture_output=True,
                            text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)

    assert result.returncode == 0, result.stderr
    assert archived in result.stdout and "returned 1 row(s)" in result.stdout
    for words in EMPTY.values():
        assert words in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_notebook_cell_shows_the_table_as_html_once(bucket, archived, emulator_host, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator_host)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
        "%load_ext colab_magics",
        f"rows = %gcs_list gs://{bucket.name}",
        f"%gcs_list gs://{bucket.name}",
        "len(rows)",
    )])

    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()

    assigned, value, length = (c.outputs for c in nb.cells[1:])
    for outputs in (assigned, value):  # the table, once, as HTML with a text alternative
        assert [o.output_type for o in outputs] == ["display_data"]
        assert "<table>" in outputs[0].data["text/html"] and archived in outputs[0].data["text/plain"]
    assert [o.output_type for o in length] == ["execute_result"] and length[0].data["text/plain"] == "1"
