"""Shared test helpers: a reference cache and the one agreement assertion every test uses."""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest

from jacbench import strategies
from jacbench.bench.problems import problems
from jacbench.strategies.agreement import max_error, tolerance


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


@functools.lru_cache(maxsize=None)
def _noise(quantity: str, problem_id: str) -> float:
    p = test_problem(quantity, problem_id)
    return strategies.noise_floor(p, reference_for(p))


def tolerance_for(problem, dtype) -> float:
    """The problem's measured tolerance in `dtype` (strategies.agreement.tolerance of its
    float32 noise floor), as the runner computes it."""
    return tolerance(dtype, _noise(problem.quantity, problem.id))


def assert_agrees(strategy, problem, dtype, device="cpu", **options):
    """Run `strategy` on `problem` and fail unless it matches the float64 reference within the
    problem's measured tolerance in `dtype` (the one rule in strategies.agreement)."""
    result = strategy.prepare(problem, device, dtype, **{**strategy.options, **options})()
    err = max_error(result, reference_for(problem))
    tol = tolerance_for(problem, dtype)
    assert err <= tol, f"{strategy.name} on {problem.id} ({dtype}): error {err:.3g} > {tol:.2g}"
    return err


def cases(framework: str | None = None, exact: bool | None = True):
    """(strategy, problem) pairs for every registered strategy and applicable test problem;
    the compiled twins have their own test (test_compiled.py: one compile costs seconds)."""
    out = []
    for s in strategies.strategies(framework=framework, exact=exact, compiled=False):
        for p in _test_problems(s.quantity).values():
            if s.not_applicable(p) is None:
                out.append(pytest.param(s, p, id=f"{s.quantity}-{s.name}-{p.id}"))
    return out


# ------------------------------------------------------------------------------ mutation score
# test_mutation.py's workers append their counts to one file per test session, named in the
# environment so that xdist's workers find it and a pytest run inside a test does not share it.
SCORE_ENV = "JACBENCH_MUTATION_SCORE"


def pytest_configure(config):
    import os
    import tempfile

    # torch.auto reads a refit calibration in the user's cache before the shipped one: the
    # tests see the shipped one, whatever this machine's cache holds.
    os.environ["JACBENCH_CACHE"] = tempfile.mkdtemp(prefix="jacbench-cache-")
    if not hasattr(config, "workerinput"):  # the controller, before any worker starts
        fd, path = tempfile.mkstemp(prefix="jacbench-mutation-score-")
        os.close(fd)
        os.environ[SCORE_ENV] = path


def pytest_unconfigure(config):
    import os

    if not hasattr(config, "workerinput"):
        with contextlib.suppress(OSError, KeyError):
            os.remove(os.environ.pop(SCORE_ENV))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The checker's mutation score (tests/test_mutation.py), summed over the workers."""
    import json
    import os

    try:
        with open(os.environ[SCORE_ENV]) as fh:
            counts = [json.loads(line) for line in fh if line.strip()]
    except (KeyError, FileNotFoundError):
        return
    if not counts:
        return
    caught, total, skipped = (sum(c[i] for c in counts) for i in range(3))
    terminalreporter.write_line(
        f"mutation score: {caught}/{total} wrong results judged disagrees "
        f"({100 * caught / max(total, 1):.1f}%) on {len(counts)} problems; {skipped} mutations "
        f"not applicable (symmetric block, identical samples, no sample axis)")
