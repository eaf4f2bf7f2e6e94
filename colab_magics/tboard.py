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
from colab_magics.errors import InvalidArgument, check_argument
from colab_magics.tunnels import ngrok

_PATH_OR_NONE = (str, os.PathLike, type(None))


def install_ngrok(bin_dir: str | os.PathLike | None = None, log_dir: str | os.PathLike | None = None) -> str:
    """Install the ngrok agent into `bin_dir` (default: pyngrok's place) if it is not there; return
    its path. `log_dir` is accepted because colab_utils' README passes it, and not used."""
    check_argument("install_ngrok", "bin_dir", bin_dir, _PATH_OR_NONE, "a directory (a path)")
    return str(ngrok.install_ngrok(Path(bin_dir) if bin_dir is not None else None))


def launch_tensorboard(bin_dir: str | os.PathLike | None = None, log_dir: str | os.PathLike | None = None,
                       retval: bool = True) -> str:
    """Start (or reuse) TensorBoard for `log_dir` behind an ngrok tunnel; show the link and return the
    public URL (always: colab_utils' `retval` is accepted and not needed)."""
    call = "launch_tensorboard"
    check_argument(call, "bin_dir", bin_dir, _PATH_OR_NONE, "a directory (a path)")
    if log_dir is None:
        raise InvalidArgument(f"{call}: give log_dir=, the directory TensorBoard shows")
    check_argument(call, "log_dir", log_dir, _PATH_OR_NONE, "the log directory (a path)")
    install_ngrok(bin_dir)
    options = tunnels.TunnelOptions(bin_dir=Path(bin_dir) if bin_dir is not None else None)
    served = tensorboard.serve(log_dir, "ngrok", options)
    show(served.link())
    return served.url
