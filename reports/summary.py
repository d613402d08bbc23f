"""The report's tables, computed from the results with pandas alone (no plotting, no HTML).

Every sentence and verdict on the page is derived here from the rows; nothing is written
per quantity or per seed by hand except the claim texts themselves (design.md's table).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from jacbench.bench import store
from jacbench.bench.environment import machine_kind

from .auto import ok_exact

# FAILED are failures to produce a timed answer; `disagrees` produced a wrong one;
# `not_applicable` was never attempted, by design.
STATUSES = store.STATUSES
FAILED = ("error", "timeout", "oom", "skipped")
FRAMEWORK_ORDER = ("torch", "jax", "backpack", "curvlinops")  # display order; others last

# The naive baseline of a problem: the strategy its registration tags "baseline" (the
# questions' own code or the plain autograd loop), by tag, never by name, so that renaming a
# strategy changes no verdict. One per quantity and framework; a torch one first.
BASELINE_RULE = ("The naive baseline of a problem is the strategy tagged \u201cbaseline\u201d "
                 "where it is registered: the questions' own code or the plain autograd loop "
                 "(a torch one first, then an un-jitted one).")

NUMERIC = ("scale", "params", "median_s", "iqr_s", "runs", "first_call_s", "forward_s",
           "peak_mem_bytes", "max_error", "tolerance", "noise_floor", "threads", "rounds",
           "ratio_to_fastest", "ratio_ci_low", "ratio_ci_high", "isolated_median_s",
           "first_peak_mem_bytes")
ENV_COLUMNS = tuple(c for c in store.ENV_COLUMNS if c != "timestamp")


# ------------------------------------------------------------------------------ formatting
def fmt_time(s) -> str:
    if s is None or not np.isfinite(s):
        return "\u2013"
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("\u00b5s", 1e-6), ("ns", 1e-9)):
        if s >= f or unit == "ns":
            return f"{s / f:.3g} {unit}"
    return f"{s:.3g} s"


def fmt_spread(iqr, runs) -> str:
    """An IQR cell: a timing of one call has no spread to show (not an IQR of 0)."""
    return "one call" if _num(runs) == 1 else fmt_time(iqr)


def fmt_timing(median, runs) -> str:
    """A median cell; a timing of one call says so."""
    return fmt_time(median) + (" (one call)" if _num(runs) == 1 else "")


def fmt_bytes(b) -> str:
    if b is None or not np.isfinite(b):
        return "\u2013"
    for unit, f in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if b >= f:
            return f"{b / f:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_ratio(r) -> str:
    if r is None or not np.isfinite(r):
        return "\u2013"
    if r >= 100:
        return f"{r:,.0f}\u00d7"
    if r >= 10:
        return f"{r:.3g}\u00d7"
    return f"{r:.2f}\u00d7" if r >= 1 else f"{r:.2g}\u00d7"


def fmt_error(e) -> str:
    if e is None or (isinstance(e, float) and math.isnan(e)):
        return "\u2013"
    if not np.isfinite(e):
        return "inf"
    return "0" if e == 0 else f"{e:.1e}"


def _fmt_int(v) -> str:
    f = _num(v)
    return "\u2013" if not np.isfinite(f) else (f"{f:,.0f}" if f == int(f) else f"{f:g}")


def _num(v):
    """A cell value as a float, NaN for missing."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


# ------------------------------------------------------------------------------ normalise
def _sizes(v) -> dict:
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v.startswith("{"):
        try:
            return json.loads(v)
        except ValueError:
            return {}
    return {}


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """The results with derived columns the tables and figures share.

    Added: `method` (the strategy name without framework and `_jit`), `jit` (tag "jit"),
    `panel` (family plus NTK mode), `setting` (device and dtype), `rel_forward` (median ÷ one
    forward); `tags` becomes frozensets (store.with_tags: from the registry for old rows).
    """
    df = store.with_tags(df)
    for col in ("quantity", "problem", "family", "size", "mode", "strategy", "framework",
                "device", "dtype", "status", "message", "run_id", "timestamp", "reference",
                *ENV_COLUMNS):
        if col not in df:
            df[col] = None
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else np.nan
    df["exact"] = df["exact"].map(lambda v: bool(v) if v is not None and v == v else True) \
        if "exact" in df else True
    df["mode"] = df["mode"].map(lambda v: v if isinstance(v, str) and v else "")
    df["message"] = df["message"].map(lambda v: v if isinstance(v, str) else "")
    df["framework"] = [f if isinstance(f, str) and f else str(s).split(".", 1)[0]
                       for f, s in zip(df["framework"], df["strategy"])]
    df["sizes"] = df["sizes"].map(_sizes) if "sizes" in df else [{}] * len(df)
    variant = df["strategy"].astype(str).str.split(".", n=1).str[-1]
    df["jit"] = store.has_tag(df, "jit")
    # The colour key of the figures, so a jit twin shares its eager strategy's colour.
    df["method"] = variant.where(~df["jit"], variant.str.replace(r"_jit$", "", regex=True))
    df["panel"] = [f"{f}[{m}]" if m else str(f) for f, m in zip(df["family"], df["mode"])]
    df["setting"] = df["device"].astype(str) + " " + df["dtype"].astype(str)
    # Strategies are ranked only among rows of one kind of machine: with several kinds (a
    # sweep over a mixed cluster) the kind is part of the setting every table groups by.
    df["host"] = df["hostname"].map(lambda v: v if isinstance(v, str) and v else "unknown host")
    df["machine"] = [machine_kind(c, g, d) for c, g, d in zip(df["cpu"], df["gpu"], df["device"])]
    if df["machine"].nunique() > 1:
        df["setting"] = df["setting"] + " on " + df["machine"]
    ok = df["status"].eq("ok")
    df["rel_forward"] = np.where(ok & (df["forward_s"] > 0), df["median_s"] / df["forward_s"],
                                 np.nan)
    df["status"] = df["status"].fillna("error")
    tied = df["tied_with_fastest"] if "tied_with_fastest" in df else pd.Series(None, df.index)
    df["tied_with_fastest"] = tied.map(lambda v: v is True or v == 1)
    for col in ("timing", "forward_kind", "fastest"):
        if col not in df:
            df[col] = None
    return df.reset_index(drop=True)


def framework_key(f: str) -> tuple:
    return (FRAMEWORK_ORDER.index(f) if f in FRAMEWORK_ORDER else len(FRAMEWORK_ORDER), f)


def baseline_name(rows: pd.DataFrame) -> str | None:
    """The naive baseline among the normalized `rows` (see BASELINE_RULE)."""
    base = rows[store.has_tag(rows, "baseline")]
    if base.empty:
        return None
    keys = [(framework_key(f), bool(j), n)
            for f, j, n in zip(base["framework"], base["jit"], base["strategy"].astype(str))]
    return min(keys)[2]


def _status_counts(statuses) -> str:
    counts = pd.Series(list(statuses)).value_counts()
    return ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in STATUSES[1:] if s in counts)


# ------------------------------------------------------------------------------ summary
GROUP = ["quantity", "setting", "family", "mode", "scale", "size", "problem"]


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (quantity, device and dtype, problem at a size): the fastest exact strategy
    with status ok, its time and memory, and its speed-ups over the slowest exact ok strategy
    and over the naive baseline. `tied`: the other exact strategies whose paired ratio to it
    has an interval covering 1 (no difference this run can tell); `not_run`: frameworks of
    the quantity with no row at this size (the quick profile trims JAX at larger sizes)."""
    out = []
    ran = df[df["status"] != "not_applicable"]
    frameworks = ran.groupby(["quantity", "setting"])["framework"].agg(set).to_dict()
    for key, rows in df.groupby(GROUP, sort=True, dropna=False):
        rec = dict(zip(GROUP, key))
        here = set(rows.loc[rows["status"] != "not_applicable", "framework"])
        missing = frameworks.get((rec["quantity"], rec["setting"]), set()) - here
        rec["not_run"] = ", ".join(sorted(missing, key=framework_key))
        good = ok_exact(rows).sort_values(["median_s", "strategy"])
        base = baseline_name(rows)
        base_rows = rows[rows["strategy"] == base]
        rec.update(strategies=rows["strategy"].nunique(), ok=int(len(good)),
                   # every row named: "ok_rows of n_rows ok; <not_ok>" adds up
                   ok_rows=int(rows["status"].eq("ok").sum()), n_rows=len(rows),
                   not_ok=_status_counts(rows["status"]),
                   failed=int(rows["status"].isin(FAILED).sum()),
                   disagrees=int(rows["status"].eq("disagrees").sum()),
                   baseline=base,
                   baseline_status=base_rows["status"].iloc[0] if len(base_rows) else None,
                   baseline_s=base_rows["median_s"].iloc[0] if len(base_rows) else np.nan)
        if len(good):
            best, worst = good.iloc[0], good.iloc[-1]
            runner = good.iloc[1] if len(good) > 1 else None
            tied = good[good["tied_with_fastest"] & (good["strategy"] != best["strategy"])]
            rec.update(best=best["strategy"], best_framework=best["framework"],
                       tied=", ".join(tied["strategy"]), best_runs=best["runs"],
                       best_timing=best["timing"], best_rounds=best["rounds"],
                       best_s=best["median_s"], best_iqr_s=best["iqr_s"],
                       best_mem=best["peak_mem_bytes"], best_rel_forward=best["rel_forward"],
                       best_first_call_s=best["first_call_s"],
                       slowest=worst["strategy"], slowest_s=worst["median_s"],
                       speedup_slowest=worst["median_s"] / best["median_s"],
                       runner_up=None if runner is None else runner["strategy"],
                       runner_up_ratio=np.nan if runner is None
                       else runner["median_s"] / best["median_s"])
            if rec["baseline_status"] == "ok" and base_rows["exact"].iloc[0]:
                rec["speedup_baseline"] = rec["baseline_s"] / best["median_s"]
        out.append(rec)
    cols = GROUP + ["strategies", "ok", "ok_rows", "n_rows", "not_ok", "failed", "disagrees",
                    "not_run", "best",
                    "best_framework", "tied", "best_runs", "best_timing", "best_rounds", "best_s", "best_iqr_s", "best_mem", "best_rel_forward",
                    "best_first_call_s", "slowest", "slowest_s", "speedup_slowest", "runner_up",
                    "runner_up_ratio", "baseline", "baseline_status", "baseline_s",
                    "speedup_baseline"]
    table = pd.DataFrame(out, columns=cols)
    return table.sort_values(["quantity", "setting", "family", "mode", "scale"],
                             kind="stable").reset_index(drop=True)


def recommendations(summary: pd.DataFrame) -> list[dict]:
    """One sentence per quantity (and device/dtype), generated from the summary rows.

    The recommended strategy is the one that is fastest on the most problem sizes (ties: the
    one that wins at the larger scale). The sentence quotes its margin at the largest problem
    it wins, its first call (compilation included) beside its steady state, the strategies
    statistically tied with it there, and names the other winners and where they win.
    No framework is credited with a win where another did not run: when some sizes lack a
    framework (the quick profile trims JAX), only the sizes where all ran are counted.
    """
    recs = []
    settings = summary["setting"].nunique() > 1
    for (q, setting), rows in summary.groupby(["quantity", "setting"], sort=True):
        head = f"For {q}" + (f" ({setting})" if settings else "")
        complete = rows[rows["not_run"].fillna("") == ""]
        trimmed = ""
        if 0 < len(complete) < len(rows):
            missing = sorted({f for t in rows["not_run"].dropna() for f in t.split(", ") if f})
            trimmed = (f" Counted on the {len(complete)} sizes where every framework ran; at "
                       f"{len(rows) - len(complete)} more, {', '.join(missing)} did not run "
                       f"(not run: no verdict across frameworks there).")
            rows = complete
        won = rows[rows["best"].notna()]
        if won.empty:
            recs.append({"quantity": q, "setting": setting, "strategy": None,
                         "text": f"{head}, no exact strategy agreed with the reference on any "
                                 f"of the {len(rows)} problem sizes in this run."})
            continue
        wins = won.groupby("best").agg(n=("best", "size"), top=("scale", "max"))
        wins = wins.sort_values(["n", "top"], ascending=False)
        top = wins.index[0]
        mine = won[won["best"] == top].sort_values(["scale", "best_s"])
        at = mine.iloc[-1]
        parts = [f"{head}, use {top}: the fastest exact strategy that agrees with the "
                 f"reference on {int(wins['n'].iloc[0])} of {len(rows)} problem sizes."]
        detail = f"At {at['problem']} it takes {fmt_timing(at['best_s'], at.get('best_runs'))}"
        if np.isfinite(_num(at.get("best_first_call_s"))):
            detail += (f" per call (the first call, compilation included: "
                       f"{fmt_time(at['best_first_call_s'])})")
        margins = []
        if isinstance(at.get("tied"), str) and at["tied"]:
            margins.append(f"tied with {at['tied']} (their paired intervals cover no "
                           f"difference)")
        if np.isfinite(_num(at.get("speedup_baseline"))) and at["baseline"] != top:
            margins.append(f"{fmt_ratio(at['speedup_baseline'])} faster than the baseline "
                           f"{at['baseline']}")
        elif isinstance(at["baseline"], str) and at["baseline"] != top:
            margins.append(f"no speed-up over the baseline {at['baseline']}, whose status is "
                           f"{at['baseline_status']}")
        if at["slowest"] not in (None, top, at["baseline"], at["runner_up"]):
            margins.append(f"{fmt_ratio(at['speedup_slowest'])} faster than the slowest, "
                           f"{at['slowest']}")
        if isinstance(at["runner_up"], str) \
                and at["runner_up"] not in str(at.get("tied") or "").split(", "):
            margins.append(f"the runner-up {at['runner_up']} is {fmt_ratio(at['runner_up_ratio'])}"
                           f" slower")
        parts.append(detail + (": " + "; ".join(margins) if margins else "") + ".")
        others = [(name, won[won["best"] == name]) for name in wins.index[1:]]
        if others:
            text = "; ".join(
                f"{name} on {_problems_text(r['problem'])}" for name, r in others[:3])
            more = f" and {len(others) - 3} more" if len(others) > 3 else ""
            parts.append(f"Elsewhere the fastest is {text}{more}.")
        lost = len(rows) - len(won)
        if lost:
            parts.append(f"On {lost} problem size{'s' if lost > 1 else ''} no exact strategy "
                         f"agreed.")
        recs.append({"quantity": q, "setting": setting, "strategy": top,
                     "text": " ".join(parts) + trimmed})
    return recs


def _problems_text(problems: pd.Series) -> str:
    items = list(problems)
    if len(items) <= 2:
        return " and ".join(items)
    return f"{items[0]}, {items[1]} and {len(items) - 2} more"


# ------------------------------------------------------------------------------ agreement
def agreement(df: pd.DataFrame, quantity: str) -> tuple[list[str], list[dict]]:
    """The max-error grid of one quantity: problem columns and one row per strategy, each cell
    a dict with text, css class, sort key and tooltip."""
    q = df[df["quantity"] == quantity]
    cols = (q[["family", "mode", "scale", "problem"]].drop_duplicates()
            .sort_values(["family", "mode", "scale"])["problem"].tolist())
    settings = q["setting"].nunique() > 1
    rows = []
    for (strategy, setting), srows in q.groupby(["strategy", "setting"], sort=True):
        by_problem = {r["problem"]: r for _, r in srows.iterrows()}
        label = strategy + (f" ({setting})" if settings else "")
        cells = []
        for p in cols:
            r = by_problem.get(p)
            cells.append(_agreement_cell(r))
        exact = bool(srows["exact"].iloc[0])
        worst = srows.loc[srows["status"].isin(("ok", "disagrees")), "max_error"].max()
        rows.append({"strategy": label, "exact": exact, "cells": cells,
                     "worst": worst, "worst_text": fmt_error(worst),
                     "flagged": int(srows["status"].eq("disagrees").sum())})
    return cols, rows


def _agreement_cell(r) -> dict:
    if r is None:
        return {"text": "", "cls": "none", "sort": "", "title": "not in this run"}
    st, err = r["status"], r["max_error"]
    title = f"{st}: max error {fmt_error(err)} (tolerance {fmt_error(r['tolerance'])}"
    noise = r.get("noise_floor")
    title += f", float32 noise floor {fmt_error(noise)})" if noise == noise and noise else ")"
    if r["message"]:
        title += f"; {r['message']}"
    if st == "ok":
        return {"text": fmt_error(err), "cls": "ok", "sort": _num(err), "title": title}
    if st == "disagrees":
        return {"text": "\u2717 " + fmt_error(err), "cls": "disagrees", "sort": _num(err),
                "title": title}
    label = {"not_applicable": "n/a", "timeout": "timeout", "oom": "OOM", "error": "error",
             "skipped": "skipped"}.get(st, st)
    # With a first call done, an error is known even when the timing failed.
    text = label + (f" ({fmt_error(err)})" if np.isfinite(_num(err)) else "")
    return {"text": text, "cls": st, "sort": _num(err) if np.isfinite(_num(err)) else "",
            "title": title}


# ------------------------------------------------------------------------------ environment
def _hosts_text(hosts) -> str:
    hosts = sorted(hosts)
    names = ", ".join(hosts[:5]) + (f" and {len(hosts) - 5} more" if len(hosts) > 5 else "")
    return f"{len(hosts)} host{'s' if len(hosts) != 1 else ''} ({names})"


def machines(df: pd.DataFrame) -> list[dict]:
    """One entry per kind of machine in `df` (normalized): its name, its rows and the hosts
    that measured them, with a sentence saying so; the most rows first."""
    out = []
    for kind, rows in sorted(df.groupby("machine"), key=lambda kv: (-len(kv[1]), kv[0])):
        hosts = sorted(rows["host"].unique())
        out.append({"kind": kind, "rows": rows, "hosts_text": _hosts_text(hosts),
                    "text": f"{len(rows)} results from {_hosts_text(hosts)}, one kind of "
                            f"machine: {kind}"})
    return out


def environment(df: pd.DataFrame) -> list[dict]:
    """One entry per run: its environment columns, row count and time span."""
    out = []
    for run_id, rows in df.groupby(df["run_id"].fillna("(no run id)"), sort=False):
        rec = {"run_id": run_id, "rows": len(rows)}
        for col in ENV_COLUMNS:
            vals = sorted({str(v) for v in rows[col].dropna() if str(v) != ""})
            rec[col] = ", ".join(vals) if vals else "\u2013"
        ts = pd.to_datetime(rows["timestamp"], errors="coerce", utc=True, format="ISO8601")
        rec["started"] = ts.min().strftime("%Y-%m-%d %H:%M UTC") if ts.notna().any() else "\u2013"
        rec["finished"] = ts.max().strftime("%Y-%m-%d %H:%M UTC") if ts.notna().any() else "\u2013"
        rec["devices"] = ", ".join(sorted(rows["setting"].unique()))
        out.append(rec)
    return out


# ------------------------------------------------------------------------------ seed claims
# The claims, word for word from design.md's "Seed workloads" table; `claim_texts` re-reads
# them from design.md when the report is given its path.
SEEDS = (
    ("000", "seed000_mlp", "tanh MLP 4\u219264\u219264\u21921, 4096 inputs, J^T J v over 4545 "
     "parameters", "matrix-free jvp/vjp beats the dense Jacobian, in time and memory"),
    ("001", "seed001_sqrt", "f(x) = sqrt(F x / N), N = 10000, M = 5",
     "indirect vmap(jvp\u2218vjp) beats dense J1 J2^T"),
    ("002", "seed002_netx", "net_x 1\u219220\u219220\u21924 and \u2192400, batch 3 and 100",
     "one backward or jvp beats the full Jacobian by orders of magnitude"),
    ("003", "seed003_convnet", "conv net with batch norm, ~400k parameters, 32\u00d732\u00d73 "
     "inputs, 10 logits, 100 points",
     "per-sample parameter Jacobians and NTK (full, trace, diagonal) without running out of "
     "memory"),
    ("004", "seed004_linear_tanh", "linear+tanh, D=16; 32\u21922048 and 2048\u219232; batch 64, "
     "31\u219233", "jacfwd wins when outputs outnumber inputs, jacrev in the other case; vmap "
     "beats the loop"),
)

# The public question each seed workload comes from (the seed files in the seeds folder).
QUESTIONS = {
    "000": "PyTorch forum: matrix-vector products of a network without materialising its "
           "Jacobian",
    "001": "Stack Overflow: J(x1) J(x2)^T without instantiating the Jacobians, in PyTorch or JAX",
    "002": "Stack Overflow: only the diagonals of a Jacobian, in PyTorch",
    "003": "neural-tangents issue #334: the Jacobian of a model with respect to its parameters",
    "004": "the functorch tutorial \"Jacobians, hessians, and more\" (now torch.func's)",
}

CONFIRMED, PARTLY, REFUTED, UNMEASURED = ("confirmed", "partly confirmed", "not confirmed",
                                          "not measured in this run")


@dataclass
class Claim:
    seed: str
    family: str
    workload: str
    claim: str
    rule: str  # how this run's rows are judged, in words
    verdict: str = UNMEASURED
    evidence: list[str] = field(default_factory=list)
    file: str = ""
    question: str = ""  # the public question the workload comes from


def claim_texts(seeds_path) -> dict[str, dict]:
    """Seed number -> {file, workload, claim} from design.md's "Seed workloads" table.

    `seeds_path` is design.md itself, or a folder holding design.md and/or the seed files
    (`000_<hash>.txt` ...), or the seeds folder next to design.md.
    """
    out: dict[str, dict] = {}
    if seeds_path is None:
        return out
    p = Path(seeds_path)
    candidates = [p] if p.is_file() else [p / "design.md", p.parent / "design.md"]
    for design in candidates:
        if design.is_file():
            for line in design.read_text(errors="replace").splitlines():
                m = re.match(r"\|\s*((\d{3})_[^|]*?)\s*\|([^|]*)\|([^|]*)\|", line)
                if m:
                    out[m.group(2)] = {"file": m.group(1), "workload": m.group(3).strip(),
                                       "claim": m.group(4).strip()}
            break
    folder = p if p.is_dir() else p.parent / "seeds"
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            m = re.match(r"(\d{3})_", f.name)
            if m:
                out.setdefault(m.group(1), {})["file"] = f.name
    return out


def _rows(df, quantity, family, mode=None) -> pd.DataFrame:
    r = df[(df["quantity"] == quantity) & (df["family"] == family)]
    return r if mode is None else r[r["mode"] == mode]


def _fastest(rows: pd.DataFrame):
    good = ok_exact(rows).sort_values(["median_s", "strategy"])
    return good.iloc[0] if len(good) else None


def _leanest(rows: pd.DataFrame):
    good = ok_exact(rows)
    good = good[good["peak_mem_bytes"].notna()].sort_values(["peak_mem_bytes", "strategy"])
    return good.iloc[0] if len(good) else None


@dataclass
class Duel:
    """The fastest of group A against the fastest of group B at one problem."""
    framework: str
    problem: str
    a: object  # row or None
    b: object
    b_failed: str = ""  # B's failure statuses there, when B has no ok row

    @property
    def time_ratio(self) -> float:
        if self.a is None or self.b is None:
            return float("nan")
        return self.b["median_s"] / self.a["median_s"]


def _duel(rows: pd.DataFrame, is_a, is_b, framework: str | None, problems=None) -> Duel | None:
    """A against B at the largest scale where A has an ok exact row and B has any row.

    `is_a`/`is_b` take a row (its strategy and tags: `_tagged`); `framework` restricts both
    sides (None: any); `problems` restricts to these problem ids.
    """
    if framework is not None:
        rows = rows[rows["framework"] == framework]
    if problems is not None:
        rows = rows[rows["problem"].isin(problems)]
    if rows.empty:
        return None
    a_rows = rows[rows.apply(is_a, axis=1).astype(bool)]
    b_rows = rows[rows.apply(is_b, axis=1).astype(bool)]
    ok_a = ok_exact(a_rows)
    both = sorted(set(ok_a["problem"]) & set(b_rows["problem"]),
                  key=lambda p: (rows.loc[rows["problem"] == p, "scale"].max(), p))
    if not both:
        return None
    p = both[-1]
    a, b = _fastest(ok_a[ok_a["problem"] == p]), _fastest(b_rows[b_rows["problem"] == p])
    failed = "" if b is not None else _status_counts(b_rows.loc[b_rows["problem"] == p,
                                                                "status"])
    return Duel(framework or "any", p, a, b, failed)


def _duel_text(d: Duel, a_what: str, b_what: str, memory: bool = False) -> str:
    a = d.a
    head = f"{d.framework}, {d.problem}: {a['strategy']} {fmt_time(a['median_s'])}"
    if d.b is None:
        return f"{head}; {b_what} did not finish ({d.b_failed})"
    b = d.b
    r = d.time_ratio
    rel = f"{fmt_ratio(r)} faster" if r >= 1 else f"{fmt_ratio(1 / r)} slower"
    text = f"{head} vs {b['strategy']} {fmt_time(b['median_s'])}: {a_what} is {rel}"
    if memory:
        text += "; " + _memory_text(a, b)
    return text


def _memory_ratio(a, b) -> float:
    ma, mb = _num(a["peak_mem_bytes"]), _num(b["peak_mem_bytes"])
    if not (np.isfinite(ma) and np.isfinite(mb)) or ma <= 0 or mb <= 0:
        return float("nan")
    return mb / ma


def _memory_text(a, b) -> str:
    r = _memory_ratio(a, b)
    pair = f"peak memory {fmt_bytes(_num(a['peak_mem_bytes']))} vs " \
           f"{fmt_bytes(_num(b['peak_mem_bytes']))}"
    if not np.isfinite(r):
        return pair + " (too small to resolve: not judged)"
    return pair + (f" ({fmt_ratio(r)} less)" if r >= 1 else f" ({fmt_ratio(1 / r)} more)")


def _frameworks(rows) -> list[str]:
    return sorted(rows["framework"].unique(), key=framework_key)


def _overall(flags: list[bool]) -> str:
    if not flags:
        return UNMEASURED
    if all(flags):
        return CONFIRMED
    return PARTLY if any(flags) else REFUTED


def _name(s: str) -> str:
    """A strategy name without its framework prefix and `_jit`."""
    return re.sub(r"_jit$", "", s.split(".", 1)[-1])


def _tagged(tag: str, without: str | None = None):
    """A row predicate for `_duel`: the strategy has `tag` (and not `without`)."""
    return lambda r: tag in r["tags"] and (without is None or without not in r["tags"])


def _named(*names: str):
    """A row predicate for `_duel` by method name (a claim about jacfwd against jacrev)."""
    return lambda r: _name(r["strategy"]) in names and not r["tags"] & {"compiled"}


def _seed000(df, c: Claim) -> None:
    c.rule = ("ggn_vp on seed000_mlp, per framework, at the largest batch measured: the fastest "
              "matrix-free strategy (tagged \u201cmatrix-free\u201d: never stores J) against "
              "the fastest dense one (tagged \u201cdense\u201d), in median time and in peak "
              "memory (of those two rows). Confirmed when matrix-free is faster and leaner, or "
              "when the dense route failed where matrix-free ran.")
    rows = _rows(df, "ggn_vp", "seed000_mlp")
    flags = []
    for f in _frameworks(rows):
        d = _duel(rows, _tagged("matrix-free"), _tagged("dense"), f)
        if d is None:
            continue
        c.evidence.append(_duel_text(d, "matrix-free", "dense", memory=d.b is not None))
        if d.b is None:
            flags.append(True)
            continue
        mem = _memory_ratio(d.a, d.b)
        flags.append(d.time_ratio > 1 and (mem > 1 if np.isfinite(mem) else False))
    c.verdict = _overall(flags)


def _seed001(df, c: Claim) -> None:
    c.rule = ("cross_jacobian on seed001_sqrt, per framework, at the largest n measured: the "
              "fastest indirect jvp\u2218vjp strategy (tagged \u201cmatrix-free\u201d) "
              "against the fastest dense one (tagged \u201cdense\u201d). Confirmed when it is "
              "faster.")
    rows = _rows(df, "cross_jacobian", "seed001_sqrt")
    flags = []
    for f in _frameworks(rows):
        d = _duel(rows, _tagged("matrix-free"), _tagged("dense"), f)
        if d is None:
            continue
        c.evidence.append(_duel_text(d, "vmap(jvp\u2218vjp)", "dense", memory=d.b is not None))
        flags.append(d.b is None or d.time_ratio > 1)
    c.verdict = _overall(flags)


def _seed002(df, c: Claim) -> None:
    c.rule = ("jac_diag on seed002_netx, per framework, at the largest batch measured: the "
              "fastest strategy that never forms the full Jacobian (one jvp, or one backward "
              "per output channel: tagged \u201cmatrix-free\u201d) against the fastest "
              "full-Jacobian one (tagged \u201cdense\u201d). Confirmed at \u2265100\u00d7 "
              "(orders of magnitude); faster but by less than 100\u00d7 is partly confirmed.")
    rows = _rows(df, "jac_diag", "seed002_netx")
    flags, partly = [], False
    for f in _frameworks(rows):
        d = _duel(rows, _tagged("matrix-free"), _tagged("dense"), f)
        if d is None:
            continue
        c.evidence.append(_duel_text(d, "the cheap route", "the full Jacobian",
                                     memory=d.b is not None))
        r = d.time_ratio
        flags.append(d.b is None or r >= 100)
        partly |= d.b is not None and 1 < r < 100
    c.verdict = _overall(flags)
    if c.verdict == REFUTED and partly:
        c.verdict = PARTLY


def _seed003(df, c: Claim) -> None:
    c.rule = ("param_jacobian and ntk (full, trace, diagonal) on seed003_convnet: at the largest "
              "batch attempted, at least one exact strategy must finish with status ok. The "
              "ratio quoted is the peak memory of the hungriest ok strategy over the leanest.")
    flags = []
    for q, mode in (("param_jacobian", None), ("ntk", "full"), ("ntk", "trace"),
                    ("ntk", "diagonal")):
        rows = _rows(df, q, "seed003_convnet", mode)
        rows = rows[rows["status"] != "not_applicable"]
        if rows.empty:
            continue
        top = rows["scale"].max()
        at = rows[rows["scale"] == top]
        what = q + (f"[{mode}]" if mode else "")
        good = ok_exact(at)
        failed = at[at["status"].isin(FAILED)]
        fail_text = ("; failed there: " + ", ".join(f"{r.strategy} ({r.status})"
                                                      for r in failed.itertuples())
                     if len(failed) else "; none failed there")
        if good.empty:
            c.evidence.append(f"{what} at {at['problem'].iloc[0]}: no exact strategy finished"
                              + fail_text)
            flags.append(False)
            continue
        best, lean = _fastest(good), _leanest(good)
        text = (f"{what} at {best['problem']}: {len(good)} of {len(at)} strategies finished; "
                f"fastest {best['strategy']} {fmt_time(best['median_s'])}, "
                f"{fmt_bytes(_num(best['peak_mem_bytes']))}")
        if lean is not None:
            hungry = good.sort_values("peak_mem_bytes").iloc[-1]
            r = _memory_ratio(lean, hungry)
            text += (f"; leanest {lean['strategy']} {fmt_bytes(_num(lean['peak_mem_bytes']))}, "
                     f"hungriest {hungry['strategy']} "
                     f"{fmt_bytes(_num(hungry['peak_mem_bytes']))}"
                     + (f" ({fmt_ratio(r)})" if np.isfinite(r) else ""))
        c.evidence.append(text + fail_text)
        flags.append(True)
    c.verdict = _overall(flags)
    if flags and len(flags) < 4 and c.verdict == CONFIRMED:
        c.verdict = PARTLY
        c.evidence.append(f"only {len(flags)} of the 4 quantities (param_jacobian, ntk full, "
                          "trace, diagonal) were measured")


def _seed004(df, c: Claim) -> None:
    c.rule = ("jacobian on seed004_linear_tanh: at the problem with the most outputs per input "
              "(m > n) jacfwd must beat jacrev, and at the one with the most inputs per output "
              "(n > m) jacrev must beat jacfwd, comparing the same framework and the same jit "
              "setting; then, at the problem with the most outputs, the fastest eager torch "
              "strategy other than the baseline loop (tagged \u201cbaseline\u201d) must beat "
              "that loop, and on batch_jacobian likewise.")
    rows = _rows(df, "jacobian", "seed004_linear_tanh")
    flags = []
    if len(rows):
        shape = rows.drop_duplicates("problem").set_index("problem")["sizes"]
        nm = {p: (s.get("n", 0), s.get("m", 0)) for p, s in shape.items()}
        tall = [p for p, (n, m) in nm.items() if m > n]
        wide = [p for p, (n, m) in nm.items() if n > m]
        for label, group, winner, loser in (("outputs outnumber inputs", tall, "jacfwd", "jacrev"),
                                            ("inputs outnumber outputs", wide, "jacrev", "jacfwd")):
            if not group:
                continue
            p = max(group, key=lambda p: (nm[p][1] / nm[p][0] if winner == "jacfwd"
                                          else nm[p][0] / nm[p][1]))
            at = rows[rows["problem"] == p]
            for f in _frameworks(at):
                for jit in (False, True):
                    sub = at[(at["framework"] == f) & (at["jit"] == jit)]
                    d = _duel(sub, _named(winner), _named(loser), None)
                    if d is None:
                        continue
                    d.framework = f + (" jit" if jit else "")
                    c.evidence.append(f"{label}: " + _duel_text(d, winner, loser))
                    flags.append(d.b is None or d.time_ratio > 1)
        if tall or wide:
            p = max(nm, key=lambda p: (nm[p][1], nm[p][0]))
            d = _duel(rows, _vectorised, _tagged("baseline"), "torch", [p])
            if d is not None:
                c.evidence.append("vmap vs loop: " + _duel_text(d, "vmap", "the loop"))
                flags.append(d.b is None or d.time_ratio > 1)
    brows = _rows(df, "batch_jacobian", "seed004_linear_tanh")
    d = _duel(brows, _vectorised, _tagged("baseline"), "torch")
    if d is not None:
        c.evidence.append("batch_jacobian, vmap vs loop: " + _duel_text(d, "vmap", "the loop"))
        flags.append(d.b is None or d.time_ratio > 1)
    c.verdict = _overall(flags)


def _vectorised(r) -> bool:
    """seed004's "vmap" side: an eager route other than the baseline loop."""
    return not r["tags"] & {"baseline", "compiled"}


_JUDGES = {"000": _seed000, "001": _seed001, "002": _seed002, "003": _seed003, "004": _seed004}


def seed_claims(df: pd.DataFrame, seeds_path=None) -> list[Claim]:
    """Each seed's claim and whether this run's rows confirm it, with the measured ratios;
    only the seeds whose workload ran (none for a run of your own model)."""
    texts = claim_texts(seeds_path)
    ran = set(df["family"].dropna()) if "family" in df else set()
    out = []
    for seed, family, workload, claim in SEEDS:
        if family not in ran:
            continue
        t = texts.get(seed, {})
        c = Claim(seed, family, t.get("workload", workload), t.get("claim", claim), "",
                  file=t.get("file", ""), question=QUESTIONS.get(seed, ""))
        _JUDGES[seed](df, c)
        if c.verdict == UNMEASURED and not c.evidence:
            c.evidence.append(f"no comparable rows for {family} in this run")
        out.append(c)
    return out
