"""One interface over the ways to reach a local port from outside the VM.

`open_tunnel(provider, port, ...)` returns a `Tunnel` record; each provider is a small module
(`ngrok`, `cloudflared`, `ssh`, `colab`, `local`) with `open(port, options) -> Tunnel` and
`close(tunnel)`. Provider modules import their third-party packages lazily. Providers that cannot
ask for a password themselves (all but ngrok) get one from an `authproxy.AuthProxy` put between
the tunnel and the port, so every tunnel can be protected.
"""

from __future__ import annotations

import importlib
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from colab_magics import hosted, processes, session
from colab_magics.authproxy import AuthProxy
from colab_magics.settings import DEFAULTS, Settings
from colab_magics.errors import Param, TunnelError, UnknownProvider, Words

PROVIDERS = ("ngrok", "cloudflared", "ssh", "colab", "local")
PUBLIC_PROVIDERS = ("ngrok", "cloudflared", "ssh")
AUTH_PROVIDERS = ("ngrok",)  # providers that ask for the password themselves; the others get an AuthProxy
DEFAULT_USER = "tensorboard"


@dataclass(frozen=True)
class Tunnel:
    """An open way to reach 127.0.0.1:`port`: its URL, who provides it, the credentials it asks for."""

    url: str
    provider: str
    port: int
    auth_user: str | None = None
    auth_password: str | None = field(default=None, repr=False)
    process: processes.Tracked | None = field(default=None, compare=False, repr=False)
    notes: tuple[str | Words, ...] = ()
    inline: bool = False  # the notebook can show the port inside the cell's output (Colab)
    proxy: object | None = field(default=None, compare=False, repr=False)  # authproxy.AuthProxy, if any
    password_given: bool = False  # the user chose the password (never shown back); else generated

    closes_at = session.CLOSES_AT["tunnel"]

    @property
    def protected(self) -> bool:
        return self.auth_password is not None

    @property
    def key(self) -> tuple[str, str]:
        return self.provider, self.url

    def alive(self) -> bool:
        return (self.process is None or self.process.alive()) and (self.proxy is None or self.proxy.alive())

    def close(self, urgent: bool = False) -> None:
        """End the provider's side (its agent's tunnel or process), then the password proxy."""
        provider_module(self.provider).close(self)
        if self.proxy is not None:
            self.proxy.close()


@dataclass(frozen=True)
class TunnelOptions:
    """What a provider needs beyond the port (a config object instead of long argument lists)."""

    auth: tuple[str, str] | None = None  # (user, password) given by the user; None = generate one
    no_auth: bool = False  # the user accepts a tunnel without a password
    ssh_target: str | None = None  # user@host[:port]
    ssh_key: str | None = None
    ssh_known_hosts: str | None = None
    remote_port: int = 0
    url: str | None = None
    bin_dir: Path | None = None
    timeout: float = DEFAULTS.tensorboard_timeout  # seconds the tunnel may take to come up

    @classmethod
    def from_settings(cls, settings: Settings, **options) -> "TunnelOptions":
        """The options the settings give (agent directory, known_hosts, timeout), then `options`."""
        return cls(bin_dir=Path(settings.ngrok_bin_dir) if settings.ngrok_bin_dir else None,
                   ssh_known_hosts=settings.ssh_known_hosts or None, timeout=settings.tensorboard_timeout,
                   **options)


@dataclass(frozen=True)
class Reopened:
    """`open_tunnel` found the same tunnel already open and alive (credentials are not repeated)."""

    tunnel: Tunnel


def provider_module(name: str):
    """The module implementing provider `name`."""
    if name not in PROVIDERS:
        raise UnknownProvider(f"unknown tunnel provider {name!r}: use one of {', '.join(PROVIDERS)}")
    return importlib.import_module(f"{__name__}.{name}")


def ngrok_token() -> str | None:
    """The ngrok authtoken from NGROK_AUTHTOKEN or the notebook's secret of that name."""
    return os.environ.get("NGROK_AUTHTOKEN") or hosted.secret("NGROK_AUTHTOKEN")


def choose_provider(requested: str | None = None) -> tuple[str, tuple[str, ...]]:
    """The provider to use and notes for the user.

    Inside Colab: its private proxy (a public one only when asked for; Colab's terms frown on public
    proxies). Elsewhere: ngrok when a token is available, else local with a hint.
    """
    if requested:
        provider_module(requested)  # validates the name
        notes: tuple[str, ...] = ()
        if hosted.in_colab() and requested in PUBLIC_PROVIDERS:
            notes = (Words("Public tunnel from Colab: Colab's terms discourage public proxies; ",
                           Param("provider", "colab"), " stays private to your Google account."),)
        return requested, notes
    if hosted.in_colab():
        return "colab", ()
    if ngrok_token():
        return "ngrok", ()
    return "local", (Words("Reachable from this machine only: for a link that works elsewhere use ",
                           Param("provider", "ngrok"), " (set NGROK_AUTHTOKEN), cloudflared or ssh."),)


def parse_auth(auth: str) -> tuple[str, str]:
    """USER:PASSWORD as given to the `auth` parameter."""
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise TunnelError(Param("auth"), " takes USER:PASSWORD (both non-empty)")
    return user, password


def check_auth(provider: str, options: TunnelOptions) -> None:
    """Refuse contradicting wishes (every provider can ask for a password: through an AuthProxy)."""
    if options.auth and options.no_auth:
        raise TunnelError(Param("auth"), " and ", Param("no_auth", True), " contradict each other: pass one of them")


def password_expected(provider: str, options: TunnelOptions) -> bool:
    """A new tunnel asks for a password: with --auth, and on every public provider unless --no-auth."""
    if options.no_auth:
        return False
    return options.auth is not None or provider in PUBLIC_PROVIDERS


def credentials(options: TunnelOptions) -> tuple[str, str] | None:
    """The (user, password) a new tunnel asks for: --auth, none with --no-auth, else generated."""
    if options.no_auth:
        return None
    return options.auth or (DEFAULT_USER, secrets.token_urlsafe(12))


def validate(provider: str, options: TunnelOptions) -> None:
    """Fail before anything starts when the provider cannot work with these options (no token, …)."""
    check_auth(provider, options)
    check = getattr(provider_module(provider), "validate", None)
    if check is not None:
        check(options)


def find_open(provider: str, port: int) -> Tunnel | None:
    """An open, live tunnel of `provider` to `port`; dead ones are closed and forgotten."""
    for tunnel in session.current().items(Tunnel):
        if tunnel.provider == provider and tunnel.port == port:
            if tunnel.alive():
                return tunnel
            close_tunnel(tunnel)
    return None


def open_tunnel(provider: str, port: int, options: TunnelOptions | None = None,
                *, reuse: bool = True) -> Tunnel | Reopened:
    """Open a tunnel of `provider` to 127.0.0.1:`port` (or return the live one already open)."""
    module = provider_module(provider)
    options = options or TunnelOptions()
    validate(provider, options)
    if reuse:
        existing = find_open(provider, port)
        if existing is not None and _same_auth(existing, options):
            return Reopened(existing)
        if existing is not None:
            close_tunnel(existing)
    if provider in AUTH_PROVIDERS or not password_expected(provider, options):
        tunnel = module.open(port, options)
    else:
        tunnel = _open_behind_proxy(module, port, options)
    if tunnel.protected and options.auth is not None:
        tunnel = replace(tunnel, password_given=True)
    session.current().track(tunnel, tunnel.key)
    return tunnel


def _open_behind_proxy(module, port: int, options: TunnelOptions) -> Tunnel:
    """The provider's tunnel to an AuthProxy in front of `port`; recorded as a tunnel to `port`."""
    user, password = credentials(options)
    proxy = AuthProxy(port, user, password).start()
    try:
        tunnel = module.open(proxy.port, options)
    except BaseException:
        proxy.close()
        raise
    return replace(tunnel, port=port, auth_user=user, auth_password=password, proxy=proxy)


def describe(opened: Tunnel | Reopened) -> list[str | Words]:
    """The lines shown under a tunnel's link: a generated password only when it was just opened; one
    the user chose is never shown back (output gets saved and shared)."""
    tunnel = opened.tunnel if isinstance(opened, Reopened) else opened
    lines = []
    if tunnel.protected and tunnel.password_given:
        lines.append(f"Asks for user {tunnel.auth_user!r} and the password you gave.")
    elif tunnel.protected and isinstance(opened, Reopened):
        lines.append(Words(f"Asks for user {tunnel.auth_user!r} and the password shown when it was opened (",
                           Param("stop", True), ", then run again, for a new one)."))
    elif tunnel.protected:
        lines.append(f"User: {tunnel.auth_user}   Password: {tunnel.auth_password}   "
                     f"(shown once: note it now)")
    return lines + list(tunnel.notes)


def close_tunnel(tunnel: Tunnel) -> None:
    """Close one tunnel and end its process."""
    tunnel.close()
    session.current().untrack(tunnel, tunnel.key)


def open_tunnels(port: int | None = None) -> list[Tunnel]:
    """The live tunnels we opened (to `port` only, when given)."""
    return [t for t in session.current().items(Tunnel) if t.alive() and (port is None or t.port == port)]


def close_tunnels(port: int | None = None) -> list[Tunnel]:
    """Close every tunnel we opened (to `port` only, when given); return those closed."""
    closing = [t for t in session.current().items(Tunnel) if port is None or t.port == port]
    for tunnel in closing:
        close_tunnel(tunnel)
    return closing


def _same_auth(tunnel: Tunnel, options: TunnelOptions) -> bool:
    if options.no_auth:
        return not tunnel.protected
    if options.auth is not None:
        return (tunnel.auth_user, tunnel.auth_password) == options.auth
    return tunnel.protected or not password_expected(tunnel.provider, options)
