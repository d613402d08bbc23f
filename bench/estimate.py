"""`python -m jacbench run --dry-run`: the cases a run would make, and about how long it takes.

The estimate is a sum over cases of what each costs beyond its timed calls, by kind, plus the
profile's timing budget per case and its paired timing per problem, shared by the jobs. The
costs per kind are rough: JAX's from the first-call times the README states (jit 0.7-1 s,
eager op by op 2-3 s, in a fresh process per case), torch.compile's from its 6-90 s compiles,
eager torch's (a fork, the reference, the first call) chosen so that the quick profile comes
to about 13 minutes with 2 jobs, within the README's 10-15. Not measured per case: a case that
hits its time limit costs up to that limit, and a loaded machine is slower.
"""
from __future__ import annotations

# Seconds per case beyond the timed calls, by kind of strategy (module docstring).
OVERHEAD_S = {"torch": 0.5, "jax_jit": 1.2, "jax": 2.5, "compiled": 30.0}
PAIRED_OVERHEAD_S = 1.0  # per problem: forking the paired child and preparing again


def kind(strategy) -> str:
    if "compiled" in getattr(strategy, "tags", ()):
        return "compiled"
    if strategy.framework == "jax":
        return "jax_jit" if "jit" in strategy.tags else "jax"
    return "torch"


def estimate_s(cases, profile, jobs: int = 1) -> float:
    """Seconds of wall time the cases should take on `jobs` CPUs under `profile`."""
    timed = 2 * profile.timing.max_run_time  # adaptive_autorange: up to about twice its budget
    work = sum(OVERHEAD_S[kind(c.strategy)] + timed for c in cases)
    problems = {(c.quantity, c.problem.id, c.device, c.dtype) for c in cases}
    work += len(problems) * (profile.paired_s + PAIRED_OVERHEAD_S)
    return work / max(1, jobs)


def fmt_duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def dry_run_lines(cases, profile, jobs: int) -> list[str]:
    """One line per case (quantity, problem, strategy, device, dtype), then the total."""
    lines = [f"{c.quantity:<15} {c.problem.id:<45} {c.strategy.name:<32} {c.device} {c.dtype}"
             for c in cases]
    counts: dict[str, int] = {}
    for c in cases:
        counts[kind(c.strategy)] = counts.get(kind(c.strategy), 0) + 1
    problems = len({(c.quantity, c.problem.id) for c in cases})
    mix = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(counts.items()))
    est = estimate_s(cases, profile, jobs)
    lines.append(f"{len(cases)} cases ({mix}) on {problems} problems, profile {profile.name}: "
                 f"about {fmt_duration(est)} with {jobs} job(s), roughly within a factor of 2 "
                 "(nothing was run)")
    return lines
