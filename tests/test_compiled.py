"""The compiled twins (strategies.torch_compiled) behind the correctness gate: each agrees with
the float64 reference on a test problem, records its compile settings and graph breaks, and a
compile failure or a wrong compiled result is caught as for any other strategy."""
import pytest
import torch

from jacbench import strategies
from jacbench.bench.harness import Timing, run_case
from jacbench.bench.problems import problems
from conftest import assert_agrees, reference_for, tolerance_for
from jacbench.strategies.registry import Strategy, add, always, remove
from jacbench.strategies.torch_compiled import SUFFIX, TWINS, compiled_twin

FAST = Timing(max_run_time=0.01, min_run_time=0.001)


def _one_problem(strategy):
    return next(p for p in problems(strategy.quantity, "test")
                if strategy.not_applicable(p) is None and p.mode in (None, "full"))


def _twins():
    return [pytest.param(s, id=f"{s.quantity}-{s.name}")
            for s in strategies.strategies(framework="torch", compiled=True)]


def test_every_listed_twin_is_registered_tagged_and_documented():
    twins = {(s.quantity, s.name) for s in strategies.strategies(compiled=True)}
    assert twins == {(q, n + SUFFIX) for q, names in TWINS.items() for n in names}
    for q, n in twins:
        s = strategies.get(q, n)
        eager = strategies.get(q, n.removesuffix(SUFFIX))
        # A twin is what its eager strategy is (dense or matrix-free), compiled; never the
        # naive baseline the claims compare against.
        assert s.tags == {"compiled"} | (eager.tags & {"dense", "matrix-free"})
        assert "torch.compile" in s.idea
    assert all("compiled" not in s.tags for s in strategies.strategies(compiled=False))


@pytest.mark.parametrize("strategy", _twins())
def test_compiled_twin_agrees_and_says_how_it_was_compiled(strategy):
    p = _one_problem(strategy)
    fn = strategy.prepare(p, "cpu", "float32", **strategy.options)
    assert not fn.notes or "compiled:" not in fn.notes[-1]  # said after the first call
    err = strategies.max_error(fn(), reference_for(p))
    assert err <= tolerance_for(p, "float32"), err
    note = fn.notes[-1]
    assert note.startswith("compiled: backend inductor, mode default, static shapes; ")
    assert "graph break(s)" in note and "inductor cache" in note


def _wrong_after_compile(problem, device, dtype):
    """The reference, negated inside the compiled graph. Cost: one reference, untimed."""
    ref = torch.as_tensor(strategies.reference(problem), dtype=torch.float32)
    return lambda: -ref * 1.0


def _fails_to_compile(problem, device, dtype):
    """Calls an op dynamo refuses (a graph break would hide it: fullgraph is not set, so
    this raises from inside the compiled region instead). Cost: nothing."""
    def run():
        raise RuntimeError("planted failure inside the compiled function")
    return run


@pytest.mark.parametrize("planted,status,says", [
    (_wrong_after_compile, "disagrees", "max error"),
    (_fails_to_compile, "error", "first call: RuntimeError: planted failure"),
])
def test_a_wrong_or_failing_compiled_twin_is_a_row_not_a_pass(planted, status, says):
    name = f"torch.planted_{planted.__name__.strip('_')}"
    add(Strategy("jacobian", name, "torch", True, planted, always))
    twin = None
    try:
        twin = compiled_twin("jacobian", name)
        s = strategies.get("jacobian", twin)
        p = _one_problem(s)
        row = run_case(s, p, "cpu", "float32", reference_for(p), 1, FAST,
                       tol=tolerance_for(p, "float32"))
        assert row["status"] == status and says in row["message"], row
    finally:
        remove("jacobian", name)
        if twin:
            remove("jacobian", twin)


def test_auto_never_picks_a_compiled_twin():
    from jacbench.strategies.torch_auto import candidates

    for q in TWINS:
        for p in problems(q, "test"):
            assert all("compiled" not in s.tags for s in candidates(p))


def test_face_off_takes_each_frameworks_best_at_the_largest_size_both_ran():
    import pandas as pd

    from jacbench.reports.compiled import frameworks_face_off

    def row(problem, scale, strategy, median, status="ok", family="seed004_linear_tanh",
            mode=None, exact=True):
        return {"quantity": "jacobian", "family": family, "problem": problem, "scale": scale,
                "mode": mode, "strategy": strategy, "framework": strategy.split(".")[0],
                "status": status, "median_s": median, "exact": exact}
    df = pd.DataFrame([
        row("p@2", 2, "torch.jacrev", 4e-3), row("p@2", 2, "torch.jacrev_compiled", 1e-3),
        row("p@2", 2, "jax.jacrev_jit", 2e-3), row("p@2", 2, "torch.auto", 1e-4),
        row("p@2", 2, "torch.hutchinson", 1e-5, exact=False),
        row("p@2", 2, "jax.vmap_jvp_jit", 1e-5, status="disagrees"),
        row("p@1", 1, "torch.jacrev", 1e-6), row("p@1", 1, "jax.jacrev_jit", 1.0),
        # a problem JAX never ran: no credit either way
        row("q@1", 1, "torch.jacrev", 1e-3, family="seed001_sqrt"),
        row("n@1", 1, "torch.structured", 8e-3, family="seed003_convnet", mode="full"),
        row("n@1", 1, "jax.structured_jit", 2e-3, family="seed003_convnet", mode="full"),
        row("t@1", 1, "torch.structured", 1e-3, family="seed003_convnet", mode="trace"),
        row("m@1", 1, "jax.structured_jit", 1e-3, family="mlp_width"),
    ])
    table, geomean = frameworks_face_off(df)
    got = {r.problem: (r.torch, r.jax, r.ratio) for r in table.itertuples()}
    assert got == {"p@2": ("torch.jacrev_compiled", "jax.jacrev_jit", 0.5),
                   "n@1": ("torch.structured", "jax.structured_jit", 4.0)}
    assert geomean == pytest.approx(2 ** 0.5)
