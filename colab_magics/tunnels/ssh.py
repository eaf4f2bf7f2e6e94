"""A reverse SSH tunnel (`ssh -N -R`) to a host the user names: their own server or an SSH tunnel service.

Key-based only (BatchMode: ssh never waits for a password prompt nobody can answer). Ready when ssh
reports the remote forward; the URL is `--url`, else one the server prints (services such as
localhost.run do), else http://HOST:REMOTE_PORT/.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from colab_magics import processes, session
from colab_magics.errors import HelperNotReady, Param, TunnelError, Words
from colab_magics.tunnels import Tunnel, TunnelOptions

TARGET = re.compile(r"^(?P<user>[^@\s]+)@(?P<host>[^:\s]+)(?::(?P<port>\d+))?$")
FORWARDED = re.compile(r"remote forward success|Allocated port (?P<port>\d+) for remote forward")
SERVER_URL = re.compile(r"https?://[^\s'\"<>]+")
_CHATTER = ("debug", "OpenSSH", "Authenticated", "Transferred")  # ssh -v lines that are not the server's
URL_GRACE = 2.0  # after the forward is up, how long to wait for a URL printed by the server


def parse_target(target: str) -> tuple[str, str, int]:
    """user@host[:port] → (user, host, port)."""
    match = TARGET.match(target or "")
    if not match:
        raise TunnelError(Param("ssh"), f" takes user@host[:port], not {target!r}")
    return match["user"], match["host"], int(match["port"] or 22)


def validate(options: TunnelOptions) -> None:
    """--ssh is required and well formed; the key file exists."""
    if not options.ssh_target:
        raise TunnelError("the ssh provider needs ", Param("ssh", "user@host[:port]"))
    parse_target(options.ssh_target)
    if options.ssh_key and not Path(options.ssh_key).expanduser().is_file():
        raise TunnelError(Param("ssh_key", options.ssh_key), ": no such file")


def build_argv(port: int, options: TunnelOptions) -> list[str]:
    """The ssh command line (no secret in it: the key is a path, the passphrase-less key stays on disk)."""
    user, host, ssh_port = parse_target(options.ssh_target or "")
    binary = shutil.which("ssh")
    if binary is None:
        raise TunnelError("ssh is not installed: apt-get install openssh-client")
    argv = [binary, "-v", "-N", "-R", f"{options.remote_port}:127.0.0.1:{port}", "-p", str(ssh_port),
            "-o", "ExitOnForwardFailure=yes", "-o", "StrictHostKeyChecking=accept-new",
            "-o", "BatchMode=yes", "-o", "ServerAliveInterval=30", "-o", "ConnectTimeout=15"]
    if options.ssh_key:
        argv += ["-i", str(Path(options.ssh_key).expanduser()), "-o", "IdentitiesOnly=yes"]
    if options.ssh_known_hosts:
        argv += ["-o", f"UserKnownHostsFile={options.ssh_known_hosts}"]
    argv.append(f"{user}@{host}")
    return argv


def open(port: int, options: TunnelOptions) -> Tunnel:  # noqa: A001  (the provider interface)
    """Start ssh, wait (bounded) for the remote forward, then for a URL if none was given."""
    argv = build_argv(port, options)
    _, host, _ = parse_target(options.ssh_target or "")
    state: dict[str, object] = {}

    def on_line(line: str) -> None:
        match = FORWARDED.search(line)
        if match:
            if match["port"]:
                state["remote_port"] = int(match["port"])
            state["forwarded"] = True
        elif not line.startswith(_CHATTER):
            url = SERVER_URL.search(line)
            if url and "url" not in state:
                state["url"] = url.group(0)

    try:
        tracked, _ = session.current().processes.start_ready(
            argv, name=f"ssh:{port}", ready=lambda: state.get("forwarded"), timeout=options.timeout,
            on_line=on_line)
    except HelperNotReady as exc:
        what = f"exited with code {exc.returncode}" if exc.died else \
            f"did not set up the forward within {options.timeout:.0f} s"
        reason = processes.last_lines(exc.tail, 1, skip=("debug",)) or "(no output)"
        raise TunnelError(f"ssh to {options.ssh_target} {what}: {reason}") from None
    if options.url is None:
        processes.wait_until(lambda: "url" in state, timeout=URL_GRACE, tracked=tracked)
    remote_port = state.get("remote_port", options.remote_port)
    url = options.url or state.get("url") or f"http://{host}:{remote_port}/"
    notes = (Words("No password (", Param("no_auth", True), "): anyone who reaches this URL sees TensorBoard, unless "
                   "the server adds protection."),) if options.no_auth else ()
    return Tunnel(url=str(url), provider="ssh", port=port, process=tracked, notes=notes)


def close(tunnel: Tunnel) -> None:
    if tunnel.process is not None:
        tunnel.process.stop()

