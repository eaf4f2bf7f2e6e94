"""The colab-magics command line, run as a shell user runs it: the installed entry point, a subprocess
per command (PYTHONPATH puts this checkout first), against the real emulator."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import poll

from colab_magics import mount, net
from colab_magics.cli import COMMANDS
from tests.test_tensorboard import write_events
from tests.test_tunnels import get, sshd  # noqa: F401  (a fixture)

ENTRY_POINT = shutil.which("colab-magics")  # installed by `pip install -e .`: missing is a failure, not a skip
ROOT = Path(__file__).resolve().parent.parent
WEIRD = 'my "quoted" run $HOME'  # what a shell user gets with  'my "quoted" run $HOME'


def environment(extra: dict | None = None, drop: tuple[str, ...] = ()) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    assert ENTRY_POINT, "the colab-magics console script is not installed: pip install -e ."
    return subprocess.run([ENTRY_POINT, *args], capture_output=True, text=True, env=environment(env),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def make_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "ckpt-7.index").write_bytes(b"index")
    (path / "ckpt-7.data-00000-of-00001").write_bytes(os.urandom(10_000))
    return path


def test_save_list_load_paths_with_spaces_quotes_and_dollar(bucket, emulator_host, tmp_path):
    env = {"STORAGE_EMULATOR_HOST": emulator_host}
    run = make_run(tmp_path / "parent dir" / WEIRD)
    saved = cli("save", str(run), f"gs://{bucket.name}/a prefix", env=env)
    assert saved.returncode == 0, saved.stderr
    assert f"gs://{bucket.name}/a prefix/{WEIRD}.7.zip" in saved.stdout

    listed = cli("list", f"gs://{bucket.name}", env=env)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.strip().splitlines()
    assert header.split()[:3] == ["prefix", "run", "step"]
    assert row.startswith(f"a prefix  {WEIRD}  7 ")

    target = tmp_path / "back $HOME"
    loaded = cli("load", f"gs://{bucket.name}/a prefix/{WEIRD}", str(target), env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert (target / "ckpt-7.data-00000-of-00001").read_bytes() == (run / "ckpt-7.data-00000-of-00001").read_bytes()


def test_global_options_before_or_after_the_command(emulator_host):
    env = {"STORAGE_EMULATOR_HOST": emulator_host}
    for argv in (["auth", "--project", "my-project"], ["--project", "my-project", "auth"], ["auth", "my-project"]):
        result = cli(*argv, env=env)
        assert result.returncode == 0, result.stderr
        assert one_line(result.stdout).endswith("(emulator), project my-project")


def test_emulator_option_keeps_its_data_in_colab_magics_emulator_dir(tmp_path):
    data = tmp_path / "emulator data"
    env = {"COLAB_MAGICS_EMULATOR_DIR": str(data)}
    run = make_run(tmp_path / "run1")
    env_no_host = environment(env, drop=("STORAGE_EMULATOR_HOST",))
    call = lambda *a: subprocess.run([ENTRY_POINT, *a], capture_output=True, text=True, env=env_no_host, timeout=120)
    saved = call("save", str(run), "gs://local-bucket/x", "--emulator")
    assert saved.returncode == 0, saved.stderr
    listed = call("--emulator", "list", "gs://local-bucket")  # a new emulator on the same data
    assert listed.returncode == 0 and "run1" in listed.stdout, listed.stderr
    assert list((data / "data" / "local-bucket").rglob("run1.7.zip"))
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))]
    assert leftovers == []


def test_alone_it_lists_the_commands_one_per_line_and_exits_2():
    result = cli()
    assert result.returncode == 2
    assert [line.strip() for line in result.stderr.splitlines()[-len(COMMANDS):]] == list(COMMANDS)
    assert "Traceback" not in result.stderr


def test_version():
    from colab_magics import __version__

    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"colab-magics {__version__}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help_written_for_a_shell(command):
    result = cli(command, "--help")
    assert result.returncode == 0
    text = result.stdout
    assert text.startswith(f"usage: colab-magics {command} ")
    assert "--emulator" in text and "--project" in text
    examples = text.split("examples:\n", 1)[1].strip().splitlines()
    assert examples and all(line.strip().startswith("colab-magics ") for line in examples)
    for magic_only in ("::", "%", "unload_ext", "ColabMagics", "Examples"):
        assert magic_only not in text, magic_only
    assert not re.search(r"^\s*\w+ = ", text, re.M)


def test_top_level_help_lists_every_command_with_its_summary():
    text = cli("--help").stdout
    for name, command in COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(command.summary)}$", text, re.M), name


def test_misuse_exits_2_with_one_line_naming_the_commands_help(emulator_host, tmp_path):
    cases = {
        ("save",): "colab-magics save --help",
        ("save", "/tmp/run"): "colab-magics save --help",
        ("list", "gs://b", "--frobnicate"): "colab-magics list --help",
        ("frobnicate",): "colab-magics --help",
        ("--frobnicate", "save"): "colab-magics --help",
    }
    for argv, names in cases.items():
        result = cli(*argv, env={"STORAGE_EMULATOR_HOST": emulator_host})
        assert result.returncode == 2, (argv, result.stderr)
        assert names in one_line(result.stderr)


@pytest.mark.parametrize("url, why", [
    ("gs://my-bucket\n/exp", "is not a valid name"),  # a bucket name ending in a newline
    ("gs://my-bucket\n", "is not a valid name"),
    ("gs://my-bucket/exp\nrun", "line break"),
    ("gs://my-bucket/" + "x" * 1100, "over Cloud Storage's 1024"),
])
def test_a_name_cloud_storage_refuses_is_one_line_and_exit_2(emulator_host, tmp_path, url, why):
    run = make_run(tmp_path / "run1")
    env = {"STORAGE_EMULATOR_HOST": emulator_host}
    for argv in (("list", url), ("save", str(run), url), ("load", url + "/run1", str(tmp_path / "back")),
                 ("run", str(run), url, "--", "true")):
        result = cli(*argv, env=env)
        assert result.returncode == 2, (argv, result.stderr)
        line = one_line(result.stderr)
        assert why in line and "ValueError" not in line, line
    assert not (tmp_path / "back").exists()


def test_failure_exits_1_with_one_line_that_names_cli_commands(bucket, emulator_host, tmp_path):
    env = {"STORAGE_EMULATOR_HOST": emulator_host}
    missing_dir = cli("save", str(tmp_path / "nope"), f"gs://{bucket.name}", env=env)
    assert missing_dir.returncode == 1
    assert one_line(missing_dir.stderr) == \
        f"colab-magics save: run directory {tmp_path / 'nope'} does not exist: check the path"

    missing = cli("load", f"gs://{bucket.name}/exp/run1.999.zip", str(tmp_path / "t"), env=env)
    assert missing.returncode == 1
    line = one_line(missing.stderr)
    assert f"colab-magics list gs://{bucket.name}/exp " in line and "%" not in line

    dead = cli("list", "gs://some-bucket", env={"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{net.free_port()}",
                                                "COLAB_MAGICS_RETRY_DEADLINE": "2"})
    assert dead.returncode == 1
    line = one_line(dead.stderr)
    assert "colab-magics auth --emulator" in line and "%gcs_auth" not in line


def test_run_is_listed_and_dispatched_to_supervise(tmp_path):
    assert "run" in cli("--help").stdout
    result = cli("run", str(tmp_path / "run1"), "gs://some-bucket", "true")  # no `--` before the command
    assert result.returncode == 2 and "colab-magics run --help" in one_line(result.stderr)


def test_operation_failure_in_magic_hint_names_the_magic(ip, bucket, tmp_path):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError) as raised:
        ip.run_line_magic("gcs_load", f"gs://{bucket.name}/exp/run1.999.zip {tmp_path / 't'}")
    assert f"%gcs_list gs://{bucket.name}/exp " in str(raised.value)


# --- the foreground commands: started, used, ended by SIGTERM --------------------------------------
def start_foreground(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([ENTRY_POINT, *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=environment(env))


def end_foreground(proc: subprocess.Popen, log: Path) -> None:
    """SIGTERM ends a foreground command as Ctrl-C does: exit 130, one line at most, no traceback."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, log.read_text()
    assert "Traceback" not in log.read_text()


FUSE_OK = Path("/dev/fuse").exists() and os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("rclone")


@pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and rclone")
def test_mount_at_a_path_with_spaces_quotes_and_dollar(bucket, emulator_host, tmp_path):
    where = tmp_path / WEIRD
    log = tmp_path / "mount.log"
    proc = start_foreground(["mount", bucket.name, str(where), "--backend", "rclone"], log,
                            {"STORAGE_EMULATOR_HOST": emulator_host})
    try:
        poll(lambda: "running" in log.read_text() or proc.poll() is not None, 60, message="the mount")
        assert any(row[1] == str(where) for row in mount._proc_mounts()), log.read_text()
        (where / "note.txt").write_text("through the mount")
    finally:
        end_foreground(proc, log)
    assert not any(row[1] == str(where) for row in mount._proc_mounts())
    assert bucket.get_blob("note.txt").download_as_bytes() == b"through the mount"


def test_tunnel_for_a_logdir_with_spaces_quotes_and_dollar(tmp_path):
    pytest.importorskip("tensorboard")
    from tests.test_tunnels import is_tensorboard_page

    logdir = tmp_path / WEIRD
    write_events(logdir / "run1")
    log = tmp_path / "tunnel.log"
    proc = start_foreground(["tunnel", str(logdir), "--provider", "local", "--", "--reload_interval", "5"], log,
                            {"TMPDIR": str(tmp_path)})
    try:
        found = poll(lambda: re.search(r"http://\S+", log.read_text()) or proc.poll() is not None, 120,
                     message="the TensorBoard URL")
        assert proc.poll() is None, log.read_text()
        status, body = get(found.group(0).rstrip("/") + "/")
        assert status == 200 and is_tensorboard_page(body)
        cmdlines = [p.info["cmdline"] or [] for p in psutil.process_iter(["cmdline"])]
        assert any(str(logdir) in " ".join(c) and "--reload_interval" in c for c in cmdlines)
    finally:
        end_foreground(proc, log)


# --- the tunnel's password never on a command line ------------------------------------------------
PASSWORD = "Sup3rS3cret-pw"


def cmdlines() -> list[str]:
    """Every other process's argv as `ps` shows it to any user of the machine."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(pid) != os.getpid():
            found.append(line)
    return found


def started_for(path: Path) -> list[str]:
    """The processes with `path` on their command line (TensorBoard for a LOGDIR)."""
    return [line for line in cmdlines() if str(path) in line]


def auth_file(tmp_path: Path, text: str = f"ana:{PASSWORD}\n", mode: int = 0o600, name: str = "tunnel-auth") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def serve_protected(logdir: Path, log: Path, args: list[str], env: dict) -> subprocess.Popen:
    """`colab-magics tunnel LOGDIR ARGS` in the foreground; returns once its URL is printed."""
    write_events(logdir / "run1")
    proc = start_foreground(["tunnel", str(logdir), *args], log, {"TMPDIR": str(logdir.parent), **env})
    poll(lambda: re.search(r"http://\S+", log.read_text()) or proc.poll() is not None, 120,
         message="the tunnel's URL")
    assert proc.poll() is None, log.read_text()
    return proc


def url_in(log: Path) -> str:
    return re.search(r"http://\S+", log.read_text()).group(0).rstrip("/") + "/"


@pytest.mark.parametrize("source", ["environment", "file"])
def test_no_process_shows_the_tunnel_password_while_it_runs(tmp_path, source):
    pytest.importorskip("tensorboard")
    logdir, log = tmp_path / "runs", tmp_path / "tunnel.log"
    args, env = ["--provider", "local"], {}
    if source == "environment":
        env["COLAB_MAGICS_TUNNEL_AUTH"] = f"ana:{PASSWORD}"
    else:
        args += ["--auth-file", str(auth_file(tmp_path))]
    proc = serve_protected(logdir, log, args, env)
    try:
        url = url_in(log)
        assert get(url)[0] == 401 and get(url, ("ana", PASSWORD))[0] == 200
        assert started_for(logdir)  # TensorBoard runs, with LOGDIR on its command line …
        assert not [line for line in cmdlines() if PASSWORD in line]  # … and no process shows the password
        tensorboard_pids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        for pid in tensorboard_pids:  # nor hands it down in the environment
            assert PASSWORD not in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        assert PASSWORD not in log.read_text()  # a password the user chose is not printed back
        assert "Asks for user 'ana' and the password you gave." in log.read_text()
    finally:
        end_foreground(proc, log)
    assert started_for(logdir) == []


@pytest.mark.ssh
def test_no_process_shows_the_tunnel_password_through_an_ssh_forward(tmp_path, sshd):  # noqa: F811
    pytest.importorskip("tensorboard")
    logdir, log = tmp_path / "runs", tmp_path / "tunnel.log"
    proc = serve_protected(logdir, log, ["--provider", "ssh", "--ssh", sshd["target"], "--ssh-key", str(sshd["key"]),
                                         "--auth-file", str(auth_file(tmp_path))],
                           {"COLAB_MAGICS_SSH_KNOWN_HOSTS": str(sshd["known_hosts"])})
    try:
        url = url_in(log)
        assert get(url)[0] == 401 and get(url, ("ana", PASSWORD))[0] == 200
        assert any(" -R " in line for line in cmdlines())  # ssh -N -R … runs
        assert not [line for line in cmdlines() if PASSWORD in line]
    finally:
        end_foreground(proc, log)
    assert started_for(logdir) == []


def test_the_tunnel_password_asked_on_the_terminal(tmp_path):
    """`--auth ana` on a terminal: a prompt, no echo, and the tunnel asks for what was typed."""
    import fcntl
    import pty
    import select
    import termios

    pytest.importorskip("tensorboard")
    logdir = tmp_path / "runs"
    write_events(logdir / "run1")
    master, slave = pty.openpty()
    proc = subprocess.Popen([ENTRY_POINT, "tunnel", str(logdir), "--provider", "local", "--auth", "ana"],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
                            env=environment({"TMPDIR": str(tmp_path)}))
    os.close(slave)
    seen = bytearray()

    def read_until(pattern: bytes, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, seen)):
            assert time.monotonic() < deadline and proc.poll() is None, seen.decode(errors="replace")
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen.extend(os.read(master, 4096))
                except OSError:  # the terminal closed
                    pass
        return found

    try:
        read_until(rb"Password the tunnel asks for \(user ana\): ", 60)
        os.write(master, PASSWORD.encode() + b"\n")
        url = read_until(rb"http://\S+", 120).group(0).decode().rstrip("/") + "/"
        assert get(url)[0] == 401 and get(url, ("ana", PASSWORD))[0] == 200
        assert PASSWORD.encode() not in seen  # not echoed, not printed back
        assert not [line for line in cmdlines() if PASSWORD in line]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    assert started_for(logdir) == []


@pytest.mark.parametrize("case, args, env, message", [
    ("on the command line", ["--auth", f"ana:{PASSWORD}"], {},
     "--auth USER:PASSWORD would show the password to every user of this machine (ps): give --auth USER to be "
     "asked for it, --auth-file PATH, or set COLAB_MAGICS_TUNNEL_AUTH=USER:PASSWORD"),
    ("as --auth=", [f"--auth=ana:{PASSWORD}"], {}, "would show the password to every user"),
    ("abbreviated", ["--au", f"ana:{PASSWORD}"], {}, "unrecognized arguments"),
    ("no terminal to ask", ["--auth", "ana"], {}, "--auth ana asks for the password on a terminal, and stdin is not one"),
    ("file open to others", ["--auth-file", "{open_file}"], {}, "is open to other users (mode 0644): chmod 600"),
    ("file missing", ["--auth-file", "{missing}"], {}, "does not exist"),
    ("file without a password", ["--auth-file", "{user_only}"], {}, "must hold USER:PASSWORD"),
    ("both", ["--auth", "ana", "--auth-file", "{good}"], {}, "--auth and --auth-file: give one of them"),
    ("and --no-auth", ["--no-auth", "--auth-file", "{good}"], {}, "--no-auth contradicts --auth/--auth-file"),
    ("bad environment", [], {"COLAB_MAGICS_TUNNEL_AUTH": "ana"}, "COLAB_MAGICS_TUNNEL_AUTH must hold USER:PASSWORD"),
])
def test_tunnel_password_refusals_are_one_line_and_start_nothing(tmp_path, case, args, env, message):
    files = {"open_file": auth_file(tmp_path, mode=0o644, name="open"), "missing": tmp_path / "nope",
             "user_only": auth_file(tmp_path, "ana\n", name="user-only"), "good": auth_file(tmp_path, name="good")}
    logdir = tmp_path / "runs"
    argv = ["tunnel", str(logdir), "--provider", "local", *(a.format(**files) for a in args)]

    result = cli(*argv, env=env)

    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("colab-magics tunnel: error: ") and line.endswith("(see  colab-magics tunnel --help)")
    assert message in line and PASSWORD not in line
    assert result.stdout == "" and started_for(logdir) == []


# --- exit codes as the README lists them ----------------------------------------------------------
def test_ctrl_c_is_exit_130_with_one_line(tmp_path):
    """A `list` waiting on an endpoint that never answers, interrupted: 130, one line, no traceback."""
    import socket

    silent = socket.create_server(("127.0.0.1", 0))
    silent.settimeout(0.2)
    env = environment({"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{silent.getsockname()[1]}",
                       "COLAB_MAGICS_RETRY_DEADLINE": "300"})
    proc = subprocess.Popen([ENTRY_POINT, "list", "gs://some-bucket"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    accepted = []

    def asked() -> bool:
        try:
            accepted.append(silent.accept()[0])
        except TimeoutError:
            pass
        return bool(accepted) or proc.poll() is not None

    try:
        poll(asked, 60, message="the request to the silent endpoint")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for sock in accepted + [silent]:
            sock.close()
    assert proc.returncode == 130
    assert one_line(err) == "colab-magics list: interrupted" and out == ""


def test_ctrl_c_ends_a_foreground_tunnel_with_130_and_leaves_nothing(tmp_path):
    pytest.importorskip("tensorboard")
    logdir, log = tmp_path / "runs", tmp_path / "tunnel.log"
    proc = serve_protected(logdir, log, ["--provider", "local"], {})
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, log.read_text()
    assert "Traceback" not in log.read_text() and started_for(logdir) == []
