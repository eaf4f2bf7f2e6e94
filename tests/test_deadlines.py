"""`retry_deadline` bounds every storage operation against an endpoint that stops answering.

The honest test of a deadline (TESTING.md): an endpoint that accepts TCP connections and never
answers — without a per-request timeout the library waits 60 s per request whatever the retry
deadline says. And a real emulator frozen (SIGSTOP) in the middle of an upload.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from colab_magics.settings import Settings
from colab_magics import auth, runs, session
from colab_magics.errors import ColabMagicsError
from conftest import poll, start_fake_gcs

DEADLINE = 5
SLACK = 10  # what the issue allows beyond the deadline
MiB = 1024 * 1024


class SilentEndpoint:
    """Accepts connections on 127.0.0.1 and holds them open without ever sending a byte."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, name="silent-endpoint", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture()
def silent(monkeypatch):
    endpoint = SilentEndpoint()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint.url)
    session.current().set_auth(auth.authenticate())
    yield endpoint
    session.current().set_auth(None)
    endpoint.close()


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    root = tmp_path / "run1"
    root.mkdir()
    (root / "model-5.keras").write_bytes(os.urandom(64 * 1024))
    return root


def fails_in_time(ip, magic: str, line: str) -> str:
    """Run the magic, which must fail with one line within the deadline (+ slack); return the line."""
    ip.run_line_magic("config", f"ColabMagics.retry_deadline = {DEADLINE}")
    began = time.monotonic()
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic(magic, line)
    elapsed = time.monotonic() - began
    message = str(caught.value)
    assert elapsed < DEADLINE + SLACK, f"%{magic} took {elapsed:.1f} s: {message}"
    assert "\n" not in message and "does not answer" in message, message
    return message


def test_save_to_a_silent_endpoint_fails_within_the_deadline(ip, silent, run_dir):
    fails_in_time(ip, "gcs_save", f"{run_dir} gs://some-bucket/exp")
    assert silent.held  # the request did reach the endpoint: it was the wait that was bounded


def test_load_from_a_silent_endpoint_fails_within_the_deadline(ip, silent, tmp_path):
    fails_in_time(ip, "gcs_load", f"gs://some-bucket/exp/run1 {tmp_path / 'back'}")
    assert silent.held and not (tmp_path / "back").exists()


def test_list_of_a_silent_endpoint_fails_within_the_deadline(ip, silent):
    fails_in_time(ip, "gcs_list", "gs://some-bucket/exp")
    assert silent.held


@pytest.mark.fuse
@pytest.mark.skipif(shutil.which("rclone") is None or not os.access("/dev/fuse", os.R_OK | os.W_OK),
                    reason="needs rclone and a usable /dev/fuse")
def test_mount_bucket_check_against_a_silent_endpoint_fails_within_the_deadline(ip, silent, tmp_path):
    fails_in_time(ip, "gcsfuse_mount", f"some-bucket {tmp_path / 'mnt'} --backend rclone")
    assert silent.held
    assert str(tmp_path / "mnt") not in Path("/proc/mounts").read_text()


def bytes_received(pid: int) -> int:
    """Bytes the process has read (sockets included), from /proc/PID/io."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def test_an_emulator_frozen_mid_upload_fails_the_save_within_the_deadline(tmp_path, monkeypatch):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    proc, host = start_fake_gcs()  # this test's own emulator: it is the one frozen
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
        session.current().set_auth(auth.authenticate())
        bucket = storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket("frozen")
        run_dir = tmp_path / "run1"
        run_dir.mkdir()
        (run_dir / "model-5.keras").write_bytes(os.urandom(48 * MiB))
        settings = Settings(chunk_size_mb=1, retry_deadline=DEADLINE, progress=False)
        outcome: dict[str, object] = {}

        def save() -> None:
            try:
                outcome["result"] = runs.save_run(run_dir, "gs://frozen", settings=settings)
            except ColabMagicsError as exc:
                outcome["error"] = exc

        before = bytes_received(proc.pid)
        saver = threading.Thread(target=save, daemon=True)
        saver.start()
        poll(lambda: bytes_received(proc.pid) - before > 8 * MiB or not saver.is_alive(), 60,
             message="the upload under way")
        assert saver.is_alive(), outcome
        os.kill(proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        saver.join(DEADLINE + SLACK + 30)  # a bound for the test itself, well past the claim
        elapsed = time.monotonic() - frozen_at

        assert not saver.is_alive() and "error" in outcome, outcome
        message = str(outcome["error"])
        assert elapsed < DEADLINE + SLACK, f"the save went on {elapsed:.1f} s after the freeze: {message}"
        assert "\n" not in message and "does not answer" in message, message
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        session.current().set_auth(None)
    try:
        assert [b.name for b in bucket.list_blobs()] == []  # nothing half-written became an object
    finally:
        proc.terminate()
        proc.wait(timeout=10)
