"""Where the bundled emulator keeps its data: one rule for %gcs_auth, gcloud_auth() and the CLI, and
never the user's ~/.cache during tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from colab_magics import emulator, session
from colab_magics.gcloud import gcloud_auth


@pytest.fixture()
def no_emulator_running(monkeypatch):
    """No STORAGE_EMULATOR_HOST, so `emulator=True` starts (or reuses) the bundled one; all ended after."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    yield
    session.current().processes.stop_all()
    session.current().set_auth(None)


def started_in(root: Path) -> str:
    return json.loads((root / "emulator.json").read_text())["host"]


def test_the_suite_keeps_emulator_data_out_of_the_users_cache():
    users_cache = Path(os.path.expanduser("~")) / ".cache"
    assert users_cache not in emulator.default_root().parents


def test_gcloud_auth_and_the_magic_share_colab_magics_emulator_dir(ip, tmp_path, monkeypatch, no_emulator_running):
    root = tmp_path / "emulator"
    monkeypatch.setenv("COLAB_MAGICS_EMULATOR_DIR", str(root))
    info = gcloud_auth(emulator=True)
    assert info.method == "emulator" and info.emulator_host == started_in(root)
    assert (root / "data" / emulator.DEFAULT_BUCKET).is_dir()

    assert "STORAGE_EMULATOR_HOST" not in os.environ  # the endpoint is the session's, not the environment's
    ip.run_line_magic("gcs_auth", "--emulator")  # the same directory: the running emulator is reused
    assert session.current().auth.emulator_host == info.emulator_host and not session.current().auth.emulator_started


def test_gcloud_auth_follows_config_emulator_dir(ip, tmp_path, no_emulator_running):
    root = tmp_path / "configured"
    ip.run_line_magic("config", f"ColabMagics.emulator_dir = {str(root)!r}")
    info = gcloud_auth(emulator=True)
    assert info.emulator_host == started_in(root)
