"""jacbench as a library: compute a quantity on your own model, or benchmark every way to.

    import jacbench
    K = jacbench.ntk(model, x, mode="trace")            # tensors in, tensors out
    f = jacbench.prepare("ntk", model, x, mode="trace")  # the prepared callable: K = f()
    df = jacbench.compare(model, x, quantities=["ntk", "param_jacobian"], report="out.html")
    jacbench.best(df, "ntk")(model, x)                   # the winner, called on the model

The functions (jacobian, batch_jacobian, param_jacobian, jac_diag, hessian, batch_hessian,
hessian_diag, hvp, jvp, vjp, ggn_vp, cross_jacobian, ntk) are in jacbench.functions,
`prepare` in jacbench.compute, `best` in jacbench.pick, models of several inputs or outputs
in jacbench.models.

`compare` runs every applicable registered strategy on your model through the suite's own
runner, harness and results store (bench.runner.sweep), checks each result against the
float64 reference (or, when that would not fit in memory, against the consensus of the exact
strategies) and returns the rows as a pandas DataFrame, one per case.
"""
from __future__ import annotations

from pathlib import Path as _Path

# The suite's packages are the source tree's fixed top-level folders strategies/, bench/ and
# reports/. Installed, they are jacbench.strategies, jacbench.bench and jacbench.reports
# (pyproject.toml's package-dir), so jacbench is the only top-level name; run from a source
# tree (make, tests), the tree's root is searched for them under the same names.
_ROOT = _Path(__file__).resolve().parent.parent
if (_ROOT / "strategies" / "registry.py").is_file() and \
        not (_Path(__file__).parent / "strategies").is_dir():
    __path__.append(str(_ROOT))  # noqa: F821 - a package's __path__

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from jacbench.strategies.user_model import UserModelError  # noqa: E402  (re-exported)

from .pick import Pick, best
from .compute import Prepared, prepare
from .functions import (batch_hessian, batch_jacobian, cross_jacobian, ggn_vp, hessian,
                        hessian_diag, hvp, jac_diag, jacobian, jvp, ntk, param_jacobian, vjp)

__all__ = ["Pick", "Prepared", "UserModelError", "batch_hessian", "batch_jacobian", "best",
           "compare", "cross_jacobian", "ggn_vp", "hessian", "hessian_diag", "hvp",
           "jac_diag", "jacobian", "jvp", "ntk", "param_jacobian", "prepare", "vjp"]


def _may_fork(framework: str) -> bool:
    """Cases run in forked children unless this process cannot fork safely: CUDA already
    initialised here (a forked child can neither run CUDA cases nor copy a model that lives on
    the GPU), or a JAX function (its backend is already running, and XLA is not fork-safe)."""
    import torch

    return framework != "jax" and not torch.cuda.is_initialized()


def compare(model, x, quantities=("ntk", "param_jacobian"), strategies=None, *,
            frameworks=None, modes=None, device: str = "cpu", dtype: str = "float32",
            report=None, results=None, x2=None, name: str | None = None,
            profile: str = "quick", timeout_s: float | None = None,
            mem_cap_gb: float | None = None, threads: int = 1, isolate: bool | None = None,
            verbose: bool = False, output=None):
    """Benchmark and check every applicable strategy on `model` at the batch `x`.

    model: a torch.nn.Module (run as given: its weights and buffers, in eval mode, on a copy;
        a model handed over in training mode with dropout or batch norm gets a UserWarning),
        or a pair (fn, params) with fn(params, X) -> Y a pure JAX function.
    x: the batch, shape (B, *one sample's shape): a tensor or array; for a model of several
        inputs, forward(x, z), a tuple of batches (x, z), differentiated as one flat vector per
        sample (jacbench.models). Quantities of one input vector (jacobian, hessian, jvp, ...)
        use x[0] flattened; the NTK is K(x, x2 or x).
    x2: the NTK's second batch; its samples must have the shape of x's.
    output: for a model that returns a dict or a tuple, the key or index of the output.
    quantities, strategies, frameworks, modes: names (lists or comma-separated), as the
        command line's --quantity, --strategy, --framework, --mode; None means every one.
    device, dtype: "cpu" or "cuda"; "float32" or "float64".
    report: a path; when given, the HTML report of these results is written there.
    results: the JSON Lines file the rows are appended to (default: a temporary folder,
        removed before returning).
    profile, timeout_s, mem_cap_gb, threads: timing profile and per-case limits, as for
        `python -m jacbench run`.
    isolate: run each case in a forked child (time limit, memory cap, crash containment), or
        here. Default: forked, unless this process has CUDA initialised or the model is a JAX
        function. Forked children may use only one thread (this process has already used
        torch's OpenMP pool, which does not survive a fork).

    Returns the rows of this run (bench.store's columns: quantity, problem, strategy, status,
    median_s, peak_mem_bytes, max_error, reference, message, ...). Strategies of the other
    framework (JAX for a PyTorch model, PyTorch for a JAX function) are not run unless named;
    `df.attrs["left_out"]` says so in one line each. Raises UserModelError (a
    ValueError) with one line that says what is wrong when the model or x cannot be used.
    """
    from jacbench.bench import store
    from jacbench.bench.cases import BadInput, check_device
    from jacbench.bench.progress import Progress
    from jacbench.bench.runner import sweep
    from jacbench.bench.user import cases_for, check_names, inspect_model, left_out, problems_for
    from jacbench.strategies.user_model import UserModel, kind_of

    check_device(device)
    if dtype not in ("float32", "float64"):
        raise BadInput(f"dtype {dtype!r}: use 'float32' or 'float64'")
    from . import models

    model, X, shapes = models.inputs(model, x, output)
    if any(len(s) == 0 for s in shapes):
        raise UserModelError(f"x has shape {X.shape}: give a batch, shape "
                             "(B, *sample shape); for one sample use x[None]")
    second = None if x2 is None else models.check_second(x2, shapes)
    framework, obj = kind_of(model, "jacbench.compare(model=...)")
    qs, names, fws, ms = check_names(quantities, strategies, frameworks, modes)
    if isolate is None:
        isolate = _may_fork(framework)
    if isolate and threads != 1:
        raise BadInput("threads > 1 needs isolate=False: forked cases cannot use more than "
                       "one thread after this process has run torch; or use the command line "
                       "(python -m jacbench run --model ... --threads N)")
    B = X.shape[0]
    facts = inspect_model(obj, X, dtype, None, f"the batch x of shape {X.shape}")
    if facts.train_mode:
        warnings.warn(facts.train_mode, UserWarning, stacklevel=2)
    spec = UserModel(name or models.name(obj),
                     framework, tuple(X.shape[1:]), facts.out_dim, facts.param_count, obj=obj,
                     digest=facts.digest, act_per_sample=facts.act_per_sample,
                     forward_macs=facts.forward_macs)
    probs = problems_for(spec, {B: X}, {B: facts}, qs, ms, second=second)
    cases = cases_for(probs, names, fws, device, dtype)

    if results:
        store.check(results, must_exist=False)  # never append rows to a file not ours
    scratch = None if results else Path(tempfile.mkdtemp(prefix="jacbench-"))
    results = Path(results) if results else scratch / "results.jsonl"
    quiet = open(os.devnull, "w") if not verbose else sys.stderr
    try:
        summary = sweep(cases, results, profile=profile, timeout_s=timeout_s,
                        mem_cap_gb=mem_cap_gb, threads=threads, isolate=isolate,
                        progress=Progress(len(cases), stream=quiet, tty=False))
        df = store.load(results)
    finally:
        if quiet is not sys.stderr:
            quiet.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    df = df[df["run_id"] == summary.run_id].reset_index(drop=True)
    # Strategies of the other framework are not rows: one line each says why.
    df.attrs["left_out"] = left_out(probs, names, fws)
    if report:
        from jacbench.reports.build import build_report

        build_report(df, report)
    return df
