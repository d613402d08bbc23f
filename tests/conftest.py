"""Shared test helpers: a reference cache and the one agreement assertion every test uses."""
from __future__ import annotations

import functools

import numpy as np
import pytest

import strategies
from bench.problems import problems
from strategies.agreement import max_error, tolerance


@functools.lru_cache(maxsize=None)
def _reference(quantity: str, problem_id: str) -> np.ndarray:
    return strategies.reference(test_problem(quantity, problem_id))


@functools.lru_cache(maxsize=None)
def _test_problems(quantity: str):
    return {p.id: p for p in problems(quantity, "test")}


def test_problem(quantity: str, problem_id: str):
    return _test_problems(quantity)[problem_id]


test_problem.__test__ = False  # a helper, not a test


def reference_for(problem) -> np.ndarray:
    return _reference(problem.quantity, problem.id)


def assert_agrees(strategy, problem, dtype, device="cpu", **options):
    """Run `strategy` on `problem` and fail unless it matches the float64 reference within the
    dtype's tolerance (the one rule in strategies.agreement)."""
    result = strategy.prepare(problem, device, dtype, **{**strategy.options, **options})()
    err = max_error(result, reference_for(problem))
    tol = tolerance(dtype)
    assert err <= tol, f"{strategy.name} on {problem.id} ({dtype}): error {err:.3g} > {tol:.0e}"
    return err


def cases(framework: str | None = None, exact: bool | None = True):
    """(strategy, problem) pairs for every registered strategy and applicable test problem."""
    out = []
    for s in strategies.strategies(framework=framework, exact=exact):
        for p in _test_problems(s.quantity).values():
            if s.not_applicable(p) is None:
                out.append(pytest.param(s, p, id=f"{s.quantity}-{s.name}-{p.id}"))
    return out
