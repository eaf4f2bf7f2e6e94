"""Colab's own proxy for a kernel port: https, private to the signed-in Google account, no agent."""

from __future__ import annotations

from colab_magics import hosted
from colab_magics.errors import TunnelError
from colab_magics.tunnels import Tunnel, TunnelOptions


def open(port: int, options: TunnelOptions) -> Tunnel:  # noqa: A001  (the provider interface)
    """The proxy URL Colab gives `port` (it opens only in the browser signed in to this notebook)."""
    if not hosted.in_colab():
        raise TunnelError("the colab provider works only inside Google Colab: "
                          "use --provider ngrok, cloudflared, ssh or local here")
    url = hosted.colab_proxy_url(port)
    return Tunnel(url=url, provider="colab", port=port,
                  notes=("Private: opens only in the browser signed in to this Colab session.",))


def close(tunnel: Tunnel) -> None:
    """Colab's proxy lives with the server: nothing to end."""
