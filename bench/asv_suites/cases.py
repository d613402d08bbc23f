"""Which problems the asv suites and tests/test_pybench.py run: one per family (and NTK mode),
the smallest of a ladder, so both tools time the same cases and a smoke run stays short."""
from __future__ import annotations

import os

from bench.problems import problems
from strategies.problem import Problem

# JACBENCH_ASV_FULL=1 widens the asv suites from the smallest quick sizes to the whole quick ladder.
FULL = os.environ.get("JACBENCH_ASV_FULL", "") not in ("", "0")


def smallest(quantity: str, ladder: str) -> list[Problem]:
    """The smallest problem of each (family, NTK mode) of `ladder`, in ladder order."""
    best: dict[tuple, Problem] = {}
    for p in problems(quantity, ladder):
        key = (p.family, p.mode)
        if key not in best or p.size_param < best[key].size_param:
            best[key] = p
    return list(best.values())


def asv_problems(quantity: str, full: bool = FULL) -> list[Problem]:
    return problems(quantity, "quick") if full else smallest(quantity, "quick")
