"""The matrix-product bound of a method: its FLOP count against this machine's measured
single-thread matrix-product rate, and the rate a call achieved.

A method whose work is matrix products cannot run faster than its products take at the rate
of one large square product on one core: `bound_s = flops / rate`. The rate is measured once
per process and dtype (torch.mm of two 1024 x 1024 matrices on one thread, best of a few).
Times are process CPU time, as the suite's paired timing on a pinned CPU takes them: on a
shared host, wall time also counts other processes' time slices.
"""
from __future__ import annotations

import time

import torch

_RATES: dict[torch.dtype, float] = {}


def matmul_rate(dtype=torch.float32, n: int = 1024, repeats: int = 3) -> float:
    """FLOP/s of one n x n by n x n torch.mm on one thread (best of `repeats`), cached."""
    if dtype not in _RATES:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            torch.mm(a, b)  # warm caches and the BLAS thread state
            best = float("inf")
            for _ in range(repeats):
                t0 = time.process_time()
                torch.mm(a, b)
                best = min(best, time.process_time() - t0)
        finally:
            torch.set_num_threads(threads)
        _RATES[dtype] = 2 * n ** 3 / best
    return _RATES[dtype]


class BoundNote:
    """A note that reads, when rendered: "bound X ms at Y GFLOP/s (F GFLOP: ...); achieved Z
    GFLOP/s". `flops` and `parts` are set by the method's call and `seconds` holds the calls'
    times; the note is rendered after the first call (bench.harness), so it says the best so
    far."""

    def __init__(self, dtype):
        self.dtype, self.flops, self.parts, self.seconds = dtype, 0, {}, []

    def bound_s(self) -> float:
        return self.flops / matmul_rate(self.dtype)

    def __str__(self) -> str:
        if not self.flops:
            return "matrix-product bound: not yet called"
        rate = matmul_rate(self.dtype)
        parts = ", ".join(f"{k} {v / 1e9:.3g}" for k, v in self.parts.items())
        text = (f"bound {self.bound_s() * 1e3:.3g} ms at {rate / 1e9:.3g} GFLOP/s "
                f"({self.flops / 1e9:.3g} GFLOP: {parts})")
        if self.seconds:
            text += f"; achieved {self.flops / min(self.seconds) / 1e9:.3g} GFLOP/s"
        return text

    def __repr__(self) -> str:
        return repr(str(self))

    def __eq__(self, other) -> bool:
        return str(self) == other if isinstance(other, str) else NotImplemented

    __hash__ = object.__hash__
