"""The sweep profiles: which ladder, the time and memory limits, how long to time, and which
cases each leaves out (its trim)."""
from __future__ import annotations

from dataclasses import dataclass

from .harness import Timing


@dataclass(frozen=True)
class Profile:
    name: str
    ladder: str
    timeout_s: float
    mem_cap_gb: float | None  # None: half of the machine's memory
    timing: Timing
    dtype: str = "float32"
    about: str = ""
    trim: object = None  # (case, rank in its ladder, ladder length) -> False to leave it out
    # Seconds of paired timing per problem (bench.paired): its ok strategies side by side in
    # shuffled rounds, after each ran alone. 0: every case keeps its isolated timing.
    paired_s: float = 0.0
    # The time limit of a compiled strategy's case (strategies.torch_compiled): its first call
    # compiles, 6-90 s measured on 2 busy cores, where the case limit is sized for the call.
    compile_timeout_s: float = 180.0


# The compiled twins of the quick sweep: the seeds' own quantities at their largest quick size
# (where compiled PyTorch is set against jitted JAX), the NTK in full mode. Compiling costs 6-90 s
# a case on 2 cores (inductor's cache cold, as in a fresh clone) whatever the size, so all twins
# at all sizes would not fit `make bench`'s 15 minutes; `full` runs them all.
# seed 004's jacobian (two problems at its largest size, two twins each) is left to `full`:
# measured from a fresh clone, `make bench` took 12m45s with 8 compiled cases.
_QUICK_COMPILED = {("ggn_vp", "seed000_mlp"), ("cross_jacobian", "seed001_sqrt"),
                   ("jac_diag", "seed002_netx"), ("ntk", "seed003_convnet"),
                   ("batch_jacobian", "seed004_linear_tanh"), ("hessian", "seed004_linear_tanh")}


def _compiled_trim(case, rank: int, sizes: int) -> bool:
    p = case.problem
    return rank == sizes - 1 and (p.quantity, p.family) in _QUICK_COMPILED \
        and p.mode in (None, "full")


def _test_trim(case, rank: int, sizes: int) -> bool:
    """The test profile leaves the compiled twins out (a smoke test in seconds cannot compile);
    tests/test_compiled.py checks them, and --strategy names them in."""
    return "compiled" not in case.strategy.tags


def _quick_trim(case, rank: int, sizes: int) -> bool:
    """The quick sweep's JAX cut. In a fresh process every JAX case pays XLA compilation
    first: jit 0.7-1 s, eager op-by-op 2-3 s (median), 6-10 s for the conv net; that was 80%
    of a 1298 s quick sweep. So in `quick` the eager JAX strategies and the JAX per-sample
    loops run at the smallest size of each ladder, and the JAX NTK trace and diagonal modes
    at the smallest size of the ladders that have more than one. `full` runs everything, and a
    strategy named with --strategy is never cut."""
    s, p = case.strategy, case.problem
    if "compiled" in s.tags:
        return _compiled_trim(case, rank, sizes)
    if s.framework != "jax":
        return True
    if p.mode not in (None, "full"):  # the NTK's trace and diagonal modes
        return rank == 0 and sizes > 1
    if "jit" in s.tags and "baseline" not in s.tags:  # the per-sample loop is the baseline
        return True
    return rank == 0


def _seeds_trim(case, rank: int, sizes: int) -> bool:
    """The frameworks' face-off (issue 17's target): the five seed workloads at their largest
    quick size (the NTK in full mode), every compiled twin beside the quick sweep's strategies,
    so the best PyTorch time, compiled or not, meets the best jitted JAX time in one sweep."""
    p = case.problem
    if not p.family.startswith("seed") or rank != sizes - 1 or p.mode not in (None, "full"):
        return False
    return "compiled" in case.strategy.tags or _quick_trim(case, rank, sizes)


PROFILES = {p.name: p for p in [
    # 3 GB: the largest quick case that ends well grows by 2 GB; above that an out-of-memory
    # case is caught sooner.
    # Its isolated timing is short: the paired timing (paired_s per problem) replaces it.
    Profile("quick", "quick", 15, 3, Timing(max_run_time=0.05, min_run_time=0.01),
            trim=_quick_trim, paired_s=1.0,
            about="the default: quick ladder, short timing, fits 15 minutes on 2 cores"),
    Profile("full", "full", 600, None, Timing(max_run_time=2.0, min_run_time=0.1, threshold=0.05),
            paired_s=10.0, about="the questions' own sizes and beyond, careful timing"),
    Profile("test", "test", 20, 2, Timing(max_run_time=0.02, min_run_time=0.002),
            paired_s=0.05, trim=_test_trim,
            about="tiny problems, a smoke test of the whole pipeline in seconds"),
    Profile("seeds", "quick", 15, 3, Timing(max_run_time=0.05, min_run_time=0.01),
            trim=_seeds_trim, paired_s=1.0,
            about="the seeds at their largest quick size with every compiled twin: torch "
                  "(compiled or not) against jitted JAX, about 10 minutes on 2 cores"),
]}



def default_threads() -> int:
    """One thread unless asked for more (--threads). With two OpenMP threads on a 2-core
    machine that something else also uses, every parallel region waits for a descheduled
    thread: a forward pass of seed 000's MLP at B=256 measured 65 ms with 2 threads and 0.2 ms
    with 1, under the same load. One thread keeps timings repeatable and strategy comparisons
    fair; the thread count is recorded in every row."""
    return 1
