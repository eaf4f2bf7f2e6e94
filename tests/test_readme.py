"""The README stays true: its commands, its reference block and every magic option it mentions."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from colab_magics import reference
from colab_magics.magics import ColabMagics

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def first_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_the_main_job_and_the_test_command():
    assert README.startswith("# colab_magics\n\n```bash\n")
    main_job, tests = first_commands()
    assert "notebooks/run.py" in main_job and (ROOT / "notebooks" / "run.py").exists()
    assert tests.endswith("python3 -m pytest -q")
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_magics_reference_is_generated_from_the_magics_help():
    block = README.split(reference.START)[1].split(reference.END)[0].strip()
    assert block == reference.render().strip(), "run: python -m colab_magics.reference --write"


def _options(magic: str) -> set[str]:
    for kind in ("line", "cell"):
        if magic in ColabMagics.magics[kind]:
            parser = getattr(ColabMagics, ColabMagics.magics[kind][magic]).parser
            return {opt for action in parser._actions for opt in action.option_strings}
    raise AssertionError(f"README mentions %{magic}, which does not exist")


def test_every_magic_and_option_in_the_readme_exists():
    mentioned = 0
    for line in README.splitlines():
        for match in re.finditer(r"%%?([a-z_]+)((?:\s+[^#`|]*)?)", line):
            magic = match.group(1)
            if magic in {"load_ext", "unload_ext", "config", "pip", "cd", "tensorboard"}:  # not ours
                continue
            options = _options(magic)
            try:
                words = shlex.split(match.group(2))
            except ValueError:
                words = match.group(2).split()
            if "--" in words:
                words = words[: words.index("--")]  # flags after -- go to TensorBoard
            for word in words:
                if re.fullmatch(r"--[a-z][a-z-]*", word):
                    assert word in options, f"README: %{magic} {word} is not an option of the magic"
            mentioned += 1
    assert mentioned > 20
