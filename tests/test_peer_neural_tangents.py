"""neural-tangents' STRUCTURED_DERIVATIVES NTK, run out of process in .venv-nt (`make peers`):
it agrees with the float64 reference on every applicable test problem, refuses what its worker
cannot rebuild, says how to install it when missing, and its worker's CPU time is counted by
the paired timer. Without .venv-nt the tests that need it skip."""
import gc
import time

import numpy as np
import pytest

from jacbench import strategies
from jacbench.bench.paired import cpu_clock
from jacbench.bench.problems import make, problems
from jacbench.strategies import peer_neural_tangents as peer
from conftest import assert_agrees, cases
from jacbench.strategies.agreement import max_error

NAME = "neural_tangents.structured"
needs_nt = pytest.mark.skipif(bool(peer.MISSING), reason="no .venv-nt: make peers")


@needs_nt
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("strategy,problem", cases(framework="neural_tangents"))
def test_agrees_with_reference(strategy, problem, dtype):
    assert_agrees(strategy, problem, dtype)


@needs_nt
def test_runs_on_every_mode_of_the_mlp_test_problems():
    covered = {p.values[1].mode for p in cases(framework="neural_tangents")
               if p.values[1].family == "ntk_targets"}
    assert covered == {"full", "trace", "diagonal"}


def test_refuses_what_the_worker_cannot_rebuild(monkeypatch):
    monkeypatch.setattr(peer, "MISSING", None)
    s = strategies.get("ntk", NAME)
    conv = problems("ntk", "test", family="seed003_convnet")[0]
    assert "flat inputs only" in s.not_applicable(conv)
    mlp = make("ntk_targets", "ntk", {"n": 5, "width": 6, "m": 3, "B1": 4, "B2": 4}, "full")
    assert s.not_applicable(mlp) is None


def test_missing_environment_is_reported_with_make_peers(monkeypatch):
    monkeypatch.setattr(peer, "MISSING", peer.MISSING or "neural-tangents is not installed: "
                        "`make peers` creates .venv-nt")
    s = strategies.get("ntk", NAME)
    assert "make peers" in s.not_applicable(problems("ntk", "test")[0])
    assert "peer" in s.tags


@needs_nt
def test_worker_cpu_time_is_counted_and_the_worker_ends_with_the_callable():
    problem = make("ntk_targets", "ntk", {"n": 8, "width": 64, "m": 4, "B1": 16, "B2": 16},
                   "full")
    fn = strategies.get("ntk", NAME).prepare(problem, "cpu", "float32")
    assert 0 < fn.noop_s < 0.01  # a pipe round trip: microseconds
    in_worker = sum(map(float, fn.worker.call("time 5")))  # five NTKs timed by the worker
    clock, own = cpu_clock({"nt": fn}), time.process_time
    c0, o0 = clock(), own()
    for _ in range(5):
        fn()
    worker_s = (clock() - c0) - (own() - o0)
    assert worker_s >= 0.5 * in_worker > 0, (worker_s, in_worker)
    ref = strategies.reference(problem)
    tol = strategies.tolerance("float32", strategies.noise_floor(problem, ref))
    assert max_error(fn(), ref) <= tol
    proc = fn.worker.proc
    del fn
    gc.collect()
    assert proc.wait(timeout=10) == 0


def test_cpu_clock_adds_the_peers_cpu_time():
    assert cpu_clock({"a": lambda: None}) is time.process_time
    worker = {"cpu_s": 2.0}
    fake = lambda: None  # noqa: E731
    fake.peer_cpu_s = lambda: worker["cpu_s"]
    clock = cpu_clock({"a": lambda: None, "p": fake})
    before = clock()
    worker["cpu_s"] += 0.5  # the worker reports half a second of work
    assert 0.5 <= clock() - before < 0.6
