"""`torch.auto`, for every quantity: the exact PyTorch strategy that the calibrated cost model
(strategies.cost_model, coefficients in auto_calibration.json) ranks first for the problem.

Candidates are the registered exact torch strategies that apply to the problem, never an
approximate one, never a compiled twin (tag "compiled") and never auto itself. The pick is
prepared and returned as is, so its steady-state time is the pick's time. A candidate whose
prepare or first call raises (a user's model without the forward-mode rule torch.ntk_vps
needs, say) is passed over for the next one, and the note says so. The first call then times
the cost model's leading candidates on the problem itself (strategies.auto_trial) and keeps
the fastest: the cost model ranks a user's model by shapes it never saw. The prepared
callable's `picked` and `notes` say what was picked and why; the harness writes them into the
result row's message ("picked torch.single_jvp by timing here within ...").
"""
from __future__ import annotations

import contextlib

from . import auto_trial, cost_model
from .problem import Problem
from .quantities import QUANTITIES
from .registry import Strategy, get, register, strategies

AUTO = "torch.auto"


def candidates(problem: Problem) -> list[Strategy]:
    # Never a compiled twin: its first call compiles for seconds to minutes, which a pick
    # made per call cannot amortise.
    return [s for s in strategies(problem.quantity, framework="torch", exact=True,
                                  without="compiled")
            if s.name != AUTO and s.not_applicable(problem) is None]


def _applies(problem: Problem) -> str | None:
    return None if candidates(problem) else "no exact PyTorch strategy applies to this problem"


def prepare_auto(problem: Problem, device, dtype, calibration: dict | None = None,
                 trial: bool = True):
    """Ranks the exact torch strategies by a cost model fitted to the suite's measurements; the
    first call times the leading ones here and keeps the fastest, and a candidate that fails to
    prepare or run gives way to the next. Cost: the pick's per call, plus the first call's trial."""
    cands = candidates(problem)
    if not cands:
        raise ValueError(_applies(problem))
    choices = cost_model.rank(problem, [s.name for s in cands], calibration)
    key = cost_model.problem_key(problem)
    passed: list[str] = []

    def prepare_from(start: int):
        for i in range(start, len(choices)):
            pick = get(problem.quantity, choices[i].name)
            try:
                return i, pick.prepare(problem, device, dtype, **pick.options)
            except Exception as exc:  # noqa: BLE001 - the next candidate may well work
                passed.append(f"{choices[i].name} (prepare: {_short(exc)})")
        raise RuntimeError("every candidate failed: " + ", ".join(passed))

    def note(i: int, fn) -> list[str]:
        text = cost_model.explain(choices[i:], key)
        if passed:
            text += "; passed over: " + ", ".join(passed)
        return [text, *getattr(fn, "notes", ())]

    def contenders(i: int) -> list[str]:
        # Not a candidate that failed at a smaller problem: growing it does not make it fit.
        tried = {p.split(" ", 1)[0] for p in passed}
        rest = [c.name for c in choices[i + 1:] if c.fails is None and c.name not in tried]
        # The baseline (the plain autograd loop) second: its steps are single backward passes,
        # so a deadline stops it on time, and it bounds how bad the pick can be. A forward-mode
        # contender ranked ahead of it on a model with many inputs can run one op for half a
        # second, past any deadline, and spend the budget before the baseline is reached.
        rest.sort(key=lambda n: "baseline" not in get(problem.quantity, n).tags)
        return rest[:auto_trial.CONTENDERS - 1]

    def by_name(name: str):
        pick = get(problem.quantity, name)
        return pick.prepare(problem, device, dtype, **pick.options)

    i, fn = prepare_from(0)
    first = [True]

    def run():
        nonlocal i, fn
        if not first[0]:
            return fn()
        # The pick is only known to work once it has run: a user's model may lack a rule
        # that the pick's transform needs, which no look at the problem can tell cheaply.
        while True:
            try:
                out = fn()
                break
            except Exception as exc:  # noqa: BLE001 - the next candidate may well work
                passed.append(f"{choices[i].name} (first call: {_short(exc)})")
                i, fn = prepare_from(i + 1)
        first[0] = False
        run.picked, run.notes = choices[i].name, note(i, fn)
        others = contenders(i) if trial else []
        if others:
            found, name, fn, out = auto_trial.run_trial(choices[i].name, fn, others, by_name,
                                                        _forcer(device), _clock(device),
                                                        torch_state_kept)
            run.picked = name
            run.notes = [f"picked {name} by timing the leading candidates: {found.describe()}; "
                         f"the cost model's order: " + note(i, fn)[0].removeprefix("picked "),
                         *getattr(fn, "notes", ())]
        return out

    run.picked, run.notes = choices[i].name, note(i, fn)
    return run


@contextlib.contextmanager
def torch_state_kept():
    """Puts back the process-wide autograd state that a contender stopped halfway (auto_trial's
    deadline) can leave changed: torch.func's interpreter stack (a vmap or grad layer left
    pushed makes every later transform fail), forward-mode AD's dual level, and the grad
    modes."""
    import torch
    from torch.autograd import forward_ad

    functorch = torch._C._functorch
    depth = functorch.get_dynamic_layer_stack_depth()
    level, grad = forward_ad._current_level, torch.is_grad_enabled()
    fwd_grad = torch._C._is_fwd_grad_enabled()
    try:
        yield
    finally:
        if functorch.get_dynamic_layer_stack_depth() > depth:
            functorch.pop_dynamic_layer_stack_and_undo_to_depth(depth)
        if level < 0:
            _no_dual_level(torch, forward_ad)
        torch.set_grad_enabled(grad)
        torch._C._set_fwd_grad_enabled(fwd_grad)


def _no_dual_level(torch, forward_ad) -> None:
    """Leaves forward-mode AD with no dual level, in C++ and in forward_ad's Python copy of it,
    whichever of the two a stopped contender left entered: entering and leaving a level are two
    steps each, and the two may have been left apart. torch has at most one level (nesting is
    not supported), so probing by entering one tells whether C++ still holds it."""
    forward_ad._current_level = -1
    try:
        probe = torch._C._enter_dual_level()
    except RuntimeError:  # "Nested forward mode AD is not supported": level 0 is still held
        torch._C._exit_dual_level(level=0)
    else:
        torch._C._exit_dual_level(level=probe)


def _forcer(device):
    """Waits for a result, so that the trial times the work and not its launch."""
    if str(device).startswith("cuda"):
        import torch

        return lambda out: (torch.cuda.synchronize(), out)[1]
    return lambda out: out


def _clock(device) -> auto_trial.Clock:
    """CPU time for one thread on the CPU (auto_trial.CPU says why); wall time otherwise: on
    several threads the calling thread's CPU time would miss the pool's work, and on a GPU the
    kernels."""
    import torch

    one_thread = str(device).startswith("cpu") and torch.get_num_threads() == 1
    return auto_trial.CPU if one_thread else auto_trial.WALL


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:100] if lines else ''}"


for _q in QUANTITIES:
    register(_q, AUTO, exact=True, applies=_applies)(prepare_auto)
