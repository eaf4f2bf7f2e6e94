"""%gcsfuse_mount: real `rclone mount` over real FUSE against the real fake-gcs-server.

Every test mounts under its own tmp_path and the `mount_point` fixture unmounts whatever is left,
so no mount survives a test (pytest would otherwise clean tmp_path *through* the mount).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError

from conftest import poll, run_cell, raises_worded

from colab_magics import mount, session
from colab_magics.errors import (
    BucketNotFound,
    FuseUnavailable,
    MountBackendDied,
    MountBackendInstallFailed,
    MountError,
    MountPointBusy,
    MountPointNotEmpty,
    MountTimeout,
    NotMounted,
)

_FUSE_OK = Path("/dev/fuse").exists() and os.access("/dev/fuse", os.R_OK | os.W_OK)
pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not _FUSE_OK, reason="/dev/fuse is missing or not usable by this user"),
    pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (apt-get install rclone fuse3)"),
]


def mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


def backend_processes(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(path) in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def object_bytes(bucket, name: str) -> bytes | None:
    blob = bucket.get_blob(name)
    return blob.download_as_bytes() if blob is not None else None


@pytest.fixture()
def mount_point(tmp_path):
    """A fresh (not yet existing) mount point; anything still mounted under tmp_path is unmounted after."""
    yield tmp_path / "mnt"
    mount.unmount_all(timeout=60)
    for line in Path("/proc/mounts").read_text().splitlines():
        where = line.split()[1]
        if where.startswith(str(tmp_path)):
            subprocess.run(["fusermount3", "-uz", where], check=False, timeout=30)


@pytest.fixture()
def stub_bin(tmp_path, monkeypatch):
    """A directory put first on PATH, for failure-mode stubs of external programs."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", f"{path}{os.pathsep}{os.environ['PATH']}")
    return path


def write_stub(directory: Path, name: str, script: str) -> Path:
    stub = directory / name
    stub.write_text("#!/bin/sh\n" + textwrap.dedent(script))
    stub.chmod(0o755)
    return stub


# --- the happy path -------------------------------------------------------------------------------
def test_file_written_through_the_mount_appears_as_an_object(bucket, mount_point):
    result = mount.mount(bucket.name, mount_point, backend="rclone")

    assert result.mount_point == str(mount_point) and result.backend == "rclone" and not result.reused
    assert mounted(mount_point)
    (mount_point / "ckpt").mkdir()
    (mount_point / "ckpt" / "model.index").write_bytes(b"weights v1")

    poll(lambda: object_bytes(bucket, "ckpt/model.index") == b"weights v1", 15,
         message="the file written through the mount to appear in the bucket")


def test_files_written_then_unmounted_at_once_are_all_in_the_bucket(bucket, mount_point):
    payload = os.urandom(8 * 1024 * 1024)
    mount.mount(bucket.name, mount_point, backend="rclone")
    (mount_point / "big.bin").write_bytes(payload)
    for i in range(10):
        (mount_point / f"small-{i}.txt").write_text(f"file {i}")

    result = mount.unmount(mount_point)  # no waiting in between: the data-loss trap of write-back

    assert result.ours and not mounted(mount_point)
    assert object_bytes(bucket, "big.bin") == payload
    assert [object_bytes(bucket, f"small-{i}.txt") for i in range(10)] == [f"file {i}".encode() for i in range(10)]


def test_objects_uploaded_through_the_api_are_readable_through_the_mount(bucket, mount_point):
    bucket.blob("data/before.txt").upload_from_string(b"uploaded before mounting")
    mount.mount(bucket.name, mount_point, backend="rclone")

    assert (mount_point / "data" / "before.txt").read_bytes() == b"uploaded before mounting"

    bucket.blob("after.txt").upload_from_string(b"uploaded while mounted")
    # rclone trusts a directory listing for RCLONE_DIR_CACHE_TIME (10 s): new objects appear after it
    poll(lambda: (mount_point / "after.txt").exists(), 20, interval=0.5,
         message="an object uploaded while mounted to show up")
    assert (mount_point / "after.txt").read_bytes() == b"uploaded while mounted"


def test_mounting_again_with_the_same_arguments_reuses_the_mount(bucket, mount_point):
    first = mount.mount(bucket.name, mount_point, backend="rclone")
    again = mount.mount(bucket.name, mount_point, backend="rclone")

    assert again.reused and again.pid == first.pid
    assert len([t for t in session.current().processes.all() if str(mount_point) in t.name]) == 1


def test_create_makes_a_missing_bucket(gcs, mount_point):
    name = f"created-{uuid.uuid4().hex[:10]}"
    with raises_worded(BucketNotFound, "--create"):
        mount.mount(name, mount_point, backend="rclone")
    assert not mounted(mount_point) and not session.current().processes.all()

    # the emulator ignores location and storage class; here they only have to be accepted
    result = mount.mount(name, mount_point, create=True, location="EU", storage_class="standard",
                         backend="rclone")

    assert result.created_bucket and gcs.bucket(name).exists()
    (mount_point / "hello.txt").write_text("hi")
    mount.unmount(mount_point)
    assert object_bytes(gcs.bucket(name), "hello.txt") == b"hi"


def test_only_dir_mounts_one_prefix(bucket, mount_point):
    bucket.blob("run1/events.txt").upload_from_string(b"run1")
    bucket.blob("run2/events.txt").upload_from_string(b"run2")

    result = mount.mount(f"gs://{bucket.name}/run1", mount_point, backend="rclone")
    assert result.only_dir == "run1" and result.url == f"gs://{bucket.name}/run1"
    assert sorted(os.listdir(mount_point)) == ["events.txt"]
    assert (mount_point / "events.txt").read_bytes() == b"run1"
    (mount_point / "new.txt").write_text("under run1")
    mount.unmount(mount_point)

    assert object_bytes(bucket, "run1/new.txt") == b"under run1"
    assert bucket.get_blob("new.txt") is None


def test_read_only_mount_reads_but_refuses_writes(bucket, mount_point):
    bucket.blob("dataset.csv").upload_from_string(b"a,b\n1,2\n")
    result = mount.mount(bucket.name, mount_point, read_only=True, backend="rclone")

    assert result.read_only
    assert (mount_point / "dataset.csv").read_bytes() == b"a,b\n1,2\n"
    with pytest.raises(OSError):
        (mount_point / "new.txt").write_text("nope")
    assert [m.read_only for m in mount.active_mounts() if m.mount_point == str(mount_point)] == [True]


def test_unmount_leaves_no_process_and_no_mount(bucket, mount_point):
    result = mount.mount(bucket.name, mount_point, backend="rclone")
    assert psutil.pid_exists(result.pid)

    unmounted = mount.unmount(mount_point)

    assert unmounted.ours and unmounted.backend == "rclone"
    assert not mounted(mount_point)
    assert not psutil.pid_exists(result.pid) or psutil.Process(result.pid).status() == psutil.STATUS_ZOMBIE
    assert not backend_processes(mount_point) and not session.current().processes.all()
    with raises_worded(NotMounted, "--list"):
        mount.unmount(mount_point)


def test_mounts_are_unmounted_when_the_interpreter_exits(emulator_host, bucket, tmp_path):
    where = tmp_path / "exit-mnt"
    code = textwrap.dedent(f"""
        from colab_magics import mount
        mount.mount({bucket.name!r}, {str(where)!r}, backend="rclone")
        open({str(where / 'last-words.txt')!r}, "w").write("written just before exit")
    """)
    try:
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                       env={**os.environ, "STORAGE_EMULATOR_HOST": emulator_host})
        assert not mounted(where)
        assert not backend_processes(where)
        assert object_bytes(bucket, "last-words.txt") == b"written just before exit"
    finally:
        if mounted(where):
            subprocess.run(["fusermount3", "-uz", str(where)], check=False, timeout=30)


# --- errors a user can run into ---------------------------------------------------------------------
def test_missing_bucket_suggests_create(gcs, mount_point):
    with raises_worded(BucketNotFound, r"gs://no-such-bucket-\w+ does not exist: add --create"):
        mount.mount(f"no-such-bucket-{uuid.uuid4().hex[:8]}", mount_point, backend="rclone")


def test_mount_point_not_empty(bucket, mount_point):
    mount_point.mkdir()
    (mount_point / "precious.txt").write_text("keep me")

    with pytest.raises(MountPointNotEmpty, match="not empty"):
        mount.mount(bucket.name, mount_point, backend="rclone")
    assert not mounted(mount_point) and (mount_point / "precious.txt").read_text() == "keep me"


def test_mount_point_already_a_mount(gcs, bucket, mount_point):
    other = gcs.create_bucket(f"other-{uuid.uuid4().hex[:10]}")
    mount.mount(bucket.name, mount_point, backend="rclone")

    with raises_worded(MountPointBusy, "already a mount point.*--unmount"):
        mount.mount(other.name, mount_point, backend="rclone")


def test_open_file_blocks_unmount_with_a_clear_message(bucket, mount_point):
    mount.mount(bucket.name, mount_point, backend="rclone")
    handle = open(mount_point / "open.txt", "w")
    try:
        with pytest.raises(MountPointBusy, match="in use"):
            mount.unmount(mount_point)
        assert mounted(mount_point)
    finally:
        handle.write("closed at last")
        handle.close()
    mount.unmount(mount_point)
    assert object_bytes(bucket, "open.txt") == b"closed at last"


def test_fuse_unavailable(bucket, mount_point, tmp_path, monkeypatch):
    # simulated: the module's documented FUSE_DEVICE points at a path that does not exist
    monkeypatch.setattr(mount, "FUSE_DEVICE", str(tmp_path / "no-fuse"))

    with raises_worded(FuseUnavailable, "FUSE is not available here .*--device /dev/fuse"):
        mount.mount(bucket.name, mount_point, backend="rclone")
    assert not session.current().processes.all()


def test_backend_that_dies_shows_its_last_lines(bucket, mount_point, stub_bin):
    # failure-mode stub: an `rclone` that fails at start-up the way a misconfigured one does
    write_stub(stub_bin, "rclone", """\
        echo "NOTICE: starting" >&2
        echo "CRITICAL: Failed to create file system: stub failure for the test" >&2
        exit 3
    """)

    with pytest.raises(MountBackendDied) as caught:
        mount.mount(bucket.name, mount_point, backend="rclone")

    assert "rclone exited with code 3" in str(caught.value)
    assert "stub failure for the test" in str(caught.value)
    assert caught.value.returncode == 3
    assert not mounted(mount_point) and not session.current().processes.all()


def test_backend_that_never_mounts_times_out_and_is_ended(bucket, mount_point, stub_bin):
    # failure-mode stub: an `rclone` that hangs without ever mounting
    write_stub(stub_bin, "rclone", """\
        echo "stub: hanging" >&2
        exec sleep 60
    """)
    started = time.monotonic()

    with pytest.raises(MountTimeout, match="not usable .* after 1 s"):
        mount.mount(bucket.name, mount_point, backend="rclone", timeout=1)

    assert time.monotonic() - started < 10
    assert not session.current().processes.all() and not backend_processes(mount_point)


@pytest.mark.skipif(os.geteuid() != 0, reason="the apt-get path is taken only as root")
def test_missing_rclone_that_apt_cannot_install(bucket, mount_point, stub_bin, monkeypatch):
    # failure-mode stub: PATH holds only an `apt-get` that fails as it does offline; no rclone at all
    write_stub(stub_bin, "apt-get", """\
        echo "E: Unable to locate package rclone" >&2
        exit 100
    """)
    monkeypatch.setenv("PATH", str(stub_bin))

    with pytest.raises(MountBackendInstallFailed, match=r"(?s)apt-get could not install rclone fuse3 .*Unable to locate package rclone"):
        mount.mount(bucket.name, mount_point, backend="rclone")


@pytest.mark.skipif(shutil.which("gcsfuse") is not None, reason="gcsfuse is installed: nothing to install")
@pytest.mark.skipif(os.geteuid() != 0 or not Path("/etc/debian_version").exists(),
                    reason="the gcsfuse install runs only as root on Debian/Ubuntu")
def test_gcsfuse_install_without_internet_fails_clearly(monkeypatch):
    from conftest import free_port

    # simulated offline: Google's key URL is pointed at a closed local port
    monkeypatch.setattr(mount, "GCSFUSE_APT_KEY_URL", f"http://127.0.0.1:{free_port()}/apt/doc/apt-key.gpg")
    sources_before = Path(mount.GCSFUSE_SOURCES).exists()

    with raises_worded(MountBackendInstallFailed, "could not download Google's apt key .*--backend rclone"):
        mount.install_gcsfuse()
    assert Path(mount.GCSFUSE_SOURCES).exists() == sources_before  # nothing half-configured


def test_gcsfuse_backend_missing_names_the_fix(bucket, mount_point, monkeypatch):
    if shutil.which("gcsfuse"):
        pytest.skip("gcsfuse is installed")
    with raises_worded(MountError, "gcsfuse is not installed: add --install .* or use --backend rclone"):
        mount.mount(bucket.name, mount_point, backend="gcsfuse")


def test_rclone_gets_credentials_only_through_its_environment(tmp_path, monkeypatch):
    from colab_magics.auth import AuthInfo

    key = tmp_path / "key.json"
    key.write_text("{}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    argv, env = mount.rclone_command("rclone", "b", tmp_path / "m", AuthInfo("service-account", "sa", "p"))
    assert env[f"RCLONE_CONFIG_{mount.RCLONE_REMOTE}_SERVICE_ACCOUNT_FILE"] == str(key)
    assert not any(str(key) in arg for arg in argv)
    assert "--vfs-write-back" in argv and argv[argv.index("--vfs-write-back") + 1] == "0s"

    _, env = mount.rclone_command("rclone", "b", tmp_path / "m", AuthInfo("adc", "me", "p"))
    assert env[f"RCLONE_CONFIG_{mount.RCLONE_REMOTE}_ENV_AUTH"] == "true"


# --- gcsfuse, where it exists -------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("gcsfuse") is None,
                    reason="gcsfuse is not installed (it comes only from Google's apt repository)")
def test_gcsfuse_backend_mounts_for_real(bucket, mount_point):
    bucket.blob("from-api.txt").upload_from_string(b"api")
    result = mount.mount(bucket.name, mount_point, backend="gcsfuse")

    assert result.backend == "gcsfuse" and mounted(mount_point)
    assert (mount_point / "from-api.txt").read_bytes() == b"api"
    (mount_point / "from-mount.txt").write_text("mount")
    mount.unmount(mount_point)
    assert object_bytes(bucket, "from-mount.txt") == b"mount"


# --- the magic and the seed API ---------------------------------------------------------------------
def test_magic_mounts_lists_and_unmounts(ip, bucket, mount_point):
    path = ip.run_line_magic("gcsfuse_mount", f"{bucket.name} {mount_point} --backend rclone")
    assert path == str(mount_point) and mounted(mount_point)

    listing = ip.run_line_magic("gcsfuse_mount", "--list")
    assert [m.source for m in listing if m.mount_point == str(mount_point)] == [f"gs://{bucket.name}"]
    assert str(mount_point) in str(listing.table)

    run_cell(ip, f"open({str(mount_point / 'note.txt')!r}, 'w').write('from a cell')")
    assert ip.run_line_magic("gcsfuse_mount", f"{bucket.name} {mount_point} --unmount") == str(mount_point)
    assert not mounted(mount_point) and not session.current().processes.all()
    assert object_bytes(bucket, "note.txt") == b"from a cell"


def test_magic_errors_are_one_line_usage_errors(ip, gcs, mount_point):
    with raises_worded(UsageError, "does not exist: add --create"):
        ip.run_line_magic("gcsfuse_mount", f"missing-{uuid.uuid4().hex[:8]} {mount_point} --backend rclone")
    with pytest.raises(UsageError, match="give a BUCKET"):
        ip.run_line_magic("gcsfuse_mount", "")
    with raises_worded(UsageError, "apply to a new bucket: add --create"):
        ip.run_line_magic("gcsfuse_mount", f"some-bucket {mount_point} --location EU")
    assert not mounted(mount_point)


def test_unload_ext_unmounts(ip, bucket, mount_point):
    ip.run_line_magic("gcsfuse_mount", f"{bucket.name} {mount_point} --backend rclone")
    (mount_point / "before-unload.txt").write_text("saved")

    ip.run_line_magic("unload_ext", "colab_magics")
    try:
        assert not mounted(mount_point) and not backend_processes(mount_point)
        assert object_bytes(bucket, "before-unload.txt") == b"saved"
    finally:
        ip.run_line_magic("load_ext", "colab_magics")  # the fixture unloads it again


def test_seed_gcsfuse_creates_the_bucket_and_returns_the_path(gcs, tmp_path, monkeypatch):
    from colab_magics import gcloud

    monkeypatch.setattr(mount, "DEFAULT_ROOT", str(tmp_path / "gcs-bucket"))
    name = f"seed-{uuid.uuid4().hex[:10]}"
    try:
        path = gcloud.gcsfuse(name)
        assert path == str(tmp_path / "gcs-bucket" / name) and mounted(Path(path))
        assert gcs.bucket(name).exists()
        assert gcloud.gcsfuse(name) == path  # running the cell again reuses the mount
    finally:
        mount.unmount_all(timeout=60)


def test_a_mount_whose_backend_was_killed_is_replaced_by_the_next_mount(bucket, mount_point):
    first = mount.mount(bucket.name, mount_point, backend="rclone")
    psutil.Process(first.pid).kill()  # e.g. the OOM killer during training (SIGKILL: no unmount)
    poll(lambda: not session.current().processes.all(), 10, message="the killed rclone to be noticed")
    with pytest.raises(OSError):  # what the user sees: "Transport endpoint is not connected"
        os.listdir(mount_point)

    again = mount.mount(bucket.name, mount_point, backend="rclone")  # cleans the dead mount first

    assert again.pid != first.pid and not again.reused and os.listdir(mount_point) == []
    assert len([line for line in Path("/proc/mounts").read_text().splitlines()
                if line.split()[1] == str(mount_point)]) == 1


def test_a_dead_mount_can_be_unmounted(bucket, mount_point):
    first = mount.mount(bucket.name, mount_point, backend="rclone")
    psutil.Process(first.pid).kill()
    poll(lambda: not session.current().processes.all(), 10, message="the killed rclone to be noticed")

    assert mount.unmount(mount_point).ours is False
    assert not mounted(mount_point)


def test_a_live_mount_of_someone_else_is_not_taken_over(gcs, bucket, mount_point):
    mount_point.mkdir()
    other = subprocess.Popen(["rclone", "mount", f"{mount.RCLONE_REMOTE}:{bucket.name}", str(mount_point)],
                             env={**os.environ, **mount.rclone_command("rclone", bucket.name, mount_point,
                                                                        session.current().auth)[1]},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: mounted(mount_point), 20, message="the other rclone mount")
        with pytest.raises(MountPointBusy, match="already a mount point"):
            mount.mount(bucket.name, mount_point, backend="rclone")
        assert mounted(mount_point) and other.poll() is None
    finally:
        subprocess.run(["fusermount3", "-u", str(mount_point)], check=False, timeout=30)
        other.terminate()
        other.wait(timeout=30)


def test_magic_mount_point_with_spaces_quotes_and_dollar(ip, bucket, mount_point):
    ip.user_ns["x"] = "EXPANDED"  # '...' keeps `$x` literal, as in a shell
    where = mount_point.parent / 'my "quoted" mount $x'
    path = ip.run_line_magic("gcsfuse_mount", f"{bucket.name} '{where}' --backend rclone")
    assert path == str(where) and any(row[1] == str(where) for row in mount._proc_mounts())
    (where / "note.txt").write_text("hello")
    assert ip.run_line_magic("gcsfuse_mount", f"{bucket.name} '{where}' --unmount") == str(where)
    assert object_bytes(bucket, "note.txt") == b"hello"
