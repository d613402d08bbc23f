"""One owner per layer kind (issue 18 item 2): every kind in strategies.layer_kinds has the hooks
of every feature it supports and declares the others unsupported; no other strategies module
keeps a table of kinds; and two kinds defined here alone (softplus, and a parameterised
per-feature scale) are built alike by torch, JAX and numpy, and every strategy either agrees
with the float64 reference on them or is not applicable, the per-kind ones naming the kind."""
from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jacbench import strategies
from jacbench.bench.problems import linear
from jacbench.strategies import peer_neural_tangents_worker as nt_worker
from jacbench.strategies.agreement import max_error, tolerance
from jacbench.strategies.jax_model import JAX_MISSING
from jacbench.strategies.layer_kinds import (FEATURES, KINDS, OPTIONAL, Elementwise, LayerKind,
                                              covering)
from jacbench.strategies.problem import Layer, ModelSpec, Problem
from jacbench.strategies.torch_model import build_module

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "strategies" / "layer_kinds"
needs_jax = pytest.mark.skipif(JAX_MISSING is not None, reason=str(JAX_MISSING))
STRUCTURED_HOOKS = {"patches": ("jax_patches",), "grads": ("jax_sample_grads",), None: ()}


def _absent(kind: LayerKind, hook: str) -> bool:
    return getattr(getattr(type(kind), hook), "missing", False)


# ------------------------------------------------------------------ completeness
def _check_complete(kind: LayerKind) -> None:
    assert type(kind).__doc__
    assert set(kind.HOOKS) == set(FEATURES)
    assert kind.unsupported <= set(OPTIONAL), "building and costing a kind is not optional"
    for feature in FEATURES:
        absent = [h for h in kind.HOOKS[feature] if _absent(kind, h)]
        if kind.supports(feature):
            assert not absent, f"{name} supports {feature} without {absent}"
        elif kind.HOOKS[feature]:  # a declaration must not hide a rule that is there
            assert absent, f"{name} declares {feature} unsupported but has its hooks"
    # jax.structured: a rule's hooks, or the fallback, declared, for parameterised kinds
    assert kind.HOOKS["jax_structured"] == STRUCTURED_HOOKS[kind.jax_structured_rule]
    no_rule = kind.parameterised and kind.jax_structured_rule is None
    assert no_rule == (not kind.supports("jax_structured"))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_has_the_hooks_of_what_it_supports_and_declares_the_rest(name):
    assert KINDS[name].name == name
    _check_complete(KINDS[name])


def test_the_neural_tangents_worker_table_is_the_registry_s():
    """The worker runs in .venv-nt without jacbench: its own list must match the kinds'."""
    assert sorted(nt_worker.KINDS) == covering("neural_tangents")


def _kind_literals(path: Path) -> list[str]:
    """Kind names written as string literals outside docstrings: a per-kind table or if/elif."""
    names, tree = set(KINDS), ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [f"{path.name}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names
            and id(node) not in docstrings]


def test_no_strategies_module_but_the_kinds_keeps_per_kind_code():
    # The worker's table is checked above; torch_layer_rules' "linear" names its rule for any
    # nn.Linear of any model, not the layer kind.
    allowed = {"peer_neural_tangents_worker.py", "torch_layer_rules.py"}
    found = [hit for path in sorted((ROOT / "strategies").glob("*.py"))
             if path.name not in allowed for hit in _kind_literals(path)]
    assert found == []


def test_importing_the_kinds_imports_neither_torch_nor_jax():
    init, folder = str(PACKAGE / "__init__.py"), str(PACKAGE)
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('layer_kinds', {init!r}, "
            f"submodule_search_locations=[{folder!r}])\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "sys.modules['layer_kinds'] = module\n"
            "spec.loader.exec_module(module)\n"
            "print(len(module.KINDS), sorted({'torch', 'jax', 'numpy'} & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{len(KINDS)} []"


# ------------------------------------------------------------------ a kind defined here alone
class Softplus(Elementwise):
    """y = log(1 + e^z): an elementwise kind, its derivatives give every rule."""

    name = "softplus"

    def torch_module(self, layer):
        return torch.nn.Softplus()

    def torch_fn(self):
        return torch.nn.functional.softplus

    def jax_apply(self, layer, p, b, x):
        import jax
        return jax.nn.softplus(x)

    def derivatives(self, z, y):
        s = torch.sigmoid(z)
        return s, s * (1 - s)


class _ScaleModule(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.weight


class Scale(LayerKind):
    """y = x * w, one weight per feature: parameterised, a diagonal map, no structured rule."""

    name = "scale"
    parameterised = True
    unsupported = frozenset({"forward_tangent", "jax_structured", "neural_tangents",
                             "backpack.batch_grad", "backpack.diag_hessian", "backpack.diag_ggn"})

    def torch_module(self, layer):
        return _ScaleModule(layer.params["weight"].shape[0])

    def jax_apply(self, layer, p, b, x):
        return x * p["weight"]

    def forward_macs(self, layer, shape):
        return math.prod(shape), shape

    def transpose(self, module, rows, z):
        return rows * module.weight

    def squared_transpose(self, module, d, z):
        return d * module.weight ** 2


@pytest.fixture
def new_kinds(monkeypatch):
    """Softplus and Scale registered for one test: the only place a new kind is written."""
    for kind in (Softplus(), Scale()):
        monkeypatch.setitem(KINDS, kind.name, kind)


def test_the_kinds_defined_here_pass_the_same_check(new_kinds):
    for name in ("softplus", "scale"):
        _check_complete(KINDS[name])


def _softplus_net(rng, n: int) -> ModelSpec:
    return ModelSpec((linear(rng, n, 5), Layer("softplus"), linear(rng, 5, 3)), (n,), 3)


def _scale_net(rng) -> ModelSpec:
    layers = (linear(rng, 4, 5), Layer("scale", {"weight": rng.uniform(0.5, 2.0, 5)}),
              Layer("softplus"), linear(rng, 5, 3))
    return ModelSpec(layers, (4,), 3)


def _numpy_forward(spec: ModelSpec, X: np.ndarray) -> np.ndarray:
    """The networks above in float64 numpy, written out independently of both builders."""
    for layer in spec.layers:
        w = layer.params.get("weight")
        if layer.kind == "linear":
            X = X @ w.T + layer.params["bias"]
        elif layer.kind == "scale":
            X = X * w
        else:
            X = np.logaddexp(0, X)  # softplus
    return X


def _problems(rng) -> list[Problem]:
    soft, scaled = _softplus_net(rng, 1), _scale_net(rng)
    return [
        Problem("softplus_net", "test", "jac_diag", soft, {"x": rng.normal(0, 1, 6)},
                {"N": 6, "params": soft.param_count}, frozenset({"separable"})),
        Problem("scale_net", "test", "hessian_diag", scaled, {"x": rng.normal(0, 1, 4)},
                {"n": 4, "params": scaled.param_count}),
        Problem("scale_net", "test", "ntk", scaled, {"X1": rng.normal(0, 1, (3, 4)),
                                                     "X2": rng.normal(0, 1, (2, 4))},
                {"n": 4, "B1": 3, "B2": 2, "params": scaled.param_count}, mode="full"),
    ]


@needs_jax
def test_torch_jax_and_numpy_build_the_same_network(new_kinds):
    from jacbench.strategies.jax_model import jax_view, scope
    rng = np.random.default_rng(0)
    spec = _scale_net(rng)
    X = rng.normal(0, 1, (7, 4))
    expected = _numpy_forward(spec, X)
    with torch.no_grad():
        ours = build_module(spec, "cpu", torch.float64)(torch.from_numpy(X)).numpy()
    problem = Problem("scale_net", "test", "batch_jacobian", spec, {"X": X}, {"B": 7})
    v = jax_view(problem, "cpu", "float64")
    with scope("float64", "cpu"):
        theirs = np.asarray(v.fb(v.data["X"]))
    assert np.abs(ours - expected).max() < 1e-12
    assert np.abs(theirs - expected).max() < 1e-12


# Per-kind strategies and what they do with the new kinds: "runs" (agrees with the reference)
# or the kind the not-applicable reason must name.
PER_KIND = {("jac_diag", "torch.forward_tangent"): "runs",
            ("hessian_diag", "torch.hessian_backprop"): "runs",
            ("ntk", "jax.structured"): "runs", ("ntk", "jax.structured_jit"): "runs",
            ("ntk", "neural_tangents.structured"): "scale",
            ("hessian_diag", "backpack.diag_hessian"): "scale",
            ("hessian_diag", "backpack.diag_ggn"): "scale",
            ("ntk", "backpack.batch_grad"): "scale"}


# The problems exist only while the kinds are registered: ids by hand, in _problems' order.
@pytest.mark.parametrize("index", range(3), ids=["jac_diag-softplus_net",
                                                 "hessian_diag-scale_net", "ntk-scale_net"])
def test_every_strategy_agrees_on_the_new_kinds_or_says_why_not(new_kinds, index):
    problem = _problems(np.random.default_rng(1))[index]
    ref = strategies.reference(problem)
    noise, ran = strategies.noise_floor(problem, ref), set()
    for s in strategies.strategies(problem.quantity, exact=True, compiled=False):
        reason = s.not_applicable(problem)
        expect = PER_KIND.get((s.quantity, s.name))
        if reason is not None:
            assert isinstance(reason, str) and reason
            assert expect != "runs", f"{s.name}: {reason}"
            library_missing = "install" in reason or "make peers" in reason
            if expect and not library_missing:
                assert expect in reason, f"{s.name}: {reason}"
            continue
        for dtype in ("float64", "float32") if expect == "runs" else ("float64",):
            err = max_error(s.prepare(problem, "cpu", dtype, **s.options)(), ref)
            tol = tolerance(dtype, noise)
            assert err <= tol, f"{s.name} on {problem.id} ({dtype}): error {err:.3g} > {tol:.2g}"
        ran.add(s.name)
    assert {n for (q, n), e in PER_KIND.items() if q == problem.quantity and e == "runs"
            and (JAX_MISSING is None or not n.startswith("jax."))} <= ran


@needs_jax
def test_jax_structured_reports_the_fallback_for_a_kind_without_a_rule(new_kinds):
    ntk = _problems(np.random.default_rng(1))[2]
    notes = strategies.get("ntk", "jax.structured").prepare(ntk, "cpu", "float64").notes
    assert [n for n in notes if "(scale) has no structured rule" in n]


def test_a_kind_without_a_rule_makes_the_per_kind_strategies_name_it(new_kinds, monkeypatch):
    soft = KINDS["softplus"]
    monkeypatch.setattr(soft, "unsupported",
                        soft.unsupported | {"hessian_backprop", "forward_tangent"})
    rng = np.random.default_rng(2)
    spec = _softplus_net(rng, 1)
    x = rng.normal(0, 1, 4)
    diag = Problem("softplus_net", "test", "jac_diag", spec, {"x": x}, {"N": 4},
                   frozenset({"separable"}))
    hess = Problem("softplus_net", "test", "hessian_diag", spec, {"x": x[:1]}, {"n": 1})
    scaled = Problem("scale_net", "test", "jac_diag", _scale_net(rng), {"x": x}, {"n": 4})
    for problem, name, kind in ((diag, "torch.forward_tangent", "softplus"),
                                (hess, "torch.hessian_backprop", "softplus"),
                                (scaled, "torch.forward_tangent", "scale")):
        reason = strategies.get(problem.quantity, name).not_applicable(problem)
        assert reason and kind in reason, (name, reason)
