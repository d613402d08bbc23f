"""Multiplying a problem's outputs by 1e-6 or 1e6 changes no verdict (issue 15): not of a
correct float32 strategy, not of a wrong result, and not the tolerance."""
from dataclasses import replace

import numpy as np
import pytest

from jacbench import strategies
from jacbench.bench.harness import judge
from jacbench.bench.problems import problems
from jacbench.strategies.agreement import max_error, tolerance
from jacbench.strategies.problem import Layer, ModelSpec

SCALES = (1e-6, 1e6)
# Families whose last layer is linear, so scaling its weights and bias scales the outputs.
FAMILIES = ("mlp_width", "seed003_convnet", "seed002_netx", "conv_tanh")


def _scaled(p, c):
    layers = list(p.spec.layers)
    i = max(k for k, layer in enumerate(layers) if layer.params)
    assert layers[i].kind == "linear" and i == len(layers) - 1
    layers[i] = Layer("linear", {k: c * v for k, v in layers[i].params.items()})
    spec = ModelSpec(tuple(layers), p.spec.in_shape, p.spec.out_dim)
    return replace(p, spec=spec, size=f"{p.size},outputs x{c:g}")


def _cases():
    seen, out = set(), []
    for p in problems(None, "test"):
        if p.family in FAMILIES and (p.quantity, p.mode) not in seen:
            seen.add((p.quantity, p.mode))
            out.append(pytest.param(p, id=f"{p.quantity}-{p.id}"))
    return out


def _verdicts(p):
    ref = strategies.reference(p)
    tol = tolerance("float32", strategies.noise_floor(p, ref))
    out = {}
    for s in strategies.strategies(quantity=p.quantity, framework="torch", exact=True,
                                   compiled=False):
        if s.not_applicable(p) is None:
            out[s.name] = judge(True, max_error(s.prepare(p, "cpu", "float32")(), ref), tol)[0]
    for name, wrong in (("zeros", 0 * ref), ("1%", 1.01 * ref), ("negated", -ref)):
        out[name] = judge(True, max_error(wrong, ref), tol)[0]
    return out, tol


def test_the_rule_itself_is_scale_free():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(5, 7))
    x = y + 1e-5 * rng.normal(size=y.shape)
    for c in SCALES:
        assert max_error(c * x, c * y) == pytest.approx(max_error(x, y), rel=1e-12)


@pytest.mark.parametrize("problem", _cases())
def test_no_verdict_changes_when_the_outputs_are_scaled(problem):
    base, tol = _verdicts(problem)
    assert set(base.values()) == {"ok", "disagrees"}
    for c in SCALES:
        scaled, scaled_tol = _verdicts(_scaled(problem, c))
        assert scaled == base, c
        # The noise floor is re-measured on other roundings: the same order, not the same value.
        assert tol / 4 <= scaled_tol <= 4 * tol, (c, tol, scaled_tol)
