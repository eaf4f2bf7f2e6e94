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


def launch_tensorboard(bin_dir: str | os.PathLike, log_dir: str | os.PathLike) -> str:
    """Start (or reuse) TensorBoard for `log_dir` behind an ngrok tunnel; return the public URL."""
    started = tensorboard.start(log_dir)
    install_ngrok(bin_dir)
    opened = tunnels.open_tunnel("ngrok", started.instance.port,
                                 tunnels.TunnelOptions(bin_dir=Path(bin_dir)))
    tunnel = opened.tunnel if isinstance(opened, tunnels.Reopened) else opened
    show(Link(tunnel.url, "TensorBoard", tunnels.describe(opened)))
    return tunnel.url


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
