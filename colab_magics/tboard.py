"""The original colab_utils names, as thin calls into `tensorboard` and `tunnels.ngrok`.

`launch_tensorboard(bin_dir, log_dir)` used to start TensorBoard and an unauthenticated ngrok tunnel;
it now asks for basic auth (the generated credentials are shown once, with the link) and needs an
ngrok authtoken (NGROK_AUTHTOKEN or a notebook secret).
"""

from __future__ import annotations

import os
from pathlib import Path

from colab_magics import tensorboard, tunnels
from colab_magics.display import show
from colab_magics.tunnels import ngrok


def install_ngrok(bin_dir: str | os.PathLike) -> str:
    """Install the ngrok agent into `bin_dir` if it is not there; return its path."""
    return str(ngrok.install_ngrok(Path(bin_dir)))


def launch_tensorboard(bin_dir: str | os.PathLike, log_dir: str | os.PathLike) -> str:
    """Start (or reuse) TensorBoard for `log_dir` behind an ngrok tunnel; return the public URL."""
    install_ngrok(bin_dir)
    served = tensorboard.serve(log_dir, "ngrok", tunnels.TunnelOptions(bin_dir=Path(bin_dir)))
    show(served.link())
    return served.url
