"""Fit `torch.auto`'s cost model to a results file and say how well it would pick.

    python -m jacbench calibrate RESULTS.jsonl [--out PATH]

Rows used: one row per case (`best_rows`: the fastest of its ok runs), device cpu, dtype
float32, exact eager PyTorch strategies other than auto, on built-in problem families (rebuilt
from the row's family, sizes and mode to get their features) and on users' own models (the
features their run wrote into the row; their candidates are the strategies whose rows say
they apply). The file goes to the user's cache by default (cost_model.user_calibration), never
into the source tree. Status ok rows are timings; timeout
and oom rows are failure points (a timeout also a timing at its limit, a lower bound). The
fitted coefficients, with what they were fitted on (results file, row count, commits, run ids,
dates), go to the JSON file `torch.auto` reads.

It also prints pick hit rates of the cost model computed offline from the same rows: the pick
is the candidate ranked first; it hits when its measured median is within 1.25x of the fastest
measured candidate's. In-sample (fitted on every row), leave-one-problem-out (each problem
size predicted by models fitted without that problem's rows) and leave-one-family-out.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from jacbench.strategies import cost_model
from jacbench.strategies.problem import Problem
from jacbench.strategies.torch_auto import AUTO

from . import store
from .problems import FAMILIES, make

# Penalty on each strategy's deviation from its key's shared exponents (cost_model.fit_pooled).
# Chosen by the leave-one-problem-out hit rate on the quick sweep (0.3 to 30 tried: 3 best, 1
# and 10 within two problems), so that figure is a little optimistic; leave-one-family-out,
# which nothing was tuned on, is the honest one.
RIDGE = 3.0
THRESHOLD = 1.25
_LIMIT = re.compile(r"exceeded the ([0-9.]+) s time limit")


@dataclass
class Measured:
    """Everything measured at one problem: its features, each strategy's row, and the
    rebuilt Problem (None for a user's model, known from its rows only)."""
    family: str
    feats: dict
    rows: dict  # strategy -> (status, median_s)
    problem: Problem | None = None

    def candidates(self) -> list[str]:
        """auto's candidates here: for a user's model, the ones its rows say apply."""
        from jacbench.strategies.torch_auto import candidates

        if self.problem is not None:
            return [s.name for s in candidates(self.problem)]
        return sorted(s for s, (status, _) in self.rows.items() if status != "not_applicable")


def _row_features(r: dict) -> dict | None:
    feats = r.get("features")
    if isinstance(feats, dict) and all(feats.get(f) for f in cost_model.FEATURES):
        return {f: float(feats[f]) for f in cost_model.FEATURES}
    return None


def _is_candidate_row(r: dict) -> bool:
    """A row the fit can use: an exact eager torch strategy on the CPU in float32, on a
    built-in problem (rebuilt from its family) or a user's model whose row has features."""
    name = str(r.get("strategy"))
    return (r.get("device") == "cpu" and r.get("dtype") == "float32"
            and r.get("framework") == "torch" and bool(r.get("exact"))
            and name != AUTO and "compiled" not in (r.get("tags") or ())
            and (r.get("family") in FAMILIES or _row_features(r) is not None))


def _rebuild(r: dict, cache: dict) -> Problem | None:
    sizes = {k: v for k, v in (r.get("sizes") or {}).items() if k != "params"}
    key = (r["family"], r["quantity"], r["size"], r.get("mode"))
    if key not in cache:
        try:
            cache[key] = make(r["family"], r["quantity"], sizes, r.get("mode"))
        except Exception:  # noqa: BLE001 - a family whose sizes changed since the run
            cache[key] = None
    return cache[key]


def best_rows(rows: list[dict]) -> list[dict]:
    """One row per case: of a case measured more than once, the ok row with the smallest
    median (on a shared machine, interference only ever slows a run down, so the minimum is
    the least disturbed), else its newest row."""
    best: dict[str, dict] = {}
    for r in rows:
        cur = best.get(r["case_id"])
        ok, cur_ok = r["status"] == "ok", cur is not None and cur["status"] == "ok"
        if cur is None or (ok and (not cur_ok or r["median_s"] < cur["median_s"])) or \
                (not ok and not cur_ok):
            best[r["case_id"]] = r
    return list(best.values())


def collect(rows: list[dict]) -> tuple[list[cost_model.Observation], dict[tuple, Measured]]:
    """Observations for the fit, and per problem what was measured (for the hit rates), from
    `best_rows` of the rows."""
    cache: dict = {}
    obs, measured = [], {}
    for r in best_rows(rows):
        if not _is_candidate_row(r):
            continue
        if r.get("family") in FAMILIES:  # features as this checkout computes them
            p = _rebuild(r, cache)
            if p is None or p.id != r["problem"]:
                continue
            k, pid, feats = cost_model.problem_key(p), p.id, cost_model.features(p)
        else:  # a user's model: the features its run wrote into the row
            p, pid, feats = None, r["problem"], _row_features(r)
            k = cost_model.key(r["quantity"], r.get("mode") or None)
        m = measured.setdefault((k, pid), Measured(r["family"], feats, {}, p))
        m.rows[r["strategy"]] = (r["status"], r.get("median_s"))
        status, t = r["status"], r.get("median_s")
        if status == "ok" and t and t > 0:
            obs.append(cost_model.Observation(k, r["strategy"], pid, m.family, feats,
                                              math.log(t)))
        elif status in ("timeout", "oom"):
            limit = _LIMIT.search(r.get("message") or "")
            log_s = math.log(float(limit.group(1))) if limit else None
            obs.append(cost_model.Observation(k, r["strategy"], pid, m.family, feats, None,
                                              status))
            if log_s is not None:  # a lower bound on its time: better than nothing
                obs.append(cost_model.Observation(k, r["strategy"], pid, m.family, feats,
                                                  log_s, "timeout-bound"))
    return obs, measured


def pick_cases(obs, measured, ridge: float = RIDGE, hold_out: str | None = None) -> list[dict]:
    """The offline pick at every measured problem; `hold_out` None (in-sample), "problem" or
    "family": the models for a problem are fitted without its problem's (family's) rows."""
    fitted = {} if hold_out else {None: cost_model.fit(obs, ridge)}
    out = []
    for (k, pid), m in sorted(measured.items()):
        ok = {s: t for s, (st, t) in m.rows.items() if st == "ok" and t}
        if not ok:
            continue
        group = None if hold_out is None else (pid if hold_out == "problem" else m.family)
        if group not in fitted:
            fitted[group] = cost_model.fit(
                [o for o in obs if (o.problem if hold_out == "problem" else o.family) != group],
                ridge)
        choice = cost_model.rank_at(k, m.feats, m.candidates(), fitted[group])[0]
        best = min(ok, key=lambda s: (ok[s], s))
        status, t = m.rows.get(choice.name, ("unmeasured", None))
        ratio = t / ok[best] if status == "ok" and t else math.inf
        out.append({"key": k, "problem": pid, "picked": choice.name, "status": status,
                    "ratio": ratio, "fastest": best, "hit": ratio <= THRESHOLD,
                    "measured": status != "unmeasured"})
    return out


def summary_line(label: str, cases: list[dict]) -> str:
    judged = [c for c in cases if c["measured"]]
    hits = sum(c["hit"] for c in judged)
    rate = hits / len(judged) if judged else float("nan")
    extra = len(cases) - len(judged)
    return (f"{label}: {hits}/{len(judged)} = {rate:.1%} within {THRESHOLD}x of the fastest "
            f"exact torch strategy" + (f" ({extra} pick(s) never measured, left out)"
                                       if extra else ""))


def calibrate(results, out: Path | None = None, ridge: float = RIDGE) -> tuple[dict, list[str]]:
    """Fit, describe, write (when `out` is given); returns the calibration and the printed
    lines (hit rates and the worst held-out misses)."""
    read = store.load(results, latest=False).to_dict("records")
    all_rows = best_rows(read)
    obs, measured = collect(all_rows)
    if not obs:
        raise ValueError(f"{results}: no usable rows (device cpu, float32, exact torch "
                         "strategies, status ok/timeout/oom, built-in problem families or "
                         "rows with features)")
    used = [r for r in all_rows if _is_candidate_row(r) and r["status"] in ("ok", "timeout",
                                                                             "oom")]
    stamps = sorted(str(r["timestamp"]) for r in used if r.get("timestamp"))
    calibration = {
        "about": "torch.auto's cost model (strategies/cost_model.py): per key (quantity, "
                 "ntk[mode]) and strategy, log time = const + sum exponent * log feature; "
                 "written by `python -m jacbench calibrate`",
        "features": {"n": "inputs per sample", "m": "outputs per sample",
                     "B": "samples (B1 + B2 for the NTK, N for jac_diag on scalars)",
                     "P": "parameters", "W": "multiply-adds of one sample's forward pass"},
        "fitted_on": {
            "results": str(results), "rows_read": len(read),
            "rows": len(used),  # one per case: the fastest of its ok runs (best_rows)
            "timings": sum(o.log_s is not None and o.status == "ok" for o in obs),
            "failure_points": sum(o.log_s is None for o in obs),
            "problems": len(measured),
            "commits": sorted({str(r.get("commit")) for r in used if r.get("commit")}),
            "run_ids": sorted({str(r.get("run_id")) for r in used if r.get("run_id")}),
            "measured_from": stamps[0] if stamps else None,
            "measured_to": stamps[-1] if stamps else None,
            "device": "cpu", "dtype": "float32",
            "threads": sorted({int(r["threads"]) for r in used if r.get("threads")}),
            "calibrated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "ridge": ridge,
        **cost_model.fit(obs, ridge),
    }
    lines = [f"calibrated on {len(used)} rows ({len(measured)} problems, "
             f"{sum(len(v) for v in calibration['models'].values())} models)"]
    held = {}
    for label, hold in (("in-sample", None), ("leave-one-problem-out", "problem"),
                        ("leave-one-family-out", "family")):
        held[hold] = pick_cases(obs, measured, ridge, hold)
        lines.append(summary_line(f"offline pick hit rate, {label}", held[hold]))
    for c in sorted((c for c in held["problem"] if c["measured"] and not c["hit"]),
                    key=lambda c: -c["ratio"])[:15]:
        lines.append(f"  leave-one-problem-out miss: {c['key']} {c['problem']}: picked "
                     f"{c['picked']} ({c['status']}) {c['ratio']:.2f}x the fastest, "
                     f"{c['fastest']}")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(calibration, indent=1, sort_keys=False) + "\n")
        lines.append(f"wrote {out}")
    return calibration, lines
