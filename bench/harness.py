"""The harness: measure ONE case (strategy, problem, device, dtype) in the current process.

For a case it records, in this order:
1. peak memory of preparing and calling the strategy once (`first_peak_mem_bytes`): the RSS
   high-water mark less the process's RSS just before (reset through /proc/self/clear_refs),
   or on CUDA the allocator's peak; meaningful in a fresh process, which is how the runner
   calls it (bench.isolation);
2. the first call's time (compile or tracing included), kept apart from steady state;
3. agreement with the float64 reference, by the one rule in strategies.agreement;
4. steady-state time: torch.utils.benchmark's adaptive_autorange (median, IQR, run count), the
   result forced inside the timed region (`force`), and the steady state's peak memory
   (`peak_mem_bytes`: the high-water mark reset after the first call, over the same baseline).

`forward_callable` builds one plain forward pass of the problem's model (eager torch, jitted or
eager JAX: `forward_kind` says which one a strategy is compared with), so reports can show each
strategy's cost relative to evaluating the function.
"""
from __future__ import annotations

import contextlib
import gc
import os
import time
import timeit
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from jacbench.strategies.agreement import ShapeMismatch, max_error, to_numpy, tolerance
from jacbench.strategies.problem import Problem
from jacbench.strategies.quantities import quantity
from jacbench.strategies.registry import Strategy
from jacbench.strategies.torch_model import torch_view
from jacbench.strategies.user_model import is_user

from .failures import classify, one_line, transform_limit
from .files import save_atomic


@dataclass(frozen=True)
class Timing:
    """adaptive_autorange's knobs: stop once IQR/median < threshold (after min_run_time and at
    least four blocks), or when max_run_time seconds of blocks have been spent."""

    max_run_time: float = 0.25
    min_run_time: float = 0.01
    threshold: float = 0.1


def force(result):
    """Wait until `result` is computed: synchronize CUDA for torch tensors, block_until_ready
    for JAX arrays, recursing into tuples, lists and dicts. Returns `result`."""
    if isinstance(result, (tuple, list)):
        for item in result:
            force(item)
    elif isinstance(result, dict):
        for item in result.values():
            force(item)
    elif isinstance(result, torch.Tensor):
        if result.device.type == "cuda":
            torch.cuda.synchronize(result.device)
    elif hasattr(result, "block_until_ready"):
        result.block_until_ready()
    return result


def measure(fn, threads: int, timing: Timing = Timing()):
    """Steady-state time of `force(fn())` by torch.utils.benchmark's adaptive_autorange.

    Returns (median_s, iqr_s, runs). `threads` is passed to the Timer, which otherwise pins
    torch to one thread while timing. A call that takes half the time budget or more is timed
    once: adaptive_autorange would spend two more calls on it (block-size estimate, one block),
    and at that length one call's timer overhead is nil.
    """
    from torch.utils.benchmark import Timer

    t0 = time.perf_counter()
    force(fn())
    once = time.perf_counter() - t0
    if once >= timing.max_run_time / 2:
        return once, 0.0, 1
    # timeit.default_timer: force() already synchronizes, and torch's default timer would
    # initialise CUDA even for CPU cases on a GPU machine.
    timer = Timer(stmt="force(fn())", globals={"fn": fn, "force": force},
                  num_threads=threads, timer=timeit.default_timer)
    m = timer.adaptive_autorange(threshold=timing.threshold, min_run_time=timing.min_run_time,
                                 max_run_time=timing.max_run_time)
    return float(m.median), float(m.iqr), int(m.number_per_run * len(m.raw_times))


# ------------------------------------------------------------------------------ memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _libc():
    """glibc, or None where there is none (the functions below are then no-ops)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    """Return glibc's free heap memory to the system (a no-op without glibc)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


# glibc's own bounds for its dynamic thresholds on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX, and twice
# it for trimming), where a process that frees large blocks ends up by itself.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def fix_allocator() -> None:
    """Fixes glibc's mmap and trim thresholds at MMAP_THRESHOLD and TRIM_THRESHOLD, for a child
    that times strategies side by side (mallopt cannot be undone: never in the caller's own
    process). Left dynamic, they move with each large block freed, so whether a block under
    32 MiB comes from the heap or from fresh pages (a page fault per 4 KiB) depended on which
    strategy freed what before it in the round. Measured in one process: a 64 x 1024 NTK by
    torch.structured took 108 page faults a call with the dynamic thresholds, 0.1 with these.
    A no-op without glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD


class PeakMemory:
    """Peak memory of what runs between `start()` and `peak()`, in bytes.

    CPU: VmHWM less the VmRSS at start, after resetting the high-water mark by writing "5" to
    /proc/self/clear_refs, less the growth of RssFile: pages of shared libraries (torch's and
    XLA's code, faulted in as new code paths run, ~10-100 MB) are not memory the strategy
    allocated. CUDA: the torch allocator's peak (and JAX's, for JAX strategies) less what was
    allocated at start.
    """

    def __init__(self, device: str, framework: str = "torch"):
        self.device, self.framework = device, framework
        self.base = 0

    def start(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() + self._jax_gpu("bytes_in_use")
            return
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.base = None  # no reset: a peak would include everything before
            return
        self.base = _status_kb("VmRSS") * 1024
        self.file_base = _status_kb("RssFile") * 1024

    def restart_peak(self) -> None:
        """Reset the high-water mark but keep the baseline: the next `peak()` is the highest
        point since now, over the same baseline (a steady-state call's peak, what the
        prepared strategy holds included, the first call's compile workspace left out).
        On the CPU, glibc would keep the first call's freed blocks in the RSS, so the steady
        peak could not be lower than the first: malloc_trim hands them back first.
        JAX's GPU peak cannot be reset: there the steady peak still includes the first's."""
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        if self.base is None:
            return
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.base = None

    def peak(self) -> int | None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() + self._jax_gpu("peak_bytes_in_use")
                    - self.base)
        if self.base is None:
            return None
        file_growth = _status_kb("RssFile") * 1024 - self.file_base
        return max(0, _status_kb("VmHWM") * 1024 - self.base - file_growth)

    def _jax_gpu(self, key: str) -> int:
        if self.framework != "jax":
            return 0
        import jax

        stats = jax.devices("gpu")[0].memory_stats() or {}
        return int(stats.get(key, 0))


def judge(exact: bool, err: float, tol: float, note: str = "") -> tuple[str, str]:
    """(status, message) of a result with error `err`: exact strategies must be within the
    tolerance; approximate ones are judged by their error, not failed by it; a non-finite
    result disagrees whatever the strategy."""
    agrees = err <= tol if exact else np.isfinite(err)
    if agrees:
        return "ok", note
    return "disagrees", f"max error {err:.3g} > tolerance {tol:.2g}" + (f"; {note}" if note else "")


def prepared_notes(fn) -> str:
    """What a strategy says it did (torch.auto's pick, torch.structured's fallbacks): the
    `notes` list its prepared callable may carry, for the row's message."""
    return "; ".join(str(n) for n in getattr(fn, "notes", None) or ())


def _warning_note(caught, said: str = "") -> str:
    seen = []
    said = " ".join(said.split())
    for w in caught:
        if " ".join(str(w.message).split()) in said:  # a warning that repeats a note: once
            continue
        text = one_line(w.message, 160) if isinstance(w.message, BaseException) else str(w.message)
        text = " ".join(text.split())[:160]
        if text not in seen:
            seen.append(text)
    return "; ".join(f"warning: {t}" for t in seen[:2])


# ------------------------------------------------------------------------------ one case
# A case whose first call took this long is timed with the machine to itself (the other slot's
# child stopped: bench.isolation.exclusive's `quiet`): a strategy too slow for the paired rounds
# keeps this timing as its row's, and its one or two calls would meet the other core's compile
# or reference work for their whole length. The fast cases' isolated timing is superseded by
# the paired rounds, so the other slot goes on beside it (stopping it cost about a minute a sweep).
QUIET_ABOVE_S = 0.25


def run_case(strategy: Strategy, problem: Problem, device: str, dtype: str,
             ref: np.ndarray | None, threads: int, timing: Timing = Timing(), send=None,
             exclusive=None, save_to=None, tol: float | None = None) -> dict:
    """Measure one case here and now; returns the measurement columns of its result row.

    `send(partial_row)`, when given, receives what is known before the steady-state timing
    starts, so a case killed while timing still reports its first call, memory and error.
    `exclusive(quiet)`, when given, is a context manager held while timing (bench.isolation's
    lock, so that cases running side by side are never timed at the same time); `quiet` is
    True for a case whose first call took QUIET_ABOVE_S or more.
    Exceptions from the strategy become status 'error' (or 'oom') with a one-line message;
    a model out of reach of the strategy's transform (see `transform_limit`) 'not_applicable'.
    `ref` None (no float64 reference: a consensus is formed later): the result is saved to
    `save_to` (.npy), and the status stays 'ok' with no error until the runner judges it.
    `tol`: the problem's measured tolerance (strategies.agreement.tolerance); None: the
    dtype's default.
    """
    tol = tolerance(dtype) if tol is None else tol
    row = {"tolerance": tol, "threads": threads}
    mem = PeakMemory(device, strategy.framework)
    mem.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        phase = "prepare"
        try:
            fn = strategy.prepare(problem, device, dtype, **strategy.options)
            phase = "first call"
            t0 = time.perf_counter()
            out = force(fn())
            row["first_call_s"] = time.perf_counter() - t0
        except Exception as exc:  # the strategy's failure is a result, not a crash
            limit = transform_limit(exc) if is_user(problem) else None
            said = prepared_notes(fn) if phase == "first call" else ""
            what = f"{phase}: {one_line(exc)}" + (f"; {said}" if said else "")
            if limit and classify(exc) != "oom":
                return {**row, "status": "not_applicable",
                        "message": f"the model is out of this strategy's reach ({limit}): "
                                   f"{what}"}
            return {**row, "status": classify(exc), "message": what}
    row["first_peak_mem_bytes"] = mem.peak()
    said = prepared_notes(fn)
    note = "; ".join(t for t in (said, _warning_note(caught, said)) if t)
    if ref is None:
        result = to_numpy(out)
        del out
        expected = tuple(quantity(problem.quantity).shape(problem))
        if result.shape != expected:
            return {**row, "status": "error", "message": f"wrong layout: result has shape "
                                                         f"{result.shape}, expected {expected}"}
        save_atomic(save_to, result.astype(np.dtype(dtype), copy=False))
        del result
        row["status"], row["message"] = "ok", note
    else:
        try:
            err = max_error(out, ref)
        except ShapeMismatch as exc:
            return {**row, "status": "error", "message": f"wrong layout: {exc}"}
        del out
        row["max_error"] = err
        row["status"], row["message"] = judge(strategy.exact, err, tol, note)
    if send is not None:
        send(dict(row))
    try:
        quiet = row["first_call_s"] >= QUIET_ABOVE_S
        with exclusive(quiet=quiet) if exclusive else contextlib.nullcontext():
            mem.restart_peak()  # the steady state: the timed calls' peak, compile left out
            row["median_s"], row["iqr_s"], row["runs"] = measure(fn, threads, timing)
            row["peak_mem_bytes"] = mem.peak()
    except Exception as exc:
        return {**row, "status": classify(exc), "message": f"timing: {one_line(exc)}"}
    return row


# The forward pass a strategy's cost is relative to: the same framework and mode (issue 16),
# so a jitted JAX strategy is divided by the jitted JAX forward, not by eager torch's.
FORWARD_KINDS = ("torch eager", "torch compiled", "jax jit", "jax eager")


def forward_kind(strategy: Strategy) -> str:
    """The forward pass `strategy` is compared with: JAX strategies tagged "jit" run under
    jax.jit (strategies.jax_model.register_jax), other JAX ones op by op; BackPACK and
    curvlinops run on eager torch modules."""
    if strategy.framework == "jax":
        return "jax jit" if "jit" in strategy.tags else "jax eager"
    return "torch compiled" if "compiled" in strategy.tags else "torch eager"


def forward_kind_of(problem: Problem) -> str:
    """The problem's default forward pass: eager torch, or for a JAX user function (which has
    no torch model) jitted JAX."""
    return "jax jit" if getattr(problem.spec, "framework", "torch") == "jax" else "torch eager"


def forward_callable(problem: Problem, device: str, dtype: str, kind: str | None = None):
    """One plain forward pass of the problem's model over every input the quantity
    differentiates at (x, X, x1/x2 or X1/X2), without autograd: `kind` one of FORWARD_KINDS,
    by default `forward_kind_of(problem)`."""
    kind = kind or forward_kind_of(problem)
    if kind.startswith("jax"):
        return _jax_forward_callable(problem, device, dtype, jit=kind == "jax jit")
    v = torch_view(problem, device, dtype)
    views = quantity(problem.quantity).views  # each model input, with the view that takes it
    calls = [(getattr(v, views[key]), x) for key, x in v.data.items() if key in views]

    def run():
        with torch.no_grad():
            return tuple(f(x) for f, x in calls)
    if kind == "torch compiled":  # what a compiled twin is compared with (torch_compiled)
        from jacbench.strategies.torch_compiled import BACKEND, DYNAMIC, MODE

        return torch.compile(run, backend=BACKEND, mode=MODE, dynamic=DYNAMIC)
    return run


def _jax_forward_callable(problem: Problem, device: str, dtype: str, jit: bool = True):
    import jax

    from jacbench.strategies.jax_model import jax_device, jax_view, scope

    dev = jax_device(device)
    v = jax_view(problem, dev, dtype)
    shape = problem.spec.in_shape

    def forward(params, xs):
        return tuple(v.forward(params, v.buffers, x) for x in xs)
    fn = jax.jit(forward) if jit else forward
    with scope(dtype, dev):  # float64 arrays keep their dtype only inside the x64 scope
        xs = [x.reshape(-1, *shape) for k, x in v.data.items()
              if k in quantity(problem.quantity).views]

    def run():
        with scope(dtype, dev):
            return fn(v.params, xs)
    return run


def forward_time(problem: Problem, device: str, dtype: str, threads: int,
                 timing: Timing = Timing(), exclusive=None) -> float:
    fn = forward_callable(problem, device, dtype)
    force(fn())
    with exclusive() if exclusive else contextlib.nullcontext():
        return measure(fn, threads, timing)[0]


# ------------------------------------------------------------------------------ child setup
def pin_threads(threads: int, device: str = "cpu", cpus=None) -> None:
    """Pin this (fresh) process to `threads` CPU threads for torch and XLA alike, on `cpus`
    (default: the first of those it may use).

    Call before any torch or JAX computation: the CPU affinity mask bounds both frameworks'
    pools; torch.set_num_threads sizes torch's; XLA reads XLA_FLAGS when its backend starts.
    """
    cpus = sorted(cpus or os.sched_getaffinity(0))
    if threads < len(cpus) or set(cpus) != os.sched_getaffinity(0):
        os.sched_setaffinity(0, cpus[:threads])
    torch.set_num_threads(threads)
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    if device == "cuda":
        # JAX would otherwise take 75% of the GPU at start, leaving torch and the peak
        # statistics nothing meaningful.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import sys

    if "jax" in sys.modules and device == "cpu":
        # Keep CPU cases off a GPU JAX backend; the zygote imported jax without starting one.
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def start_backend(framework: str, device: str) -> None:
    """Start the framework's runtime (JAX's XLA client; torch's thread pool and BLAS handles,
    whose CUDA workspace alone is tens of MB) before a case, so that neither its time nor its
    memory is charged to the first strategy call."""
    if device == "cuda":
        torch.cuda.init()
    if framework == "torch":
        x = torch.ones(8, 8, device=device)
        force(torch.tanh(x @ x))
    if framework == "jax":
        try:
            import jax
        except ImportError:
            return
        jax.devices("gpu" if device == "cuda" else "cpu")
