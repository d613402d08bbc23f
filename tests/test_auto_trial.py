"""torch.auto's trial (strategies.auto_trial): the first call times the cost model's leading
candidates on the problem and keeps the fastest, within a budget that stops a contender that
runs too long; a contender that fails is passed over; `trial=False` keeps the model's pick."""
from __future__ import annotations

import math
import re
import signal
import threading
import time

import numpy as np
import pytest

from jacbench import strategies
from jacbench.bench.problems import problems
from conftest import reference_for
from jacbench.strategies import auto_trial, cost_model, torch_auto
from jacbench.strategies.cost_model import FEATURES
from jacbench.strategies.torch_auto import candidates, prepare_auto

BASE = "torch.jacrev"
BASELINE = next(s.name for s in strategies.strategies("jacobian", framework="torch")
                if "baseline" in s.tags)


def _problem():
    return problems("jacobian", "test", "mlp_width")[0]


def _calibration(first: list[str]) -> dict:
    """Models that rank `first` in that order ahead of every other candidate."""
    names = [s.name for s in candidates(_problem())]
    times = {n: 1.0 for n in names}
    times.update({n: 1e-9 * 10 ** k for k, n in enumerate(first)})
    return {"models": {"jacobian": {s: {"const": math.log(t),
                                        "exponents": dict.fromkeys(FEATURES, 0.0),
                                        "rows": 3, "failed": []} for s, t in times.items()}}}


def _planted(name: str, before=None, fail: bool = False):
    """Registers `name`: torch.jacrev's result, with `before()` run ahead of each call."""
    base = strategies.get("jacobian", BASE)

    def prepare(problem, device, dtype):
        fn = base.prepare(problem, device, dtype, **base.options)

        def run():
            if fail:
                raise RuntimeError("planted failure")
            if before:
                before()
            return fn()
        return run

    strategies.registry.add(strategies.Strategy("jacobian", name, "torch", True, prepare,
                                                lambda p: None))


def _spin(seconds: float, now=time.perf_counter):
    """Busy for `seconds` by the clock `now` (wall time by default): a contender's work."""
    end = now() + seconds
    while now() < end:
        pass


@pytest.fixture
def planted():
    names = []

    def plant(name, **kw):
        _planted(name, **kw)
        names.append(name)
    yield plant
    for n in names:
        strategies.registry.remove("jacobian", n)


class _Ticks:
    """A trial clock that only the contenders move: what the trial prints is then exactly
    what they took, on a host of any speed and load."""

    def __init__(self):
        self.now = 0.0
        self.clock = auto_trial.Clock(lambda: self.now, "CPU time")

    def take(self, seconds: float):
        self.now += seconds


def test_the_trial_keeps_the_faster_contender_and_says_what_it_timed(planted, monkeypatch):
    # These two and the baseline (always second) only, not the real ones after.
    monkeypatch.setattr(auto_trial, "CONTENDERS", 3)
    ticks = _Ticks()
    monkeypatch.setattr(torch_auto, "_clock", lambda device: ticks.clock)
    planted("torch.zz_slow", before=lambda: ticks.take(0.01))
    planted("torch.zz_fast")
    p = _problem()
    run = prepare_auto(p, "cpu", "float64", calibration=_calibration(["torch.zz_slow",
                                                                      "torch.zz_fast"]))
    assert run.picked == "torch.zz_slow"  # the cost model's pick, before the first call
    out = run()
    note = run.notes[0]
    timed = note.split("; the cost model's order")[0]
    times = dict(re.findall(r"(torch\.\w+) ([\d.]+ [mun]?s)(?=[,;]|$)", timed))
    assert set(times) == {"torch.zz_slow", "torch.zz_fast", BASELINE}, note
    assert times["torch.zz_slow"] == "10 ms", note
    assert times["torch.zz_fast"] == times[BASELINE] == "0 ns", note
    assert "timed here within 150 ms of CPU time" in note, note  # 15 calls of the pick
    assert run.picked in {"torch.zz_fast", BASELINE}, note  # never the slow one
    assert note.startswith(f"picked {run.picked} by timing"), note
    assert "the cost model's order: torch.zz_slow" in note
    assert np.allclose(out.numpy(), reference_for(p))
    assert np.array_equal(run().numpy(), out.numpy())  # later calls: the winner, same result


def test_the_cpu_clock_counts_the_calling_threads_work_only():
    """Another thread of the process busy meanwhile adds nothing to a contender's time."""
    def busy():  # 50 ms of the thread's own CPU time
        _spin(0.05, time.thread_time)

    helper = threading.Thread(target=busy)
    t0 = auto_trial.CPU.now()
    helper.start()
    helper.join()  # blocked, not working, while the helper works its 50 ms
    assert auto_trial.CPU.now() - t0 < 0.025
    mine = auto_trial.CPU.now()
    busy()
    assert auto_trial.CPU.now() - mine >= 0.05


def test_without_a_trial_the_cost_models_pick_stays(planted):
    planted("torch.zz_slow", before=lambda: _spin(0.01))
    planted("torch.zz_fast")
    run = prepare_auto(_problem(), "cpu", "float64", trial=False,
                       calibration=_calibration(["torch.zz_slow", "torch.zz_fast"]))
    run()
    assert run.picked == "torch.zz_slow" and "by timing" not in run.notes[0]


def test_a_contender_that_runs_past_the_budget_is_stopped(planted, monkeypatch):
    monkeypatch.setattr(auto_trial, "CONTENDERS", 3)
    planted("torch.zz_hang", before=lambda: _spin(30))
    t0 = time.perf_counter()
    run = prepare_auto(_problem(), "cpu", "float64",
                       calibration=_calibration([BASE, "torch.zz_hang"]))
    run()
    took = time.perf_counter() - t0
    assert took < 5, took  # the budget is at most CAP_S, not the planted 30 s
    assert run.picked in {BASE, BASELINE}
    assert "torch.zz_hang (stopped: " in run.notes[0]


def test_a_contender_that_fails_is_passed_over(planted, monkeypatch):
    monkeypatch.setattr(auto_trial, "CONTENDERS", 3)
    planted("torch.zz_broken", fail=True)
    run = prepare_auto(_problem(), "cpu", "float64",
                       calibration=_calibration([BASE, "torch.zz_broken"]))
    out = run()
    assert "torch.zz_broken (failed: RuntimeError)" in run.notes[0]
    assert run.picked in {BASE, BASELINE}
    assert np.allclose(out.numpy(), reference_for(_problem()))


@pytest.mark.parametrize("clock", [auto_trial.WALL, auto_trial.CPU], ids=lambda c: c.what)
def test_each_clock_stops_a_busy_contender(clock):
    t0 = time.perf_counter()
    with pytest.raises(auto_trial.OutOfTime):
        with auto_trial.deadline(0.1, clock):
            _spin(10)
    assert time.perf_counter() - t0 < 2


def test_cpu_time_does_not_count_a_stretch_the_process_waits():
    # As when the bench stops this process while the other slot times alone: wall time
    # would charge the wait to the contender.
    slept, _ = auto_trial.time_calls(lambda: time.sleep(0.05), lambda o: o, auto_trial.CPU)
    walled, _ = auto_trial.time_calls(lambda: time.sleep(0.05), lambda o: o, auto_trial.WALL)
    assert slept < 0.01 < 0.04 < walled


def test_the_budget_is_a_few_of_the_picks_calls_within_bounds():
    assert auto_trial.budget(1e-6) == auto_trial.FLOOR_S
    assert auto_trial.budget(0.1) == pytest.approx(auto_trial.BUDGET_CALLS * 0.1)
    assert auto_trial.budget(100.0) == auto_trial.CAP_S


def test_the_deadline_rings_and_gives_back_a_timer_it_found():
    rang = []
    before = signal.signal(signal.SIGALRM, lambda *a: rang.append(1))
    saved = signal.getitimer(signal.ITIMER_REAL)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.6)  # someone else's timer, as pytest-timeout's
        with pytest.raises(auto_trial.OutOfTime):
            with auto_trial.deadline(0.05):
                time.sleep(1)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0.3 < left < 0.6, left  # set again for what was left of it
        time.sleep(0.8)
        assert rang == [1]  # and theirs still rings, with their handler
    finally:
        signal.signal(signal.SIGALRM, before)
        signal.setitimer(signal.ITIMER_REAL, *saved)
    assert cost_model.seconds_text(0.0123) == "12.3 ms"


def test_the_baseline_is_the_second_contender_whatever_its_rank(monkeypatch):
    # The baseline's steps are single backward passes that a deadline stops on time; a
    # contender ranked ahead of it may run one op past any deadline and spend the budget.
    monkeypatch.setattr(auto_trial, "CONTENDERS", 3)
    p = _problem()
    names = [s.name for s in candidates(p)]
    baseline = BASELINE
    order = [n for n in names if n != baseline][:3] + [baseline]  # the baseline ranked last
    run = prepare_auto(p, "cpu", "float64", calibration=_calibration(order))
    run()
    timed = run.notes[0].split("of CPU time: " if "CPU time" in run.notes[0] else "wall time: ")[1]
    assert timed.startswith(f"{order[0]} ") and timed.split(", ")[1].startswith(baseline), timed
    assert order[1] in timed and order[2] not in timed.split("; ")[0]  # three contenders only


def test_the_deadline_raises_once_so_a_stopped_contenders_cleanup_runs_to_its_end():
    # A second OutOfTime raised while the first unwinds would land in the contender's finally
    # blocks (a torch.func transform's exit among them) and skip the rest of them.
    cleaned = []
    with pytest.raises(auto_trial.OutOfTime):
        with auto_trial.deadline(0.02) as ring:
            try:
                _spin(10)
            finally:
                _spin(10 * auto_trial.RING_AGAIN_S)  # several rings long
                cleaned.append(1)
    assert ring.fired and cleaned == [1]


def test_the_deadline_never_raises_inside_a_context_entry_or_exit():
    # forward-mode AD's dual level is left in two steps (C++, then forward_ad's Python copy); an
    # exception between them left the two apart, and every later jvp in the process failed.
    steps = []

    class TwoSteps:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            steps.append("first")
            _spin(5 * auto_trial.RING_AGAIN_S)  # the deadline passes here, several rings long
            steps.append("second")

    with pytest.raises(auto_trial.OutOfTime):
        with auto_trial.deadline(0.02) as ring:
            with TwoSteps():
                pass
            _spin(10)
    assert ring.fired and steps == ["first", "second"]


def _left_inside(half_done: str):
    """A contender stopped inside torch.func transforms: a vmap layer pushed and never popped,
    grad mode off, and forward-mode AD's dual level left entered, or half entered or half left
    (its C++ level and forward_ad's Python copy apart), as an OutOfTime landing in their entries
    and exits would leave them."""
    import torch
    from torch.autograd import forward_ad

    def stuck():
        torch._C._functorch._vmap_increment_nesting(2, "error")
        torch.set_grad_enabled(False)
        if half_done == "entered":
            forward_ad.enter_dual_level()
        elif half_done == "half entered":  # C++ holds the level, Python does not know
            torch._C._enter_dual_level()
        else:  # "half left": C++ let go of the level, Python still holds it
            forward_ad.enter_dual_level()
            torch._C._exit_dual_level(level=0)
        _spin(30)
    return stuck


@pytest.mark.parametrize("half_done", ["entered", "half entered", "half left"])
def test_a_contender_stopped_inside_transforms_leaves_torch_as_it_found_it(planted, monkeypatch,
                                                                           half_done):
    import torch
    from torch.autograd import forward_ad

    monkeypatch.setattr(auto_trial, "CONTENDERS", 3)
    planted("torch.zz_stuck", before=_left_inside(half_done))
    run = prepare_auto(_problem(), "cpu", "float64",
                       calibration=_calibration([BASE, "torch.zz_stuck"]))
    run()
    assert "torch.zz_stuck (stopped: " in run.notes[0]
    assert torch._C._functorch.get_dynamic_layer_stack_depth() == 0
    assert forward_ad._current_level == -1 and torch.is_grad_enabled()
    # what broke after the unguarded version: a later vmap that draws random numbers, and any
    # later forward-mode AD ("Nested forward mode AD is not supported")
    x = torch.ones(3)
    assert torch.func.vmap(lambda v: v * torch.rand(()), randomness="same")(x).shape == (3,)
    assert torch.func.jvp(torch.sin, (x,), (x,))[1].shape == (3,)
    with forward_ad.dual_level():
        assert forward_ad.unpack_dual(forward_ad.make_dual(x, x)).tangent is not None
