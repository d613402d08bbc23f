"""What a Dask worker runs for `jacbench run --scheduler`: one problem's cases, in a fresh
Python process on the worker's machine that calls the local sweep (bench.runner.sweep), so
every case has the isolation, time limit, memory cap, reference and paired timing of a local
run, unchanged.

Nothing here imports Dask: the worker calls `run_problem` as a plain function, and the fresh
process is `python -m jacbench.bench.cluster_task SPEC RESULTS`.
"""
from __future__ import annotations

import ctypes
import json
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from . import store

LOG_TAIL = 20_000  # characters of the run's child output sent back to the client


def _tail(text: str, limit: int = LOG_TAIL) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent():
    # A worker killed with SIGKILL runs no cleanup: without this its run would go on, an orphan
    # holding CPUs and memory that the next task on that machine is timed against. The run's
    # own case children die with it the same way (bench.isolation).
    _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_problem(spec: dict, case_ids: list[str], seed_rows: list[dict]) -> dict:
    """Run the cases `case_ids` of one problem (`spec`: see `select`) in a fresh process and
    return {"rows": the newest row of each case the run wrote, "host": this machine's name,
    "log": the run's child output}.

    `seed_rows` go into the run's results file first, and the run resumes from them: the
    problem's rows from an interrupted earlier sweep, and the timeouts and out-of-memory rows
    of its ladder's smaller sizes, so it skips what is done and what a smaller size predicts,
    as a local sweep does. Raises RuntimeError (Dask then retries the task once, or reports it
    failed) when the run fails or leaves a case without a row.
    """
    host = socket.gethostname()
    with tempfile.TemporaryDirectory(prefix="jacbench-task-") as tmp:
        results, spec_file = Path(tmp) / "results.jsonl", Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        for row in seed_rows:
            store.append(results, row)
        proc = subprocess.run(
            [sys.executable, "-m", "jacbench.bench.cluster_task", str(spec_file), str(results)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if _PRCTL else None)
        log = "\n".join(p.read_text(errors="replace")
                        for p in sorted((Path(tmp) / "logs").glob("*.log")))
        wanted = set(case_ids)
        rows = {r["case_id"]: r for r in store.read_rows(results)[len(seed_rows):]
                if r.get("case_id") in wanted}
    had = {r.get("case_id") for r in seed_rows}
    missing = [c for c in case_ids if c not in rows and c not in had]
    if proc.returncode != 0 or missing:
        said = " | ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:])
        why = f"exit status {proc.returncode}" if proc.returncode else \
            f"no row for {len(missing)} of {len(case_ids)} cases"
        raise RuntimeError(f"the problem's run on {host} failed ({why}): {said}")
    return {"rows": list(rows.values()), "host": host, "log": _tail(log)}


def select(spec: dict) -> list:
    """The cases of one problem, selected as a local run selects them: the profile's problems
    of this quantity, family, NTK mode and scale, narrowed to the one problem id (two problems
    of a family may share a scale) and to the strategies the client chose (named, so the
    profile's trim is not applied twice)."""
    from .cases import select_cases

    cases = select_cases(spec["profile"], spec["quantity"], spec["strategies"], spec["family"],
                         [str(spec["scale"])], None, spec["device"], spec["dtype"],
                         spec["mode"] and [spec["mode"]])
    return [c for c in cases if c.problem.id == spec["problem"]]


def main(argv=None) -> int:
    from .runner import sweep

    spec_file, results = argv or sys.argv[1:]
    spec = json.loads(Path(spec_file).read_text())
    try:
        cases = select(spec)
        if not cases:
            raise ValueError(f"no case of problem {spec['problem']} on this worker's "
                             f"{spec['profile']} ladder: is its jacbench the client's version?")
        summary = sweep(cases, results, profile=spec["profile"], timeout_s=spec["timeout_s"],
                        mem_cap_gb=spec["mem_cap_gb"], threads=spec["threads"],
                        jobs=spec["jobs"], resume=True, quiet=True)
    except (ValueError, OSError) as exc:  # BadInput, UnknownName: one line, as the CLI says it
        print(f"jacbench cluster task: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 130 if summary.interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
