"""A quantity owns what it knows (issue 15): adding one touches its definition in
strategies/quantities.py, its reference and its strategies, nothing else.

Two checks: no module outside strategies/quantities.py branches on a quantity's name (an
`if q == "ntk"` or `q in ("jvp", "hvp")` chain is knowledge of a quantity kept away from its
definition); and a toy quantity defined only by its `Quantity` gets problems (built-in family
and user model), a reference, a forward pass, cost features and a memory estimate.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from jacbench.strategies import quantities
from jacbench.strategies.quantities import QUANTITIES, Quantity

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("strategies", "bench", "reports", "jacbench")
OWNER = Path("strategies/quantities.py")
# Single checks left on purpose, (file, source of the comparison): each says why.
ALLOWED: set = set()  # (path, source text) of a branch that must stay; none today


def _names(node) -> set[str]:
    """Quantity names a literal holds: "ntk", or ("jvp", "hvp")."""
    if isinstance(node, ast.Constant) and node.value in QUANTITIES:
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_names(e) for e in node.elts)) if node.elts else set()
    return set()


def _named_sets(tree) -> set[str]:
    """Module-level names bound to tuples of quantity names (e.g. PARAM_QUANTITIES)."""
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Tuple, ast.List)) \
                and node.value.elts and all(_names(e) for e in node.value.elts):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def branches_on_names(path: Path) -> list[str]:
    """The comparisons in `path` against quantity names, as source text."""
    source = path.read_text()
    tree = ast.parse(source)
    sets = _named_sets(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if any(_names(s) for s in sides) or any(isinstance(s, ast.Name) and s.id in sets
                                                for s in sides):
            found.append(ast.get_source_segment(source, node))
    return found


def test_no_module_but_the_definitions_branches_on_quantity_names():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel == OWNER:
                continue
            offenders += [f"{rel}: {text}" for text in branches_on_names(path)
                          if (rel, text) not in ALLOWED]
    assert not offenders, ("per-quantity branches outside strategies/quantities.py; make them "
                           "a fact of the Quantity:\n" + "\n".join(offenders))


def test_the_scan_sees_a_chain(tmp_path):
    """The check itself: a chain like the ones removed is found, a ladder's keys are not."""
    f = tmp_path / "m.py"
    f.write_text('QS = ("jvp", "hvp")\nLADDER = {"jvp": 1}\n'
                 'def g(q):\n    if q == "ntk":\n        return 1\n'
                 '    if q in ("jvp", "vjp"):\n        return 2\n    return q in QS\n')
    assert branches_on_names(f) == ['q == "ntk"', 'q in ("jvp", "vjp")', "q in QS"]


# ------------------------------------------------------------------------------ a toy quantity
def _row_sums(v):
    x = v.data["x"]
    return torch.func.jacrev(v.f)(x).sum(dim=1)


TOY = Quantity("toy_row_sums", "row sums of J at one input (a test's toy)", ("x", "w"), "(m,)",
               lambda p: (p.spec.out_dim,), _row_sums,
               lambda d, draw, rng: {"x": draw.point(0), "w": rng.normal(0, 1, d.m)},
               views={"x": "f"})


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(QUANTITIES, TOY.name, TOY)
    return TOY


def test_a_toy_quantity_needs_only_its_definition(toy):
    from jacbench.bench.harness import forward_callable
    from jacbench.bench.problems import make
    from jacbench.bench.user import Facts, problems_for
    from jacbench.strategies.cost_model import features
    from jacbench.strategies.quantities import reference_bytes
    from jacbench.strategies.user_model import UserModel

    p = make("mlp_width", toy.name, {"n": 5, "width": 6, "m": 3, "scale": 6})
    assert sorted(p.data) == ["w", "x"] and p.data["x"].shape == (5,) and p.mode is None
    ref = quantities.reference(p)
    assert ref.shape == (3,) and np.isfinite(ref).all()
    assert len(forward_callable(p, "cpu", "float64")()) == 1  # x only: w is not a model input
    assert features(p)["B"] == 1

    spec = UserModel("toy_user", "torch", (4,), 3, 10, digest="d", act_per_sample=2)
    facts = Facts("torch", 3, 10, 2, "d", None, None, None, False)
    X = np.random.default_rng(0).normal(0, 1, (8, 4))
    [up] = problems_for(spec, {8: X}, {8: facts}, [toy.name])
    assert np.array_equal(up.data["x"], X[0]) and up.size == "n=4,m=3"
    assert reference_bytes(up) > 0


def test_a_toy_quantity_is_judged_like_any_other(toy):
    """Its strategies register and run through the harness; its tolerance is its own noise
    floor, with no per-quantity code."""
    from jacbench.bench.harness import run_case
    from jacbench.bench.problems import make
    from jacbench.strategies import registry
    from jacbench.strategies.agreement import tolerance
    from jacbench.strategies.torch_model import torch_view

    def prepare(problem, device, dtype):
        """J by torch.func.jacrev, then its row sums."""
        v = torch_view(problem, device, dtype)
        return lambda: _row_sums(v)

    p = make("mlp_width", toy.name, {"n": 5, "width": 6, "m": 3, "scale": 6})
    ref = quantities.reference(p)
    tol = tolerance("float32", quantities.noise_floor(p, ref))
    s = registry.Strategy(toy.name, "torch.toy", "torch", True, prepare, registry.always)
    row = run_case(s, p, "cpu", "float32", ref, threads=1, tol=tol)
    assert row["status"] == "ok", row
    assert row["max_error"] <= tol
