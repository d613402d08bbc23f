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
import importlib.metadata
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from multiprocessing import connection as mp_connection
from pathlib import Path

import numpy as np

from jacbench import strategies
from jacbench.strategies.problem import Problem
from jacbench.strategies.quantities import NTK_MODES
from jacbench.strategies.registry import FRAMEWORKS, Strategy, unknown
from jacbench.strategies.user_model import is_user, prebuild, reference_fits

from . import harness, jax_cache, side_by_side, store
from .harness import Timing
from .paired import Rounds
from .isolation import GB, Child, InProcess, Limits, exclusive
from .problems import FAMILIES, problems

DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float64")
FAILED = ("timeout", "oom")  # statuses after which larger sizes are skipped


class BadInput(ValueError):
    """A request the suite cannot run; the message says what is allowed (one line)."""


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
    if s.name.endswith("_jit") and "loop" not in s.name:
        return True
    return rank == 0


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
]}


REFERENCE_TIMEOUT_S = 300.0


def default_threads() -> int:
    """One thread unless asked for more (--threads). With two OpenMP threads on a 2-core
    machine that something else also uses, every parallel region waits for a descheduled
    thread: a forward pass of seed 000's MLP at B=256 measured 65 ms with 2 threads and 0.2 ms
    with 1, under the same load. One thread keeps timings repeatable and strategy comparisons
    fair; the thread count is recorded in every row."""
    return 1


# ------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    quantity: str
    problem: Problem
    strategy: Strategy
    device: str
    dtype: str

    @property
    def case_id(self) -> str:
        return store.case_id(self.quantity, self.problem.id, self.strategy.name, self.device,
                             self.dtype)

    @property
    def ladder(self) -> tuple:
        """Cases that differ only in size: a timeout at one size predicts the larger ones."""
        p = self.problem
        return (self.quantity, p.family, p.mode, self.strategy.name, self.device, self.dtype)


def _names(values) -> list[str]:
    """Repeated options and comma-separated lists alike."""
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values or ():
        out.extend(x.strip() for x in str(v).split(",") if x.strip())
    return out


def cuda_available() -> bool:
    # NVML answers without initialising CUDA in this process; children forked from a
    # process with CUDA initialised cannot use it.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.is_available()


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise unknown("device", device, DEVICES)
    if device == "cuda" and not cuda_available():
        raise BadInput("device 'cuda' is not available here (torch.cuda.is_available() is "
                       "False); allowed: cpu")


def _size_matches(p: Problem, size: str) -> bool:
    return size == p.size or size == str(p.size_param)


def check_filters(quantities, strategy_names, frameworks, modes) -> tuple[list, list, list, list]:
    """The name filters as lists, validated (UnknownName with close matches for a typo)."""
    quantities = _names(quantities)
    for q in quantities:
        strategies.quantity(q)
    names = _names(strategy_names)
    for n in names:
        strategies.strategies(name=n)
    fws = _names(frameworks)
    for f in fws:
        if f not in FRAMEWORKS:
            raise unknown("framework", f, FRAMEWORKS)
    modes = _names(modes)
    for m in modes:
        if m not in NTK_MODES:
            raise unknown("ntk mode", m, NTK_MODES)
    return quantities, names, fws, modes


def select_cases(profile: Profile | str = "quick", quantities=None, strategy_names=None,
                 families=None, sizes=None, frameworks=None, device: str = "cpu",
                 dtype: str | None = None, modes=None) -> list[Case]:
    """The cases of a profile, narrowed by the filters (names, or comma-separated lists).

    Raises UnknownName (with close matches) or BadInput for anything that selects nothing.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise unknown("profile", profile, PROFILES)
        profile = PROFILES[profile]
    dtype = dtype or profile.dtype
    if dtype not in DTYPES:
        raise unknown("dtype", dtype, DTYPES)
    check_device(device)
    quantities, names, fws, modes = check_filters(quantities, strategy_names, frameworks, modes)
    fams = _names(families)
    for f in fams:
        if f not in FAMILIES:
            raise unknown("problem family", f, FAMILIES)
    sizes = _names(sizes)

    family_order = {name: i for i, name in enumerate(FAMILIES)}
    probs = [p for p in problems(ladder=profile.ladder)
             if (not quantities or p.quantity in quantities) and (not fams or p.family in fams)
             and (not modes or p.mode is None or p.mode in modes)]
    if not probs:
        having = sorted({p.family for q in (quantities or [None])
                         for p in problems(q, profile.ladder)})
        raise BadInput(f"no {profile.ladder}-ladder problem of family {','.join(fams)} has "
                       f"quantity {','.join(quantities)}; families that do: {', '.join(having)}")
    for s in sizes:
        if not any(_size_matches(p, s) for p in probs):
            allowed = [str(x) for x in sorted({p.size_param for p in probs})] + \
                sorted({p.size for p in probs})
            raise unknown(f"size on the {profile.ladder} ladder for these problems", s, allowed)
    if sizes:
        probs = [p for p in probs if any(_size_matches(p, s) for s in sizes)]
    quantity_order = {q: i for i, q in enumerate(strategies.QUANTITIES)}
    probs.sort(key=lambda p: (quantity_order[p.quantity], family_order[p.family], p.mode or "",
                              p.size_param))
    ladders: dict = {}  # (quantity, family, mode) -> its sizes, smallest first
    for p in probs:
        ladders.setdefault((p.quantity, p.family, p.mode), []).append(p.size_param)
    ladders = {k: sorted(set(v)) for k, v in ladders.items()}
    cases = []
    for p in probs:
        ladder = ladders[p.quantity, p.family, p.mode]
        for s in strategies.strategies(quantity=p.quantity):
            if (not names or s.name in names) and (not fws or s.framework in fws):
                case = Case(p.quantity, p, s, device, dtype)
                if names or profile.trim is None or profile.trim(
                        case, ladder.index(p.size_param), len(ladder)):
                    cases.append(case)
    if not cases:
        raise BadInput("no registered strategy matches: quantity "
                       f"{','.join(quantities) or 'any'}, strategy {','.join(names) or 'any'}, "
                       f"framework {','.join(fws) or 'any'}; see `python -m jacbench list`")
    return cases


# ------------------------------------------------------------------------------ environment
def _git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root,
                               capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{sha}+dirty" if sha and dirty else sha


def _cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cpus)"


def _gpu_name() -> str:
    # The driver's files, not torch.cuda: the zygote must not initialise CUDA.
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        for line in info.read_text().splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    return ", ".join(names)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(threads: int) -> dict:
    import torch

    return {"torch_version": torch.__version__, "jax_version": _version("jax"),
            "numpy_version": np.__version__, "python_version": platform.python_version(),
            "cpu": _cpu_name(), "gpu": _gpu_name(), "threads": threads,
            "commit": _git_commit(), "hostname": socket.gethostname()}


def prepare_zygote() -> None:
    """Import everything a case needs once, here, so children start warm; compute nothing."""
    # Modules torch imports lazily on first use: ~1 s (torch._dynamo, on torch.func's first
    # call) and ~0.3 s (jvp's decompositions) per child if left to each one.
    import torch._decomp.decompositions_for_jvp  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch.func  # noqa: F401
    import torch.utils.benchmark  # noqa: F401

    try:
        import jax  # noqa: F401
        import jax.numpy  # noqa: F401
        from jax._src import xla_bridge
    except ImportError:
        return
    if getattr(xla_bridge, "_backends", None):
        import warnings

        warnings.warn("a JAX backend was started before forking cases; JAX is not fork-safe "
                      "after that, so JAX cases may hang (is there JAX work at import time?)",
                      stacklevel=2)


# ------------------------------------------------------------------------------ references
def problem_digest(problem: Problem) -> str:
    """Changes whenever the weights, data or definition of the problem change."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((problem.quantity, problem.family, problem.size, problem.mode, problem.seed,
                   sorted(problem.flags), problem.spec.in_shape, problem.spec.out_dim)).encode())
    if is_user(problem):  # the user's weights, hashed once when the model was checked
        h.update(repr((problem.spec.name, problem.spec.framework, problem.spec.digest)).encode())
    for layer in getattr(problem.spec, "layers", ()):
        h.update(repr((layer.kind, sorted(layer.options.items()))).encode())
        for group in (layer.params, layer.buffers):
            for k in sorted(group):
                a = np.ascontiguousarray(group[k])
                h.update(f"{k}{a.shape}{a.dtype}".encode())
                h.update(a.tobytes())
    for k in sorted(problem.data):
        a = np.ascontiguousarray(problem.data[k])
        h.update(f"{k}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def reference_path(refs_dir: Path, problem: Problem) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.=," else "_" for c in problem.id)
    return refs_dir / f"{problem.quantity}-{safe}-{problem_digest(problem)}.npy"


def save_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class ProblemInfo:
    ref_path: Path
    forward_s: float | None = None
    error: str | None = None
    # "float64": checked against the dense float64 reference; "consensus": a user problem
    # whose reference would not fit (or a JAX function, which has no float64 torch copy):
    # its cases save their results, and the median of the exact ones becomes the reference.
    reference: str = "float64"
    why: str = ""
    noise: float | None = None  # the float32 noise floor (strategies.quantities.noise_floor)

    def tolerance(self, dtype: str) -> float:
        return strategies.tolerance(dtype, self.noise)

    @property
    def noise_path(self) -> Path:
        return self.ref_path.with_name(self.ref_path.stem + ".noise32.json")


def reference_kind(problem: Problem, cap_bytes: int) -> tuple[str, str]:
    """("float64" | "consensus", why) for a problem, decided before anything runs."""
    if not is_user(problem):
        return "float64", ""
    if problem.spec.framework == "jax":
        return "consensus", "a JAX function has no float64 PyTorch copy to compute it on"
    fits, why = reference_fits(problem, cap_bytes)
    return ("float64", "") if fits else ("consensus", why)


# ------------------------------------------------------------------------------ progress
def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _fmt_time(s) -> str:
    if s is None:
        return ""
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


class Progress:
    """A tqdm bar with the current case and an ETA on a terminal; one line per case otherwise
    (CI logs), each with count/total, elapsed time and ETA."""

    def __init__(self, total: int, stream=None, tty: bool | None = None):
        self.total, self.count, self.start = total, 0, time.monotonic()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.bar = None
        if self.tty and total:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread in the process that forks
            self.bar = tqdm(total=total, file=self.stream, unit="case", dynamic_ncols=True,
                            smoothing=0.05, mininterval=0.25)

    def begin(self, case: Case) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{case.quantity}/{case.problem.id}/{case.strategy.name}",
                                     refresh=True)

    def end(self, case: Case, row: dict) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.count * (self.total - self.count)
        detail = _fmt_time(row.get("median_s")) if row["status"] in ("ok", "disagrees") else \
            (row.get("message") or "")[:100]
        print(f"[{self.count}/{self.total} {_clock(elapsed)} eta {_clock(eta)}] {case.quantity} "
              f"{case.problem.id} {case.strategy.name}: {row['status']} {detail}".rstrip(),
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------ the sweep
@dataclass
class Summary:
    run_id: str
    results: Path
    log: Path
    statuses: Counter = field(default_factory=Counter)
    already_done: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    paired: int = 0  # problems whose ok strategies were timed side by side
    unpaired: int = 0  # problems (with an ok case) that kept their isolated timings

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        done = f" ({self.already_done} already done, skipped by --resume)" if self.already_done \
            else ""
        head = "interrupted after" if self.interrupted else "ran"
        pairs = f"\ntimed side by side: {self.paired} problems; alone: {self.unpaired}" \
            if self.paired or self.unpaired else ""
        return (f"{head} {sum(self.statuses.values())} cases in {self.elapsed_s:.0f} s{done}: "
                f"{counts or 'nothing to do'}{pairs}\nresults: {self.results}\n"
                f"child output: {self.log}")


def _row_base(case: Case, env: dict, run_id: str) -> dict:
    p, s = case.problem, case.strategy
    return {"run_id": run_id, "case_id": case.case_id, "quantity": case.quantity,
            "problem": p.id, "family": p.family, "size": p.size, "mode": p.mode,
            "scale": p.size_param, "sizes": dict(p.sizes), "params": p.spec.param_count,
            "strategy": s.name, "framework": s.framework, "exact": s.exact,
            "device": case.device, "dtype": case.dtype, **env}


def _failed_from_rows(rows) -> dict:
    failed = {}
    for r in rows:
        if r.get("status") in FAILED:
            key = (r["quantity"], r["family"], r["mode"], r["strategy"], r["device"], r["dtype"])
            if key not in failed or r["scale"] < failed[key][0]:
                failed[key] = (r["scale"], r["size"], r["status"])
    return failed


def problem_key(case: Case) -> tuple:
    return (case.problem.quantity, case.problem.id, case.device, case.dtype)


def default_jobs(threads: int) -> int:
    """Cases run side by side, one per group of `threads` CPUs, at most two: their compile and
    first-call phases overlap while the timing itself stays exclusive (bench.isolation)."""
    return max(1, min(2, len(os.sched_getaffinity(0)) // threads))


@dataclass
class _Job:
    child: Child | InProcess
    case: Case | None = None  # None for a problem's reference/forward-pass child
    key: tuple | None = None
    info: ProblemInfo | None = None
    case_of: Case | None = None  # the case that started a reference child
    pairing: list | None = None  # (case, row) pairs of a problem's paired-timing child
    alone: list | None = None  # its ok (case, row) pairs too slow to be paired


def judge_by_consensus(held: list, info: ProblemInfo, outputs: dict) -> list:
    """Rows of one consensus problem, judged against the median of its exact strategies'
    saved results (strategies.agreement.consensus) by the one error rule; the saved results
    are removed afterwards."""
    exact = [c for c, _ in held if c.strategy.exact]
    out = []
    try:
        arrays = [np.load(outputs[c.case_id], mmap_mode="r") for c in exact]
        ref = strategies.agreement.consensus(arrays) if arrays else None
        del arrays
        for case, row in held:
            row = dict(row, reference="consensus")
            if ref is None:
                row["message"] = ("unchecked: no exact strategy finished, so there is no "
                                  f"consensus to check against ({info.why})")
            else:
                err = strategies.max_error(np.load(outputs[case.case_id]), ref)
                status, note = harness.judge(case.strategy.exact, err, row["tolerance"],
                                             row.get("message") or "")
                whose = f"{len(exact)} exact strateg{'y' if len(exact) == 1 else 'ies'}"
                lead = f"reference: median of {whose} ({info.why})"
                if len(exact) == 1:
                    lead += "; a single exact strategy: its own result is unchecked"
                row.update(max_error=err, status=status,
                           message="; ".join(t for t in (note, lead) if t))
            out.append((case, row))
    finally:
        for case, _ in held:
            drop_output(outputs, case)
    return out


def drop_output(outputs: dict, case: Case) -> None:
    path = outputs.pop(case.case_id, None)
    if path is not None:
        path.unlink(missing_ok=True)


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
        # A reference is not a timed case: the float64 dense route may take minutes where a
        # good strategy takes milliseconds, and without it no case of the problem can be judged.
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
                                   exclusive=lambda: exclusive(lock, send), save_to=save_to,
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
            if cached.is_dir():  # what the JAX cases compiled alone, not compiled again
                jax_cache.use(jax_cache.merge([d for d in cached.iterdir() if d.name != "_all"],
                                              cached / "_all"))
            prebuild(problem)
            return side_by_side.time_problem(
                [c.strategy for c, _ in chosen], problem, key[2], key[3], budget,
                exclusive=lambda: exclusive(lock, send), estimates=estimates)

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
                record(case, {**_row_base(case, env, run_id), **row})
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
                row = _row_base(case, env, run_id)
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
