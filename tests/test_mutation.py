"""The checker proven by mutation: wrong results derived from the float64 reference must all be
judged `disagrees` by the rule the runner uses (strategies.agreement's error and measured
tolerance, bench.harness.judge), and the reference rounded to float32 must be judged `ok`.

Every quantity, on every problem of the `test` ladder and the seed problems of the `quick`
ladder. The score is printed at the end of the test session (conftest.pytest_terminal_summary).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import SCORE_ENV
from jacbench import strategies
from jacbench.bench.harness import judge
from jacbench.bench.problems import problems
from jacbench.strategies.agreement import ShapeMismatch, max_error, tolerance



def _zeros(ref, q):
    return np.zeros_like(ref)


def _one_percent(ref, q):
    return ref * 1.01


def _one_entry(ref, q):
    out = ref.copy()
    i = np.unravel_index(np.argmin(np.abs(ref)), ref.shape)  # the hardest entry to notice
    out[i] += 0.01 * np.abs(ref).max()
    return out


def _negated(ref, q):
    return -ref


def _transposed(ref, q):
    """The last two axes swapped (a square block) or read in the wrong order (a layout bug
    that keeps the shape); samples mixed up are `_samples_swapped`'s."""
    if ref.ndim < 2:
        return None
    if ref.shape[-1] == ref.shape[-2]:
        return np.swapaxes(ref, -1, -2).copy()
    return np.swapaxes(ref, -1, -2).reshape(ref.shape).copy()


def _samples_swapped(ref, q):
    axes = strategies.quantity(q).sample_axes
    axis = next((a for a in axes if ref.shape[a] >= 2), None)
    if axis is None:
        return None
    out = ref.copy()
    a, b = [slice(None)] * ref.ndim, [slice(None)] * ref.ndim
    a[axis], b[axis] = 0, 1
    out[tuple(a)], out[tuple(b)] = ref[tuple(b)], ref[tuple(a)]
    return out


MUTATIONS = {"zeros": _zeros, "1% everywhere": _one_percent,
             "one entry off by 1% of the largest": _one_entry, "sign flipped": _negated,
             "transposed": _transposed, "two samples swapped": _samples_swapped}

# A layout mutant (transposed, samples swapped) closer than this to the reference is no wrong
# answer (a symmetric block, two identical samples): it is counted as not applicable, not as
# caught or missed. Measured here with its own arithmetic, never with the checker under test.
WRONG = 1e-2
LAYOUT = ("transposed", "two samples swapped")


def _is_wrong(mutant, ref) -> bool:
    if mutant.shape != ref.shape:
        return True
    return float(np.abs(mutant - ref).max()) >= WRONG * float(np.abs(ref).max())


def _problems():
    out = [p for p in problems(None, "test")]
    out += [p for p in problems(None, "quick") if p.family.startswith("seed")]
    return out


def _checked(p):
    ref = strategies.reference(p)
    return ref, strategies.noise_floor(p, ref)


def _verdict(result, ref, dtype, noise) -> str:
    try:
        err = max_error(result, ref)
    except ShapeMismatch:
        return "error"
    return judge(True, err, tolerance(dtype, noise))[0]


def _score(caught: int, total: int, skipped: int) -> None:
    """Add this test's counts to the session's score file (conftest names it and sums it)."""
    path = os.environ.get(SCORE_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps([caught, total, skipped]) + "\n")


@pytest.mark.parametrize("problem", _problems(), ids=lambda p: f"{p.quantity}-{p.id}")
def test_every_mutant_disagrees_and_float32_rounding_agrees(problem):
    ref, noise = _checked(problem)
    assert np.abs(ref).max() > 0, "an all-zero reference cannot tell a wrong answer"
    rounded = ref.astype(np.float32)
    assert _verdict(rounded, ref, "float32", noise) == "ok", \
        f"the reference rounded to float32 is judged wrong (noise floor {noise:.2g})"
    missed, caught, total, skipped = [], 0, 0, 0
    for name, mutate in MUTATIONS.items():
        mutant = mutate(ref, problem.quantity)
        if mutant is None or (name in LAYOUT and not _is_wrong(mutant, ref)):
            skipped += 1
            continue
        for dtype in ("float32", "float64"):
            total += 1
            verdict = _verdict(mutant, ref, dtype, noise)
            if verdict in ("disagrees", "error"):
                caught += 1
            else:
                missed.append(f"{name} ({dtype}): {verdict}")
    _score(caught, total, skipped)
    assert not missed, f"wrong results judged ok: {missed}"
