"""The report's "compiled vs eager" table: each torch.compile twin (strategy tag "compiled",
strategies.torch_compiled) beside the eager strategy it compiles, on the same problem.

The speed-up is the eager median over the compiled one, both from the same sweep (paired when
the rows were timed side by side); the compile time is the twin's first call; a twin that
failed, or disagreed with the reference, is listed with its status and reason.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from jacbench.bench import store
from jacbench.strategies.torch_compiled import eager_of_twins

_BREAKS = re.compile(r"(\d+) graph break\(s\)")
_CACHE = re.compile(r"inductor cache ([^;]+)")


def _note(message, pattern):
    found = pattern.search(message or "")
    return found.group(1) if found else None


def compiled_vs_eager(df: pd.DataFrame) -> pd.DataFrame:
    """One row per compiled case: quantity, problem, strategy, eager, status, message,
    eager_s, compiled_s, speedup, compile_s, graph_breaks, cache."""
    cols = ["quantity", "problem", "strategy", "eager", "status", "message", "eager_s",
            "compiled_s", "speedup", "compile_s", "graph_breaks", "cache"]
    if "strategy" not in df or df.empty:
        return pd.DataFrame(columns=cols)
    df = store.with_tags(df)
    twins = df[store.has_tag(df, "compiled")]
    key = ["quantity", "problem", "device", "dtype"]
    eager = df.set_index(key + ["strategy"])
    rows, eager_of = [], eager_of_twins()
    for r in twins.itertuples():
        name = eager_of.get((r.quantity, r.strategy))  # None: a twin this checkout lacks
        try:
            e = eager.loc[(r.quantity, r.problem, r.device, r.dtype, name)]
        except KeyError:
            e = None
        if isinstance(e, pd.DataFrame):
            e = e.iloc[-1]
        eager_s = e["median_s"] if e is not None and e["status"] == "ok" else float("nan")
        ok = r.status == "ok"
        compiled_s = r.median_s if ok else float("nan")
        rows.append({"quantity": r.quantity, "problem": r.problem, "strategy": r.strategy,
                     "eager": name, "status": r.status, "message": r.message or "",
                     "eager_s": eager_s, "compiled_s": compiled_s,
                     "speedup": eager_s / compiled_s if ok else float("nan"),
                     "compile_s": getattr(r, "first_call_s", float("nan")),
                     "graph_breaks": _note(r.message, _BREAKS), "cache": _note(r.message, _CACHE)})
    return pd.DataFrame(rows, columns=cols)


def frameworks_face_off(df: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Issue 17's target: per seed problem at the largest size its ladder ran (the NTK in full
    mode), the best exact PyTorch median, compiled or not, over the best exact JAX one; and
    their geometric mean. Only problems where both frameworks have an ok row count: no credit
    for a size the other framework never ran. torch.auto is no rival (it runs the others)."""
    from .auto import ok_exact

    ok = ok_exact(df)
    ok = ok[ok["family"].str.startswith("seed") & (ok["mode"].isna() | ok["mode"].eq("full"))
            & ok["framework"].isin(["torch", "jax"])]
    rows = []
    for (q, fam), g in ok.groupby(["quantity", "family"]):
        top = g[g["scale"] == g["scale"].max()]
        for prob, h in top.groupby("problem"):
            best = h.sort_values("median_s").drop_duplicates("framework").set_index("framework")
            if {"torch", "jax"} <= set(best.index):
                t, j = best.loc["torch"], best.loc["jax"]
                rows.append({"quantity": q, "problem": prob, "torch": t["strategy"],
                             "torch_s": t["median_s"], "jax": j["strategy"],
                             "jax_s": j["median_s"], "ratio": t["median_s"] / j["median_s"]})
    out = pd.DataFrame(rows, columns=["quantity", "problem", "torch", "torch_s", "jax", "jax_s",
                                      "ratio"])
    geomean = float(np.exp(np.log(out["ratio"]).mean())) if len(out) else float("nan")
    return out, geomean


def main(argv=None) -> int:
    """`python -m jacbench.reports.compiled RESULTS`: the face-off table and its geometric mean
    (best PyTorch / best JAX; run `jacbench run --profile seeds` first)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m jacbench.reports.compiled",
                                 description=main.__doc__)
    ap.add_argument("results")
    args = ap.parse_args(argv)
    table, geomean = frameworks_face_off(store.load(args.results))
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.to_string(index=False) if len(table) else "no seed problem ran in both")
    print(f"geometric mean of best PyTorch / best JAX over {len(table)} problems: {geomean:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
