"""The trial behind `torch.auto`'s first call: the cost model's leading candidates timed on the
problem itself, within a budget, and the fastest kept.

A cost model fitted to the suite's own networks ranks a user's ResNet or encoder by shapes it
never saw, and near-ties it cannot split (two strategies within 1.3x) it splits by chance. So
the first call measures, as cuDNN's benchmark mode and FFTW's planner do: each contender is
prepared, called once (its own start-up left out) and then timed over a few calls (the
minimum: the host's slow stretches only ever add). The budget is a multiple of the cost
model's pick's own time, so a trial costs a few calls of the problem at hand whatever its
size; a contender still running when the budget is spent, or after a few of the best time so
far, is stopped (SIGALRM, see `deadline`) and passed over.
"""
from __future__ import annotations

import contextlib
import gc
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from .cost_model import seconds_text

# A trial may spend this many of the first pick's calls on the others (and at least FLOOR_S,
# at most CAP_S): enough for five contenders cut at CUT_CALLS each; repaid after some 50
# calls when it finds a pick 1.3x faster.
BUDGET_CALLS = 15.0
FLOOR_S = 0.05
CAP_S = 2.0
# One contender is stopped after this many of the best time so far: a contender as fast as
# the best needs about 2 (its first call and a timed one; eager torch has no compile step),
# so one cut here would not have won, and the budget goes on to the next.
CUT_CALLS = 3.0
# At most this many contenders, the cost model's pick included.
CONTENDERS = 6
# Each contender's timed calls: until this much time has gone or MAX_CALLS calls.
TIMED_S = 0.02
MAX_CALLS = 5


# A ring that finds a garbage collection or a context entry or exit running (see `deadline`)
# waits this long for the next.
RING_AGAIN_S = 0.02
# The functions inside which a ring never raises: a context manager's entry and exit change
# process-wide state in two steps (forward-mode AD's dual level: torch's C++ level, then the
# Python copy of it), and an exception between the steps leaves the two apart for good.
ENTRY_EXIT = frozenset({"__enter__", "__exit__", "__aenter__", "__aexit__"})


class OutOfTime(BaseException):
    """The trial's budget ran out while a contender was running. Not an Exception, so that a
    contender's own `except Exception` (a fallback inside a strategy) cannot swallow it."""


@dataclass
class Entry:
    name: str
    seconds: float | None = None  # None: not timed (why says why)
    why: str = ""


@dataclass
class Trial:
    """What the trial measured, in the order it ran."""
    entries: list[Entry] = field(default_factory=list)
    budget_s: float = 0.0
    what: str = "wall time"

    def describe(self) -> str:
        parts = [f"{e.name} {seconds_text(e.seconds)}" if e.seconds is not None
                 else f"{e.name} ({e.why})" for e in self.entries]
        return (f"timed here within {seconds_text(self.budget_s)} of {self.what}: "
                + ", ".join(parts))


def budget(pick_s: float) -> float:
    return min(CAP_S, max(FLOOR_S, BUDGET_CALLS * pick_s))


@dataclass(frozen=True)
class Clock:
    """What the trial measures and budgets by."""
    now: object
    what: str


# Wall time, as a user waits it.
WALL = Clock(time.perf_counter, "wall time")
# This thread's CPU time: for one thread on the CPU it is the work itself, and a stretch in
# which the process is descheduled or stopped (the bench stops the other slot's child while
# one times with the machine to itself) does not count, where wall time would make the
# contender that met it look seconds slower. The thread's, not the process's: another thread
# of the process that happens to run meanwhile (a library's pool, a test's helper) would add
# its time to the contender's (a 10 ms contender read 22.8 ms so).
CPU = Clock(time.thread_time, "CPU time")


def time_calls(fn, force, clock: Clock = WALL) -> tuple[float, object]:
    """The fastest of a few timed calls of `fn` (already called once), and the last output."""
    best, calls, start = math.inf, 0, clock.now()
    while True:
        t0 = clock.now()
        out = force(fn())
        best = min(best, clock.now() - t0)
        calls += 1
        if calls >= MAX_CALLS or clock.now() - start >= TIMED_S:
            return best, out


class Deadline:
    """What `deadline` yields: `fired` once it has raised OutOfTime."""
    fired = False


@contextlib.contextmanager
def deadline(seconds: float, clock: Clock = WALL):
    """Raise OutOfTime in this thread once `seconds` have gone on `clock`, at most once.

    Once only: an exception raised while the first one unwinds the contender would land in its
    `finally` blocks and context exits and skip them (a torch.func transform's interpreter
    stack left pushed broke every later vmap in the process). The caller restores what a
    raise can still leave half done (`run_trial`'s guard). An OutOfTime that Python only
    prints (raised in a finalizer) sets `fired` all the same, and the caller counts the
    contender as stopped when it returns.

    The timer is always the wall-clock one (ITIMER_REAL): arming the CPU-time timer
    (ITIMER_PROF) coarsens the process's CPU clock to the 4 ms scheduler tick on this
    machine's kernel. Wall time is never less than one thread's CPU time, so the handler,
    ringing every RING_AGAIN_S once `seconds` of wall time have gone, raises only when the
    clock says so, and not inside a garbage collection or a context manager's entry or exit
    (ENTRY_EXIT). A wall-clock timer already set
    (pytest-timeout's, say) is suspended and set again for what is left of it on the way out;
    where it would ring first, or off the main thread, or under a handler set from C, nothing
    is set and the budget is checked between contenders only."""
    state = Deadline()
    handler = signal.getsignal(signal.SIGALRM)
    theirs, interval = signal.getitimer(signal.ITIMER_REAL)
    if (threading.current_thread() is not threading.main_thread() or handler is None
            or (theirs and theirs <= seconds)):
        yield state
        return
    start, wall = clock.now(), time.perf_counter()
    collecting, done = [False], [False]
    armed = sys._getframe(2)  # the frame of the `with` (this generator's, then __enter__'s)

    def _ring(signum, frame):
        # Not inside a garbage collection: its callbacks (JAX has one, and ours below) and
        # finalizers would only print the exception; nor inside a context entry or exit
        # (ENTRY_EXIT). The next ring comes RING_AGAIN_S later.
        if (not (done[0] or state.fired or collecting[0]) and clock.now() - start >= seconds
                and frame.f_code not in (_starts.__code__, _stops.__code__)
                and not _entering_or_exiting(frame, armed)):
            state.fired = True
            raise OutOfTime

    def _starts(phase, info):
        collecting[0] = collecting[0] or phase == "start"

    def _stops(phase, info):
        collecting[0] = collecting[0] and phase != "stop"

    gc.callbacks.insert(0, _starts)
    gc.callbacks.append(_stops)
    signal.signal(signal.SIGALRM, _ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3), RING_AGAIN_S)
    try:
        yield state
    finally:
        done[0] = True  # first: a store, where no signal handler runs, so nothing raises below
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, handler)
        gc.callbacks.remove(_starts)
        gc.callbacks.remove(_stops)
        if theirs:
            left = theirs - (time.perf_counter() - wall)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), interval)


def _entering_or_exiting(frame, top) -> bool:
    """Whether a frame between `frame` and `top` runs a context manager's entry or exit."""
    while frame is not None and frame is not top:
        if frame.f_code.co_name in ENTRY_EXIT:
            return True
        frame = frame.f_back
    return False


def run_trial(pick: str, pick_fn, others: list[str], prepare, force, clock: Clock = WALL,
              guard=contextlib.nullcontext):
    """Time `pick_fn` (the cost model's pick, already called once) and then `others` in order,
    each prepared by `prepare(name)`, within `budget(pick's time)`. Returns the trial, and the
    winner's name, prepared callable and last output (so that the caller returns what later
    calls will); only the fastest so far is held meanwhile. Each contender runs inside
    `guard()`, a context manager that puts back the framework's global state that a contender
    stopped halfway may leave changed."""
    trial = Trial(what=clock.what)
    best_s, best_out = time_calls(pick_fn, force, clock)
    best, best_fn = pick, pick_fn
    trial.entries.append(Entry(pick, best_s))
    trial.budget_s = budget(best_s)
    end = clock.now() + trial.budget_s
    for name in others:
        left = end - clock.now()
        if left <= 0:
            trial.entries.append(Entry(name, why="not tried: budget spent"))
            continue
        fn = out = None
        try:
            with guard(), deadline(min(left, max(FLOOR_S, CUT_CALLS * best_s)), clock) as ring:
                fn = prepare(name)
                force(fn())
                seconds, out = time_calls(fn, force, clock)
            if ring.fired:  # raised where Python only printed it: over its time all the same
                raise OutOfTime
        except OutOfTime:
            why = "budget spent" if clock.now() >= end else "slower than the best"
            trial.entries.append(Entry(name, why=f"stopped: {why}"))
            fn = None
            continue
        except Exception as exc:  # noqa: BLE001 - a contender that fails is passed over
            trial.entries.append(Entry(name, why=f"failed: {type(exc).__name__}"))
            fn = None
            continue
        trial.entries.append(Entry(name, seconds))
        if seconds < best_s:
            best, best_fn, best_s, best_out = name, fn, seconds, out
        fn = out = None
    return trial, best, best_fn, best_out
