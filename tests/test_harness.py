"""The harness (one case, in this process) and the isolation of a case in a forked child.

The forked children here run plain Python only: a child forked from a process that has used
torch's OpenMP pool hangs as soon as it uses OpenMP itself (see bench.isolation).
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch

from jacbench import strategies
from jacbench.bench import harness
from jacbench.bench.failures import classify, one_line
from jacbench.bench.harness import PeakMemory, Timing, force, measure, run_case
from jacbench.bench.isolation import Child, Limits, exclusive, run_isolated
from conftest import reference_for, test_problem
from jacbench.strategies.registry import Strategy, always

FAST = Timing(max_run_time=0.02, min_run_time=0.002)


def _problem():
    return test_problem("jacobian", "mlp_width@n=5,width=6,m=3")


def _planted(prepare, exact=True):
    return Strategy("jacobian", "torch.planted", "torch", exact, prepare, always)


# ------------------------------------------------------------------------------ force, measure
class _Lazy:
    def __init__(self):
        self.waited = 0

    def block_until_ready(self):
        self.waited += 1
        return self


def test_force_waits_for_every_array_in_nested_results():
    a, b, c = _Lazy(), _Lazy(), _Lazy()
    t = torch.ones(2)
    result = (a, [b, t], {"c": c})
    assert force(result) is result
    assert (a.waited, b.waited, c.waited) == (1, 1, 1)


def test_force_blocks_on_real_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.ones(3) * 2
    assert force({"x": x})["x"] is x


def test_measure_reports_median_iqr_and_run_count():
    median, iqr, runs = measure(lambda: time.sleep(0.002), threads=1, timing=FAST)
    assert 0.0019 < median < 0.02
    assert iqr >= 0 and runs >= 2


def test_measure_forces_the_result_inside_the_timed_region():
    class Slow:
        def block_until_ready(self):
            time.sleep(0.003)

    median, _, _ = measure(Slow, threads=1, timing=FAST)
    assert median >= 0.0029


# ------------------------------------------------------------------------------ one case
def test_a_real_strategy_agrees_and_is_timed():
    p = _problem()
    row = run_case(strategies.get("jacobian", "torch.jacrev"), p, "cpu", "float32",
                   reference_for(p), threads=1, timing=FAST)
    assert row["status"] == "ok", row
    assert row["max_error"] <= row["tolerance"] == strategies.tolerance("float32")
    assert row["first_call_s"] > 0 and row["median_s"] > 0 and row["runs"] >= 1
    assert row["iqr_s"] >= 0 and row["peak_mem_bytes"] >= 0


def test_partial_row_is_sent_before_timing():
    p = _problem()
    sent = []
    run_case(strategies.get("jacobian", "torch.jacrev"), p, "cpu", "float64", reference_for(p),
             threads=1, timing=FAST, send=sent.append)
    assert len(sent) == 1 and sent[0]["status"] == "ok"
    assert "first_call_s" in sent[0] and "median_s" not in sent[0]


def _zeros(problem, device, dtype):
    """Zeros of the right shape. Cost: nothing."""
    return lambda: torch.zeros(strategies.quantity("jacobian").shape(problem))


def test_exact_strategy_beyond_tolerance_disagrees_and_approximate_one_does_not():
    p = _problem()
    ref = reference_for(p)
    exact = run_case(_planted(_zeros), p, "cpu", "float32", ref, 1, FAST)
    approx = run_case(_planted(_zeros, exact=False), p, "cpu", "float32", ref, 1, FAST)
    assert exact["status"] == "disagrees" and "> tolerance 0.0001" in exact["message"]
    assert approx["status"] == "ok" and approx["max_error"] == exact["max_error"] > 1e-4
    assert exact["median_s"] > 0, "a disagreeing strategy is still timed, and flagged"


def test_nan_result_disagrees_even_for_an_approximate_strategy():
    def nan(problem, device, dtype):
        """NaN. Cost: nothing."""
        return lambda: torch.full(strategies.quantity("jacobian").shape(problem), float("nan"))
    p = _problem()
    row = run_case(_planted(nan, exact=False), p, "cpu", "float32", reference_for(p), 1, FAST)
    assert row["status"] == "disagrees" and row["max_error"] == float("inf")


@pytest.mark.parametrize("where,exc,status,message", [
    ("prepare", ValueError("bad\nmore"), "error", "prepare: ValueError: bad"),
    ("call", RuntimeError("boom"), "error", "first call: RuntimeError: boom"),
    ("call", MemoryError(), "oom", "first call: MemoryError"),
    ("call", RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"), "oom",
     "first call: RuntimeError: [enforce fail] DefaultCPUAllocator: can't allocate memory"),
])
def test_exceptions_become_status_and_one_line_message(where, exc, status, message):
    def prepare(problem, device, dtype):
        """Fails. Cost: nothing."""
        if where == "prepare":
            raise exc

        def run():
            raise exc
        return run
    p = _problem()
    row = run_case(_planted(prepare), p, "cpu", "float32", reference_for(p), 1, FAST)
    assert (row["status"], row["message"]) == (status, message)


def test_wrong_layout_is_an_error():
    p = _problem()
    row = run_case(_planted(lambda *_: (lambda: torch.zeros(3, 3, 3))), p, "cpu", "float32",
                   reference_for(p), 1, FAST)
    assert row["status"] == "error" and row["message"].startswith("wrong layout")


def test_peak_memory_sees_an_allocation_and_resets_between_cases():
    mem = PeakMemory("cpu")
    mem.start()
    big = np.ones(200 * 2 ** 20 // 8)
    del big
    peak = mem.peak()
    if peak is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert 190 * 2 ** 20 < peak < 400 * 2 ** 20
    mem.start()
    small = np.ones(2 ** 20 // 8)
    assert mem.peak() < 50 * 2 ** 20
    del small


def test_classify_and_one_line():
    assert classify(MemoryError()) == "oom"
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate")) == "oom"
    assert classify(ValueError("shape")) == "error"
    assert one_line(ValueError("first\nsecond")) == "ValueError: first"
    assert len(one_line(ValueError("x" * 1000))) == 300


def test_forward_callable_runs_the_model_on_every_input():
    p = test_problem("cross_jacobian", "mlp_width@n=5,width=6,m=3")
    out = harness.forward_callable(p, "cpu", "float32")()
    assert [tuple(o.shape) for o in out] == [(3,), (3,)]


# ------------------------------------------------------------------------------ isolation
# Children of this process only run Python, so JAX's warning about forking after its backend
# started (test_force_blocks_on_real_jax_arrays starts it) does not apply to them.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")
LIMITS = Limits(timeout_s=1.5, mem_cap_bytes=200 * 2 ** 20, poll_s=0.02)


def test_isolated_result_and_partial_messages_come_back():
    def fn(send):
        send({"a": 1})
        send({"b": 2})
        return {"pid": os.getpid()}
    out = run_isolated(fn, LIMITS)
    assert out.status == "done" and out.partial == {"a": 1, "b": 2}
    assert out.result["pid"] != os.getpid()


def test_isolated_exception_is_an_error_with_its_message():
    def fn(send):
        raise KeyError("nope")
    out = run_isolated(fn, LIMITS)
    assert (out.status, out.message) == ("error", "KeyError: 'nope'")


def test_isolated_hang_is_a_timeout_and_keeps_the_partial_result():
    def fn(send):
        send({"first_call_s": 0.1})
        time.sleep(60)
    start = time.monotonic()
    out = run_isolated(fn, LIMITS)
    assert out.status == "timeout" and "1.5 s time limit" in out.message
    assert out.partial == {"first_call_s": 0.1}
    assert time.monotonic() - start < 5


def test_isolated_allocation_past_the_cap_is_oom():
    def fn(send):
        chunks = []
        while True:
            chunks.append(b"\1" * (20 * 2 ** 20))
    out = run_isolated(fn, Limits(timeout_s=20, mem_cap_bytes=100 * 2 ** 20, poll_s=0.02))
    assert out.status == "oom" and "0.0977 GB cap" in out.message, out
    assert out.max_rss_bytes > 100 * 2 ** 20


def test_isolated_crash_and_silent_exit_are_errors(tmp_path):
    log = tmp_path / "crash.log"  # faulthandler's report goes there, not into pytest's output
    out = run_isolated(lambda send: os.kill(os.getpid(), signal.SIGSEGV), LIMITS, log)
    assert (out.status, out.message) == ("error", "child process died of SIGSEGV")
    assert "Segmentation fault" in log.read_text()
    out = run_isolated(lambda send: os._exit(3), LIMITS)
    assert (out.status, out.message) == ("error",
                                         "child process exited with status 3 without a result")


def test_isolated_children_write_their_output_to_the_log(tmp_path):
    log = tmp_path / "child.log"

    def fn(send):
        print("hello from the child", flush=True)
        os.write(2, b"and from its stderr\n")
        return 1
    assert run_isolated(fn, LIMITS, log_path=log).result == 1
    assert log.read_text() == "hello from the child\nand from its stderr\n"


def test_exclusive_phases_never_overlap_and_waiting_for_them_is_not_timed(tmp_path):
    lock = tmp_path / "timing.lock"

    def fn(send):
        with exclusive(lock, send):
            start = time.time()
            time.sleep(0.6)
            return start, time.time()
    # The second child waits ~0.6 s, then holds the lock 0.6 s: over the limit if the wait
    # counted.
    limits = Limits(timeout_s=0.9, mem_cap_bytes=100 * 2 ** 20, poll_s=0.02)
    children = [Child(fn, limits), Child(fn, limits)]
    outs = [None, None]
    while None in outs:
        for i, child in enumerate(children):
            if outs[i] is None:
                outs[i] = child.poll(0.01)
    assert [o.status for o in outs] == ["done", "done"], [o.message for o in outs]
    (_, end1), (start2, _) = sorted(o.result for o in outs)
    assert end1 <= start2


def test_a_quiet_timing_stops_the_other_children_and_their_clocks(tmp_path):
    """While one child times with `quiet`, the runner's keep_quiet stops the others: they make
    no progress in that window, and the stop does not count against their time limit."""
    from dataclasses import replace
    from types import SimpleNamespace

    from jacbench.bench.runner import keep_quiet

    lock = tmp_path / "timing.lock"

    def timer(send):
        time.sleep(0.2)  # let the worker start ticking first
        with exclusive(lock, send, quiet=True):
            start = time.monotonic()
            time.sleep(1.5)
            end = time.monotonic()
        return start, end

    def worker(send):
        ticks = []
        while len(ticks) < 80:  # ~0.9 s of its own, ~2.4 s in all: within the limit if stops don't count
            ticks.append(time.monotonic())
            time.sleep(0.01)
        return ticks

    limits = Limits(timeout_s=2.0, mem_cap_bytes=100 * 2 ** 20, poll_s=0.01)
    jobs = {0: SimpleNamespace(child=Child(timer, replace(limits, timeout_s=10))),
            1: SimpleNamespace(child=Child(worker, limits))}
    outs = {}
    while len(outs) < 2:
        for slot, job in list(jobs.items()):
            out = job.child.poll(0.005)
            if out is not None:
                outs[slot] = out
                del jobs[slot]
        keep_quiet(jobs)
    assert outs[0].status == "done" and outs[1].status == "done", \
        [outs[0].message, outs[1].message]
    start, end = outs[0].result
    ticks = np.array(outs[1].result)
    assert ((ticks > start + 0.05) & (ticks < end - 0.05)).sum() == 0
    assert ticks[-1] > end  # it continued afterwards


def test_only_a_case_with_a_slow_first_call_asks_for_the_machine_to_itself():
    import contextlib

    asked = []

    @contextlib.contextmanager
    def lock(quiet=False):
        asked.append(quiet)
        yield

    p = _problem()
    ref = reference_for(p)
    jacrev = strategies.get("jacobian", "torch.jacrev")

    def slow_first(problem, device, dtype):
        fn, calls = jacrev.prepare(problem, device, dtype), [0]

        def run():
            calls[0] += 1
            if calls[0] == 1:
                time.sleep(harness.QUIET_ABOVE_S)
            return fn()
        return run
    for strategy in (jacrev, _planted(slow_first)):
        row = run_case(strategy, p, "cpu", "float32", ref, threads=1, timing=FAST,
                       exclusive=lock)
        assert row["status"] == "ok", row
    assert asked == [False, True]
