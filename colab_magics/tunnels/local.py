"""No tunnel: the local URL, for a workstation (and for tests)."""

from __future__ import annotations

from colab_magics.tunnels import Tunnel, TunnelOptions


def open(port: int, options: TunnelOptions) -> Tunnel:  # noqa: A001  (the provider interface)
    """The server as this machine sees it."""
    return Tunnel(url=f"http://127.0.0.1:{port}/", provider="local", port=port)


def close(tunnel: Tunnel) -> None:
    """Nothing to end."""
