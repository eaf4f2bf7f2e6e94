"""The original colab_utils names, as thin calls into `tensorboard` and `tunnels`.

`launch_tensorboard(bin_dir, log_dir)` used to start TensorBoard and an unauthenticated ngrok tunnel;
it now asks for basic auth (the generated credentials are shown once, with the link) and needs an
ngrok authtoken (NGROK_AUTHTOKEN or a notebook secret).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from colab_magics import tensorboard, tunnels
from colab_magics.display import Link, show
from colab_magics.tunnels import ngrok


def install_ngrok(bin_dir: str | os.PathLike) -> str:
    """Install the ngrok agent into `bin_dir` if it is not there; return its path."""
    return str(ngrok.install_ngrok(Path(bin_dir)))


@dataclass(frozen=True)
class Served:
    """TensorBoard behind a tunnel: the URL to open and the lines to show under the link."""

    url: str
    provider: str
    logdir: Path
    notes: tuple[str, ...]

    def link(self) -> Link:
        return Link(self.url, f"TensorBoard ({self.provider}) for {self.logdir}", self.notes)


def serve(
    log_dir: str | os.PathLike,
    provider: str | None = None,
    options: tunnels.TunnelOptions | None = None,
    *,
    port: int | None = None,
    extra_args: tuple[str, ...] | list[str] = (),
    timeout: float = 90.0,
) -> Served:
    """Start (or reuse) TensorBoard for `log_dir` and open (or reuse) a tunnel to it.

    Everything that can be refused (unknown provider, no token, --auth where no password is
    possible) is checked before any process starts.
    """
    options = options or tunnels.TunnelOptions()
    provider, notes = tunnels.choose_provider(provider)
    tunnels.validate(provider, options)
    started = tensorboard.start(log_dir, port=port, extra_args=extra_args, timeout=timeout)
    opened = tunnels.open_tunnel(provider, started.instance.port, options)
    tunnel = opened.tunnel if isinstance(opened, tunnels.Reopened) else opened
    lines = tunnels.describe(opened) + list(notes)
    if getattr(started, "note", None):
        lines.append(started.note)
    return Served(tunnel.url, provider, started.instance.logdir, tuple(lines))


def launch_tensorboard(bin_dir: str | os.PathLike, log_dir: str | os.PathLike) -> str:
    """Start (or reuse) TensorBoard for `log_dir` behind an ngrok tunnel; return the public URL."""
    install_ngrok(bin_dir)
    served = serve(log_dir, "ngrok", tunnels.TunnelOptions(bin_dir=Path(bin_dir)))
    show(served.link())
    return served.url


@dataclass(frozen=True)
class Stopped:
    """What `stop` ended."""

    instances: tuple[tensorboard.Instance, ...]
    tunnels: tuple[tunnels.Tunnel, ...]


def stop(log_dir: str | os.PathLike | None = None) -> Stopped:
    """End the TensorBoard for `log_dir` and its tunnels (every one of ours when None)."""
    if log_dir is None:
        closed = tunnels.close_tunnels()
        return Stopped(tuple(tensorboard.stop()), tuple(closed))
    ended = tensorboard.stop(log_dir)
    closed = [t for instance in ended for t in tunnels.close_tunnels(instance.port)]
    return Stopped(tuple(ended), tuple(closed))


def listing() -> list[tuple[str, str, str, str]]:
    """(what, serves, url, pid) for every TensorBoard and tunnel of ours that is alive."""
    rows = [("tensorboard", str(i.logdir), i.url, str(i.pid)) for i in tensorboard.running()]
    rows += [(f"tunnel ({t.provider})", f"port {t.port}", t.url, str(t.process.pid) if t.process else "-")
             for t in tunnels.open_tunnels()]
    return rows
