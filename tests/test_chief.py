"""Only the chief archives, whatever launched the job.

Environment launchers are tested as the variables they set; torch.distributed with a real gloo
group of two processes on 127.0.0.1; JAX through a real `jax.distributed` runtime of one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from colab_magics import archiver, chief
from conftest import free_port

TWO_WORKERS = {"cluster": {"worker": ["a:1", "b:1"]}}


@pytest.mark.parametrize("env, reason", [
    ({}, None),
    # torchrun / accelerate
    ({"RANK": "0", "LOCAL_RANK": "0"}, None),
    ({"RANK": "3", "LOCAL_RANK": "1"}, "RANK=3"),
    ({"LOCAL_RANK": "1"}, "LOCAL_RANK=1"),
    ({"RANK": "0", "LOCAL_RANK": "1"}, None),  # RANK is the global one: LOCAL_RANK only counts alone
    # Horovod (horovodrun sets HOROVOD_RANK; under mpirun only Open MPI's variable is there)
    ({"HOROVOD_RANK": "0", "HOROVOD_LOCAL_RANK": "0"}, None),
    ({"HOROVOD_RANK": "2"}, "HOROVOD_RANK=2"),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, "OMPI_COMM_WORLD_RANK=1"),
    ({"OMPI_COMM_WORLD_RANK": "0"}, None),
    # MPICH / Intel MPI
    ({"PMI_RANK": "5"}, "PMI_RANK=5"),
    ({"PMI_RANK": "0"}, None),
    # SLURM (srun): the global task id
    ({"SLURM_PROCID": "1", "SLURM_LOCALID": "0"}, "SLURM_PROCID=1"),
    ({"SLURM_PROCID": "0"}, None),
    # TF_CONFIG wins over rank variables, and decides alone when it names a task
    ({"TF_CONFIG": json.dumps({**TWO_WORKERS, "task": {"type": "worker", "index": 1}}), "RANK": "0"},
     "TF_CONFIG task is worker:1"),
    ({"TF_CONFIG": json.dumps({**TWO_WORKERS, "task": {"type": "worker", "index": 0}})}, None),
    ({"TF_CONFIG": json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                               "task": {"type": "worker", "index": 0}})}, "TF_CONFIG task is worker:0"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"], "ps": ["c:1"]}, "task": {"type": "ps", "index": 0}})},
     "TF_CONFIG task is ps:0"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}}), "SLURM_PROCID": "3"}, "SLURM_PROCID=3"),
])
def test_the_chief_per_launcher(env, reason):
    assert chief.not_chief_reason(env) == reason
    assert chief.is_chief(env) is (reason is None)


def test_a_non_chief_archiver_skips_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_PROCID", "2")

    worker = archiver.Archiver(tmp_path / "run", "gs://some-bucket", every=None).start()
    summary = worker.stop(final=True)

    assert summary.skipped == "not the chief worker (SLURM_PROCID=2)" and summary.archives == 0


def run_python(code: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in chief.RANK_VARIABLES and k != "TF_CONFIG"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


TORCH_WORKER = """
    import torch.distributed as dist
    from colab_magics import chief
    assert chief.is_chief(), "nothing initialised yet: alone means chief"
    dist.init_process_group("gloo", init_method="{url}",
                            rank={rank}, world_size=2)
    print("REASON", chief.not_chief_reason())
    dist.barrier()
    dist.destroy_process_group()
"""


def test_torch_distributed_group_of_two_real_processes(tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(TORCH_WORKER.format(url=url, rank=rank))],
                              env={k: v for k, v in os.environ.items() if k not in chief.RANK_VARIABLES},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        outputs.append(out)

    assert "REASON None" in outputs[0]
    assert "REASON torch.distributed rank is 1" in outputs[1]


def test_torch_imported_but_not_initialised_is_alone():
    result = run_python("""
        import torch.distributed
        from colab_magics import chief
        print(chief.not_chief_reason())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def test_detection_never_imports_jax_or_torch():
    result = run_python("""
        import sys
        from colab_magics import chief
        chief.not_chief_reason()
        print(sorted(m for m in ("jax", "torch") if m in sys.modules))
    """)
    assert result.stdout.strip() == "[]", result.stderr


def test_jax_multi_host_runtime_is_asked_once_initialised():
    port = free_port()
    result = run_python(f"""
        import jax
        from colab_magics import chief
        before = chief.not_chief_reason()
        jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=1, process_id=0)
        print(before, chief._jax_process_index(), chief.not_chief_reason())
        jax.distributed.shutdown()
    """, env={"JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "None ('jax.process_index()', 0) None"
