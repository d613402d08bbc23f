"""Test-only strategies that fail on purpose, registered when this module is imported.

Import it only in a child process (tests run `python -c "import planted_strategies; ..."`): the
registry is global, and the agreement tests of the main test process must not see these.
Each one computes jac_diag (or jacobian) for any problem and fails in one way.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from jacbench import strategies
from jacbench.strategies.registry import Strategy, add, always


def _zeros(problem):
    return np.zeros(strategies.quantity(problem.quantity).shape(problem))


def _raises(problem, device, dtype):
    """Raises on its first call. Cost: nothing."""
    def run():
        raise ValueError("planted failure\nsecond line that must not reach the table")
    return run


def _hangs(problem, device, dtype):
    """Never returns. Cost: forever."""
    def run():
        while True:
            time.sleep(0.05)
    return run


def _hog(problem, device, dtype):
    """Touches 50 MB after 50 MB until something stops it. Cost: unbounded memory."""
    def run():
        chunks = []
        while True:
            chunks.append(np.ones(50 * 2 ** 20 // 8))
    return run


def _alloc_fails(problem, device, dtype):
    """Asks for more memory than there is, as a dense 40 GB Jacobian would. Cost: one refusal."""
    def run():
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "40000000000 bytes")
    return run


def _crash(problem, device, dtype):
    """Dies of a segmentation fault. Cost: the process."""
    def run():
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(10)
    return run


def _wrong(problem, device, dtype):
    """Returns zeros of the right shape. Cost: nothing."""
    return lambda: _zeros(problem)


def _nan(problem, device, dtype):
    """Returns NaN of the right shape. Cost: nothing."""
    return lambda: _zeros(problem) * np.nan


def _slow_later(problem, device, dtype):
    """Right on its first call, then hangs while being timed. Cost: forever."""
    ref = strategies.reference(problem)
    calls = []

    def run():
        calls.append(1)
        while len(calls) > 1:
            time.sleep(0.05)
        return ref
    return run


def _right_slow_prepare(problem, device, dtype):
    """The float64 reference, after 0.3 s of untimed preparation. Cost: one reference."""
    ref = strategies.reference(problem)
    time.sleep(0.3)
    return lambda: ref


PLANTED = {
    "torch.planted_raises": (_raises, True),
    "torch.planted_hangs": (_hangs, True),
    "torch.planted_hog": (_hog, True),
    "torch.planted_alloc_fails": (_alloc_fails, True),
    "torch.planted_crash": (_crash, True),
    "torch.planted_wrong": (_wrong, True),
    "torch.planted_approx": (_wrong, False),
    "torch.planted_nan_approx": (_nan, False),
    "torch.planted_slow_later": (_slow_later, True),
    "torch.planted_right": (_right_slow_prepare, True),
}

for _quantity in ("jac_diag", "jacobian"):
    for _name, (_prepare, _exact) in PLANTED.items():
        add(Strategy(_quantity, _name, "torch", _exact, _prepare, always))
