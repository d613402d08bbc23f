"""How well `torch.auto` picks, from the results rows alone.

A case is a problem (quantity, problem at a size, device, dtype) with a torch.auto row and at
least one other exact strategy with status ok. auto hits when its status is ok and its median
is within THRESHOLD times the fastest of those others' medians. Two comparisons:
- "torch": the fastest exact eager PyTorch strategy (auto picks among these; compiled twins
  are left out);
- "all": the fastest exact strategy of any framework (JAX, BackPACK, curvlinops included).
`pick_ratio` compares the picked strategy's own row instead of auto's: the same pick, timed in
the same sweep as its rivals, so timing noise between runs is left out.

    python -m jacbench.reports.auto RESULTS   # prints both hit rates and the misses
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from jacbench.bench import store
from jacbench.strategies.torch_auto import AUTO

THRESHOLD = 1.25
KEY = ["quantity", "problem", "device", "dtype"]
_PICKED = re.compile(r"picked (\S+?)[:;,]?(?:\s|$)")


def is_auto(name) -> bool:
    return name == AUTO


def picked(message) -> str | None:
    """The strategy named in an auto row's message ("picked torch.jacrev: ...")."""
    m = _PICKED.search(message) if isinstance(message, str) else None
    return m.group(1) if m else None


def ok_exact(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows that compete for fastest: ok, exact (a missing flag, as in old files, counts
    as exact), timed, and not torch.auto (it runs one of the others)."""
    exact = rows["exact"].map(lambda v: v is None or v != v or bool(v))
    return rows[rows["status"].eq("ok") & exact & pd.to_numeric(rows["median_s"]).notna()
                & ~rows["strategy"].map(is_auto)]


def auto_cases(df: pd.DataFrame, versus: str = "torch") -> pd.DataFrame:
    """One row per case (module docstring); `versus` "torch" or "all"."""
    out = []
    df = store.with_tags(df)
    autos = df[df["strategy"].map(is_auto)]
    for _, a in autos.iterrows():
        same = df
        for col in KEY:
            same = same[same[col] == a[col]]
        rivals = ok_exact(same)
        # The strategies auto picks among: eager PyTorch. A compiled twin (tag "compiled") is
        # none: auto cannot amortise its compile.
        if versus == "torch":
            rivals = rivals[(rivals["framework"] == "torch")
                            & ~store.has_tag(rivals, "compiled")]
        if rivals.empty:
            continue
        best = rivals.sort_values(["median_s", "strategy"]).iloc[0]
        name = picked(a["message"])
        own = same[same["strategy"] == name] if name else same.iloc[:0]
        ok = a["status"] == "ok" and a["median_s"] == a["median_s"]
        ratio = a["median_s"] / best["median_s"] if ok else np.inf
        pick_s = own["median_s"].iloc[0] if len(own) and own["status"].iloc[0] == "ok" \
            else np.nan
        pick_ratio = pick_s / best["median_s"] if np.isfinite(pick_s) else \
            (np.inf if len(own) else np.nan)
        out.append({**{c: a[c] for c in KEY}, "mode": a.get("mode"), "status": a["status"],
                    "auto_s": a["median_s"] if ok else np.nan, "picked": name,
                    "picked_s": pick_s, "fastest": best["strategy"],
                    "fastest_s": best["median_s"], "ratio": ratio, "pick_ratio": pick_ratio,
                    "hit": bool(ratio <= THRESHOLD), "pick_hit": bool(pick_ratio <= THRESHOLD)})
    cols = KEY + ["mode", "status", "auto_s", "picked", "picked_s", "fastest", "fastest_s",
                  "ratio", "pick_ratio", "hit", "pick_hit"]
    return pd.DataFrame(out, columns=cols)


@dataclass
class HitRate:
    versus: str
    cases: int
    hits: int
    pick_hits: int
    uncompared: int  # auto rows with no other exact ok strategy to compare against

    @property
    def rate(self) -> float:
        return self.hits / self.cases if self.cases else float("nan")

    @property
    def pick_rate(self) -> float:
        return self.pick_hits / self.cases if self.cases else float("nan")

    def __str__(self) -> str:
        what = {"torch": "the fastest exact eager PyTorch strategy",
                "all": "the fastest exact strategy of any framework"}[self.versus]
        return (f"auto within {THRESHOLD}x of {what}: {self.hits}/{self.cases} = "
                f"{self.rate:.1%} (its pick's own row from the same sweep: {self.pick_hits}/"
                f"{self.cases} = {self.pick_rate:.1%}); {self.uncompared} auto row(s) had "
                f"nothing to compare against")


def hit_rate(df: pd.DataFrame, versus: str = "torch") -> tuple[HitRate, pd.DataFrame]:
    """The hit rate and the case table it was computed from."""
    cases = auto_cases(df, versus)
    n_auto = int(df["strategy"].map(is_auto).sum())
    return HitRate(versus, len(cases), int(cases["hit"].sum()), int(cases["pick_hit"].sum()),
                   n_auto - len(cases)), cases


def main(argv=None) -> int:
    from jacbench.bench import store

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m jacbench.reports.auto RESULTS.jsonl", file=sys.stderr)
        return 2
    df = store.load(argv[0])
    for versus in ("torch", "all"):
        rate, cases = hit_rate(df, versus)
        print(rate)
        misses = cases[~cases["hit"]].sort_values("ratio", ascending=False)
        for r in misses.itertuples():
            print(f"  miss: {r.quantity} {r.problem} picked {r.picked} ({r.status}, "
                  f"{r.auto_s:.3g} s) vs {r.fastest} {r.fastest_s:.3g} s: {r.ratio:.2f}x; "
                  f"pick's own row {r.pick_ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
