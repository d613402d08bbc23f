"""Build the self-contained HTML comparison report from a results file or DataFrame.

    from jacbench.reports.build import build_report
    build_report("results/results.jsonl", "reports/out/index.html")

One HTML file: figures are base64 PNGs, the sorting and filtering script is inline, nothing is
fetched from the network.
"""
from __future__ import annotations

import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import pandas as pd

from jacbench.bench import store

from . import auto as A
from . import compiled as C
from . import figures
from . import summary as S

TEMPLATES = Path(__file__).parent / "templates"

# Columns of the tables: (header, tooltip, numeric?)
SUMMARY_COLUMNS = [
    ("Quantity", "", False), ("Problem", "family[NTK mode]@size", False),
    ("Scale", "the number this problem's size ladder grows along", True),
    ("Fastest (exact, ok)", "the fastest exact strategy with status ok, ranked by the medians "
                            "timed side by side (paired)", False),
    ("Tied with it", "exact strategies whose paired ratio to the fastest has a 95% interval "
                     "covering 1: this run cannot tell them apart", False),
    ("Median", "steady-state median time (hover: IQR, rounds and first call)", True),
    ("Peak memory", "of the fastest strategy, steady state (a later call, the first call's "
                    "compilation left out)", True),
    ("\u00f7 forward", "median time of the fastest divided by one forward pass of the same "
                       "framework and mode", True),
    ("vs slowest", "speed-up over the slowest exact ok strategy (named in the tooltip)", True),
    ("Baseline", S.BASELINE_RULE, False),
    ("vs baseline", "speed-up of the fastest over the baseline", True),
    ("Statuses", "exact strategies with status ok, of all strategies run on this problem; "
                 "then the other statuses", True),
]
RESULT_COLUMNS = [
    ("Quantity", "", False), ("Problem", "", False), ("Scale", "", True),
    ("Strategy", "", False), ("Exact", "exact, or an approximation (\u2248)", False),
    ("Device", "device and dtype", False), ("Status", "", False),
    ("Median", "", True), ("IQR", "", True), ("Runs", "", True),
    ("Timing", "paired: timed side by side with the problem's other ok strategies, in shuffled "
               "rounds on one CPU (the number of rounds); isolated: alone", False),
    ("\u00d7 fastest", "ratio to the problem's fastest exact strategy, with its 95% interval "
                       "(bootstrap over the paired rounds); tied when the interval covers 1",
     True),
    ("First call", "", True),
    ("\u00f7 forward", "median \u00f7 one forward pass of the same framework and mode (hover)",
     True),
    ("Peak memory", "steady state: a later call's peak, the high-water mark reset after the "
                    "first call", True),
    ("First-call peak", "the first call's peak memory, compilation and lazy start-up included",
     True),
    ("Max error", "max |x\u2212y| / max(1, |x|+|y|) against the reference", True),
    ("Reference", "float64: the dense float64 reference; consensus: the median of the exact "
                  "strategies' results (a user model whose float64 reference would not fit in "
                  "memory, or a JAX function)", False),
    ("Message", "", False),
]


def load(results) -> pd.DataFrame:
    """A DataFrame as is, or a JSON Lines results file read by bench.store.load, which skips a
    torn last line and keeps the newest row of each case."""
    if isinstance(results, pd.DataFrame):
        return results
    path = Path(results)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist")
    return store.load(path)


# ------------------------------------------------------------------------------ cells
def _cell(text, sort=None, cls="", title=""):
    if isinstance(sort, float) and not math.isfinite(sort):
        sort = "" if math.isnan(sort) else (1e308 if sort > 0 else -1e308)
    return {"text": "" if text is None else str(text), "sort": "" if sort is None else sort,
            "cls": cls, "title": title or ""}


def _breakable(label: str) -> str:
    """A problem label that may wrap after its commas (zero-width spaces; the filter script
    ignores them)."""
    return str(label).replace(",", ",\u200b")


def _f(v):
    return S._num(v)


def _status_cell(status, message=""):
    return _cell(status.replace("_", " "), status, f"st st-{status}", message)


def summary_rows(table: pd.DataFrame) -> list[dict]:
    rows = []
    for r in table.itertuples():
        has = isinstance(r.best, str)
        cells = [_cell(r.quantity), _cell(_breakable(r.problem), cls="prob", title=r.setting),
                 _cell(S._fmt_int(r.scale), _f(r.scale))]
        if has:
            timed = (f"timed side by side, {S._fmt_int(r.best_rounds)} rounds"
                     if r.best_timing == "paired" else "timed alone")
            cells += [
                _cell(r.best, cls="best",
                      title=f"runner-up: {r.runner_up}, {S.fmt_ratio(_f(r.runner_up_ratio))} "
                            f"slower" if isinstance(r.runner_up, str) else "the only one"),
                _cell(r.tied or "", cls="wrap", title="tied: no difference the paired "
                                                      "intervals can tell" if r.tied else ""),
                _cell(S.fmt_timing(_f(r.best_s), r.best_runs), _f(r.best_s),
                      title=f"IQR {S.fmt_spread(_f(r.best_iqr_s), r.best_runs)}; {timed}; "
                            f"first call {S.fmt_time(_f(r.best_first_call_s))}"),
                _cell(S.fmt_bytes(_f(r.best_mem)), _f(r.best_mem)),
                _cell(S.fmt_ratio(_f(r.best_rel_forward)), _f(r.best_rel_forward)),
                _cell(S.fmt_ratio(_f(r.speedup_slowest)), _f(r.speedup_slowest),
                      title=f"slowest exact ok: {r.slowest} ({S.fmt_time(_f(r.slowest_s))})"),
            ]
        else:
            cells += [_cell("none agreed", "", "fail",
                            "no exact strategy finished with status ok on this problem")]
            cells += [_cell("\u2013", "") for _ in range(5)]
        base_title = S.BASELINE_RULE
        if isinstance(r.baseline, str):
            base_title = f"{r.baseline}: {r.baseline_status}, {S.fmt_time(_f(r.baseline_s))}"
            cells.append(_cell(r.baseline, cls="" if r.baseline_status == "ok" else "fail",
                               title=base_title))
        else:
            cells.append(_cell("none", cls="muted", title="no strategy name matches: "
                                                          + S.BASELINE_RULE))
        sb = _f(r.speedup_baseline)
        if math.isfinite(sb):
            cells.append(_cell(S.fmt_ratio(sb), sb))
        elif isinstance(r.baseline, str) and r.baseline_status != "ok":
            cells.append(_cell(f"baseline {str(r.baseline_status).replace('_', ' ')}", "",
                               "fail", base_title))
        else:
            cells.append(_cell("\u2013", ""))
        text = f"{r.ok_rows} of {r.n_rows} ok" + (f"; {r.not_ok}" if r.not_ok else "") \
            + (f"; {r.not_run} not run" if r.not_run else "")
        cells.append(_cell(text, r.ok, "wrap" + (" fail" if r.not_ok else "")))
        rows.append({"cls": "" if has else "row-failed", "cells": cells})
    return rows


def result_rows(df: pd.DataFrame) -> list[dict]:
    rows = []
    for r in df.sort_values(["quantity", "family", "mode", "scale", "strategy"]).itertuples():
        ok = r.status == "ok"
        cells = [
            _cell(r.quantity), _cell(_breakable(r.problem), cls="prob"),
            _cell(S._fmt_int(r.scale), _f(r.scale)),
            _cell(r.strategy), _cell("exact" if r.exact else "\u2248 approx"),
            _cell(r.setting), _status_cell(r.status, r.message),
            _cell(S.fmt_timing(_f(r.median_s), r.runs), _f(r.median_s)),
            _cell(S.fmt_spread(_f(r.iqr_s), r.runs) if ok else "", _f(r.iqr_s)),
            _cell("" if r.runs != r.runs else f"{int(r.runs)}", _f(r.runs)),
            _timing_cell(r),
            _ratio_cell(r),
            _cell(S.fmt_time(_f(r.first_call_s)), _f(r.first_call_s)),
            _cell(S.fmt_ratio(_f(r.rel_forward)), _f(r.rel_forward),
                  title=f"forward: {r.forward_kind}" if isinstance(r.forward_kind, str) else ""),
            _cell(S.fmt_bytes(_f(r.peak_mem_bytes)), _f(r.peak_mem_bytes)),
            _cell(S.fmt_bytes(_f(r.first_peak_mem_bytes)), _f(r.first_peak_mem_bytes)),
            _cell(S.fmt_error(_f(r.max_error)), _f(r.max_error),
                  "disagrees" if r.status == "disagrees" else ""),
            _cell(r.reference),
            _cell(r.message, cls="msg"),
        ]
        rows.append({"cls": "" if ok else f"row-{'failed' if r.status in S.FAILED else r.status}",
                     "cells": cells})
    return rows


def _timing_cell(r) -> dict:
    if r.timing == "paired":
        return _cell(f"paired, {S._fmt_int(r.rounds)} rounds", _f(r.rounds))
    return _cell(r.timing if isinstance(r.timing, str) else "", "")


def _ratio_cell(r) -> dict:
    ratio, low, high = _f(r.ratio_to_fastest), _f(r.ratio_ci_low), _f(r.ratio_ci_high)
    if not math.isfinite(ratio):
        return _cell("", "")
    text = S.fmt_ratio(ratio)
    if math.isfinite(low) and math.isfinite(high):
        text += f" [{S.fmt_ratio(low)}\u2013{S.fmt_ratio(high)}]"
    if r.tied_with_fastest and ratio != 1:
        text += " tied"
    return _cell(text, ratio, title=f"fastest: {r.fastest}" if isinstance(r.fastest, str)
                 else "")


def not_applicable_rows(df: pd.DataFrame) -> list[dict]:
    na = df[df["status"] == "not_applicable"]
    out = []
    for (q, s, msg), rows in na.groupby(["quantity", "strategy", "message"], sort=True):
        out.append({"cls": "", "cells": [_cell(q), _cell(s), _cell(msg, cls="msg"),
                                          _cell(", ".join(sorted(rows["problem"].unique())))]})
    return out


def agreement_table(df: pd.DataFrame, quantity: str) -> tuple[list[dict], list[dict]]:
    """Columns (grouped by problem family) and rows of one quantity's max-error grid."""
    cols, agree = S.agreement(df, quantity)
    rows = []
    for a in agree:
        cells = [_cell(a["strategy"] + ("" if a["exact"] else " \u2248"),
                       title="" if a["exact"] else
                       "approximate: judged by a finite error, not the tolerance")]
        cells += [_cell(c["text"], c["sort"], f"ag ag-{c['cls']}", c["title"])
                  for c in a["cells"]]
        cells.append(_cell(a["worst_text"], _f(a["worst"])))
        cells.append(_cell(str(a["flagged"]) if a["flagged"] else "", a["flagged"],
                           "disagrees" if a["flagged"] else ""))
        rows.append({"cls": "row-disagrees" if a["flagged"] else "", "cells": cells})
    groups = [c.split("@", 1)[0] for c in cols]
    columns = ([{"name": "Strategy", "title": "", "num": False}]
               + [{"name": _breakable(c.split("@", 1)[-1]), "title": c, "num": True, "group": g,
                   # the first column of a family carries the family's header and its width
                   "span": groups.count(g) if i == groups.index(g) else 0}
                  for i, (c, g) in enumerate(zip(cols, groups))]
               + [{"name": "Worst", "title": "largest error over the problems", "num": True},
                  {"name": "\u2717", "title": "number of disagreeing problems", "num": True}])
    return columns, rows


def references_text(df: pd.DataFrame) -> str:
    """Which reference the results were checked against, per problem: one sentence."""
    checked = df[df["reference"].isin(["float64", "consensus"])]
    problems = checked.drop_duplicates(["quantity", "problem"])
    counts = problems["reference"].value_counts()
    if not len(problems):
        return ""
    text = (f"Results checked against the float64 reference on {counts.get('float64', 0)} "
            f"problem(s)")
    consensus = problems[problems["reference"] == "consensus"]
    if len(consensus):
        names = ", ".join(f"{q} {p}" for q, p in zip(consensus["quantity"], consensus["problem"]))
        text += (f", and against the consensus (median) of the exact strategies on "
                 f"{len(consensus)}, where the float64 reference would not fit in memory or the "
                 f"model is a JAX function: {names}")
    return text + "."


COMPILED_COLUMNS = [
    ("Quantity", "", False), ("Problem", "", False),
    ("Compiled", "the torch.compile twin (inductor, static shapes)", False),
    ("Status", "a compile failure is an error; a wrong compiled result disagrees", False),
    ("Eager", "the eager strategy's median, same sweep", True),
    ("Compiled time", "the twin's median", True),
    ("Speed-up", "eager \u00f7 compiled", True),
    ("Compile", "the twin's first call: tracing and compilation", True),
    ("Graph breaks", "", True), ("Inductor cache", "cold: compiled from scratch; warm: "
                                                    "read from the on-disk cache", False),
]


def compiled_rows(df: pd.DataFrame) -> list[dict]:
    rows = []
    for r in C.compiled_vs_eager(df).itertuples():
        failed = r.status != "ok"
        rows.append({"cls": "row-failed" if failed else "", "cells": [
            _cell(r.quantity), _cell(_breakable(r.problem), cls="prob"), _cell(r.strategy),
            _status_cell(r.status, r.message),
            _cell(S.fmt_time(_f(r.eager_s)), _f(r.eager_s)),
            _cell(S.fmt_time(_f(r.compiled_s)), _f(r.compiled_s)),
            _cell(S.fmt_ratio(_f(r.speedup)), _f(r.speedup)),
            _cell(S.fmt_time(_f(r.compile_s)), _f(r.compile_s)),
            _cell(r.graph_breaks if r.graph_breaks is not None else "", _f(r.graph_breaks)),
            _cell(r.cache or "")]})
    return rows


def _columns(spec):
    return [{"name": n, "title": t, "num": num} for n, t, num in spec]


AUTO_COLUMNS = [
    ("Quantity", "", False), ("Problem", "", False), ("Picked", "the strategy torch.auto ran "
                                                     "(from its row's message)", False),
    ("auto", "torch.auto's median (its own row)", True),
    ("Fastest", "the fastest exact strategy with status ok (torch.auto's rivals: PyTorch "
                "only, or every framework)", False),
    ("Its time", "", True), ("Ratio", "torch.auto's median \u00f7 the fastest's", True),
    ("Pick's own", "the picked strategy's own row \u00f7 the fastest's: the same pick timed "
                   "in the same sweep as its rivals", True),
]


def auto_context(df: pd.DataFrame) -> dict:
    """torch.auto's hit rates against PyTorch's and every framework's fastest exact strategy,
    and the cases it missed (reports.auto)."""
    out = {"threshold": A.THRESHOLD, "rates": [], "columns": _columns(AUTO_COLUMNS)}
    for versus in ("torch", "all"):
        rate, cases = A.hit_rate(df, versus)
        rows = []
        # astype(bool): with no torch.auto rows the column is an empty object Series, which
        # pandas would read as a list of column labels rather than a mask.
        misses = cases[~cases["hit"].astype(bool)]
        for r in misses.sort_values("ratio", ascending=False).itertuples():
            failed = r.status != "ok"
            rows.append({"cls": "row-failed" if failed else "", "cells": [
                _cell(r.quantity), _cell(_breakable(r.problem), cls="prob"),
                _cell(r.picked or "?"),
                _cell(r.status.replace("_", " ") if failed else S.fmt_time(_f(r.auto_s)),
                      _f(r.auto_s)),
                _cell(r.fastest), _cell(S.fmt_time(_f(r.fastest_s)), _f(r.fastest_s)),
                _cell(S.fmt_ratio(_f(r.ratio)), _f(r.ratio)),
                _cell(S.fmt_ratio(_f(r.pick_ratio)), _f(r.pick_ratio))]})
        out["rates"].append({"rate": rate, "misses": rows, "id": f"auto-misses-{versus}"})
    return out


# ------------------------------------------------------------------------------ build
def _draw_all(df: pd.DataFrame, workers: int) -> dict:
    """quantity_figures for every (quantity, setting) that has rows; drawing is most of a report's
    time (about 60 s of 70 for a quick sweep), and each quantity's figures are independent."""
    groups = dict(iter(df.groupby(["quantity", "setting"])))
    keys, frames = list(groups), list(groups.values())
    if workers > 1 and len(keys) > 1:
        with ProcessPoolExecutor(min(workers, len(keys)),
                                 mp_context=mp.get_context("fork")) as pool:
            drawn = list(pool.map(figures.quantity_figures, frames))
    else:
        drawn = [figures.quantity_figures(f) for f in frames]
    return dict(zip(keys, drawn))


def build_report(results, out_path, seeds_path=None, workers: int = 1) -> Path:
    """Write the report for `results` (a DataFrame, or a JSON Lines results file) to
    `out_path` and return its path. `seeds_path`: design.md or the seeds folder, for the
    claim texts and seed file names (the built-in copies of design.md's claims otherwise).
    `workers` > 1 draws the figures in that many forked processes (the command line does; a
    caller with JAX or CUDA started should not fork)."""
    source = "DataFrame" if isinstance(results, pd.DataFrame) else str(results)
    df = S.normalize(load(results))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    # One summary (recommendations and table) per kind of machine: strategies are ranked only
    # against rows measured on the same kind (a single-machine sweep has one, as always).
    kinds = []
    for m in S.machines(df) if len(df) else []:
        table = S.summary_table(m["rows"])
        kinds.append({"kind": m["kind"], "text": m["text"], "hosts_text": m["hosts_text"],
                      "rows": summary_rows(table),
                      "recommendations": S.recommendations(table) if len(table) else []})
    recs = [dict(r, text=f"On {k['kind']}: {r['text']}") if len(kinds) > 1 else r
            for k in kinds for r in k["recommendations"]]
    quantities = sorted(df["quantity"].dropna().unique())
    settings = sorted(df["setting"].unique())
    drawn = _draw_all(df, workers)
    sections = []
    for q in quantities:
        qdf = df[df["quantity"] == q]
        figs = []
        for setting in settings:
            for fig in drawn.get((q, setting), []):
                if len(settings) > 1:
                    fig["title"] += f" ({setting})"
                figs.append(fig)
        agree_cols, agree_rows = agreement_table(df, q)
        counts = qdf["status"].value_counts()
        sections.append({
            "quantity": q, "anchor": f"q-{q}", "figures": figs,
            "agreement_columns": agree_cols, "agreement_rows": agree_rows,
            "recommendations": [r for r in recs if r["quantity"] == q],
            "counts": ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in S.STATUSES
                                if s in counts),
            "strategies": qdf["strategy"].nunique(),
        })

    failed = df[df["status"].isin(S.FAILED + ("disagrees",))]
    status_counts = df["status"].value_counts()
    context = {
        "title": "jacbench comparison report",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "source": source,
        "n_rows": len(df), "n_strategies": df["strategy"].nunique(),
        "n_problems": df.drop_duplicates(["quantity", "problem"]).shape[0],
        "n_quantities": len(quantities),
        "status_counts": [(s, int(status_counts[s])) for s in S.STATUSES if s in status_counts],
        "references": references_text(df) if len(df) else "",
        "machines": kinds,
        "summary_columns": _columns(SUMMARY_COLUMNS),
        "baseline_rule": S.BASELINE_RULE,
        "auto": auto_context(df),
        "compiled_columns": _columns(COMPILED_COLUMNS),
        "compiled_rows": compiled_rows(df),
        "sections": sections,
        "failure_rows": result_rows(failed),
        "result_columns": _columns(RESULT_COLUMNS),
        "na_rows": not_applicable_rows(df),
        "na_columns": _columns([("Quantity", "", False), ("Strategy", "", False),
                                ("Reason", "", False), ("Problems", "", False)]),
        "claims": S.seed_claims(df, seeds_path),
        "environment": S.environment(df) if len(df) else [],
        "env_columns": list(S.ENV_COLUMNS),
        "all_rows": result_rows(df),
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=jinja2.select_autoescape(["html"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    page = env.get_template("report.html").render(**context)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out_path)
    return out_path


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m jacbench.reports.build", description=build_report.__doc__)
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", type=Path, default=Path("reports/out/index.html"))
    ap.add_argument("--seeds", type=Path, default=None, help="design.md or the seeds folder")
    args = ap.parse_args(argv)
    print(build_report(args.results, args.out, args.seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
