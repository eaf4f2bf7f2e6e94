"""The dependency floors in pyproject.toml are real: the tunnel suite passes at pyngrok's floor.

pyngrok at its floor is installed (from PyPI, once per machine) into a directory of its own that is
put first on PYTHONPATH of a child pytest running tests/test_tunnels.py -k ngrok; the shared
environment keeps its own pyngrok.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def floor(package: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(rf'"{re.escape(package)}>=([0-9][0-9.]*)"', text).group(1)


def install_at(package: str, version: str) -> Path:
    """`package==version` alone (its dependencies are the environment's) in a directory of its own."""
    target = Path(tempfile.gettempdir()) / f"colab-magics-floor-{package}-{version}"
    if not (target / package).is_dir():
        staging = Path(tempfile.mkdtemp(prefix=target.name + "."))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                        "--target", str(staging), f"{package}=={version}"], check=True, timeout=600)
        try:
            staging.rename(target)
        except OSError:  # another run got there first
            pass
    return target


@pytest.mark.slow
def test_tunnel_suite_passes_with_pyngrok_at_its_floor():
    version = floor("pyngrok")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(install_at("pyngrok", version)), str(ROOT)]))

    seen = subprocess.run([sys.executable, "-c", "import pyngrok; print(pyngrok.__version__)"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert seen.stdout.strip() == version, seen.stderr

    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                             str(ROOT / "tests" / "test_tunnels.py"), "-k", "ngrok"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\d+ passed", result.stdout)
