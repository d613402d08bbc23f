"""One problem's strategies timed side by side (issue 16), in the child the runner forks for it.

The runner first runs every case of a problem alone (status, first call, memory, agreement);
this child then prepares the strategies that ran ok, plus the forward pass of every framework
and mode among them, and times them all together with bench.paired, pinned to one CPU and
holding the exclusive timing lock. Each strategy's cost per forward pass is then relative to
the forward of its own framework and mode, timed in the same rounds. On the CPU the paired
times are the process's CPU time (bench.paired says why).
"""
from __future__ import annotations

import contextlib
import time

from jacbench.strategies.problem import Problem
from jacbench.strategies.registry import Strategy
from jacbench.strategies.torch_auto import AUTO

from .failures import one_line
from .harness import force, forward_callable, forward_kind, start_backend
from .paired import Rounds, cpu_clock, run_rounds, summarize

FORWARD = "forward:"  # name prefix of the forward passes among the timed callables


def time_problem(strategies: list[Strategy], problem: Problem, device: str, dtype: str,
                 rounds: Rounds, exclusive=None, estimates: dict | None = None) -> dict:
    """{strategy name: paired columns} for the strategies that could be prepared again here;
    a strategy that fails now (it ran ok alone) is left out with its reason under "error",
    and keeps its own timing. `estimates`: strategy name -> its median timed alone, which
    sizes its blocks without spending calls on it (bench.paired.calibrate).

    Columns: median_s, iqr_s, rounds, runs, ratio_to_fastest, ratio_ci_low, ratio_ci_high,
    tied_with_fastest, fastest, forward_s, forward_kind."""
    for framework in sorted({s.framework for s in strategies}):
        start_backend("jax" if framework == "jax" else "torch", device)
    fns, failed = {}, {}
    for s in strategies:
        try:
            fn = s.prepare(problem, device, dtype, **s.options)
            force(fn())  # compile and lazy start-up happen here, outside the rounds
            fns[s.name] = fn
        except Exception as exc:  # noqa: BLE001 - it keeps its isolated timing
            failed[s.name] = one_line(exc)
    kinds = {s.name: forward_kind(s) for s in strategies if s.name in fns}
    for kind in sorted(set(kinds.values())):
        try:
            fn = forward_callable(problem, device, dtype, kind)
            force(fn())
            fns[FORWARD + kind] = fn
        except Exception as exc:  # noqa: BLE001 - the rows then have no forward_s
            failed[FORWARD + kind] = one_line(exc)
    # CPU time on the CPU (see bench.paired), a peer's worker process included; a GPU's work
    # is not this process's CPU time.
    clock = time.perf_counter if device.startswith("cuda") else cpu_clock(fns)
    with exclusive() if exclusive else contextlib.nullcontext():
        timed = run_rounds(fns, rounds, clock=clock, estimates=estimates,
                           budget_clock=time.perf_counter)
    names = [s.name for s in strategies if s.name in fns]
    # torch.auto runs one of the others: its rivals are the concrete strategies, as in the
    # report (reports.summary), so it is compared with the fastest but never named it.
    exact = [s.name for s in strategies if s.name in fns and s.exact
             and s.name != AUTO]
    stats = summarize(timed, names, exact, rounds)
    out = {}
    for name in names:
        fwd = stats.get(FORWARD + kinds[name], {})
        out[name] = {**stats[name], "forward_s": fwd.get("median_s"),
                     "forward_kind": kinds[name]}
    for name, why in failed.items():
        if not name.startswith(FORWARD):
            out[name] = {"error": why}
    return out


# ------------------------------------------------------------------------------ in the runner
# What the runner decides before and writes after the child above; pure functions of rows.
PAIRED_COLUMNS = ("median_s", "iqr_s", "runs", "rounds", "ratio_to_fastest", "ratio_ci_low",
                  "ratio_ci_high", "tied_with_fastest", "fastest", "forward_s", "forward_kind")


def choose(pairs: list, cap_bytes: int, budget_s: float) -> tuple[list, list, str]:
    """(cases to time side by side, ok cases left alone, why none is paired) from a problem's
    (case, row) pairs. Candidates: rows ok with a timing. Left alone: a strategy whose one call
    is over half the budget (it would get one or two rounds and use the whole budget). None is
    paired when fewer than two are left (nothing to compare), or when their peak memories
    together (a prepared strategy holds its state while the others run) exceed the cap."""
    ok = [(c, r) for c, r in pairs if r.get("status") == "ok" and r.get("median_s") is not None]
    slow = [(c, r) for c, r in ok if _alone_s(r) > budget_s / 2]
    chosen = [(c, r) for c, r in ok if _alone_s(r) <= budget_s / 2]
    if len(chosen) < 2:
        return [], ok, ""
    need = sum(max(r.get("peak_mem_bytes") or 0, r.get("first_peak_mem_bytes") or 0)
               for _, r in chosen)
    if need > cap_bytes:
        return [], ok, (f"timed alone: the {len(chosen)} strategies' peak memories together "
                        f"({need / 2 ** 30:.2g} GB) exceed the {cap_bytes / 2 ** 30:.3g} GB cap")
    return chosen, slow, ""


def _alone_s(row: dict) -> float:
    return row.get("isolated_median_s") or row["median_s"]  # rows of before issue 16: median_s


def paired_row(row: dict, got: dict) -> dict:
    """`row` (timed alone) with the paired columns of `got` (time_problem's entry)."""
    return {**row, **{k: got.get(k) for k in PAIRED_COLUMNS}, "timing": "paired"}


def alone_row(row: dict, why: str, fastest: dict | None = None) -> dict:
    """`row` kept with its isolated timing, saying why; with the paired `fastest` entry of its
    problem, its ratio to that (no interval: the two were not timed together)."""
    new = {**row, "message": "; ".join(t for t in (row.get("message"), why) if t)}
    if fastest is not None:
        new.update(ratio_to_fastest=row["median_s"] / fastest["median_s"],
                   tied_with_fastest=False, fastest=fastest["fastest"])
    return new


def fastest_entry(result: dict) -> dict | None:
    """The paired entry of the problem's fastest strategy, from time_problem's result."""
    for got in result.values():
        name = got.get("fastest")
        if name and name in result:
            return result[name]
    return None
