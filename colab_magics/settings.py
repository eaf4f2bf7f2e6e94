"""Every user setting and its default, written once: a frozen dataclass and its environment loader.

The magics expose each field as a traitlet (`%config ColabMagics.chunk_size_mb = 200`), the CLI and
`colab-magics run` read `from_env()`, and every service function takes `settings=` (None: `from_env()`).
Precedence: a flag or argument > `%config ColabMagics.x` > `COLAB_MAGICS_X` > the default here.
This module imports nothing of colab_magics but `errors`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Mapping

from colab_magics.errors import InvalidSetting, InvalidValue, Param

MiB = 1024 * 1024
ENV_PREFIX = "COLAB_MAGICS_"
MAX_STREAMS = 64  # parallel connections of one transfer: more only queue behind each other


def _setting(default, help: str):  # noqa: A002  (traitlets' word)
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """The knobs of uploads, downloads, restores, TensorBoard and tunnels (see each field's help)."""

    chunk_size_mb: int = _setting(100, "Upload/download chunk size in MiB (resumable-upload chunk; memory ≈ 2 chunks).")
    retry_deadline: float = _setting(120.0, "Seconds a request may go unanswered (retries included) before the "
                                            "operation fails.")
    progress: bool = _setting(True, "Show progress bars for transfers of 64 MiB or more.")
    emulator_dir: str = _setting("", "Where `%gcs_auth --emulator` keeps the local emulator's data; empty: "
                                     "COLAB_MAGICS_EMULATOR_DIR, else ~/.cache/colab_magics/gcs-emulator.")
    restore_max_ratio: float = _setting(200.0, "%gcs_load refuses an archive that would write more than this many "
                                               "times its own size (a zip bomb); 0: no cap.")
    restore_free_margin_mb: int = _setting(256, "%gcs_load refuses an archive that would leave less than this many "
                                                "MiB free on TARGET_DIR's disk.")
    streams: int = _setting(16, "Parallel connections of one save or restore (parts composed into one object, "
                                "ranged reads); 1: a single stream.")
    restore_max_files: int = _setting(100_000, "%gcs_load refuses an archive of more members than this "
                                               "(each file costs an inode and a write, whatever its size); "
                                               "0: no cap.")
    tunnel_provider: str = _setting("", "Default provider of %tensorboard_tunnel (ngrok, cloudflared, ssh, colab, "
                                        "local); empty: colab inside Colab, ngrok when NGROK_AUTHTOKEN is set, "
                                        "else local.")
    tensorboard_timeout: float = _setting(90.0, "Seconds to wait for TensorBoard (and the tunnel) to answer "
                                                "before giving up.")
    ngrok_bin_dir: str = _setting("", "Directory of the ngrok agent (installed there if missing); empty: "
                                      "pyngrok's default.")
    ssh_known_hosts: str = _setting("", "known_hosts file for --provider ssh; empty: ssh's own "
                                        "(~/.ssh/known_hosts).")
    every: str = _setting("10m", "Shortest time between two archives of %%gcs_archive, the callbacks and "
                                 "colab-magics run: 90 (seconds), 30s, 10m, 1h.")
    final_timeout: float = _setting(25.0, "Seconds the final archive may take when training ends or the "
                                          "process is told to stop (GCE gives 30 s of preemption notice).")

    # --- derived values, in the units services use ---------------------------------------------
    @property
    def chunk_size(self) -> int:
        """Bytes per upload chunk."""
        return self.chunk_size_mb * MiB

    @property
    def restore_free_margin(self) -> int:
        """Bytes a restore leaves free on the target's disk."""
        return self.restore_free_margin_mb * MiB

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


DEFAULTS = Settings()
NAMES = tuple(f.name for f in dataclasses.fields(Settings))


def help_of(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(Settings) if f.name == name)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def from_env(environ: Mapping[str, str] | None = None, **overrides) -> Settings:
    """The defaults, with every `COLAB_MAGICS_*` variable set in `environ` (os.environ) applied, then
    `overrides`. A value that does not parse is an InvalidSetting naming the variable."""
    return DEFAULTS.replace(**environment_values(environ), **overrides)


def environment_values(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The settings given by `COLAB_MAGICS_*` variables, parsed, by field name."""
    environ = os.environ if environ is None else environ
    found = {}
    for f in dataclasses.fields(Settings):
        raw = environ.get(env_name(f.name))
        if raw is not None:
            found[f.name] = parse_value(f.name, raw, type(f.default))
    return found


def parse_value(name: str, raw: str, kind: type):
    text = raw.strip()
    if kind is bool:
        if text.lower() in {"1", "true", "yes", "on"}:
            return True
        if text.lower() in {"0", "false", "no", "off", ""}:
            return False
    else:
        try:
            return kind(text)
        except ValueError:
            pass
    what = {bool: "true or false", int: "a whole number", float: "a number"}.get(kind, "text")
    raise InvalidSetting(f"{env_name(name)}={raw!r} is not {what}: fix or unset it", name=name)


def effective(settings: Settings | None) -> Settings:
    """What a service function uses when its caller passed `settings=None`: the environment's."""
    return settings if settings is not None else from_env()


def check_streams(streams) -> int:
    """`streams` as given (1 to MAX_STREAMS), else one line naming the parameter."""
    if isinstance(streams, bool) or not isinstance(streams, int) or not 1 <= streams <= MAX_STREAMS:
        raise InvalidValue(Param("streams"), f" must be a whole number from 1 to {MAX_STREAMS}, not {streams!r}: "
                           "it counts the parallel connections of one save or restore", param="streams")
    return streams
