"""The layering contract (issue 16 item 6), read from the source: strategies <- bench <- reports,
and no import cycle between modules, late (function-level) imports included.

An import-linter equivalent written out here, because the three folders are one package only
through jacbench/__init__'s path (a source tree is used without installing it), which a
file-system scanner of one package would not follow."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"strategies": "jacbench.strategies", "bench": "jacbench.bench",
            "reports": "jacbench.reports", "jacbench": "jacbench"}
# A layer may import only the layers after it in this list.
LAYERS = ["jacbench.reports", "jacbench.bench", "jacbench.strategies"]


def _modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((pkg, *parts))] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The jacbench modules that module `name` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:  # `from pkg import mod` imports the module pkg.mod
                sub = f"{base}.{a.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


def test_the_scan_sees_the_imports_it_must():
    # A contract that reads nothing passes everything: the scan must find known edges.
    assert "jacbench.bench.harness" in GRAPH["jacbench.bench.runner"]
    assert "jacbench.strategies.registry" in GRAPH["jacbench.strategies.torch_jacobians"]
    assert "jacbench.bench.store" in GRAPH["jacbench.reports.build"]
    assert len(MODULES) > 60


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) is not None))
def test_a_layer_imports_only_the_layers_below_it(module):
    mine = _layer(module)
    upward = sorted(m for m in GRAPH[module] if (_layer(m) is not None and _layer(m) < mine))
    assert not upward, f"{module} imports a layer above it: {upward}"


def _cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_package_inits(graph: dict) -> dict:
    """A package's __init__ importing its own modules, and those modules reaching the package
    for a sibling (`from jacbench import strategies`), is how a package is put together, not a
    cycle between two concepts; every other edge counts."""
    packages = set(PACKAGES.values())
    return {v: {w for w in ws if not (v in packages and w.startswith(v + "."))}
            for v, ws in graph.items()}


def test_no_import_cycles():
    assert _cycles(_without_package_inits(GRAPH)) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = _without_package_inits({**GRAPH, "jacbench.strategies.registry":
                                    GRAPH["jacbench.strategies.registry"] | {"jacbench.bench.runner"}})
    assert any("jacbench.bench.runner" in c for c in _cycles(graph))
