"""bench/ntk_targets.py, issue 18's target table: its FLOP count is the matrix products that
jax.structured really runs, and one size runs end to end, every strategy checked."""
import numpy as np
from jax.extend import core as jax_core

from jacbench.bench import ntk_targets
from jacbench.bench.problems import make, problems
from jacbench.strategies import peer_neural_tangents
from jacbench.strategies.jax_model import jax, jax_view
from jacbench.strategies.jax_structured import ntk_structured


def _dot_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            k = int(np.prod([eqn.invars[0].aval.shape[d] for d in lhs_contract]))
            total += 2 * k * int(np.prod(eqn.outvars[0].aval.shape))
        for sub in jax_core.jaxprs_in_params(eqn.params):
            total += _dot_flops(sub)
    return total


def test_flop_count_is_what_jax_structured_multiplies():
    n, w, m, b = 6, 16, 3, 5
    problem = make("ntk_targets", "ntk", {"n": n, "width": w, "m": m, "B1": b, "B2": b}, "full")
    v = jax_view(problem, "cpu", "float32")
    jaxpr = jax.make_jaxpr(lambda p, bu, d: ntk_structured(v.with_arrays(p, bu, d), "full"))(
        v.params, v.buffers, v.data)
    counted = ntk_targets.structured_flops(problem.spec, b, b)
    # jax.structured pushes the output layer's unit cotangents through its weight as a product;
    # the count leaves that out (they are the weight's rows).
    unit_product = 2 * (2 * b) * m * m * w
    assert _dot_flops(jaxpr.jaxpr) == counted["total"] + unit_product
    assert counted["gram"] == 2 * b * b * (n + 2 * w) + 2 * b * b * m * m * 2 * w


def test_issue_sizes_give_the_issue_flop_counts():
    """The issue: about 0.6 GFLOP at N=64, W=256 and about 4.7 at N=128, W=512."""
    by = {(p.sizes["B1"], p.sizes["width"]): p for p in problems("ntk", "full", "ntk_targets")}
    assert abs(ntk_targets.structured_flops(by[64, 256].spec, 64, 64)["total"] / 1e9 - 0.61) < 0.01
    assert abs(ntk_targets.structured_flops(by[128, 512].spec, 128, 128)["total"] / 1e9
               - 4.88) < 0.01


def test_one_size_runs_checks_and_tabulates():
    problem = [p for p in problems("ntk", "test", "ntk_targets") if p.mode == "full"][0]
    row = ntk_targets.one_size(problem, budget_s=0.3, worker_calls=2)
    names = {"jax.structured_jit", "torch.structured"}
    if not peer_neural_tangents.MISSING:
        names.add("neural_tangents.structured")
    else:
        assert "make peers" in row["skipped"]["neural_tangents.structured"]
    assert set(row["strategies"]) == set(row["errors"]) == names
    assert max(row["errors"].values()) < 1e-5
    assert row["rate"] > 1e8 and row["bound_s"] > 0
    table = ntk_targets.table([((4, 6), row)])
    assert table.count("\n| 4, 6 |") == 1 and "sgemm" in table
