"""The sweep: enumerate cases, run each isolated, append one row per case, resume, show progress.

Call `sweep` from a process that has not computed with torch (the command line does this):
it becomes the zygote that forks one child per case (see bench.isolation).

Per problem (quantity, problem at a size, device, dtype), one child computes the float64
reference once (cached as .npy under <results dir>/refs, keyed by a digest of the problem's
weights and data) and times one plain forward pass. Per case, one child runs the harness.
After a strategy times out or runs out of memory at one size, its larger sizes on the same
ladder (quantity, family, NTK mode, strategy, device, dtype) are recorded as skipped.

With `jobs` > 1, that many children run side by side, each pinned to its own CPUs. Their
untimed work and first calls (JAX compiles: most of a quick sweep's time) overlap, but the
steady-state timing holds an exclusive lock, so no two cases are ever timed at once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from multiprocessing import connection as mp_connection
from pathlib import Path

import numpy as np

from jacbench import strategies
from jacbench.strategies import cost_model
from jacbench.strategies.user_model import is_user, prebuild

from . import harness, jax_cache, side_by_side, store
from .cases import BadInput, Case, problem_key
from .environment import environment
from .files import save_atomic, save_text_atomic
from .isolation import GB, Child, InProcess, Limits, exclusive, prepare_zygote
from .paired import Rounds
from .profiles import PROFILES, Profile, default_threads
from .progress import Progress, Summary
from .references import (REFERENCE_TIMEOUT_S, ProblemInfo, drop_output, judge_by_consensus,
                         reference_kind, reference_path)

FAILED = ("timeout", "oom")  # statuses after which larger sizes are skipped


def row_base(case: Case, env: dict, run_id: str) -> dict:
    """The columns every row of `case` has, whatever its outcome (the cluster client writes
    failed problems' rows with them too)."""
    p, s = case.problem, case.strategy
    return {"run_id": run_id, "case_id": case.case_id, "quantity": case.quantity,
            "problem": p.id, "family": p.family, "size": p.size, "mode": p.mode,
            "scale": p.size_param, "sizes": dict(p.sizes), "params": p.spec.param_count,
            "strategy": s.name, "framework": s.framework, "exact": s.exact,
            "tags": sorted(s.tags), "features": cost_model.features(p),
            "device": case.device, "dtype": case.dtype, **env}


def _failed_from_rows(rows) -> dict:
    failed = {}
    for r in rows:
        if r.get("status") in FAILED:
            key = (r["quantity"], r["family"], r["mode"], r["strategy"], r["device"], r["dtype"])
            if key not in failed or r["scale"] < failed[key][0]:
                failed[key] = (r["scale"], r["size"], r["status"])
    return failed


def default_jobs(threads: int) -> int:
    """Cases run side by side, one per group of `threads` CPUs, at most two: their compile and
    first-call phases overlap while the timing itself stays exclusive (bench.isolation)."""
    return max(1, min(2, len(os.sched_getaffinity(0)) // threads))


def keep_quiet(running: dict) -> None:
    """While one child times with the machine to itself (bench.isolation.exclusive's `quiet`),
    the others stay stopped; once it is done (or gone), they continue."""
    holder = next((job for job in running.values() if job.child.quiet), None)
    for job in running.values():
        if job is not holder:
            job.child.hold(holder is not None)


@dataclass
class _Job:
    child: Child | InProcess
    case: Case | None = None  # None for a problem's reference/forward-pass child
    key: tuple | None = None
    info: ProblemInfo | None = None
    case_of: Case | None = None  # the case that started a reference child
    pairing: list | None = None  # (case, row) pairs of a problem's paired-timing child
    alone: list | None = None  # its ok (case, row) pairs too slow to be paired


def sweep(cases: list[Case], results=store.DEFAULT_PATH, *, profile: Profile | str = "quick",
          timeout_s: float | None = None, mem_cap_gb: float | None = None,
          threads: int | None = None, jobs: int | None = None, resume: bool = False,
          progress: Progress | None = None, quiet: bool = False,
          isolate: bool = True) -> Summary:
    """Run `cases`, appending one row per case to `results`; returns counts by status.

    Up to `jobs` children run at once, each on its own `threads` CPUs; the cases of one ladder
    run in order of size, one at a time, so a timeout or OOM can skip the larger ones.
    `isolate=False` runs every case in this process instead (bench.isolation.InProcess), one
    at a time, without time limit or memory cap: for callers that cannot fork.
    """
    profile = PROFILES[profile] if isinstance(profile, str) else profile
    results = Path(results)
    threads = threads or default_threads()
    jobs = 1 if not isolate else jobs or default_jobs(threads)
    Runner = Child if isolate else InProcess
    cpus = sorted(os.sched_getaffinity(0))
    if jobs * threads > len(cpus):
        raise BadInput(f"{jobs} jobs of {threads} threads need {jobs * threads} CPUs; this "
                       f"process may use {len(cpus)}")
    slots = [cpus[i * threads:(i + 1) * threads] for i in range(jobs)]
    cap = mem_cap_gb if mem_cap_gb is not None else profile.mem_cap_gb
    if cap is None:  # half the memory, shared by the jobs
        cap = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB / 2 / jobs
    limits = Limits(timeout_s=timeout_s or profile.timeout_s, mem_cap_bytes=int(cap * GB))
    if isolate:
        prepare_zygote()

    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
    refs_dir = results.parent / "refs"
    log = results.parent / "logs" / f"{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    lock = log.with_suffix(".lock") if jobs > 1 else None
    env = environment(threads)
    summary = Summary(run_id, results, log)

    existing = store.read_rows(results) if resume else []
    done = {r["case_id"] for r in existing}
    failed = _failed_from_rows(existing)
    pending = [c for c in cases if c.case_id not in done]
    summary.already_done = len(cases) - len(pending)
    progress = progress or Progress(len(pending), tty=False if quiet else None)
    infos: dict[tuple, ProblemInfo] = {}
    running: dict[int, _Job] = {}
    # Consensus problems: their rows wait until every case of the problem has ended.
    unresolved = Counter(problem_key(c) for c in pending)
    held: dict[tuple, list] = {}
    outputs: dict[str, Path] = {}
    # Paired timing (bench.paired): once every case of a problem has ended, its rows so far
    # (those of an interrupted earlier run too, with --resume) go to one more child that times
    # the ok ones side by side; their rows are then appended again (the newest row wins).
    rows_of: dict[tuple, dict] = {}
    by_id = {c.case_id: c for c in cases}
    for r in existing:
        if r["case_id"] in by_id:
            rows_of.setdefault(problem_key(by_id[r["case_id"]]), {})[r["case_id"]] = \
                (by_id[r["case_id"]], r)
    to_pair: list[tuple] = []
    cache_root = results.parent / "jax-cache" / run_id  # bench.jax_cache: one dir per problem

    def cache_dir(key: tuple) -> Path:
        return cache_root / hashlib.blake2b("|".join(key).encode(), digest_size=8).hexdigest()
    start = time.monotonic()

    def note(text: str) -> None:
        with open(log, "a") as fh:
            fh.write(f"== {text}\n")

    def start_problem(case: Case, slot: int) -> None:
        p, key = case.problem, problem_key(case)
        info = ProblemInfo(reference_path(refs_dir, p))
        info.reference, info.why = reference_kind(p, limits.mem_cap_bytes)

        def child(send):
            harness.pin_threads(threads, case.device, slots[slot])
            if info.reference == "float64":
                ref = None
                if not info.ref_path.exists():
                    ref = strategies.reference(p)
                    save_atomic(info.ref_path, ref)
                if not info.noise_path.exists():  # what makes the problem's tolerance
                    ref = np.load(info.ref_path) if ref is None else ref
                    noise = strategies.noise_floor(p, ref)
                    save_text_atomic(info.noise_path, json.dumps({"noise32": noise}))
            send({"reference": "ok"})
            return {"forward_s": harness.forward_time(
                p, case.device, case.dtype, threads, profile.timing,
                exclusive=lambda: exclusive(lock, send))}

        note(f"reference ({info.reference}) and forward pass: {p.quantity} {p.id} "
             f"{case.device} {case.dtype}")
        ref_limits = replace(limits, timeout_s=max(limits.timeout_s, REFERENCE_TIMEOUT_S))
        running[slot] = _Job(Runner(child, ref_limits, log), key=key, info=info, case_of=case)

    def finish_problem(job: _Job, out) -> None:
        info = job.info
        if out.status == "done":
            info.forward_s = out.result["forward_s"]
        if info.reference == "float64" and info.noise_path.exists():
            info.noise = json.loads(info.noise_path.read_text())["noise32"]
        if info.reference == "float64" and not info.ref_path.exists():
            if is_user(job.case_of.problem):
                # Out of memory (the estimate was too hopeful), or a model out of reach of the
                # reference's torch.func transforms (data-dependent control flow under vmap):
                # the strategies' agreement is the reference.
                info.reference = "consensus"
                info.why = f"the float64 reference failed: {out.status}: {out.message}"
            else:
                info.error = f"reference failed: {out.status}: {out.message}"
        infos[job.key] = info

    def start_case(case: Case, slot: int) -> None:
        info = infos[problem_key(case)]
        save_to = None
        if info.reference == "consensus":
            save_to = outputs[case.case_id] = (
                refs_dir / "outputs" / f"{info.ref_path.stem}-{case.strategy.name}.npy")

        def child(send):
            harness.pin_threads(threads, case.device, slots[slot])
            if case.strategy.framework == "jax" and profile.paired_s > 0:
                jax_cache.use(cache_dir(problem_key(case)) / case.strategy.name)
            harness.start_backend(case.strategy.framework, case.device)
            prebuild(case.problem)  # a user model's factory runs outside the measured window
            ref = np.load(info.ref_path) if save_to is None else None
            out = harness.run_case(case.strategy, case.problem, case.device, case.dtype, ref,
                                   threads, profile.timing, send,
                                   exclusive=lambda quiet=False: exclusive(lock, send, quiet),
                                   save_to=save_to,
                                   tol=info.tolerance(case.dtype))
            if case.device == "cuda":
                import torch

                out["gpu"] = torch.cuda.get_device_name()
            return out

        note(case.case_id)
        progress.begin(case)
        case_limits = limits
        if "compiled" in case.strategy.tags:
            case_limits = replace(limits, timeout_s=max(limits.timeout_s,
                                                        profile.compile_timeout_s))
        running[slot] = _Job(Runner(child, case_limits, log), case=case)

    def record(case: Case, row: dict) -> None:
        if row["status"] in FAILED:  # killed by us, or an allocation that failed inside
            failed.setdefault(case.ladder, (case.problem.size_param, case.problem.size,
                                            row["status"]))
        key = problem_key(case)
        info = infos.get(key)
        if info is not None and info.reference == "consensus" and row.get("status") == "ok" \
                and row.get("max_error") is None:
            held.setdefault(key, []).append((case, row))  # judged once the problem is done
        else:
            drop_output(outputs, case)
            write(case, row)
        unresolved[key] -= 1
        if unresolved[key] == 0 and key in held:
            for c, r in judge_by_consensus(held.pop(key), info, outputs):
                write(c, r)
        if unresolved[key] == 0 and profile.paired_s > 0:
            to_pair.append(key)

    def write(case: Case, row: dict) -> None:
        info = infos.get(problem_key(case))
        if info is not None and row["status"] not in ("not_applicable", "skipped"):
            row.setdefault("reference", info.reference)
        if row.get("median_s") is not None and not row.get("timing"):
            row.update(timing="isolated", isolated_median_s=row["median_s"],
                       isolated_iqr_s=row.get("iqr_s"))
        rewrite(case, row)
        summary.statuses[row["status"]] += 1
        progress.end(case, row)

    def rewrite(case: Case, row: dict) -> None:
        """Append `row` (a case's first row, or its row again after paired timing)."""
        row["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        store.append(results, row)
        rows_of.setdefault(problem_key(case), {})[case.case_id] = (case, row)

    def start_pair(key: tuple, slot: int) -> bool:
        """Start the paired-timing child of problem `key`; False when it is not paired (the
        rows then keep their isolated timing, and say why if there is a reason to)."""
        pairs = list(rows_of.pop(key, {}).values())
        chosen, alone, why = side_by_side.choose(pairs, limits.mem_cap_bytes, profile.paired_s)
        if not chosen:
            for case, row in alone if why else ():
                rewrite(case, side_by_side.alone_row(row, why))
            summary.unpaired += bool(alone)
            jax_cache.drop(cache_dir(key))
            return False
        problem = chosen[0][0].problem
        budget = Rounds(budget_s=profile.paired_s)
        cached = cache_dir(key)
        estimates = {c.strategy.name: r["median_s"] for c, r in chosen}

        def child(send):
            harness.pin_threads(threads, key[2], slots[slot])
            if isolate:  # a forked child of its own
                harness.fix_allocator()
            if cached.is_dir():  # what the JAX cases compiled alone, not compiled again
                jax_cache.use(jax_cache.merge([d for d in cached.iterdir() if d.name != "_all"],
                                              cached / "_all"))
            prebuild(problem)
            return side_by_side.time_problem(
                [c.strategy for c, _ in chosen], problem, key[2], key[3], budget,
                exclusive=lambda: exclusive(lock, send, quiet=True), estimates=estimates)

        note(f"paired timing of {len(chosen)} strategies: {' '.join(key)}")
        # Every strategy is prepared (and compiled) again before the rounds start.
        compile_s = sum(r.get("first_call_s") or 0 for _, r in chosen)
        pair_limits = replace(limits, timeout_s=limits.timeout_s + 2 * compile_s
                              + 4 * profile.paired_s)
        running[slot] = _Job(Runner(child, pair_limits, log), key=key, pairing=chosen,
                             alone=alone)
        return True

    def finish_pair(job: _Job, out) -> None:
        jax_cache.drop(cache_dir(job.key))
        note(f"paired timing {out.status} after {out.wall_s:.1f} s: {' '.join(job.key)}")
        if out.status != "done":
            why = f"timed alone: the paired timing failed ({out.status}: {out.message})"
            for case, row in job.pairing + job.alone:
                rewrite(case, side_by_side.alone_row(row, why))
            summary.unpaired += 1
            return
        fastest = side_by_side.fastest_entry(out.result)
        for case, row in job.pairing:
            got = out.result.get(case.strategy.name) or {"error": "not timed"}
            if "error" in got:
                why = f"timed alone: failed when prepared again for paired timing: {got['error']}"
                rewrite(case, side_by_side.alone_row(row, why, fastest))
            else:
                rewrite(case, side_by_side.paired_row(row, got))
        for case, row in job.alone:
            rewrite(case, side_by_side.alone_row(
                row, "timed alone: one call is too long for the paired rounds", fastest))
        summary.paired += 1

    def without_running(case: Case) -> dict | None:
        """The row of a case that needs no child, or None."""
        if case.problem.blocked:  # a user model that cannot run this problem at all
            status, message = case.problem.blocked
            return {"status": status, "message": message}
        reason = case.strategy.not_applicable(case.problem)
        if reason:
            return {"status": "not_applicable", "message": reason}
        if case.ladder in failed and case.problem.size_param > failed[case.ladder][0]:
            _, size, status = failed[case.ladder]
            return {"status": "skipped",
                    "message": f"not attempted: {status} at the smaller size {size}"}
        info = infos.get(problem_key(case))
        if info is not None and info.error:
            return {"status": "error", "message": info.error, "forward_s": info.forward_s,
                    "tolerance": info.tolerance(case.dtype), "noise_floor": info.noise}
        return None

    def fill(slot: int) -> bool:
        """Start the first case that may start on `slot` (recording the ones that need no
        child on the way); False when none can start now."""
        while to_pair:
            if start_pair(to_pair.pop(0), slot):
                return True
        busy = {job.case.ladder for job in running.values() if job.case}
        loading = {job.key for job in running.values() if job.case is None and not job.pairing}
        i = 0
        while i < len(pending):
            case = pending[i]
            if case.ladder in busy:  # an earlier size of this ladder is running or waiting
                i += 1
                continue
            row = without_running(case)
            if row is not None:
                pending.pop(i)
                record(case, {**row_base(case, env, run_id), **row})
                continue
            key = problem_key(case)
            if key not in infos:
                if key in loading:
                    busy.add(case.ladder)
                    i += 1
                    continue
                start_problem(case, slot)
                return True
            pending.pop(i)
            start_case(case, slot)
            return True
        return False

    try:
        while pending or running or to_pair:
            for slot in range(jobs):
                if slot not in running:
                    fill(slot)
            keep_quiet(running)
            if not running:
                continue  # what was left needed no child
            conns = [job.child.conn for job in running.values() if job.child.conn is not None]
            if conns:
                mp_connection.wait(conns, limits.poll_s)
            for slot, job in list(running.items()):
                out = job.child.poll()
                if out is None:
                    continue
                del running[slot]
                if job.pairing:
                    finish_pair(job, out)
                    continue
                if job.case is None:
                    finish_problem(job, out)
                    continue
                case = job.case
                row = row_base(case, env, run_id)
                info = infos[problem_key(case)]
                row.update(forward_s=info.forward_s, tolerance=info.tolerance(case.dtype),
                           noise_floor=info.noise,
                           forward_kind=harness.forward_kind_of(case.problem))
                if out.status == "done":
                    row.update(out.result)
                else:
                    row.update(out.partial)
                    phase = " while timing" if "first_call_s" in out.partial else ""
                    row.update(status=out.status, message=out.message + phase)
                capped = strategies.agreement.tolerance_note(case.dtype, info.noise)
                if capped and row.get("status") in ("ok", "disagrees"):
                    row["message"] = "; ".join(t for t in (row.get("message"), capped) if t)
                record(case, row)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        for job in running.values():
            job.child.kill()
        jax_cache.drop(cache_root)
        with contextlib.suppress(OSError):
            cache_root.parent.rmdir()  # when no other sweep is using it
        progress.close()
        summary.elapsed_s = time.monotonic() - start
    return summary
