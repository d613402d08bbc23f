"""Two results files side by side: which cases got slower or faster, which changed status, and
how repeatable the timings were (`jacbench compare BEFORE AFTER`).

Two sweeps of the same commit on the same machine measure the machine's repeatability: the
share of cases whose medians are within 10% of each other. Two sweeps of different commits,
library versions or machines show what changed; read the repeatability of the first kind before
trusting a ratio of the second.

What the suite answers is a ranking, so the verdicts are compared too (issue 16): each case's
ratio to its problem's fastest exact strategy (within 10% in both runs?), the fastest strategy
of each problem (the same in both, or marked tied with the other run's fastest?), and
torch.auto's hit rate in each run (reports.auto), on the medians as the rows give them (paired
where the rows were timed side by side).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .auto import hit_rate, ok_exact

KEY = "case_id"
PROBLEM = ["quantity", "problem", "device", "dtype"]


@dataclass(frozen=True)
class Repeatability:
    cases: int          # ok in both files, median over min_time_s in at least one
    within: int         # of those, medians within `tolerance` of each other
    tolerance: float
    min_time_s: float
    geomean_ratio: float  # after / before; 1.0 when nothing moved overall
    spread: tuple[float, float]  # 10th and 90th percentile of after / before

    @property
    def share(self) -> float:
        return self.within / self.cases if self.cases else float("nan")

    def __str__(self) -> str:
        if not self.cases:
            return (f"no case is ok in both files with a median over "
                    f"{self.min_time_s * 1e3:g} ms")
        return (f"{self.cases} cases ok in both with a median over {self.min_time_s * 1e3:g} ms: "
                f"{self.within} ({self.share:.1%}) within {self.tolerance:.0%} of each other; "
                f"after/before geometric mean {self.geomean_ratio:.3f}, 10th-90th percentile "
                f"{self.spread[0]:.2f}-{self.spread[1]:.2f}")


def paired(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """One row per case present in both: both statuses and medians, and after / before."""
    cols = [KEY, "quantity", "problem", "strategy", "status", "median_s", "iqr_s"]
    both = before[cols].merge(after[cols], on=[KEY, "quantity", "problem", "strategy"],
                              suffixes=("_before", "_after"))
    ok = (both["status_before"] == "ok") & (both["status_after"] == "ok")
    both["ratio"] = np.where(ok, both["median_s_after"] / both["median_s_before"], np.nan)
    return both


def _timed(pairs: pd.DataFrame, min_time_s: float) -> pd.DataFrame:
    """Cases ok in both files whose median is over `min_time_s` in at least one of them."""
    timed = pairs.dropna(subset=["ratio"])
    return timed[(timed["median_s_before"] > min_time_s) | (timed["median_s_after"] > min_time_s)]


def repeatability(pairs: pd.DataFrame, tolerance: float = 0.10,
                  min_time_s: float = 1e-3) -> Repeatability:
    """Cases ok in both, over `min_time_s` in either, whose medians differ by at most
    `tolerance` of the smaller one."""
    timed = _timed(pairs, min_time_s)
    if timed.empty:
        return Repeatability(0, 0, tolerance, min_time_s, float("nan"), (float("nan"),) * 2)
    r = timed["ratio"].to_numpy(float)
    apart = np.maximum(r, 1 / r)
    lo, hi = np.percentile(r, [10, 90])
    return Repeatability(len(r), int((apart <= 1 + tolerance).sum()), tolerance, min_time_s,
                         float(np.exp(np.log(r).mean())), (float(lo), float(hi)))


# ------------------------------------------------------------------------------ verdicts
def ratios_to_fastest(df: pd.DataFrame) -> pd.DataFrame:
    """Each ok case's median over its problem's fastest exact ok strategy (torch.auto, which
    runs one of the others, is not a rival), with that fastest strategy's name."""
    ok = df[df["status"].eq("ok") & pd.to_numeric(df["median_s"]).notna()].copy()
    best = (ok_exact(df).sort_values(["median_s", "strategy"])
            .drop_duplicates(PROBLEM)[PROBLEM + ["strategy", "median_s"]]
            .rename(columns={"strategy": "fastest_name", "median_s": "fastest_s"}))
    ok = ok.merge(best, on=PROBLEM)
    ok["ratio"] = ok["median_s"] / ok["fastest_s"]
    return ok


@dataclass(frozen=True)
class Verdicts:
    cases: int          # ok in both, median over min_time_s in either
    ratios_within: int  # of those, ratio to the fastest within `tolerance` in both runs
    problems: int       # problems with a fastest exact strategy in both runs
    same_or_tied: int   # of those, the same fastest, or marked tied with the other's
    tolerance: float
    min_time_s: float

    def __str__(self) -> str:
        share = self.ratios_within / self.cases if self.cases else float("nan")
        fastest = self.same_or_tied / self.problems if self.problems else float("nan")
        return (f"ratio to the problem's fastest within {self.tolerance:.0%} in both runs: "
                f"{self.ratios_within} of {self.cases} cases over {self.min_time_s * 1e3:g} ms "
                f"({share:.1%}); the same fastest strategy, or one marked tied with it: "
                f"{self.same_or_tied} of {self.problems} problems ({fastest:.1%})")


def _tied(df: pd.DataFrame) -> set:
    """(problem key..., strategy) of rows marked tied with their problem's fastest."""
    if "tied_with_fastest" not in df:
        return set()
    rows = df[df["tied_with_fastest"].map(lambda v: v is True or v == 1.0)]
    return {tuple(r) for r in rows[PROBLEM + ["strategy"]].itertuples(index=False)}


def verdicts(before: pd.DataFrame, after: pd.DataFrame, tolerance: float = 0.10,
             min_time_s: float = 1e-3) -> Verdicts:
    """Do the two runs give the same ranking? See Verdicts. Like with like: only the cases ok
    in both runs take part, so a strategy that ran (or failed) in one run only, e.g. a
    compiled twin added between them, does not move every other ratio of its problem."""
    ok_both = set(before.loc[before["status"].eq("ok"), KEY]) & \
        set(after.loc[after["status"].eq("ok"), KEY])
    a = ratios_to_fastest(before[before[KEY].isin(ok_both)])
    b = ratios_to_fastest(after[after[KEY].isin(ok_both)])
    both = a[[KEY, "median_s", "ratio"]].merge(b[[KEY, "median_s", "ratio"]], on=KEY,
                                               suffixes=("_a", "_b"))
    timed = both[(both["median_s_a"] > min_time_s) | (both["median_s_b"] > min_time_s)]
    apart = np.maximum(timed["ratio_a"] / timed["ratio_b"], timed["ratio_b"] / timed["ratio_a"])
    fa = a.drop_duplicates(PROBLEM).set_index(PROBLEM)["fastest_name"]
    fb = b.drop_duplicates(PROBLEM).set_index(PROBLEM)["fastest_name"]
    common = fa.index.intersection(fb.index)
    tied_a, tied_b = _tied(before), _tied(after)
    agree = sum(fa[k] == fb[k] or (*k, fb[k]) in tied_a or (*k, fa[k]) in tied_b
                for k in common)
    return Verdicts(len(timed), int((apart <= 1 + tolerance).sum()), len(common), int(agree),
                    tolerance, min_time_s)


def status_changes(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs[pairs["status_before"] != pairs["status_after"]]


def moved(pairs: pd.DataFrame, factor: float, min_time_s: float) -> pd.DataFrame:
    """Cases ok in both whose median moved by more than `factor` either way, largest first."""
    timed = _timed(pairs, min_time_s)
    apart = np.maximum(timed["ratio"], 1 / timed["ratio"])
    # assign before selecting: pandas 3 aligns a Series assigned to an empty frame into NaN rows
    timed = timed.assign(apart=apart)
    return timed[timed["apart"] > factor].sort_values("apart", ascending=False)


def compare_lines(before: pd.DataFrame, after: pd.DataFrame, factor: float = 1.5,
                  tolerance: float = 0.10, min_time_s: float = 1e-3, limit: int = 20) -> list[str]:
    """The text `jacbench compare` prints."""
    pairs = paired(before, after)
    only_before = len(set(before[KEY]) - set(after[KEY]))
    only_after = len(set(after[KEY]) - set(before[KEY]))
    lines = [f"{len(pairs)} cases in both files; {only_before} only in the first, "
             f"{only_after} only in the second",
             f"repeatability: {repeatability(pairs, tolerance, min_time_s)}",
             f"verdicts: {verdicts(before, after, tolerance, min_time_s)}"]
    for name, df in (("first", before), ("second", after)):
        rate, _ = hit_rate(df, "torch")
        if rate.cases:
            lines.append(f"torch.auto, {name} run: {rate}")
    changes = status_changes(pairs)
    if len(changes):
        lines.append(f"status changed in {len(changes)} cases:")
        lines += _capped([f"  {r.status_before} -> {r.status_after}: {r.quantity} {r.problem} "
                          f"{r.strategy}" for r in changes.itertuples()], limit)
    big = moved(pairs, factor, min_time_s)
    lines.append(f"{len(big)} cases moved by more than {factor:g}x (after / before):")
    lines += _capped([f"  {r.ratio:7.2f}x  {r.quantity} {r.problem} {r.strategy}: "
                      f"{r.median_s_before:.3g} s -> {r.median_s_after:.3g} s"
                      for r in big.itertuples()], limit)
    return lines


def _capped(lines: list[str], limit: int) -> list[str]:
    if len(lines) <= limit:
        return lines
    return lines[:limit] + [f"  ... and {len(lines) - limit} more"]
