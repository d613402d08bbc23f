"""`torch.auto`, for every quantity: the exact PyTorch strategy that the calibrated cost model
(strategies.cost_model, coefficients in auto_calibration.json) ranks first for the problem.

Candidates are the registered exact torch strategies that apply to the problem, never an
approximate one and never an `auto`. The pick is prepared and returned as is, so its time is
the pick's time. A candidate whose prepare raises is passed over for the next one. The
prepared callable's `notes` say what was picked and why; the harness writes them into the
result row's message ("picked torch.single_jvp: cost model predicts ...").
"""
from __future__ import annotations

from . import cost_model
from .problem import Problem
from .quantities import QUANTITIES
from .registry import Strategy, get, register, strategies

AUTO = "torch.auto"


def candidates(problem: Problem) -> list[Strategy]:
    # Never a compiled twin: its first call compiles for seconds to minutes, which a pick
    # made per call cannot amortise.
    return [s for s in strategies(problem.quantity, framework="torch", exact=True)
            if not s.name.endswith(".auto") and "compiled" not in s.tags
            and s.not_applicable(problem) is None]


def _applies(problem: Problem) -> str | None:
    return None if candidates(problem) else "no exact PyTorch strategy applies to this problem"


def prepare_auto(problem: Problem, device, dtype, calibration: dict | None = None):
    """Picks the exact torch strategy a cost model fitted to this suite's measurements
    predicts fastest for the shapes (n, m, batch, parameters, forward work, NTK mode), and runs
    it. Cost: the pick's, plus microseconds of ranking."""
    cands = candidates(problem)
    if not cands:
        raise ValueError(_applies(problem))
    choices = cost_model.rank(problem, [s.name for s in cands], calibration)
    passed = []
    for i, choice in enumerate(choices):
        pick = get(problem.quantity, choice.name)
        try:
            fn = pick.prepare(problem, device, dtype, **pick.options)
        except Exception as exc:  # noqa: BLE001 - the next candidate may well work
            passed.append(f"{choice.name} ({type(exc).__name__}: {str(exc)[:80]})")
            continue

        def run(fn=fn):
            return fn()

        note = cost_model.explain(choices[i:], cost_model.problem_key(problem))
        if passed:
            note += "; passed over, prepare failed: " + ", ".join(passed)
        run.picked = choice.name
        run.notes = [note, *getattr(fn, "notes", ())]
        return run
    raise RuntimeError("every candidate failed to prepare: " + ", ".join(passed))


for _q in QUANTITIES:
    register(_q, AUTO, exact=True, applies=_applies)(prepare_auto)
