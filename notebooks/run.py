"""Run notebooks headless, as a user would in Jupyter, and say where the executed copies are.

    python notebooks/run.py                 # the quickstart
    python notebooks/run.py --all           # every notebook in notebooks/

Each run gets its own emulator data directory (and cache directory) under notebooks/out/, so runs
do not see each other nor anything in the user's ~/.cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def execute(path: Path, out_dir: Path, timeout: int = 900) -> Path:
    """Execute one notebook in a fresh kernel; raise on the first failing cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    work = out_dir / path.stem
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["COLAB_MAGICS_EMULATOR_DIR"] = str(work / "emulator")  # its own emulator and data
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")  # nothing in the user's ~/.cache
    os.environ.pop("STORAGE_EMULATOR_HOST", None)
    os.environ.setdefault("COLAB_MAGICS_PROGRESS", "false")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    log = open(out_dir / f"{path.stem}.kernel.log", "wb")  # the kernel's own stderr
    try:
        client.execute(stderr=log)
    finally:
        log.close()
        out = out_dir / path.name
        nbformat.write(nb, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: quickstart)")
    parser.add_argument("--all", action="store_true", help="run every notebook in notebooks/")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="where executed copies go")
    args = parser.parse_args(argv)
    if args.all:
        paths = sorted(HERE.glob("*.ipynb"))
    else:
        paths = [HERE / (n if n.endswith(".ipynb") else f"{n}.ipynb") for n in (args.names or ["quickstart"])]
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        started = time.monotonic()
        try:
            out = execute(path, args.out)
        except Exception as exc:  # nbclient's CellExecutionError carries the failing cell's output
            print(f"FAILED {path.name}: {exc}", file=sys.stderr)
            print(f"partial output: {args.out / path.name}", file=sys.stderr)
            return 1
        print(f"ran {path.relative_to(HERE.parent)} in {time.monotonic() - started:.0f} s → {out}")
        print(f"   its run directories and emulator data: {args.out / path.stem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
