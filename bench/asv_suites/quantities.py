"""One asv class per quantity, over (strategy, problem), calling the runner's prepare() callables.

In each class, for one strategy on one problem:
- time_<quantity>: steady-state time of one call, the result forced; prepare and the first
  call (compilation) run in that benchmark's own setup, untimed;
- peakmem_<quantity>: peak RSS of preparing and calling once; peakmem_reference is the same
  process with only the problem built, so the difference is the strategy's memory;
- track_first_call: seconds of the first call after prepare (tracing, compilation included);
- track_max_error: the largest error against the float64 reference (strategies.agreement).

A strategy that does not apply to a problem, or that does not exist at the commit being
benchmarked (asv runs this suite against older commits), raises NotImplementedError in setup,
which asv records as skipped. Strategies come from the registry when asv imports this module;
problems from `cases.asv_problems` (JACBENCH_ASV_FULL=1 widens them).
"""
from __future__ import annotations

import functools
import time

# What torch.func and forward-mode AD import lazily on their first call (over a second). asv
# forks every benchmark from a process that imported this module, so importing them here keeps
# that second out of each benchmark's first call. Imports only: no computation runs before the
# fork, so no framework thread pool exists in the forking process.
import torch._decomp.decompositions_for_jvp  # noqa: F401
import torch._dynamo  # noqa: F401

from jacbench import strategies
from jacbench.strategies.agreement import max_error
from jacbench.strategies.names import UnknownName

from .cases import asv_problems

try:
    from jacbench.bench.harness import force
except ImportError:  # asv history reaches commits older than the harness; CPU torch needs no sync
    def force(result):
        return result.block_until_ready() if hasattr(result, "block_until_ready") else result
try:
    from jacbench.bench.harness import pin_threads
except ImportError:  # older commits: threads are left as the process has them
    def pin_threads(threads, device="cpu"):
        pass

DEVICE, DTYPE = "cpu", "float32"
THREADS = 1  # the runner's default: one pinned CPU thread for torch and XLA alike

# The callable prepared by a time_ benchmark's setup. asv gives a benchmark's own setup only the
# params, not the instance, and runs each benchmark in its own process, so one slot is enough.
_PREPARED: dict[str, object] = {}


@functools.lru_cache(maxsize=None)
def _problems(quantity: str) -> dict:
    return {p.id: p for p in asv_problems(quantity)}


def _case(quantity: str, strategy: str, problem: str):
    # Every benchmark's setup comes here first, in the benchmark's own forked process and
    # before any torch or JAX computation, which is when pinning takes effect.
    pin_threads(THREADS, DEVICE)
    try:
        s = strategies.get(quantity, strategy)
    except UnknownName as exc:
        raise NotImplementedError(f"not registered at this commit: {exc}") from None
    if problem not in _problems(quantity):
        raise NotImplementedError(f"no problem {problem} at this commit")
    p = _problems(quantity)[problem]
    reason = s.not_applicable(p)
    if reason is not None:
        raise NotImplementedError(reason)
    return s, p


def _prepare(s, p):
    return s.prepare(p, DEVICE, DTYPE, **s.options)


def _named(fn, cls_name: str, name: str, **attrs):
    fn.__name__, fn.__qualname__ = name, f"{cls_name}.{name}"
    for key, value in attrs.items():
        setattr(fn, key, value)
    return fn


def suite(quantity: str) -> type:
    """The asv benchmark class of `quantity`."""
    cls_name = "".join(w.capitalize() for w in quantity.split("_"))

    def setup(self, strategy, problem):
        self.strategy, self.problem = _case(quantity, strategy, problem)

    def prepare_and_warm(strategy, problem):
        s, p = _case(quantity, strategy, problem)
        fn = _prepare(s, p)
        force(fn())  # compilation and lazy initialisation stay out of the timed calls
        _PREPARED[quantity] = fn

    def forget(strategy, problem):
        _PREPARED.pop(quantity, None)

    def time_(self, strategy, problem):
        force(_PREPARED[quantity]())

    def peakmem_(self, strategy, problem):
        force(_prepare(self.strategy, self.problem)())

    def peakmem_reference(self, strategy, problem):
        """Only the problem built: the baseline that peakmem_<quantity> is read against."""

    def track_first_call(self, strategy, problem):
        fn = _prepare(self.strategy, self.problem)
        t0 = time.perf_counter()
        force(fn())
        return time.perf_counter() - t0

    def track_max_error(self, strategy, problem):
        out = force(_prepare(self.strategy, self.problem)())
        return max_error(out, strategies.reference(self.problem))

    body = {
        "quantity": quantity,
        # No compiled twins: asv runs each benchmark in several fresh processes, so each would
        # compile four times (minutes per case); their rows come from `run --profile full`.
        "params": [[s.name for s in strategies.strategies(quantity, compiled=False)],
                   list(_problems(quantity))],
        "param_names": ["strategy", "problem"],
        "timeout": 300,  # JACBENCH_ASV_FULL reaches sizes where slow strategies take minutes
        "setup": setup,
        f"time_{quantity}": _named(time_, cls_name, f"time_{quantity}",
                                   setup=prepare_and_warm, teardown=forget),
        f"peakmem_{quantity}": _named(peakmem_, cls_name, f"peakmem_{quantity}"),
        "peakmem_reference": _named(peakmem_reference, cls_name, "peakmem_reference"),
        "track_first_call": _named(track_first_call, cls_name, "track_first_call",
                                   unit="seconds"),
        "track_max_error": _named(track_max_error, cls_name, "track_max_error",
                                  unit="relative error"),
    }
    return type(cls_name, (), {"__doc__": f"asv benchmarks of {quantity}.", **body})


for _q in strategies.QUANTITIES:
    _cls = suite(_q)
    globals()[_cls.__name__] = _cls
del _q, _cls
