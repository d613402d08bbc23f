"""Paired timing (bench.paired): the statistics on synthetic rounds, and the rounds themselves
on a virtual clock, so that nothing here depends on the host's speed."""
from __future__ import annotations

import numpy as np
import pytest

from jacbench.bench.paired import Rounds, calibrate, is_tied, periods, ratio_ci, run_rounds, spread, \
    summarize


def _rounds(values):
    return dict(enumerate(values))


def test_spread_is_median_and_interquartile_range():
    med, iqr = spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert med == 3.0 and iqr == 2.0
    assert spread([0.5]) == (0.5, 0.0)


def test_pairing_by_round_cancels_a_host_that_changes_speed():
    # Host speed swings 1.8x from round to round; b always takes twice a's time in a round.
    rng = np.random.default_rng(1)
    speed = rng.uniform(1.0, 1.8, 200)
    a, b = _rounds(1e-3 * speed), _rounds(2e-3 * speed * rng.normal(1, 0.01, 200))
    ratio, low, high, n = ratio_ci(b, a)
    assert n == 200 and ratio == pytest.approx(2.0, rel=0.02)
    assert low <= 2.0 <= high and high - low < 0.06
    # Unpaired (b's rounds shuffled against a's) the same data give a far wider interval.
    shuffled = _rounds(rng.permutation(list(b.values())))
    _, low_u, high_u, _ = ratio_ci(shuffled, a)
    assert high_u - low_u > 3 * (high - low)


def test_equal_strategies_are_tied_and_different_ones_are_not():
    rng = np.random.default_rng(2)
    speed = rng.uniform(1.0, 1.8, 60)
    a = _rounds(1e-3 * speed * rng.normal(1, 0.05, 60))
    b = _rounds(1e-3 * speed * rng.normal(1, 0.05, 60))
    c = _rounds(1.3e-3 * speed * rng.normal(1, 0.05, 60))
    _, low, high, _ = ratio_ci(b, a)
    assert is_tied(low, high)
    _, low, high, _ = ratio_ci(c, a)
    assert not is_tied(low, high) and low > 1.2


def test_ratio_is_that_of_the_rows_medians_and_its_interval_resamples_whole_rounds():
    # a runs every round, b (slow) every 4th: the ratio is that of their medians over all
    # their rounds (the rows' median_s), not of a's median over b's five rounds only.
    rng = np.random.default_rng(4)
    a = _rounds(1e-3 * rng.normal(1, 0.02, 20))
    a[0] = a[4] = a[8] = 1.5e-3  # a's rounds shared with b happen to be slow ones
    b = {r: 0.1 * rng.normal(1, 0.02) for r in range(0, 20, 4)}
    ratio, low, high, n = ratio_ci(b, a)
    assert n == 5
    assert ratio == pytest.approx(np.median(list(b.values())) / np.median(list(a.values())))
    assert ratio == pytest.approx(100, rel=0.05) and low <= ratio <= high
    ratio, low, high, n = ratio_ci({0: 2.0, 3: 10.0}, a)  # too few rounds for an interval
    assert n == 2 and np.isnan(low) and np.isnan(high)
    assert not is_tied(low, high)
    assert ratio_ci({70: 1.0}, a)[3] == 0  # no round in common: a ratio, no interval
    assert np.isnan(ratio_ci({}, a)[0])


def test_summarize_ranks_exact_strategies_and_leaves_forward_passes_unranked():
    rng = np.random.default_rng(3)
    speed = rng.uniform(1, 1.8, 80)

    def timed(scale, calls=10):
        return {"calls": calls, "times": _rounds(scale * speed * rng.normal(1, 0.02, 80))}
    out = summarize({"fast": timed(1.0), "twin": timed(1.0), "slow": timed(3.0),
                     "approx": timed(0.5), "forward:torch eager": timed(0.1)},
                    compared=["fast", "twin", "slow", "approx"],
                    fastest_among=["fast", "twin", "slow"])
    fastest = out["fast"]["fastest"]
    assert fastest in ("fast", "twin")  # equal by construction: either may come first
    assert out[fastest]["ratio_to_fastest"] == 1.0 and out[fastest]["tied_with_fastest"]
    other = "twin" if fastest == "fast" else "fast"
    assert out[other]["tied_with_fastest"]
    assert out["slow"]["ratio_to_fastest"] == pytest.approx(3.0, rel=0.05)
    assert not out["slow"]["tied_with_fastest"]
    # The approximate estimator is compared with the fastest exact one, not made the fastest.
    assert out["approx"]["ratio_to_fastest"] < 1 and not out["approx"]["tied_with_fastest"]
    assert "ratio_to_fastest" not in out["forward:torch eager"]
    assert out["slow"]["rounds"] == 80 and out["slow"]["runs"] == 800


class VirtualHost:
    """A clock that advances only when a callable runs, by its cost times the host's speed,
    which changes every 20 ms of virtual time (the stretches of the real hosts)."""

    def __init__(self, seed=0):
        self.now, self.rng = 0.0, np.random.default_rng(seed)
        self.speeds = self.rng.uniform(1.0, 1.8, 100000)

    def clock(self):
        return self.now

    def callable(self, cost_s):
        def run():
            self.now += cost_s * self.speeds[int(self.now / 0.02)]
        return run


def test_calibrate_sizes_blocks_to_the_target():
    host = VirtualHost()
    calls, per_call = calibrate(host.callable(1e-5), 0.003, host.clock)
    assert 150 <= calls <= 300 and 1e-5 <= per_call <= 1.8e-5
    assert calibrate(host.callable(0.01), 0.003, host.clock)[0] == 1


def test_rounds_interleave_within_the_budget_and_slow_callables_run_less_often():
    host = VirtualHost()
    rounds = Rounds(budget_s=1.0, block_s=0.003)
    fns = {"a": host.callable(1e-4), "b": host.callable(3e-4), "slow": host.callable(0.05)}
    out = run_rounds(fns, rounds, clock=host.clock)
    assert out["slow"]["period"] > 1 and out["a"]["period"] == 1
    n = len(out["a"]["times"])
    assert 0 in out["slow"]["times"]  # round 0 runs every callable
    assert 5 <= len(out["slow"]["times"]) < n / 2
    assert set(out["slow"]["times"]) <= set(out["a"]["times"])
    assert out["a"]["calls"] > out["b"]["calls"] > 1 and out["slow"]["calls"] == 1
    assert host.now < 1.0 + 0.2  # the budget, plus the calibration and the last round
    stats = summarize(out, ["a", "b", "slow"])
    assert stats["b"]["ratio_to_fastest"] == pytest.approx(3.0, rel=0.1)
    assert stats["slow"]["ratio_to_fastest"] == pytest.approx(500, rel=0.2)


def test_min_rounds_are_run_past_a_tiny_budget():
    host = VirtualHost()
    out = run_rounds({"a": host.callable(1e-3), "b": host.callable(2e-3)},
                     Rounds(budget_s=1e-3, min_rounds=4, overrun=100), clock=host.clock)
    assert len(out["a"]["times"]) == len(out["b"]["times"]) == 4


def test_periods_give_a_slow_callable_its_fair_share_and_enough_samples():
    r = Rounds(budget_s=10.0, block_s=0.003, fair_share=3.0, min_samples=5)
    # Plenty of budget: the fair share alone (a block of 9 ms or less every round).
    got = periods({"fast": 0.003, "mid": 0.018, "slow": 0.09}, r)
    assert got == {"fast": 1, "mid": 2, "slow": 10}
    # A short budget: ~1 s / (3 + 9 + 9 ms) ~ 48 rounds; slow would get 4.8 rounds, so it
    # runs more often, and every callable still gets at least min_samples rounds.
    tight = Rounds(budget_s=1.0, block_s=0.003, fair_share=3.0, min_samples=5)
    got = periods({"fast": 0.003, "mid": 0.018, "slow": 0.09}, tight)
    assert got["fast"] == 1 and got["slow"] < 10
    per_round = 0.003 + 0.018 / got["mid"] + 0.09 / got["slow"]
    assert 1.0 / per_round / got["slow"] >= 5 - 1e-9


def test_a_cold_first_call_per_block_is_not_timed():
    # Each callable's first call after another one ran costs 0.5 ms more (cold caches): the
    # time per call must not depend on how many calls a block holds.
    host = VirtualHost()
    last = [None]

    def callable_(name, cost_s):
        def run():
            cold = 5e-4 if last[0] != name else 0.0
            last[0] = name
            host.now += cost_s + cold
        return run
    out = run_rounds({"a": callable_("a", 7.5e-4), "b": callable_("b", 1.5e-3)},
                     Rounds(budget_s=0.5), clock=host.clock)
    assert out["a"]["calls"] != out["b"]["calls"]
    stats = summarize(out, ["a", "b"])
    assert stats["a"]["median_s"] == pytest.approx(7.5e-4)
    assert stats["b"]["ratio_to_fastest"] == pytest.approx(2.0)


def test_min_rounds_never_run_past_the_overrun():
    host = VirtualHost()
    out = run_rounds({"a": host.callable(0.5), "b": host.callable(0.6)},
                     Rounds(budget_s=1.0, min_rounds=5, overrun=3.0), clock=host.clock,
                     estimates={"a": 0.5, "b": 0.6})
    assert len(out["a"]["times"]) < 5 and host.now < 3.0 + 2 * 1.8 * 0.6


def test_the_budget_is_kept_on_its_own_clock():
    host, wall = VirtualHost(), [0.0]

    def wall_clock():  # the host's time, and as much again spent on other processes
        wall[0] = 2 * host.now
        return wall[0]
    out = run_rounds({"a": host.callable(1e-3)}, Rounds(budget_s=0.5), clock=host.clock,
                     budget_clock=wall_clock)
    assert 0.5 <= wall[0] < 0.6 and host.now < 0.3
    assert spread(out["a"]["times"].values())[0] < 1.8e-3  # samples on `clock`, not the wall


def test_a_slow_callable_does_not_cut_the_fast_ones_rounds():
    # One 0.4 s callable needs 2 s for its five samples, past the 1 s budget: the fast ones
    # still get min_rounds (the fastest is every ratio's denominator), and the slow one runs
    # every 4th round, not every round (which gave everything 5 rounds before).
    r = Rounds(budget_s=1.0, block_s=0.002, min_rounds=20, min_samples=5, overrun=3.0)
    blocks = {"f1": 0.004, "f2": 0.004, "f3": 0.006, "slow": 0.4}
    got = periods(blocks, r)
    assert got == {"f1": 1, "f2": 1, "f3": 1, "slow": 4}
    host = VirtualHost()
    fns = {n: host.callable(b / 2) for n, b in blocks.items()}  # a warm-up call per block
    out = run_rounds(fns, r, clock=host.clock, estimates={n: b / 2 for n, b in blocks.items()})
    assert min(len(out[n]["times"]) for n in ("f1", "f2", "f3")) >= 20
    assert len(out["slow"]["times"]) >= 5 and host.now < 3.0 + 0.5


def test_a_medium_callable_gets_the_samples_a_quarter_second_buys():
    # A 30 ms block: five samples were too few for its ratio to repeat; 0.25 s buys eight.
    r = Rounds(budget_s=1.0, block_s=0.002, min_rounds=20, min_samples=5, samples_s=0.25)
    blocks = {"fast": 0.004, "mid": 0.03, "slow": 0.4}
    got = periods(blocks, r)
    assert got["fast"] == 1 and got["slow"] == 4 and got["mid"] == 2
    host = VirtualHost()
    out = run_rounds({n: host.callable(b) for n, b in blocks.items()}, r, clock=host.clock,
                     estimates=blocks)
    assert len(out["mid"]["times"]) >= 8 and len(out["slow"]["times"]) >= 5
