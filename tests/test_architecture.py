"""The README's module map is the house as the code builds it: every module listed with its layer,
no import running up a layer, no circle — imports inside functions counted too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "colab_magics"
README = (ROOT / "README.md").read_text()


def module_name(path: Path) -> str:
    """colab_magics/tunnels/ngrok.py → 'tunnels/ngrok.py', as the map names modules."""
    return path.relative_to(PACKAGE).as_posix()


def module_map() -> dict[str, int]:
    block = README.split("<!-- module-map:start -->")[1].split("<!-- module-map:end -->")[0]
    rows = re.findall(r"^\| (\d) [^|]*\| `([^`]+)` \|", block, re.M)
    return {name: int(layer) for layer, name in rows}


def resolve(dotted: str) -> str | None:
    """'colab_magics.tunnels.ngrok' → 'tunnels/ngrok.py' (a package → its __init__.py)."""
    parts = dotted.split(".")[1:]
    if not parts:
        return "__init__.py"
    base = PACKAGE.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return module_name(base.with_suffix(".py"))
    if (base / "__init__.py").is_file():
        return module_name(base / "__init__.py")
    return None


def imports_of(path: Path) -> set[str]:
    """The modules of ours that `path` imports anywhere in its body (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("colab_magics")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("colab_magics"):
            # `from colab_magics.tunnels import ngrok`: a submodule when one of that name exists
            names = [f"{node.module}.{alias.name}" if resolve(f"{node.module}.{alias.name}") else node.module
                     for alias in node.names]
        else:
            continue
        found |= {target for target in map(resolve, names) if target is not None}
    if path.is_relative_to(PACKAGE):
        found.discard(module_name(path))
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_is_on_the_map_and_nothing_else():
    assert set(module_map()) == set(graph()), "update the module map in README.md (Development)"


def test_no_import_runs_up_a_layer():
    layers = module_map()
    upward = [f"{src} (layer {layers[src]}) imports {dst} (layer {layers[dst]})"
              for src, targets in graph().items() for dst in sorted(targets) if layers[dst] > layers[src]]
    assert not upward, "\n".join(upward)


def test_no_circle_among_the_modules():
    edges = graph()
    circles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "\n".join(circles)


def test_the_check_sees_imports_inside_functions(tmp_path):
    """The checker itself: a function-local import is an edge, a package's submodule is itself."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from colab_magics import magics\n    from colab_magics.tunnels import ngrok\n"
                     "    import colab_magics.session\n")

    assert imports_of(probe) == {"magics.py", "tunnels/ngrok.py", "session.py"}


def test_the_public_api_is_listed_and_costs_nothing_until_used():
    import subprocess
    import sys

    code = ("import sys, importlib, colab_magics as cm\n"
            "ours = sorted(m for m in sys.modules if m.startswith('colab_magics.'))\n"
            "missing = [n for n, mod in cm._PUBLIC.items()\n"
            "           if n not in getattr(importlib.import_module('colab_magics.' + mod), '__all__', ())\n"
            "           and not hasattr(importlib.import_module('colab_magics.' + mod), n)]\n"
            "print(ours, missing, cm.save_run.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)

    assert out.stdout.split() == ["[]", "[]", "colab_magics.runs"], out.stderr
