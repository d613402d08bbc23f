"""The report's "compiled vs eager" table: each torch.compile twin (strategy tag "compiled",
strategies.torch_compiled) beside the eager strategy it compiles, on the same problem.

The speed-up is the eager median over the compiled one, both from the same sweep (paired when
the rows were timed side by side); the compile time is the twin's first call; a twin that
failed, or disagreed with the reference, is listed with its status and reason.
"""
from __future__ import annotations

import re

import pandas as pd

from jacbench.bench import store
from jacbench.strategies.torch_compiled import EAGER

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
    rows = []
    for r in twins.itertuples():
        name = EAGER.get((r.quantity, r.strategy))  # None: a twin this checkout lacks
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
