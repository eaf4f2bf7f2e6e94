"""Which process of a multi-worker job is the chief: the one that archives checkpoints.

Every launcher says it differently, so the first one that speaks decides, in this order:
TF_CONFIG (the `chief`/`master` task, else worker 0 when the cluster has no chief), then the rank
variables of torchrun/accelerate (RANK, LOCAL_RANK alone), Horovod (HOROVOD_RANK), Open MPI
(OMPI_COMM_WORLD_RANK), MPICH/Intel MPI (PMI_RANK) and SLURM (SLURM_PROCID), then a JAX
multi-host runtime (`jax.process_index()`) and an initialised `torch.distributed` group. JAX and
torch are asked only when the program has already imported them: detection never imports them.
A process nobody describes runs alone, and is the chief.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Mapping

log = logging.getLogger(__name__)

# Global ranks first; LOCAL_RANK (rank on this machine) only counts when nothing global is set.
RANK_VARIABLES = ("RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "LOCAL_RANK")


def not_chief_reason(environ: Mapping[str, str] | None = None) -> str | None:
    """Why this process should not archive, or None when it should (it is the chief, or alone).

    `environ` replaces os.environ (for tests and for asking about another process); the live
    JAX / torch.distributed runtimes are consulted only when `environ` is None.
    """
    env = os.environ if environ is None else environ
    decided, reason = _from_tf_config(env.get("TF_CONFIG"))
    if decided:
        return reason
    for name in RANK_VARIABLES:
        value = (env.get(name) or "").strip()
        if value:
            return None if value == "0" else f"{name}={value}"
    if environ is None:
        for runtime in (_jax_process_index, _torch_rank):
            found = runtime()
            if found is not None:
                label, rank = found
                return None if rank == 0 else f"{label} is {rank}"
    return None


def is_chief(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process should archive (see `not_chief_reason`)."""
    return not_chief_reason(environ) is None


def _from_tf_config(raw: str | None) -> tuple[bool, str | None]:
    """(decided, reason) from TF_CONFIG; not decided when it is absent or names no task."""
    if not raw:
        return False, None
    try:
        config = json.loads(raw)
    except ValueError:
        log.warning("TF_CONFIG is not valid JSON; archiving as if this were the chief")
        return True, None
    task = config.get("task") or {}
    kind, index = str(task.get("type") or ""), int(task.get("index") or 0)
    cluster = config.get("cluster") or {}
    if not kind:
        return False, None
    if kind in ("chief", "master"):
        return True, None
    if kind == "worker" and index == 0 and not ({"chief", "master"} & set(cluster)):
        return True, None
    return True, f"TF_CONFIG task is {kind}:{index}"


def _jax_process_index() -> tuple[str, int] | None:
    """This host's index in a JAX multi-host runtime, if the program imported JAX and started one."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    is_initialized = getattr(getattr(jax, "distributed", None), "is_initialized", None)
    if is_initialized is None or not is_initialized():
        return None  # single host: process_index() is 0 anyway, and asking would start a backend
    return "jax.process_index()", int(jax.process_index())


def _torch_rank() -> tuple[str, int] | None:
    """This process's rank in an initialised torch.distributed group, if the program made one."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return "torch.distributed rank", int(dist.get_rank())
