"""Shared fixtures: a real fake-gcs-server, a real IPython shell with the extension loaded.

The emulator is started here with plain subprocess (not through colab_magics' registry), so
`%unload_ext` in a test never ends it; every process colab_magics starts is checked to be gone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
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
    """`net_proxy(upstream_port, rate=BYTES_PER_S, fault=...)`: a running NetProxy (tests/netproxy.py);
    every one made is closed after the test."""
    from netproxy import NetProxy

    made = []

    def make(upstream_port: int | None = None, **options):
        proxy = NetProxy(upstream_port, **options).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


class ProxiedGcs:
    """An emulator reached only through `proxy`, a client and a fresh bucket on it."""

    def __init__(self, client, proxy, bucket, host: str):
        self.client, self.proxy, self.bucket, self.host = client, proxy, bucket, host

    def names(self) -> list[str]:
        return sorted(blob.name for blob in self.client.list_blobs(self.bucket.name))


@pytest.fixture()
def proxied_gcs(net_proxy, monkeypatch):
    """A fresh fake-gcs-server behind a NetProxy: the emulator's own URL (`-external-url`) is the
    proxy's, so resumable-upload sessions and media links lead there too, and every request of the
    client passes the proxy (set `.proxy.rate` or `.proxy.fault` to throttle or break them)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from colab_magics import auth, emulator, session

    proxy = net_proxy()
    host = f"http://127.0.0.1:{proxy.port}"
    port = free_port()
    argv = emulator.command(port)
    argv[argv.index("-external-url") + 1] = host
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: _answers(f"http://127.0.0.1:{port}/storage/v1/b"), 20, message="fake-gcs-server")
        proxy.upstream_port = port
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
        session.current().set_auth(auth.authenticate())
        client = storage.Client(project="test-project", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": host})
        yield ProxiedGcs(client, proxy, client.create_bucket(f"test-{uuid.uuid4().hex[:12]}"), host)
    finally:
        session.current().set_auth(None)
        proc.terminate()
        proc.wait(timeout=10)


# --- a storage endpoint whose answers a test can spoil ------------------------------------------
class FaultProxy:
    """A TCP proxy in front of the emulator that carries one request per connection (it adds
    `Connection: close`) and can spoil the body of the answers a test picks: flip one byte, or cut
    the connection part-way. `spoil(match, action, at)`: the next answer whose request head contains
    `match` has its body byte `at` flipped (action "flip"), ends after `at` bytes ("cut"), or is
    replaced by an error answer of HTTP status `at` ("status") without reaching the emulator.
    `heads` keeps every request head seen (first line and headers)."""

    def __init__(self, upstream_port: int):
        import socket
        import threading

        self.upstream = upstream_port
        self.heads: list[str] = []
        self._faults: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: set = set()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def spoil(self, match: str, action: str, at: int) -> None:
        with self._lock:
            self._faults.append((match, action, at))

    @property
    def pending(self) -> list[tuple[str, str, int]]:
        """The faults no answer has met yet."""
        with self._lock:
            return list(self._faults)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.heads.clear()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client) -> None:
        import socket
        import threading

        upstream = None
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            head, _, rest = head.partition(b"\r\n\r\n")
            lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
            text = b"\r\n".join(lines).decode("latin-1")
            with self._lock:
                self.heads.append(text)
                fault = next((f for f in self._faults if f[0] in text), None)
                if fault is not None:
                    self._faults.remove(fault)
            if fault is not None and fault[1] == "status":
                body = json.dumps({"error": {"code": fault[2], "message": f"HTTP {fault[2]} from the fault proxy"}})
                client.sendall(f"HTTP/1.1 {fault[2]} Spoiled\r\nContent-Type: application/json\r\n"
                               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
            self._open.update((client, upstream))
            upstream.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + rest)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            self._answer(upstream, client, fault)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._open.discard(sock)
                    _hang_up(sock)

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _answer(upstream, client, fault) -> None:
        head, body_seen = b"", None
        while data := upstream.recv(65536):
            if body_seen is None:
                head += data
                if b"\r\n\r\n" not in head:
                    continue
                head, _, data = head.partition(b"\r\n\r\n")
                client.sendall(head + b"\r\n\r\n")
                body_seen = 0
            if fault is not None:
                _, action, at = fault
                if action == "cut" and body_seen + len(data) > at:
                    client.sendall(data[: at - body_seen])
                    return  # the connection ends part-way through the body
                if action == "flip" and body_seen <= at < body_seen + len(data):
                    data = bytearray(data)
                    data[at - body_seen] ^= 0xFF
            client.sendall(data)
            body_seen += len(data)

    def close(self) -> None:
        _hang_up(self._server)
        for sock in list(self._open):
            _hang_up(sock)
        self._accepting.join(timeout=10)


def _hang_up(sock) -> None:
    """Shut a socket down before closing it: close() alone leaves a connection open while another
    thread is blocked reading it (the kernel holds the file until that read returns)."""
    import socket

    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture(scope="session")
def fault_proxy():
    """A fake-gcs-server of its own whose every answer, media downloads included (its external URL is
    the proxy's), goes through a FaultProxy; yields the proxy (its URL: http://127.0.0.1:PORT)."""
    from colab_magics import emulator

    port = free_port()
    proxy = FaultProxy(port)
    argv = emulator.command(port)
    argv[argv.index("-external-url") + 1] = f"http://127.0.0.1:{proxy.port}"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    SESSION_PIDS.add(proc.pid)
    poll(lambda: _answers(f"http://127.0.0.1:{proxy.port}/storage/v1/b"), 20,
         message="fake-gcs-server behind the proxy")
    yield proxy
    proxy.close()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def faulty_gcs(fault_proxy, monkeypatch):
    """A storage client (and the session's credentials) whose every request goes through `fault_proxy`."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from colab_magics import auth, session

    host = f"http://127.0.0.1:{fault_proxy.port}"
    fault_proxy.reset()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    session.current().set_auth(auth.authenticate())
    client = storage.Client(project="test-project", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": host})
    yield client
    session.current().set_auth(None)


@pytest.fixture()
def faulty_bucket(faulty_gcs):
    """A fresh, empty bucket behind the fault proxy."""
    return faulty_gcs.create_bucket(f"test-{uuid.uuid4().hex[:12]}")
