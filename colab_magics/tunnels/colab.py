"""Colab's own proxy for a kernel port: private to the signed-in Google account, no agent.

TensorBoard is shown inside the cell's output (`serve_kernel_port_as_iframe`, as `%tensorboard`
does); the new-tab link from `google.colab.kernel.proxyPort` is an extra, asked for with a timeout:
Colab marks links in a new tab as broken by browser storage partitioning, and a runtime driven from
VS Code, or a process that is not the notebook's kernel (`!colab-magics tunnel …`), has no frontend
to answer at all.
"""

from __future__ import annotations

from colab_magics import hosted
from colab_magics.errors import Param, TunnelError, Words
from colab_magics.tunnels import Tunnel, TunnelOptions

PRIVATE_NOTE = "Shown above, private to your Google account; the link opens only in this browser."


def open(port: int, options: TunnelOptions) -> Tunnel:  # noqa: A001  (the provider interface)
    """The proxy URL Colab gives `port`, or the local URL with a note when no frontend answers."""
    if not hosted.in_colab():
        raise TunnelError("the colab provider works only inside Google Colab: use ", Param("provider", "ngrok"),
                          ", cloudflared, ssh or local here")
    wait = min(options.timeout, hosted.PROXY_TIMEOUT)
    url = hosted.colab_proxy_url(port, timeout=wait)
    if url is None:  # no frontend answered, or this process is not the notebook's kernel (`!colab-magics`)
        why = hosted.colab_no_frontend(wait)
        note = Words(why[0].upper() + why[1:], ": for a link that works there use ", Param("provider", "ngrok"),
                     " or ", Param("provider", "cloudflared"), ".")
        return Tunnel(url=f"http://127.0.0.1:{port}/", provider="colab", port=port, inline=True, notes=(note,))
    return Tunnel(url=url, provider="colab", port=port, inline=True, notes=(PRIVATE_NOTE,))


def close(tunnel: Tunnel) -> None:
    """Colab's proxy lives with the server: nothing to end."""
