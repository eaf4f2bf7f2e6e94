"""The README's magics reference, generated from the magics' own help so the two cannot drift.

    python -m colab_magics.reference            # print it
    python -m colab_magics.reference --write    # rewrite the block in README.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

START, END = "<!-- magics-reference:start -->", "<!-- magics-reference:end -->"


def render() -> str:
    """One section per magic: its usage, options and examples, as `%magic?` shows them."""
    from colab_magics.magics import ColabMagics

    parts = []
    for kind, prefix in (("line", "%"), ("cell", "%%")):
        for name in sorted(ColabMagics.magics[kind]):
            method = getattr(ColabMagics, ColabMagics.magics[kind][name])
            doc = (method.__doc__ or "").strip("\n")
            parts.append(f"### `{prefix}{name}`\n\n```text\n{_dedent(doc)}\n```\n")
    parts.append(render_settings())
    return "\n".join(parts)


def render_settings() -> str:
    """The `%config ColabMagics.*` settings: name, default (with no COLAB_MAGICS_* or XDG_CACHE_HOME set), help."""
    import os

    from colab_magics.magics import ColabMagics

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("COLAB_MAGICS_") or k == "XDG_CACHE_HOME"}
    try:
        magics = ColabMagics(shell=None)
        rows = []
        for name, trait in sorted(ColabMagics.class_traits(config=True).items()):
            default = repr(getattr(magics, name)).replace(os.path.expanduser("~"), "~")
            rows.append(f"| `{name}` | `{default}` | `COLAB_MAGICS_{name.upper()}` | {trait.help} |")
    finally:
        os.environ.update(saved)
    head = ("### Settings\n\n`%config ColabMagics.NAME = VALUE`; precedence: flag > `%config` > "
            "environment variable > default.\n\n| setting | default | environment | meaning |\n|---|---|---|---|")
    return head + "\n" + "\n".join(rows) + "\n"


def _dedent(text: str) -> str:
    import textwrap

    lines = text.splitlines()
    while lines and lines[0].strip() in ("", "::"):
        lines = lines[1:]
    head, rest = lines[:1], textwrap.dedent("\n".join(lines[1:]))
    return "\n".join(head + rest.splitlines()).rstrip()


def update(readme: Path) -> bool:
    """Rewrite the reference block in `readme`; True if it changed."""
    text = readme.read_text()
    block = f"{START}\n{render()}\n{END}"
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    if "--write" in sys.argv:
        changed = update(Path(__file__).resolve().parent.parent / "README.md")
        print("README.md updated" if changed else "README.md already up to date")
    else:
        print(render())
