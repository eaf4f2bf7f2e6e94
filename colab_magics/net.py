"""Loopback plumbing of the servers we start: a free port to give one, and whether it answers HTTP."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it) for a server we start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:`port` can be bound now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when `url` answers HTTP 200: the readiness check of every server we start."""
    return http_status(url, timeout) == 200


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status `url` answers with (401 and 5xx included), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None
