"""Cloudflare quick tunnels: `cloudflared tunnel --url http://127.0.0.1:PORT`, no account needed.

The public https://*.trycloudflare.com URL is read from the agent's output, but cloudflared prints it
before its edge connection is up (cloudflared #513) and never connects where UDP/QUIC is blocked
(#510, #617): the tunnel is ready only when an HTTP request through that URL reaches the origin, all
within one deadline. Quick tunnels cannot ask for a password themselves: `tunnels.open_tunnel`
points them at an AuthProxy. A missing agent is downloaded from a pinned release and checked
against the sha256 published in that release's notes.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from colab_magics import net, processes, session
from colab_magics.errors import HelperNotReady, Param, TunnelError, TunnelInstallError, Words
from colab_magics.tunnels import Tunnel, TunnelOptions

URL_PATTERN = re.compile(r"https://[-a-z0-9]+\.trycloudflare\.com")
VERSION = "2026.9.3"
# "SHA256 Checksums" of https://github.com/cloudflare/cloudflared/releases/tag/2026.9.3 (cloudflared
# publishes no separate checksum file, only this block in the release notes).
SHA256 = {
    "amd64": "77e26d8d900e0b8469f416239d14b5f296525fdf79fee6f511ef55609e3fbac2",
    "arm64": "aaeb2d7d0da3614634c7e03ab13487a1522c2e79165ed2929cfe23d5e95b326d",
}
DOWNLOAD_URL = "https://github.com/cloudflare/cloudflared/releases/download/{version}/cloudflared-linux-{arch}"
DOWNLOAD_URL_ENV = "COLAB_MAGICS_CLOUDFLARED_URL"  # a mirror: same {version}/{arch} template, same checksum
DOWNLOAD_TIMEOUT = 30.0
PROBE_INTERVAL = 0.5
NO_AUTH_NOTE = Words("No password (", Param("no_auth", True), "): anyone with this URL can see TensorBoard.")


def open(port: int, options: TunnelOptions) -> Tunnel:  # noqa: A001  (the provider interface)
    """Start a quick tunnel to `port`; ready when a request through the URL it prints answers."""
    binary = find_binary(options.bin_dir) or install_cloudflared(options.bin_dir or _default_bin_dir())
    urls: list[str] = []

    def on_line(line: str) -> None:
        match = URL_PATTERN.search(line)
        if match and not urls:
            urls.append(match.group(0))

    argv = [str(binary), "tunnel", "--no-autoupdate", "--url", f"http://127.0.0.1:{port}"]
    deadline = time.monotonic() + options.timeout
    try:
        tracked, url = session.current().processes.start_ready(
            argv, name="cloudflared", ready=lambda: urls[0] if urls else None, timeout=options.timeout,
            on_line=on_line)
    except HelperNotReady as exc:
        what = exc.explained if exc.died else \
            f"printed no trycloudflare.com URL within {options.timeout:.0f} s: {exc.last or '(no output)'}"
        raise TunnelError(f"cloudflared {what}") from None
    if not processes.wait_until(lambda: _reaches_origin(url), interval=PROBE_INTERVAL,
                                timeout=max(0.0, deadline - time.monotonic()), tracked=tracked):
        died = not tracked.alive()
        tracked.stop()
        what = f"exited with code {tracked.popen.returncode}" if died else \
            f"printed {url} but it did not answer within {options.timeout:.0f} s (its edge connection never came up: " \
            "UDP/QUIC may be blocked here; try "
        raise TunnelError(f"cloudflared {what}", *(() if died else (Param("provider", "ngrok"), ")")),
                          f": {processes.last_lines(tracked.output_tail(), 1) or '(no output)'}")
    return Tunnel(url=url, provider="cloudflared", port=port, process=tracked,
                  notes=(NO_AUTH_NOTE,) if options.no_auth else ())


def _reaches_origin(url: str) -> bool:
    """A request through the URL got an answer from our side (200, or 401 from the password proxy),
    not the edge's 5xx (530 / error 1033) of a tunnel whose connection is not up yet."""
    status = net.http_status(url, PROBE_INTERVAL * 4)
    return status is not None and status < 500


def close(tunnel: Tunnel) -> None:
    if tunnel.process is not None:
        tunnel.process.stop()


def find_binary(bin_dir: Path | None = None) -> Path | None:
    """cloudflared in `bin_dir`, else on PATH."""
    search = os.pathsep.join(p for p in (str(bin_dir) if bin_dir else None, os.environ.get("PATH")) if p)
    found = shutil.which("cloudflared", path=search)
    return Path(found) if found else None


def install_cloudflared(bin_dir: Path, *, url: str | None = None) -> Path:
    """Download cloudflared VERSION into `bin_dir`, refusing a file whose sha256 is not the published one.

    `url` (or COLAB_MAGICS_CLOUDFLARED_URL) replaces the GitHub release URL, e.g. with a mirror;
    the checksum stays the pinned one. Offline this fails within the timeout.
    """
    machine = platform.machine()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    if arch is None:
        raise TunnelInstallError(f"no cloudflared {VERSION} release is pinned for {machine}: install "
                                 f"cloudflared yourself and put it on PATH")
    template = url or os.environ.get(DOWNLOAD_URL_ENV) or DOWNLOAD_URL
    source = template.format(version=VERSION, arch=arch)
    target = Path(bin_dir) / "cloudflared"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(source, timeout=DOWNLOAD_TIMEOUT) as response, partial.open("wb") as out:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
    except (OSError, urllib.error.URLError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise TunnelInstallError(
            f"cloudflared is not installed and could not be downloaded ({reason}): install it "
            f"(https://github.com/cloudflare/cloudflared/releases) or put it on PATH"
        ) from exc
    if digest.hexdigest() != SHA256[arch]:
        partial.unlink(missing_ok=True)
        raise TunnelInstallError(
            f"the cloudflared downloaded from {source} is not the published {VERSION} release (sha256 "
            f"{digest.hexdigest()[:12]}…, expected {SHA256[arch][:12]}…): not installed"
        )
    partial.chmod(0o755)
    partial.replace(target)
    return target


def _default_bin_dir() -> Path:
    return Path.home() / ".local" / "bin"
