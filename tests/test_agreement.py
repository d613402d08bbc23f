"""Every exact PyTorch strategy agrees with the float64 reference on every applicable test
problem, in float64 and in float32; approximate ones converge as their sample count grows."""
import numpy as np
import pytest

from jacbench import strategies
from jacbench.bench.problems import problems
from conftest import assert_agrees, cases, reference_for
from jacbench.strategies.agreement import convergence


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("strategy,problem", cases(framework="torch"))
def test_exact_torch_strategy_agrees(strategy, problem, dtype):
    assert_agrees(strategy, problem, dtype)


def _estimator_cases():
    out = []
    for s in strategies.strategies(framework="torch", exact=False):
        for p in problems(s.quantity, "test"):
            if s.not_applicable(p) is None:
                out.append(pytest.param(s, p, id=f"{s.quantity}-{s.name}-{p.id}"))
    return out


def _runs(strategy, problem):
    return lambda k, seed: strategy.prepare(problem, "cpu", "float64", samples=k, seed=seed)()


@pytest.mark.parametrize("strategy,problem", _estimator_cases())
def test_estimator_converges_at_its_promised_rate_without_bias(strategy, problem):
    """Monte Carlo: rms error over seeds ~ samples^-1/2, and the seeds' mean within what their
    spread explains (strategies.agreement.convergence)."""
    c = convergence(_runs(strategy, problem), reference_for(problem))
    assert np.isfinite(c.rms).all()
    assert not c.problems(), (c.problems(), c)


def _hutchinson():
    p = next(p for p in problems("hessian_diag", "test") if p.family == "mlp_width")
    return strategies.get("hessian_diag", "torch.hutchinson"), p


def test_a_planted_biased_estimator_is_caught():
    s, p = _hutchinson()
    run = _runs(s, p)
    c = convergence(lambda k, seed: 1.03 * run(k, seed), reference_for(p))
    assert any(t.startswith("biased") for t in c.problems()), c


def test_a_planted_slow_estimator_is_caught():
    """Unbiased, but its error falls like samples^-0.1: the rate, not the bias, gives it away."""
    s, p = _hutchinson()
    run, ref = _runs(s, p), reference_for(p)
    c = convergence(lambda k, seed: ref + (run(k, seed).numpy() - ref) * (k / 64) ** 0.4, ref)
    assert any(t.startswith("error falls like") for t in c.problems()), c
