"""The colab-magics command line, run as a script would run it: a subprocess per command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "colab_magics.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "run1"
    run.mkdir()
    (run / "ckpt-7.index").write_bytes(b"index")
    (run / "ckpt-7.data-00000-of-00001").write_bytes(os.urandom(10_000))
    return run


def test_save_list_load_through_the_cli(bucket, emulator_host, run_dir, tmp_path):
    env = {"STORAGE_EMULATOR_HOST": emulator_host}
    saved = cli("save", str(run_dir), f"gs://{bucket.name}/cli", env=env)
    assert saved.returncode == 0, saved.stderr
    assert f"gs://{bucket.name}/cli/run1.7.zip" in saved.stdout

    listed = cli("list", f"gs://{bucket.name}/cli", env=env)
    assert listed.returncode == 0 and "run1" in listed.stdout and " 7 " in listed.stdout

    loaded = cli("load", f"gs://{bucket.name}/cli/run1", str(tmp_path / "back"), env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert (tmp_path / "back" / "ckpt-7.data-00000-of-00001").read_bytes() == \
        (run_dir / "ckpt-7.data-00000-of-00001").read_bytes()


def test_errors_exit_non_zero_with_the_magics_message(emulator_host, tmp_path):
    env = {"STORAGE_EMULATOR_HOST": emulator_host}
    missing = cli("save", str(tmp_path / "nope"), "gs://some-bucket", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"colab-magics save: run directory {tmp_path / 'nope'} does not exist: check the path"
    usage = cli("save", env=env)
    assert usage.returncode == 2 and "required" in usage.stderr
    unknown = cli("frobnicate")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


@pytest.mark.parametrize("command", ["save", "load", "list", "auth", "mount", "tunnel"])
def test_every_command_has_help(command):
    result = cli(command, "--help")
    assert result.returncode == 0
    assert f"colab-magics {command}" in result.stdout and "Examples" in result.stdout


def test_emulator_flag_starts_a_local_emulator_whose_data_survives(run_dir, tmp_path, monkeypatch):
    import psutil

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    env_clean = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    env_clean.update(env)
    run = lambda *a: subprocess.run([sys.executable, "-m", "colab_magics.cli", *a], capture_output=True,
                                    text=True, env=env_clean, timeout=120)
    saved = run("--emulator", "save", str(run_dir), "gs://local-bucket/x")
    assert saved.returncode == 0, saved.stderr
    listed = run("--emulator", "list", "gs://local-bucket/x")
    assert "run1" in listed.stdout, listed.stderr
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))]
    assert leftovers == []
