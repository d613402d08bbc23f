"""pytest-benchmark over the asv suites' cases (bench/asv_suites/cases.py), one group per quantity.

`make test` passes --benchmark-disable (pyproject's addopts): each case then runs once, as a
check that it agrees with the float64 reference. `make pybench` times them and saves the JSON
that `pytest-benchmark compare` reads. Like the asv suites, a case prepares and calls its
strategy once before timing, so compilation stays out of the timed calls; threads are left as
the process has them, since pinning would change every other test in the same session.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from jacbench import strategies
from jacbench.bench.asv_suites.cases import asv_problems
from jacbench.bench.harness import force
from jacbench.strategies.agreement import max_error, tolerance

DEVICE, DTYPE = "cpu", "float32"


@functools.lru_cache(maxsize=None)
def _problems(quantity: str) -> dict:
    return {p.id: p for p in asv_problems(quantity)}


@functools.lru_cache(maxsize=None)
def _reference(quantity: str, problem_id: str) -> np.ndarray:
    return strategies.reference(_problems(quantity)[problem_id])


def _cases():
    for q in strategies.QUANTITIES:
        for p in _problems(q).values():
            for s in strategies.strategies(q, compiled=False):  # compiling: test_compiled
                reason = s.not_applicable(p)
                marks = [pytest.mark.benchmark(group=q)]
                if reason is not None:
                    marks.append(pytest.mark.skip(reason=reason))
                yield pytest.param(s, p, id=f"{q}-{s.name}-{p.id}", marks=marks)


@pytest.mark.parametrize("strategy,problem", list(_cases()))
def test_strategy(benchmark, strategy, problem):
    fn = strategy.prepare(problem, DEVICE, DTYPE, **strategy.options)
    if not benchmark.disabled:
        force(fn())  # the first call (compilation, lazy initialisation) is not timed
    result = benchmark(lambda: force(fn()))
    err = max_error(result, _reference(problem.quantity, problem.id))  # checks the shape too
    benchmark.extra_info["max_error"] = err
    if strategy.exact:
        assert err <= tolerance(DTYPE), f"{strategy.name} on {problem.id}: error {err:.3g}"
    else:  # an estimator: its convergence is tested in test_agreement; here it must be finite
        assert np.isfinite(err), f"{strategy.name} on {problem.id}: non-finite result"
