"""Every exact PyTorch strategy agrees with the float64 reference on every applicable test
problem, in float64 and in float32; approximate ones converge as their sample count grows."""
import numpy as np
import pytest

import strategies
from bench.problems import problems
from conftest import assert_agrees, cases, reference_for
from strategies.agreement import max_error


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


@pytest.mark.parametrize("strategy,problem", _estimator_cases())
def test_estimator_error_shrinks_with_samples(strategy, problem):
    ref = reference_for(problem)
    errors = [max_error(strategy.prepare(problem, "cpu", "float64", samples=k)(), ref)
              for k in (4, 64, 4096)]
    # Monte Carlo error falls like 1/sqrt(samples): 1000x more samples, expect well over 3x less.
    assert errors[-1] < errors[0] / 3 or errors[-1] < 1e-12, errors
    assert np.isfinite(errors).all()
