"""neural-tangents (google/neural-tangents) as a peer strategy: its empirical NTK with
implementation=STRUCTURED_DERIVATIVES, the method jax.structured and torch.structured follow.

neural-tangents 0.6.5 runs only on JAX 0.4.23, which cannot share a process with the suite's
JAX, so it runs in its own environment (.venv-nt, made by `make peers`; JACBENCH_NT_PYTHON
names another Python) and its own process. `prepare` writes the problem's weights and inputs
to a temporary .npz and starts `peer_neural_tangents_worker.py` there, which rebuilds the MLP,
jits the NTK function and compiles it before answering. The prepared callable then sends one
"run" over a pipe: the worker computes one NTK (block_until_ready) and copies it into a
memory-mapped file the callable returns a read-only view of, so no result travels the pipe.

What a call costs beyond neural-tangents' own NTK: one pipe round trip (`noop_s` on the
callable, measured in prepare: tens of microseconds) and the copy of the NTK into the shared
buffer (a memcpy of the result). The worker's CPU time comes back with every reply
(`peer_cpu_s`), so a timer of CPU time (bench.paired.cpu_clock) counts it; a process's peak
memory does not include the worker's. The worker inherits the CPU affinity, and runs one XLA
thread when pinned to one CPU.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

from .layer_kinds import covering, lacking
from .problem import ModelSpec
from .quantities import quantity
from .registry import register

WORKER = Path(__file__).with_name("peer_neural_tangents_worker.py")
PYTHON = Path(os.environ.get("JACBENCH_NT_PYTHON")
              or Path(__file__).resolve().parents[1] / ".venv-nt" / "bin" / "python")
MISSING: str | None = (None if PYTHON.exists() else
                       f"neural-tangents is not installed (no Python at {PYTHON}): `make peers` "
                       "creates .venv-nt with neural-tangents==0.6.5 jax==0.4.23 jaxlib==0.4.23")


def applies(problem) -> str | None:
    """.venv-nt exists and the problem is a built-in MLP (linear, tanh, relu) on flat inputs."""
    if MISSING:
        return MISSING
    spec = problem.spec
    if not isinstance(spec, ModelSpec) or len(spec.in_shape) != 1:
        return "the neural-tangents worker rebuilds built-in MLPs on flat inputs only"
    other = lacking(spec.layers, "neural_tangents")
    if other:
        known = ", ".join(covering("neural_tangents"))
        return (f"the neural-tangents worker rebuilds MLPs of {known} only, "
                f"not {', '.join(other)}")
    return None


def _problem_file(problem, dtype: str, path: Path) -> None:
    # The worker numbers the layers with parameters (of its kinds, only linear ones have any).
    arrays, i = {}, 0
    for layer in problem.spec.layers:
        if layer.params:
            arrays.update({f"{k}_{i}": np.asarray(a, dtype) for k, a in layer.params.items()})
            i += 1
    np.savez(path, layers=" ".join(layer.kind for layer in problem.spec.layers),
             mode=problem.mode, dtype=dtype, X1=np.asarray(problem.data["X1"], dtype),
             X2=np.asarray(problem.data["X2"], dtype), **arrays)


class Worker:
    """The worker process, its pipe and the shared result buffer."""

    def __init__(self, problem, dtype: str):
        self.dir = tempfile.TemporaryDirectory(prefix="jacbench-nt-")
        root = Path(self.dir.name)
        _problem_file(problem, dtype, root / "problem.npz")
        shape = quantity(problem.quantity).shape(problem)
        self.result = np.memmap(root / "ntk.bin", dtype=dtype, mode="w+", shape=shape)
        self.log = open(root / "stderr.txt", "w+")
        self.proc = subprocess.Popen(
            [str(PYTHON), str(WORKER), str(root / "problem.npz"), str(root / "ntk.bin")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            bufsize=1, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        self.cpu_s = 0.0
        try:
            ready = self._reply()
        finally:  # both processes hold what they need open or mapped: nothing is left behind
            self.dir.cleanup()  # even when a forked case ends by os._exit
        if ready.split()[1:] != [*map(str, shape), dtype]:
            raise RuntimeError(f"neural-tangents worker: expected an NTK of shape {shape} "
                               f"{dtype}, it says {ready!r}")
        self.view = self.result.view(np.ndarray)
        self.view.flags.writeable = False

    def _reply(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            self.log.seek(0)
            tail = " | ".join(self.log.read().strip().splitlines()[-3:])
            raise RuntimeError(f"neural-tangents worker ended (exit {self.proc.poll()}): {tail}")
        if line.startswith("error"):
            raise RuntimeError(f"neural-tangents worker: {line[6:].strip()}")
        return line

    def call(self, command: str) -> list[str]:
        self.proc.stdin.write(command + "\n")
        words = self._reply().split()
        self.cpu_s = float(words[1])
        return words[2:]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the worker exits at the end of its input
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.log.close()


def round_trip_s(worker: Worker, calls: int = 200) -> float:
    """Median seconds of one pipe round trip ("noop"): what a call adds to the NTK itself."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        worker.call("noop")
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@register("ntk", "neural_tangents.structured", applies=applies)
def _nt_structured(problem, device="cpu", dtype=None):
    """neural-tangents 0.6.5 empirical_ntk_fn, STRUCTURED_DERIVATIVES, jitted, in its own
    process and environment (JAX 0.4.23). Cost: its NTK plus one pipe round trip per call."""
    if MISSING:
        raise RuntimeError(MISSING)
    if str(device) != "cpu":
        raise ValueError("the neural-tangents worker runs on the CPU only")
    dtype = np.dtype(str(getattr(dtype, "name", dtype or "float32")).replace("torch.", "")).name
    worker = Worker(problem, dtype)

    def run():
        worker.call("run")
        return worker.view  # the same NTK every call: a view that the next call rewrites alike
    run.worker = worker
    run.peer_cpu_s = lambda: worker.cpu_s
    run.noop_s = round_trip_s(worker)
    run.notes = [f"neural-tangents in its own process: a call adds a pipe round trip of "
                 f"{run.noop_s * 1e6:.0f} us"]
    weakref.finalize(run, worker.close)
    return run

