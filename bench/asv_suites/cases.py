"""Which problems the asv suites and tests/test_pybench.py run, so both tools time the same cases.

By default, per quantity (and per NTK mode), the fewest problems of a ladder that every
registered strategy applies to, from the smallest size of each family: every strategy is
covered while a run over all of them stays within minutes on a 2-core CPU (each asv benchmark
is its own process, so JAX's eager first calls, ~0.5 s each, dominate).

Environment switches (read when asv imports the suite, so they reach its benchmark processes):
- JACBENCH_ASV_LADDER=test|quick|full picks the ladder (default quick); `make asv-quick` and
  `make test` use `test`, whose sizes are tiny, because there only the code paths matter;
- JACBENCH_ASV_FULL=1 takes every problem of that ladder instead of the covering few.
"""
from __future__ import annotations

import os

from jacbench import strategies
from jacbench.bench.problems import problems
from jacbench.strategies.problem import Problem

LADDER = os.environ.get("JACBENCH_ASV_LADDER", "") or "quick"
FULL = os.environ.get("JACBENCH_ASV_FULL", "") not in ("", "0")


def smallest(quantity: str, ladder: str) -> list[Problem]:
    """The smallest problem of each (family, NTK mode) of `ladder`, in ladder order."""
    best: dict[tuple, Problem] = {}
    for p in problems(quantity, ladder):
        key = (p.family, p.mode)
        if key not in best or p.size_param < best[key].size_param:
            best[key] = p
    return list(best.values())


def covering(quantity: str, ladder: str) -> list[Problem]:
    """Greedily, per NTK mode, the fewest of `smallest(quantity, ladder)` such that every
    registered strategy applies to one of them; among equal gains the one with the fewest
    parameters, whose compilation and first call are the cheapest.
    A strategy that applies to none (its library missing) adds nothing."""
    out: list[Problem] = []
    candidates = smallest(quantity, ladder)
    for mode in dict.fromkeys(p.mode for p in candidates):
        pool = [p for p in candidates if p.mode == mode]
        uncovered = {s.name: s for s in strategies.strategies(quantity, compiled=False)}
        while uncovered:
            gain = [{n for n, s in uncovered.items() if s.not_applicable(p) is None} for p in pool]
            # fewest parameters first among equal gains: a cheap first call keeps runs short
            best = min(range(len(pool)), key=lambda i: (-len(gain[i]), pool[i].sizes["params"]),
                       default=None)
            if best is None or not gain[best]:
                break
            out.append(pool.pop(best))
            for name in gain[best]:
                del uncovered[name]
    return out


def asv_problems(quantity: str, ladder: str = LADDER, full: bool = FULL) -> list[Problem]:
    return problems(quantity, ladder) if full else covering(quantity, ladder)
