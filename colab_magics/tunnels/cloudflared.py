"""Cloudflare quick tunnels: `cloudflared tunnel --url http://127.0.0.1:PORT`, no account needed.

The public https://*.trycloudflare.com URL is read from the agent's output with a deadline. Quick
tunnels cannot ask for a password themselves: `tunnels.open_tunnel` points them at an AuthProxy.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

from colab_magics import processes
from colab_magics.errors import TunnelError, TunnelInstallError
from colab_magics.tunnels import Tunnel, TunnelOptions

URL_PATTERN = re.compile(r"https://[-a-z0-9]+\.trycloudflare\.com")
DOWNLOAD_URL = "https://github.com/cloudflare/cloudflared/releases/latest/download/cloudflared-linux-{arch}"
DOWNLOAD_TIMEOUT = 30.0
NO_AUTH_NOTE = "No password (--no-auth): anyone with this URL can see TensorBoard."


def open(port: int, options: TunnelOptions) -> Tunnel:  # noqa: A001  (the provider interface)
    """Start a quick tunnel to `port` and wait (bounded) for the URL it prints."""
    binary = find_binary(options.bin_dir) or install_cloudflared(options.bin_dir or _default_bin_dir())
    found = threading.Event()
    urls: list[str] = []

    def on_line(line: str) -> None:
        match = URL_PATTERN.search(line)
        if match and not urls:
            urls.append(match.group(0))
            found.set()

    argv = [str(binary), "tunnel", "--no-autoupdate", "--url", f"http://127.0.0.1:{port}"]
    tracked = processes.registry.start(argv, name=f"cloudflared:{port}", on_line=on_line)
    if not processes.wait_until(found.is_set, timeout=options.timeout, tracked=tracked):
        tail = tracked.output_tail()
        died = not tracked.alive()
        processes.registry.stop(tracked)
        what = f"exited with code {tracked.popen.returncode}" if died else \
            f"printed no trycloudflare.com URL within {options.timeout:.0f} s"
        raise TunnelError(f"cloudflared {what}: {_last_line(tail)}")
    return Tunnel(url=urls[0], provider="cloudflared", port=port, process=tracked,
                  notes=(NO_AUTH_NOTE,) if options.no_auth else ())


def close(tunnel: Tunnel) -> None:
    if tunnel.process is not None:
        processes.registry.stop(tunnel.process)


def find_binary(bin_dir: Path | None = None) -> Path | None:
    """cloudflared in `bin_dir`, else on PATH."""
    search = os.pathsep.join(p for p in (str(bin_dir) if bin_dir else None, os.environ.get("PATH")) if p)
    found = shutil.which("cloudflared", path=search)
    return Path(found) if found else None


def install_cloudflared(bin_dir: Path) -> Path:
    """Download the cloudflared release binary into `bin_dir`; offline this fails within the timeout."""
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "amd64")
    url = DOWNLOAD_URL.format(arch=arch)
    target = Path(bin_dir) / "cloudflared"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (OSError, urllib.error.URLError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise TunnelInstallError(
            f"cloudflared is not installed and could not be downloaded ({reason}): install it "
            f"(https://github.com/cloudflare/cloudflared/releases) or put it on PATH"
        ) from exc
    partial.chmod(0o755)
    partial.replace(target)
    return target


def _default_bin_dir() -> Path:
    return Path.home() / ".local" / "bin"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
