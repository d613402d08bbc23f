"""`jacbench run --scheduler ADDRESS`: a sweep whose problems run on a Dask distributed cluster.

This process (the client) selects the cases exactly as a local run does, groups them by
problem (bench.cases.problem_key) and submits one task per problem: a worker runs it in a
fresh process through the local sweep (bench.cluster_task), so a case is isolated, timed,
capped and checked against its reference as on one machine, and a problem's strategies are
timed side by side on one machine. With --device cuda a task asks for the worker resource
"GPU": 1, so a worker started with `--resources GPU=1` runs one problem per GPU.

The sizes of one ladder (quantity, family, NTK mode, device, dtype) run one after another, as
locally: a size is submitted when the smaller one's rows are in, with its timeouts and
out-of-memory rows, so larger sizes are skipped as a local sweep skips them.

The client is the only writer of the results file: a problem's rows are appended in one
atomic write (bench.store.append_rows) when its task ends, so an interrupted client loses
nothing already appended and --resume continues. A task that raises is retried once
(retries=1); a task whose worker dies is rescheduled by the scheduler on another worker, as
often as the scheduler's `distributed.scheduler.allowed-failures` says (3 by default; 1 to
retry once). After that the problem's cases get a row with status "error" and the reason.

Dask is imported here only: a run on one machine never imports this module.
"""
from __future__ import annotations

import logging
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from . import store
from .cases import BadInput, Case, problem_key
from .cluster_task import run_problem
from .progress import Progress, Summary
from .runner import FAILED, row_base

CONNECT_TIMEOUT_S = 10.0
INSTALL = "pip install 'dask[distributed]'"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _probe(address: str) -> None:
    """Fail fast, with one line, when nothing listens at a tcp address (a Client that cannot
    connect waits its whole timeout, then leaves a traceback behind at exit)."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    scheme, loc = parse_address(address)  # ValueError: a bad address
    get_backend(scheme)  # ValueError: a scheme Dask does not know
    if scheme != "tcp":
        return
    host, port = parse_host_port(loc)  # ValueError without a port
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
        pass


def connect(address: str):
    """A Dask Client for the scheduler at `address` (tcp://HOST:PORT or HOST:PORT), or
    BadInput with one line that says what is wrong."""
    try:
        from distributed import Client
    except ImportError:
        raise BadInput(f"--scheduler needs Dask's distributed package: {INSTALL}") from None
    logging.getLogger("distributed").setLevel(logging.ERROR)  # its retries are ours to report
    start = ("start one with `dask scheduler` and give the address it prints "
             "(tcp://HOST:8786)")
    try:
        _probe(address)
    except ValueError as exc:
        raise BadInput(f"--scheduler {address!r} is not a Dask scheduler address "
                       f"({_one_line(exc)}); {start}") from None
    except OSError as exc:
        raise BadInput(f"no Dask scheduler answers at {address!r} ({_one_line(exc)}); "
                       f"{start}") from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot connect to the Dask scheduler at {address!r} "
                       f"({_one_line(exc)}); {start}") from None


# ------------------------------------------------------------------------------ the tasks
@dataclass
class Task:
    """One problem: its cases, and those of them that still need a row."""
    key: tuple
    cases: list[Case] = field(default_factory=list)
    pending: list[Case] = field(default_factory=list)

    @property
    def problem(self):
        return self.cases[0].problem

    def spec(self, profile: str, options: dict) -> dict:
        """What bench.cluster_task.select needs to select exactly these cases on a worker."""
        p, c = self.problem, self.cases[0]
        return {"profile": profile, "quantity": p.quantity, "family": p.family,
                "mode": p.mode, "scale": p.size_param, "problem": p.id,
                "strategies": [x.strategy.name for x in self.cases],
                "device": c.device, "dtype": c.dtype, **options}


def chains(cases: list[Case], done: set[str]) -> dict[tuple, list[Task]]:
    """The problems with a case not in `done`, per ladder of sizes (quantity, family, mode,
    device, dtype), smallest size first (select_cases orders them so)."""
    tasks: dict[tuple, Task] = {}
    for c in cases:
        task = tasks.setdefault(problem_key(c), Task(problem_key(c)))
        task.cases.append(c)
        if c.case_id not in done:
            task.pending.append(c)
    out: dict[tuple, list[Task]] = {}
    for task in tasks.values():
        p, c = task.problem, task.cases[0]
        out.setdefault((p.quantity, p.family, p.mode, c.device, c.dtype), []).append(task)
    return out


def error_rows(task: Task, run_id: str, message: str) -> list[dict]:
    return [{**row_base(c, {}, run_id), "status": "error", "message": message}
            for c in task.pending]


def _why(exc: BaseException) -> str:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return f"its worker died on every try (Dask: {_one_line(exc)})"
    return f"failed on two tries: {_one_line(exc, 1000)}"


# ------------------------------------------------------------------------------ the sweep
def sweep_on_cluster(cases: list[Case], address: str, results=store.DEFAULT_PATH, *,
                     profile: str = "quick", timeout_s: float | None = None,
                     mem_cap_gb: float | None = None, threads: int | None = None,
                     jobs: int | None = None, resume: bool = False,
                     quiet: bool = False) -> Summary:
    """Run `cases` on the Dask cluster at `address`, appending their rows to `results`; the
    same Summary as bench.runner.sweep. Raises BadInput when the scheduler is out of reach."""
    from distributed import as_completed

    results = Path(results)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
    log = results.parent / "logs" / f"{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    summary = Summary(run_id, results, log)
    options = {"timeout_s": timeout_s, "mem_cap_gb": mem_cap_gb, "threads": threads,
               "jobs": jobs}

    existing = store.read_rows(results) if resume else []
    latest = {r["case_id"]: r for r in existing if "case_id" in r}
    ladders = chains(cases, set(latest))
    pending = sum(len(t.pending) for tasks in ladders.values() for t in tasks)
    summary.already_done = len(cases) - pending
    by_id = {c.case_id: c for c in cases}
    # Per ladder, the timeouts and out-of-memory rows so far: the next size's run skips the
    # strategies they name (bench.runner.sweep reads them with --resume).
    failures = {k: [latest[c.case_id] for t in tasks for c in t.cases
                    if latest.get(c.case_id, {}).get("status") in FAILED]
                for k, tasks in ladders.items()}
    queues = {k: [t for t in tasks if t.pending] for k, tasks in ladders.items()}

    client = connect(address)
    resources = {"GPU": 1} if cases and cases[0].device == "cuda" else None
    _say_workers(client, address, resources)
    progress = Progress(pending, tty=False if quiet else None)
    start = time.monotonic()

    def note(text: str) -> None:
        with open(log, "a") as fh:
            fh.write(f"== {text}\n")

    def submit(ladder: tuple):
        task = queues[ladder].pop(0)
        seeds = failures[ladder] + [latest[c.case_id] for c in task.cases
                                    if c.case_id in latest]
        fut = client.submit(run_problem, task.spec(profile, options),
                            [c.case_id for c in task.cases], seeds, retries=1, pure=False,
                            resources=resources,
                            key=f"jacbench-{task.problem.id}-{secrets.token_hex(4)}")
        running[fut.key] = (fut, ladder, task)
        return fut

    def write(task: Task, rows: list[dict]) -> None:
        rows = [dict(r, run_id=run_id) for r in rows]  # one sweep, one run in the report
        store.append_rows(results, rows)
        for r in rows:
            latest[r["case_id"]] = r
        first = {c.case_id for c in task.pending}
        for r in rows:
            if r["case_id"] in first:  # a done case's paired row again is not a new case
                summary.statuses[r["status"]] += 1
                progress.end(by_id[r["case_id"]], r)
        if any(r.get("timing") == "paired" for r in rows):
            summary.paired += 1

    running: dict = {}
    futures = as_completed([submit(k) for k in queues if queues[k]], loop=client.loop)
    try:
        for fut in futures:
            _, ladder, task = running.pop(fut.key)
            if fut.status == "finished":
                out = fut.result()
                note(f"{task.problem.quantity} {task.problem.id} on {out['host']}\n{out['log']}")
                write(task, out["rows"])
                rows = out["rows"]
            else:
                why = _why(fut.exception())
                note(f"{task.problem.quantity} {task.problem.id}: {why}")
                rows = error_rows(task, run_id, f"not measured: the cluster task {why}")
                write(task, rows)
            failures[ladder] += [r for r in rows if r["status"] in FAILED]
            if queues[ladder]:
                futures.add(submit(ladder))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        with _quiet_close():
            client.cancel([f for f, _, _ in running.values()])
            client.close(timeout=CONNECT_TIMEOUT_S)
        progress.close()
        summary.elapsed_s = time.monotonic() - start
    return summary


class _quiet_close:
    """Closing a client whose scheduler went away raises and logs; the rows are already
    written, so that is nothing to report."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], Exception)


def _say_workers(client, address: str, resources: dict | None) -> None:
    workers = client.scheduler_info().get("workers", {})
    if not workers:
        print(f"no Dask worker has joined {address} yet: the tasks wait for one (start one "
              f"with `dask worker {address} --nworkers 1 --nthreads 1`)", file=sys.stderr)
    elif resources and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        print(f"no Dask worker at {address} offers the resource GPU: the tasks wait for one "
              "(start one worker per GPU with `--resources GPU=1` and CUDA_VISIBLE_DEVICES)",
              file=sys.stderr)


def select_cases(*args, device: str = "cpu", **kwargs) -> list[Case]:
    """bench.cases.select_cases for cases that run on the workers: the client need not have
    the device (a login node has no GPU); each worker's run checks its own."""
    from .cases import select_cases as select

    if device != "cuda":
        return select(*args, device=device, **kwargs)
    return [replace(c, device=device) for c in select(*args, device="cpu", **kwargs)]
