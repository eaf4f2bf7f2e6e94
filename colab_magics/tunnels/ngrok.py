"""ngrok tunnels through pyngrok, with basic auth on by default and the authtoken kept off argv.

pyngrok puts `PyngrokConfig.auth_token` (which it fills from NGROK_AUTHTOKEN by itself) on the agent's
command line as `--authtoken TOKEN`, where `ps` shows it. We clear it and hand the token to the agent
in a private config file instead (mode 0600 in a 0700 directory, removed when the agent ends). The
agent runs in its own session so the notebook's Stop button does not end the tunnel, and pyngrok's
start-up wait (which blocks forever on a silent agent) is bounded here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from colab_magics import processes, session
from colab_magics.errors import MissingDependency, NoTunnelToken, Param, TunnelError, TunnelInstallError
from colab_magics.tunnels import Tunnel, TunnelOptions, credentials, ngrok_token

log = logging.getLogger(__name__)

TOKEN_HELP = ("ngrok needs an authtoken: set NGROK_AUTHTOKEN (or a Colab/Kaggle secret of that name) "
              "from https://dashboard.ngrok.com/get-started/your-authtoken, or use ", Param("provider", "cloudflared"))


@dataclass
class _Agent:
    """One running ngrok agent (pyngrok runs one per binary) and the files it was started with."""

    config: object  # pyngrok.conf.PyngrokConfig
    config_dir: Path
    tracked: processes.Tracked | None = None
    tunnels: int = 0


def _agents():
    """The agents this session runs, by binary path: `session.current().ngrok_agents`."""
    return session.current().ngrok_agents


class _Redact(logging.Filter):
    """Blanks secrets out of pyngrok's own log records (it logs tunnel options at DEBUG)."""

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
for _name in ("pyngrok.ngrok", "pyngrok.process", "pyngrok.process.ngrok"):
    logging.getLogger(_name).addFilter(_redact)


def _pyngrok():
    try:
        from pyngrok import conf, installer, ngrok, process
    except ImportError as exc:
        raise MissingDependency("pyngrok", "tunnel") from exc
    return conf, installer, ngrok, process


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
            f"the ngrok agent is not in {path.parent} and could not be downloaded ({_short(exc)}): "
            f"check the internet connection, or put the ngrok binary there yourself"
        ) from exc
    return path


def validate(options: TunnelOptions) -> None:
    """pyngrok installed, an authtoken available, a password ngrok accepts."""
    _pyngrok()
    if not ngrok_token():
        raise NoTunnelToken(*TOKEN_HELP)
    if options.auth is not None and not 8 <= len(options.auth[1]) <= 128:
        raise TunnelError("ngrok needs a basic-auth password of 8 to 128 characters: change ", Param("auth"))


def open(port: int, options: TunnelOptions) -> Tunnel:  # noqa: A001  (the provider interface)
    """An ngrok http tunnel to `port`, asking for basic auth unless --no-auth."""
    validate(options)
    token = ngrok_token()
    auth = credentials(options)
    _, _, ngrok, _ = _pyngrok()
    path = default_ngrok_path(options.bin_dir)
    if not path.exists():
        install_ngrok(path.parent)
    agent = _agent_for(path, token, options.timeout)
    tunnel_options: dict[str, object] = {}
    if auth is not None:
        tunnel_options["basic_auth"] = [f"{auth[0]}:{auth[1]}"]
        _redact.secrets.add(auth[1])
    _redact.secrets.add(token)
    remote = _bounded(lambda: ngrok.connect(addr=f"127.0.0.1:{port}", proto="http",
                                            pyngrok_config=agent.config, **tunnel_options),
                      agent, options.timeout, token)
    with _agents().lock:
        agent.tunnels += 1
        if agent.tracked is None:
            proc = ngrok.get_ngrok_process(agent.config).proc
            # pyngrok forks the agent itself, so it cannot die with us by PDEATHSIG: a guard ends it
            # (and removes the token file) if this interpreter is killed
            agent.tracked = processes.registry.adopt(
                processes.Tracked(name="ngrok", argv=list(proc.args), popen=proc),
                guard=True, remove=[agent.config_dir])
    return Tunnel(url=remote.public_url, provider="ngrok", port=port,
                  auth_user=auth[0] if auth else None, auth_password=auth[1] if auth else None,
                  process=agent.tracked,
                  notes=() if auth else ("No password: anyone with this URL can see TensorBoard.",))


def close(tunnel: Tunnel) -> None:
    """Close the tunnel; end the agent (and remove its token file) with its last tunnel."""
    _, _, ngrok, process = _pyngrok()
    from pyngrok.exception import PyngrokError

    with _agents().lock:
        agent = next((a for a in _agents().values() if a.tracked is tunnel.process), None)
        if agent is None:
            return
        agent.tunnels -= 1
        last = agent.tunnels <= 0 or not agent.tracked.alive()
    if not last:
        try:
            ngrok.disconnect(tunnel.url, pyngrok_config=agent.config)
        except PyngrokError as exc:
            log.warning("could not close ngrok tunnel %s: %s", tunnel.url, _short(exc))
        return
    _end_agent(agent)


def _agent_for(path: Path, token: str, timeout: float) -> _Agent:
    conf, _, _, _ = _pyngrok()
    with _agents().lock:
        agent = _agents().get(str(path))
        if agent is not None and agent.tracked is not None and agent.tracked.alive():
            return agent
        if agent is not None:
            _end_agent(agent)
        config_dir = Path(tempfile.mkdtemp(prefix="colab-magics-ngrok-"))  # mode 0700
        config_path = config_dir / "ngrok.yml"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"version: \"2\"\nauthtoken: {json.dumps(token)}\n")
        config = conf.PyngrokConfig(ngrok_path=str(path), config_path=str(config_path),
                                    startup_timeout=max(1, int(timeout)), start_new_session=True,
                                    monitor_thread=True, config_version="2")
        config.auth_token = None  # else pyngrok adds `--authtoken TOKEN` to the agent's argv
        config.api_key = None
        agent = _Agent(config=config, config_dir=config_dir)
        _agents().add(str(path), agent)
        return agent


def _bounded(call, agent: _Agent, timeout: float, token: str):
    """Run a pyngrok call that may start the agent, giving up after `timeout` seconds."""
    from pyngrok.exception import PyngrokError

    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except PyngrokError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="ngrok-connect", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        # pyngrok holds its process lock while it reads the agent's start-up lines, so neither its
        # get_process nor kill_process can be called now: end the agent directly (by pid), which
        # ends that read.
        for pid in _children_running(agent.config.ngrok_path):
            _kill(pid)
        worker.join(5)
        _end_agent(agent)
        raise TunnelError(f"the ngrok agent did not start a tunnel within {timeout:.0f} s: "
                          "check your network, or try ", Param("provider", "cloudflared"))
    if "error" in outcome:
        _end_agent(agent)
        message = _short(outcome["error"]).replace(token, "***")
        raise TunnelError(f"ngrok could not open the tunnel: {message}") from None
    return outcome["value"]


def end_agents() -> None:
    """End every agent of this session (and remove its token file), tunnels or not."""
    for agent in _agents().values():
        _end_agent(agent)


def _children_running(path: str) -> list[int]:
    """Pids of this process's children running the program at `path` (Linux: read from /proc)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        # argv[0] is the agent, or an interpreter whose argv[1] is the agent (a script with #!)
        if ppid == me and os.fsencode(path) in argv[:2]:
            found.append(int(entry.name))
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _end_agent(agent: _Agent) -> None:
    _, _, ngrok, _ = _pyngrok()
    ngrok.kill(agent.config)
    if agent.tracked is not None:
        processes.registry.stop(agent.tracked)
    shutil.rmtree(agent.config_dir, ignore_errors=True)
    _agents().remove(agent.config.ngrok_path, agent)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
