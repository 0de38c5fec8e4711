"""The package's floors, read from the code's own imports (ast), so the layering cannot rot.

    contract, errors, files   the root: names and rules every layer shares
    models                    -> root               (torch modules of the registered variants)
    plugins                   -> root               (the C++/CUDA sampling core and its builds)
    export                    -> models, root       (PyTorch -> ONNX; the post-export check is passed in)
    runtime                   -> plugins, root      (torch-free deploy side)
    data                      -> runtime, root      (offline sample data)
    tools                     -> anything below     (parity, bench, tune, build, doctor, ...)
    cli                       -> tools, runtime, data, root

Every import counts, also one inside a function: a lazy import is for a heavy optional package,
never for dodging an import cycle between tscli's own modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tscli"
ROOT = {"contract", "errors", "files", "__init__"}
ALLOWED = {  # floor -> the floors its modules may import
    "root": {"root"},
    "models": {"root", "models"},
    "plugins": {"root", "plugins"},
    "export": {"root", "models", "export"},
    "runtime": {"root", "plugins", "runtime"},
    "data": {"root", "runtime", "data"},
    "tools": {"root", "models", "plugins", "export", "runtime", "data", "tools"},
    "cli": {"root", "tools", "runtime", "data", "cli"},
}
TORCH_FREE = ("runtime", "plugins", "data")  # what a deploy host without torch imports


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


MODULES = {_module_name(p) for p in _sources()}


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module imported, line) for every import in the file, nested ones included."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            # "from . import parity" imports a module too; "from .. import __version__" a name
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names
                      if f"{module}.{alias.name}" in MODULES]
    return found


def _floor(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ROOT:
        return "root"
    return parts[1]


def _edges() -> dict[str, set[str]]:
    """module -> tscli modules it imports (only those that exist as files)."""
    edges = {}
    for path in _sources():
        me = _module_name(path)
        edges[me] = {m for m, _ in _imports(path) if m in MODULES and m != me}
    return edges


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_follow_the_floors(path: Path) -> None:
    me = _floor(_module_name(path))
    bad = [f"line {line}: {module}" for module, line in _imports(path)
           if module.startswith("tscli.") and _floor(module) not in ALLOWED[me]]
    assert not bad, f"{path.name} ({me}) may import {sorted(ALLOWED[me])} only; it imports " + ", ".join(bad)


def test_no_import_cycles() -> None:
    edges = _edges()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules (__init__ re-exports)
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else trail + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_deploy_side_needs_no_torch() -> None:
    """No module of the torch-free floors imports torch, timm or onnx (even lazily)."""
    heavy = ("torch", "timm", "onnx", "onnxscript", "onnx_graphsurgeon")
    bad = []
    for path in _sources():
        if _floor(_module_name(path)) in TORCH_FREE:
            bad += [f"{path.relative_to(PACKAGE.parent)}:{line} {m}" for m, line in _imports(path)
                    if m.split(".")[0] in heavy]
    assert not bad, "torch-free floors import: " + ", ".join(bad)
