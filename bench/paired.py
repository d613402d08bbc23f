"""Paired, interleaved timing: the strategies of one problem timed side by side.

Why: the hosts this suite runs on change speed by up to 1.8x within a second, so strategies
timed one after another (or minutes apart, in separate processes) rank differently from run to
run. Timed in the same process, on one pinned CPU, in shuffled rounds of short blocks, every
strategy sees the same mix of fast and slow stretches, and the ratio of two strategies' times
within one round cancels most of the drift. A prototype on 9 problems: ratios to the fastest
repeated within 10% for 94% of cases this way, against 46% one strategy after another.

The engine (`calibrate`, `run_rounds`) only needs zero-argument callables; `summarize` turns the
per-round times into per-callable medians, spreads and ratios to the fastest with a bootstrap
confidence interval paired by round (`ratio_ci`), and `tied` flags. The runner's child that
prepares a problem's strategies and calls these lives in bench.side_by_side.

On the CPU the samples are the process's CPU time (time.process_time), not wall time. On a
shared machine a pinned process is descheduled for other processes' time slices (several ms),
and a 2 ms block that straddles one costs several times its work: under a load of 8 on 2
cores, three instances of one prepared strategy timed in the same rounds differed by up to 60x
in wall time and by under 10% in CPU time. The budget stays in wall time (`budget_clock`).
"""
from __future__ import annotations

import gc
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .harness import force


@dataclass(frozen=True)
class Rounds:
    """How a problem's callables are timed together.

    `block_s`: a block of calls is sized to about this long: long enough that timer overhead
    is nil, short enough that many blocks fit in one stretch of steady host speed.
    `budget_s`: timing stops after this many seconds (rounds already begun finish).
    `fair_share`: a callable whose one call is longer than `fair_share` blocks runs only every
    k-th round, so that it costs about `fair_share` blocks per round on average; without this
    one 100 ms strategy would leave the others a handful of rounds.
    `min_rounds`: the fast callables get at least this many rounds even past the budget, but
    never past `overrun` times the budget (a problem of several 0.5 s strategies). Why 20: the
    fastest strategy is every ratio's denominator; in two quick sweeps with 5 rounds where a
    0.4 s strategy took the budget, a 70 us fastest moved by 7-12% between sweeps, and every
    ratio of its problem with it (issue 16).
    `min_samples`: a slow callable runs often enough to get about this many rounds (`periods`):
    a ratio from two or three calls of a 100 ms strategy moved by 20-50% between sweeps. Its
    calls are spread over the fast callables' rounds, not the other way round.
    `samples_s`: a callable gets as many samples as this many seconds of its blocks buy, between
    `min_samples` and `min_rounds`: with five samples each, the ratios of 10-30 ms strategies
    repeated within 10% between two quick sweeps for 68% of them, against 95% for those under
    3 ms, which had 20 rounds or more; five more samples of a 20 ms strategy cost 0.1 s.
    `warm_below_s`: a block of a callable faster than this starts with one untimed call. The
    first call after the other strategies ran pays for cold caches: in a quick sweep a 0.75 ms
    NTK cost 1.27 ms per call in blocks of one call and 0.75 ms in blocks of three, so the
    time per call depended on the block size; a slower call hides that cost in its own length.
    """

    budget_s: float = 1.5
    block_s: float = 0.002
    fair_share: float = 3.0
    min_rounds: int = 20
    min_samples: int = 5
    samples_s: float = 0.25
    overrun: float = 3.0
    warm_below_s: float = 0.02
    resamples: int = 2000
    seed: int = 0


def _block(fn, calls: int, clock=time.perf_counter, warm: bool = False) -> float:
    """Seconds for `calls` forced calls of `fn`, back to back (after an untimed one: `warm`)."""
    if warm:
        force(fn())
    t0 = clock()
    for _ in range(calls):
        force(fn())
    return clock() - t0


def calibrate(fn, block_s: float, clock=time.perf_counter,
              estimate_s: float | None = None) -> tuple[int, float]:
    """(calls per block, seconds per call) for a callable already called once (compiled).

    One call times the callable; a fast one is then timed over a block of the estimated size,
    and the size corrected once, since a single call of a microsecond callable is mostly timer
    and cache noise. With `estimate_s` (its median timed alone) of at least half a block, no
    call is spent: it runs one call per block, and a slow strategy's calls are the budget."""
    if estimate_s is not None and estimate_s >= block_s / 2:
        return 1, estimate_s
    once = _block(fn, 1, clock, warm=True)
    if once >= block_s / 2:
        return 1, once
    calls = max(1, round(block_s / max(once, 1e-9)))
    per_call = _block(fn, calls, clock) / calls
    calls = max(1, round(block_s / max(per_call, 1e-9)))
    return calls, per_call


def warms(per_call_s: float, rounds: Rounds) -> bool:
    """Whether the callable's blocks start with an untimed call (Rounds.warm_below_s)."""
    return per_call_s < rounds.warm_below_s


def periods(blocks: dict, rounds: Rounds) -> dict:
    """name -> period, from name -> seconds of one block (warm-up call included).

    The rounds planned are those the budget affords with every callable at its fair share (a
    block of `fair_share` block lengths or less per round on average), and never fewer than
    `min_rounds`. A slow callable's period is its fair share, shortened where that would give
    it fewer of the planned rounds than it wants (`wanted`). Shortening a period makes rounds longer,
    so the rounds the budget affords are estimated again, a few times; a problem whose slow
    callables need more than the budget for their samples runs past it (up to `overrun`), and
    its fast callables still get `min_rounds`."""
    fair = {n: max(1, round(b / (rounds.fair_share * rounds.block_s))) for n, b in blocks.items()}
    out = dict(fair)
    for _ in range(4):
        per_round = sum(b / out[n] for n, b in blocks.items())
        planned = max(rounds.budget_s / per_round if per_round > 0 else float("inf"),
                      rounds.min_rounds)
        new = {n: fair[n] if planned == float("inf")
               else min(fair[n], max(1, int(planned // wanted(b, rounds))))
               for n, b in blocks.items()}
        if new == out:
            break
        out = new
    return out


def wanted(block_s: float, rounds: Rounds) -> int:
    """The samples a callable whose block takes `block_s` should get (Rounds.samples_s)."""
    return int(min(max(rounds.samples_s / max(block_s, 1e-12), rounds.min_samples),
                   max(rounds.min_rounds, rounds.min_samples)))


def cpu_clock(fns: dict):
    """The CPU-time clock for timing `fns`: this process's CPU time, plus that of the worker
    processes of out-of-process callables (those with `peer_cpu_s()`, e.g. neural-tangents in
    its own environment), whose work this process's CPU time would not see."""
    peers = [fn.peer_cpu_s for fn in fns.values() if hasattr(fn, "peer_cpu_s")]
    if not peers:
        return time.process_time
    return lambda: time.process_time() + sum(cpu() for cpu in peers)


def run_rounds(fns: dict, rounds: Rounds, clock=time.perf_counter, rng=None,
               estimates: dict | None = None, budget_clock=None) -> dict:
    """Time the callables of `fns` (name -> zero-argument callable, each called once before)
    interleaved; returns {name: {"calls": calls per block, "times": {round: s per call}}}.
    `estimates`: name -> seconds per call known already (see `calibrate`). `clock` times the
    blocks, `budget_clock` (default: `clock`) the budget.

    Each round runs one block of every callable due in it, in a shuffled order: a slow stretch
    of the host then hits a random strategy, not always the one after another. Round 0 runs
    every callable, so each has at least one sample. Garbage collection is off while blocks
    run (as in timeit), so a collection is not charged to whichever block triggered it.
    """
    rng = rng if rng is not None else np.random.default_rng(rounds.seed)
    plan, blocks = {}, {}
    for name, fn in fns.items():
        calls, per_call = calibrate(fn, rounds.block_s, clock, (estimates or {}).get(name))
        warm = warms(per_call, rounds)
        blocks[name] = per_call * (calls + warm)
        plan[name] = (fn, calls, 1, warm)
    share = periods(blocks, rounds)
    plan = {n: (fn, calls, share[n], warm) for n, (fn, calls, _, warm) in plan.items()}
    out = {name: {"calls": calls, "period": k, "times": {}}
           for name, (_, calls, k, _) in plan.items()}
    names = list(plan)
    budget_clock = budget_clock or clock
    start, r = budget_clock(), 0
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        while True:
            due = [n for n in names if r % plan[n][2] == 0]
            for i in rng.permutation(len(due)):
                name = due[i]
                fn, calls, _, warm = plan[name]
                out[name]["times"][r] = _block(fn, calls, clock, warm) / calls
            r += 1
            elapsed = budget_clock() - start
            if elapsed >= rounds.budget_s and (r >= rounds.min_rounds
                                               or elapsed >= rounds.overrun * rounds.budget_s):
                break
    finally:
        if was_enabled:
            gc.enable()
    return out


# ------------------------------------------------------------------------------ statistics
def spread(times) -> tuple[float, float]:
    """(median, interquartile range) of per-call times."""
    t = np.asarray(list(times), float)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return float(med), float(q3 - q1)


def ratio_ci(a: dict, b: dict, resamples: int = 2000, level: float = 0.95,
             rng=None) -> tuple[float, float, float, int]:
    """Ratio of medians a / b, each over all its rounds (so it is the ratio of the rows'
    median_s), with a percentile bootstrap CI that resamples whole rounds: the times of one
    round saw the same host speed, so resampling them together keeps that pairing, and the
    interval reflects the noise that remains. A callable that runs every k-th round
    (`periods`) is resampled with the rounds it ran in.

    Why all rounds and not only those both ran in: the fastest strategy is the denominator of
    every ratio of its problem, and a slow strategy shares a fifth of its rounds; its median
    over those few rounds moved ratios by 10% between sweeps.

    `a`, `b`: {round: seconds per call}. Returns (ratio, low, high, rounds in common); low and
    high are NaN with fewer than 3 rounds in common (no interval worth the name).
    """
    common = sorted(set(a) & set(b))
    if not a or not b:
        return float("nan"), float("nan"), float("nan"), 0
    ratio = float(np.median(list(a.values())) / np.median(list(b.values())))
    if len(common) < 3:
        return ratio, float("nan"), float("nan"), len(common)
    rounds_ = sorted(set(a) | set(b))
    x = np.array([a.get(r, np.nan) for r in rounds_], float)
    y = np.array([b.get(r, np.nan) for r in rounds_], float)
    rng = rng if rng is not None else np.random.default_rng(0)
    idx = rng.integers(0, len(rounds_), size=(resamples, len(rounds_)))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without a's rounds
        boot = np.nanmedian(x[idx], axis=1) / np.nanmedian(y[idx], axis=1)
    boot = boot[np.isfinite(boot)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return ratio, float(low), float(high), len(common)


def is_tied(low: float, high: float) -> bool:
    """A ratio to the fastest whose interval covers 1: no difference this run can tell."""
    return bool(low <= 1.0 <= high) if np.isfinite(low) and np.isfinite(high) else False


def summarize(timed: dict, compared, fastest_among=None, rounds: Rounds = Rounds()) -> dict:
    """Per callable: median_s, iqr_s, rounds, runs (calls timed); for the `compared` ones (the
    strategies, not the forward passes) also ratio_to_fastest with ratio_ci_low/high,
    tied_with_fastest and the name of the fastest. The fastest is the callable of
    `fastest_among` (default: `compared`; the runner passes the exact strategies, so an
    approximate estimator is compared with the fastest exact one, not ranked first) with the
    lowest median; its own row has ratio 1 and is tied with itself."""
    rng = np.random.default_rng(rounds.seed)
    out = {}
    for name, t in timed.items():
        med, iqr = spread(t["times"].values())
        out[name] = {"median_s": med, "iqr_s": iqr, "rounds": len(t["times"]),
                     "runs": len(t["times"]) * t["calls"]}
    compared = [n for n in compared if n in timed]
    among = [n for n in (fastest_among or compared) if n in timed] or compared
    if not among:
        return out
    fastest = min(among, key=lambda n: (out[n]["median_s"], n))
    for name in compared:
        if name == fastest:
            ratio, low, high, tied = 1.0, 1.0, 1.0, True
        else:
            ratio, low, high, _ = ratio_ci(timed[name]["times"], timed[fastest]["times"],
                                           rounds.resamples, rng=rng)
            tied = is_tied(low, high)
        out[name].update(ratio_to_fastest=ratio, ratio_ci_low=low, ratio_ci_high=high,
                         tied_with_fastest=tied, fastest=fastest)
    return out
