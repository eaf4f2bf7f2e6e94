"""ngrok tunnels: our own child agent, pyngrok for installing it and for its agent API.

pyngrok would start the agent itself (`ngrok.connect` forks it), which puts it beyond our process
registry: no PR_SET_PDEATHSIG (it outlives a killed kernel), and a start-up read that blocks forever
on a silent agent (pyngrok checks its timeout only between lines). So the agent is started here,
through `ProcessRegistry.start_ready`, with the argv pyngrok uses (`ngrok start --none --log stdout
--config PATH`, pyngrok/process.py `_start_process`), and is ready when its log says what pyngrok
waits for (`starting web service addr=…`, `client session established`, `tunnel session started`,
parsed by pyngrok's own `NgrokLog`). Tunnels are opened and closed through pyngrok's `api_request`.

The authtoken never reaches argv or the disk: the agent reads it from NGROK_AUTHTOKEN in its own
environment (ngrok v3 honours it). Its config file (no secret in it; mode 0600 in a 0700 directory,
so the user's own ngrok.yml does not interfere) is read once at start and removed as soon as the
agent is ready, so even a SIGKILLed kernel leaves nothing behind. pyngrok logs API request bodies at
DEBUG: `_redact` blanks passwords and tokens there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from colab_magics import hosted, processes, session
from colab_magics.errors import (
    HelperNotReady,
    MissingDependency,
    NoTunnelToken,
    Param,
    TunnelError,
    TunnelInstallError,
    Words,
    first_line,
)
from colab_magics.tunnels import Tunnel, TunnelOptions, credentials, ngrok_token

log = logging.getLogger(__name__)

TOKEN_HELP = ("ngrok needs an authtoken: set NGROK_AUTHTOKEN (or a Colab/Kaggle secret of that name) "
              "from https://dashboard.ngrok.com/get-started/your-authtoken, or use ", Param("provider", "cloudflared"))
API_TIMEOUT = 10.0  # seconds one request to the agent's local API may take


@dataclass(eq=False)
class Agent:
    """One running ngrok agent (one per binary, as pyngrok runs them) and its open tunnels."""

    path: str  # the ngrok binary
    tracked: processes.Tracked
    api_url: str
    tunnels: dict[str, str] = field(default_factory=dict)  # public URL → its API path
    closes_at = session.CLOSES_AT["agent"]

    def alive(self) -> bool:
        return self.tracked.alive()

    def close(self, urgent: bool = False) -> None:
        """End the agent (its tunnels with it)."""
        self.tracked.stop()


class _Redact(logging.Filter):
    """Blanks secrets out of pyngrok's own log records (it logs API request bodies at DEBUG)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


_redact = _Redact()
logging.getLogger("pyngrok.ngrok").addFilter(_redact)
_start_lock = threading.Lock()  # one agent start per binary at a time


def _pyngrok():
    try:
        from pyngrok import conf, installer, ngrok
        from pyngrok.log import NgrokLog
    except ImportError as exc:
        raise MissingDependency("pyngrok", "tunnel") from exc
    return conf, installer, ngrok, NgrokLog


def default_ngrok_path(bin_dir: Path | None = None) -> Path:
    """bin_dir/ngrok when a bin_dir is given, else where pyngrok keeps its agent."""
    if bin_dir is not None:
        return Path(bin_dir).expanduser().absolute() / "ngrok"
    conf, _, _, _ = _pyngrok()
    return Path(os.environ.get("PYNGROK_NGROK_PATH", conf.DEFAULT_NGROK_PATH))


def install_ngrok(bin_dir: str | os.PathLike | None = None) -> Path:
    """Install the ngrok agent into `bin_dir` (pyngrok's installer) unless it is there; return its path.

    Offline the download fails within seconds with TunnelInstallError.
    """
    _, installer, _, _ = _pyngrok()
    from pyngrok.exception import PyngrokError

    path = default_ngrok_path(Path(bin_dir) if bin_dir is not None else None)
    if path.exists():
        return path
    try:
        installer.install_ngrok(str(path), ngrok_version="v3", timeout=30)  # "v3": pyngrok 8.0 knows no "3"
    except PyngrokError as exc:
        raise TunnelInstallError(
            f"the ngrok agent is not in {path.parent} and could not be downloaded ({first_line(exc)}): "
            "check the internet connection, or put the ngrok binary there yourself"
        ) from exc
    return path


def validate(options: TunnelOptions) -> None:
    """pyngrok installed, an authtoken available, a password ngrok accepts."""
    _pyngrok()
    if not ngrok_token():
        problem = hosted.read_secret("NGROK_AUTHTOKEN").problem  # the notebook's secret, if it failed: why
        raise NoTunnelToken(*TOKEN_HELP, *(("; the notebook's secret: ", problem) if problem else ()))
    if options.auth is not None and not 8 <= len(options.auth[1]) <= 128:
        raise TunnelError("ngrok needs a basic-auth password of 8 to 128 characters: change ", Param("auth"))


def open(port: int, options: TunnelOptions) -> Tunnel:  # noqa: A001  (the provider interface)
    """An ngrok http tunnel to `port`, asking for basic auth unless the options say no."""
    validate(options)
    token = ngrok_token()
    auth = credentials(options)
    _, _, ngrok, _ = _pyngrok()
    from pyngrok.exception import PyngrokError

    path = default_ngrok_path(options.bin_dir)
    if not path.exists():
        install_ngrok(path.parent)
    _redact.secrets.add(token)
    agent = _agent_for(str(path), token, options.timeout)
    request: dict[str, object] = {"addr": f"127.0.0.1:{port}", "proto": "http",
                                  "name": f"colab-magics-{port}-{uuid.uuid4().hex[:8]}"}
    if auth is not None:
        request["basic_auth"] = [f"{auth[0]}:{auth[1]}"]
        _redact.secrets.add(auth[1])
    try:
        opened = ngrok.api_request(f"{agent.api_url}/api/tunnels", method="POST", data=request,
                                   timeout=min(options.timeout, API_TIMEOUT))
    except PyngrokError as exc:
        if not agent.tunnels:
            _end(agent)
        raise TunnelError(f"ngrok could not open the tunnel: {first_line(exc).replace(token, '***')}") from None
    url = opened["public_url"]
    agent.tunnels[url] = opened["uri"]
    return Tunnel(url=url, provider="ngrok", port=port,
                  auth_user=auth[0] if auth else None, auth_password=auth[1] if auth else None,
                  process=agent.tracked,
                  notes=() if auth else (Words("No password (", Param("no_auth", True),
                                               "): anyone with this URL can see TensorBoard."),))


def close(tunnel: Tunnel) -> None:
    """Close the tunnel; end the agent with its last tunnel."""
    _, _, ngrok, _ = _pyngrok()
    from pyngrok.exception import PyngrokError

    agent = next((a for a in session.current().items(Agent) if a.tracked is tunnel.process), None)
    if agent is None:
        return
    uri = agent.tunnels.pop(tunnel.url, None)
    if agent.tunnels and agent.alive() and uri is not None:
        try:
            ngrok.api_request(f"{agent.api_url}{uri}", method="DELETE", timeout=API_TIMEOUT)
        except PyngrokError as exc:
            log.warning("could not close ngrok tunnel %s: %s", tunnel.url, first_line(exc))
        return
    _end(agent)


def _agent_for(path: str, token: str, timeout: float) -> Agent:
    """The live agent of `path`, or a new one started and ready within `timeout` seconds."""
    with _start_lock:
        agent = session.current().get(Agent, path)
        if agent is not None and agent.alive():
            return agent
        if agent is not None:
            _end(agent)
        config_dir = Path(tempfile.mkdtemp(prefix="colab-magics-ngrok-"))  # mode 0700
        config_path = config_dir / "ngrok.yml"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write('version: "2"\n')  # no authtoken here: NGROK_AUTHTOKEN, below
        startup = _Startup()
        argv = [path, "start", "--none", "--log", "stdout", "--config", str(config_path)]
        try:
            tracked, api_url = session.current().processes.start_ready(
                argv, name="the ngrok agent", ready=startup.ready, timeout=timeout, on_line=startup.read,
                env={"NGROK_AUTHTOKEN": token})
        except HelperNotReady as exc:
            said = startup.error or exc.last
            what = f"exited with code {exc.returncode}" if exc.died else f"did not start a tunnel within {timeout:.0f} s"
            raise TunnelError(f"the ngrok agent {what}: {(said or '(no output)').replace(token, '***')}: "
                              "check the authtoken and the network, or try ",
                              Param("provider", "cloudflared")) from None
        finally:
            shutil.rmtree(config_dir, ignore_errors=True)  # read at start; nothing of ours stays on disk
        agent = Agent(path, tracked, api_url)
        session.current().track(agent, path)
        return agent


class _Startup:
    """What pyngrok waits for in the agent's start-up log (pyngrok/process.py `NgrokProcess.healthy`)."""

    def __init__(self) -> None:
        self.api_url: str | None = None
        self.connected = self.started = False
        self.error: str | None = None

    def read(self, line: str) -> None:
        _, _, _, NgrokLog = _pyngrok()
        entry = NgrokLog(line)
        if entry.lvl in ("ERROR", "CRITICAL"):
            self.error = entry.err or entry.msg
        elif entry.msg and "starting web service" in entry.msg and entry.addr:
            self.api_url = f"http://{entry.addr}"
        elif entry.msg and "client session established" in entry.msg:
            self.connected = True
        elif entry.msg and "tunnel session started" in entry.msg:
            self.started = True

    def ready(self) -> str | None:
        return self.api_url if self.api_url and self.connected and self.started else None


def _end(agent: Agent) -> None:
    agent.close()
    session.current().untrack(agent, agent.path)

