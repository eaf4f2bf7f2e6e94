"""Shared fixtures: a real fake-gcs-server, a real IPython shell with the extension loaded.

The emulator is started here with plain subprocess (not through colab_magics' registry), so
`%unload_ext` in a test never ends it; every process colab_magics starts is checked to be gone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest

from colab_magics.net import free_port  # noqa: F401  (tests import it from here)

pytest_plugins = ("hosted_env",)  # the colab, kaggle and standins_path fixtures (tests/hosted_env.py)

os.environ.setdefault("COLAB_MAGICS_PROGRESS", "false")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

# The suite never touches the user's ~/.cache: emulator data (`--emulator`, gcloud_auth) and any
# other cache go to a directory of this run, removed at exit. Subprocesses inherit both.
_CACHE = Path(tempfile.mkdtemp(prefix="colab-magics-tests-"))
atexit.register(shutil.rmtree, _CACHE, True)
os.environ["XDG_CACHE_HOME"] = str(_CACHE / "cache")
os.environ["COLAB_MAGICS_EMULATOR_DIR"] = str(_CACHE / "gcs-emulator")


def poll(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Wait for `predicate()` to be truthy, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def sigkill_mid_way(child, predicate, timeout: float, message: str) -> None:
    """SIGKILL `child` (a Popen with stdout piped) once `predicate()` holds, failing if it ended first."""
    try:
        poll(lambda: predicate() or child.poll() is not None, timeout, message=message)
        assert child.poll() is None, child.stdout.read().decode()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


SESSION_PIDS: set[int] = set()  # processes of session-scoped fixtures, which outlive a test


def start_fake_gcs(tmp_root: Path | None = None) -> tuple[subprocess.Popen, str]:
    from colab_magics import emulator

    port = free_port()
    host = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(emulator.command(port, tmp_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    SESSION_PIDS.add(proc.pid)
    poll(lambda: _answers(f"{host}/storage/v1/b"), 20, message="fake-gcs-server")
    return proc, host


@pytest.fixture(scope="session")
def emulator_host():
    """A real fake-gcs-server on a random port, in memory, for the whole test session."""
    proc, host = start_fake_gcs()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    yield host
    proc.terminate()
    proc.wait(timeout=10)
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture()
def gcs(emulator_host, monkeypatch):
    """A storage client on the emulator and the session's credentials pointing at it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from colab_magics import auth, session

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator_host)
    session.current().set_auth(auth.authenticate())
    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    yield client
    session.current().set_auth(None)


@pytest.fixture()
def bucket(gcs):
    """A fresh, empty bucket on the emulator."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    return gcs.create_bucket(name)


@pytest.fixture(scope="module")
def hf():
    """transformers and torch (with accelerate, which Trainer needs), or a skip naming the missing one."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    return transformers, torch


@pytest.fixture(scope="session")
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    return InteractiveShell.instance()


@pytest.fixture()
def ip(shell):
    """A real IPython shell with `%load_ext colab_magics` done; unloaded (and cleaned up) after."""
    shell.run_line_magic("load_ext", "colab_magics")
    yield shell
    shell.run_line_magic("unload_ext", "colab_magics")
    shell.config.pop("ColabMagics", None)  # %config values a test set stay with that test


@contextlib.contextmanager
def raises_worded(kind, match: str):
    """pytest.raises for a service's error, matched against its words in a notebook (the magics'
    dialect: `--create`, `%gcs_auth --emulator`), where a Python caller reads `create=True`."""
    from colab_magics.magics import DIALECT

    with pytest.raises(kind) as caught:
        yield caught
    words = DIALECT.render(caught.value)
    assert re.search(match, words), f"{match!r} not in {words!r}"


def notebook_words(said) -> str:
    """An error or note as a notebook shows it."""
    from colab_magics.magics import DIALECT

    return DIALECT.render(said)


def run_cell(shell, code: str):
    """Run a cell as a user would; return the ExecutionResult."""
    return shell.run_cell(code, store_history=False)


@pytest.fixture(autouse=True)
def no_orphans():
    """Every child process a test leaves behind must be one it found (the session emulator)."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    from colab_magics import session

    leftover = session.current().processes.all()
    for tracked in leftover:
        tracked.stop()
    assert not leftover, f"test left tracked processes running: {[t.name for t in leftover]}"

    def strays():
        return [p for p in me.children(recursive=True)
                if p.pid not in before and p.pid not in SESSION_PIDS and _running(p)]

    deadline = time.monotonic() + 10
    while strays() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = strays()
    for p in left:
        p.kill()
    assert not left, f"test left child processes: {[p.name() for p in left]}"


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- a TCP proxy for throttling and faults (tests/netproxy.py; benchmarks use the same) ------------
@pytest.fixture()
def net_proxy():
    """`net_proxy(upstream_port, rate=BYTES_PER_S, fault=...)`: a bare running NetProxy
    (tests/netproxy.py); every one made is closed after the test."""
    from netproxy import NetProxy

    made = []

    def make(upstream_port: int | None = None, **options):
        proxy = NetProxy(upstream_port, **options).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture(scope="session")
def proxied_emulator():
    """A fake-gcs-server of its own reached only through a NetProxy, for the whole session: the
    emulator's URL (`-external-url`) is the proxy's, so resumable-upload sessions and media links
    lead through the proxy too. Yields the proxy; tests use it through `proxied_gcs`."""
    from colab_magics import emulator
    from netproxy import NetProxy

    port = free_port()
    proxy = NetProxy(port).start()
    argv = emulator.command(port)
    argv[argv.index("-external-url") + 1] = f"http://127.0.0.1:{proxy.port}"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    SESSION_PIDS.add(proc.pid)
    try:
        poll(lambda: _answers(f"http://127.0.0.1:{proxy.port}/storage/v1/b"), 20,
             message="fake-gcs-server behind the proxy")
        yield proxy
    finally:
        proxy.close()
        proc.terminate()
        proc.wait(timeout=10)


class ProxiedGcs:
    """The proxied emulator as a test sees it: the `proxy`, a `client` and a fresh `bucket` on it, `host`."""

    def __init__(self, client, proxy, bucket, host: str):
        self.client, self.proxy, self.bucket, self.host = client, proxy, bucket, host

    def names(self) -> list[str]:
        return sorted(blob.name for blob in self.client.list_blobs(self.bucket.name))


@pytest.fixture()
def proxied_gcs(proxied_emulator, monkeypatch):
    """A client, the session's credentials and a fresh bucket on the emulator behind the proxy, which
    starts the test plain (no rate, no fault, up, no connection open); set `.proxy.rate`,
    `.proxy.fault`, `.proxy.cut_after(n)` or `.proxy.go_down()` to throttle or break the requests."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from colab_magics import auth, session

    proxy = proxied_emulator
    proxy.reset()
    host = f"http://127.0.0.1:{proxy.port}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    session.current().set_auth(auth.authenticate())
    client = storage.Client(project="test-project", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": host})
    try:
        yield ProxiedGcs(client, proxy, client.create_bucket(f"test-{uuid.uuid4().hex[:12]}"), host)
    finally:
        session.current().set_auth(None)
