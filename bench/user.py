"""Benchmark your own model: problems and cases from a network the suite has never seen.

    python -m jacbench run --model mypkg.models:make_net --input-shape 3,32,32 --batch 8,32,128
    jacbench.compare(model, x, quantities=["ntk", "param_jacobian"])

Both end in `bench.runner.sweep`, the same runner, isolation, harness and store as the suite's
own problems. Before anything is timed, one forward and one backward pass per batch size
(`inspect_model`) check the model as a new user would get it wrong:
- fatal for the whole model (UserModelError, one line; the command line exits with 2): the
  factory cannot be imported or returns something that is not a model; the input shape does
  not fit; the output is not one tensor with the batch first; --outputs does not match;
- per problem (`Problem.blocked`, every case of it becomes a row with the reason, and the
  other problems still run): the output holds NaN or inf; there is no gradient path (argmax,
  integer casts, .detach()) or the derivative is exactly zero (round, sign) from the input or
  from the parameters; the model has no parameters (parameter quantities only).
Samples that interact (the gradient of other samples' outputs reaches sample 0) set the
"coupled" flag, so the tricks that assume independent samples are not applicable.

Inputs: the batch given (compare), or standard normal samples seeded by (seed, batch size)
(command line). Quantities of one input vector (jacobian, hessian, jvp, ...) use the first
sample, flattened, once; per-sample quantities (batch_jacobian, param_jacobian, ggn_vp, ntk)
use the whole batch, once per batch size. The NTK is K(X, X) unless a second batch is given.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from jacbench import strategies
from jacbench.strategies.problem import Problem
from jacbench.strategies.quantities import QUANTITIES, Dims, Draw
from jacbench.strategies.user_model import (UserModel, UserModelError, call_factory, kind_of,
                                   load_factory, weights_digest)

# What `--model` runs when no --quantity is given: the per-sample quantities a researcher asks
# about their network at a batch size (all three NTK modes unless --mode narrows them).
DEFAULT_QUANTITIES = ("ntk", "param_jacobian", "ggn_vp", "batch_jacobian")


# ------------------------------------------------------------------------------ parsing
def parse_ints(text, what: str) -> tuple[int, ...]:
    """"3,32,32" (or "3x32x32", or a sequence) -> (3, 32, 32), every number positive."""
    if isinstance(text, (tuple, list)):
        parts = [str(v) for v in text]
    else:
        parts = [p for p in str(text).replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise UserModelError(f"{what} {text!r} is not a comma-separated list of whole numbers "
                             "(e.g. 3,32,32)") from None
    if not values or any(v <= 0 for v in values):
        raise UserModelError(f"{what} {text!r} must be one or more positive whole numbers")
    return values


def sample_inputs(in_shape, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, batch]).normal(0, 1, (batch, *in_shape))


# ------------------------------------------------------------------------------ inspection
@dataclass(frozen=True)
class Facts:
    """What one forward and one backward pass on a batch say about a model."""

    framework: str
    out_dim: int
    param_count: int
    act_per_sample: int
    digest: str
    output_problem: str | None  # NaN/inf or integer output: nothing can be checked
    input_problem: str | None  # no (or a zero) derivative w.r.t. the input
    param_problem: str | None  # the same w.r.t. the parameters
    coupled: bool
    forward_macs: int = 0  # of one sample (UserModel.forward_macs)
    train_mode: str | None = None  # what running the model's copy in eval mode changes


def _train_mode(model) -> str | None:
    """A line for a model handed over in training mode whose modules act otherwise in eval
    mode (dropout, batch statistics), which the suite runs: the derivatives are eval mode's."""
    from torch import nn

    kinds = {"dropout": nn.modules.dropout._DropoutNd,  # AlphaDropout's base too
             "batch norm": nn.modules.batchnorm._BatchNorm}
    found = {k: sum(isinstance(m, t) and m.training for m in model.modules())
             for k, t in kinds.items()}
    found = {k: n for k, n in found.items() if n}
    if not found:
        return None
    return ("the model is in training mode; its derivatives are computed in eval mode, on a "
            "copy: " + ", ".join(f"{n} {k} module(s)" for k, n in found.items())
            + " act as after model.eval() (dropout off, batch norm on its running statistics)")


def _shape_error(exc, X, in_shape) -> UserModelError:
    first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if isinstance(exc, TypeError) and "required positional argument" in str(exc):
        return UserModelError(
            f"the model takes more inputs than one: {(first[0] if first else '')[:200]}; "
            "give them as a tuple, each with the batch first: jacbench.compare(model, (x, z)) "
            "or jacbench.ntk(model, (x, z)); the command line's --model takes one input")
    return UserModelError(
        f"the model cannot take inputs of shape {tuple(X.shape)} (a batch of {X.shape[0]} "
        f"samples of shape {tuple(in_shape)}): {type(exc).__name__}: "
        f"{(first[0] if first else '')[:200]}; give --input-shape (x in compare) as the shape "
        "of one sample, without the batch dimension, in the layout the model expects")


def _output_checks(y, B: int, outputs: int | None, is_array) -> int:
    if not is_array(y):
        keys = f" (keys {', '.join(map(repr, y))})" if isinstance(y, dict) else \
            f" ({len(y)} outputs)" if isinstance(y, (tuple, list)) else ""
        raise UserModelError(f"the model returns a {type(y).__name__}, not one tensor{keys}: "
                             "pick one with output=KEY or INDEX (jacbench), or wrap it so "
                             "that forward returns a single tensor (e.g. the logits)")
    if len(y.shape) == 0 or y.shape[0] != B:
        raise UserModelError(f"the model's output has shape {tuple(y.shape)} for a batch of "
                             f"{B}: its first dimension must be the batch")
    m = int(np.prod(y.shape[1:]))
    if outputs is not None and m != outputs:
        raise UserModelError(f"the model returns {m} outputs per sample (shape "
                             f"{tuple(y.shape[1:])}), --outputs says {outputs}: fix --outputs "
                             "or leave it out")
    return m


_NO_PATH = ("there is no gradient path from the {what} to the output: forward uses "
            "non-differentiable ops on it (argmax, comparisons, integer casts, .detach(), "
            "torch.no_grad()); {which} are undefined, make the path differentiable")
_ZERO = ("the derivative w.r.t. the {what} is exactly zero at these inputs: a piecewise-"
         "constant op (round, floor, sign, a step) or a detached path, so every strategy would "
         "return zeros; use a differentiable surrogate for {which}")
_NONFINITE = ("the gradient w.r.t. the {what} holds NaN or inf at these inputs (sqrt, log or "
              "a division at 0?); {which} cannot be checked, make forward finite there")


def _grad_problem(grads, what: str, which: str, is_zero, finite) -> str | None:
    present = [g for g in grads if g is not None]
    if not present:
        return _NO_PATH.format(what=what, which=which)
    if not all(finite(g) for g in present):
        return _NONFINITE.format(what=what, which=which)
    if all(is_zero(g) for g in present):
        return _ZERO.format(what=what, which=which)
    return None


_NAN_OUTPUT = ("the model's output holds NaN or inf for {inputs}: check its weights (the "
               "factory's initialisation or checkpoint) and ops that overflow or divide by "
               "zero; nothing can be checked against NaN")
_INT_OUTPUT = ("the model's output has dtype {dtype}: argmax or an integer cast make it "
               "non-differentiable; return the scores (e.g. logits) instead")
INPUT_WHICH = "input derivatives (jacobian, batch_jacobian, hessian, jvp, ...)"
PARAM_WHICH = "parameter derivatives (param_jacobian, ggn_vp, ntk)"


def _inspect_torch(model, X: np.ndarray, dtype: str, outputs, inputs_text) -> Facts:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    digest = weights_digest(model)
    train_mode = _train_mode(model)
    model = copy.deepcopy(model).to(device="cpu", dtype=getattr(torch, dtype)).eval()
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    Xt = torch.as_tensor(X, dtype=getattr(torch, dtype)).requires_grad_(True)
    acts = [0]

    def count(_module, _inputs, out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                acts[0] += t.numel()
    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    flops = FlopCounterMode(display=False)
    try:
        with flops:
            y = model(Xt)
    except UserModelError:  # jacbench.models: output= names no output of the model
        raise
    except Exception as exc:
        raise _shape_error(exc, X, X.shape[1:]) from None
    finally:
        for h in hooks:
            h.remove()
    m = _output_checks(y, X.shape[0], outputs, lambda t: isinstance(t, torch.Tensor))
    P = sum(p.numel() for p in params)
    common = dict(framework="torch", out_dim=m, param_count=P,
                  act_per_sample=max(1, acts[0] // X.shape[0]), digest=digest,
                  forward_macs=flops.get_total_flops() // 2 // X.shape[0],
                  train_mode=train_mode)
    if not y.is_floating_point():
        why = _INT_OUTPUT.format(dtype=str(y.dtype).replace("torch.", ""))
        return Facts(**common, output_problem=why, input_problem=why, param_problem=why,
                     coupled=False)
    output_problem = None if bool(torch.isfinite(y).all()) else \
        _NAN_OUTPUT.format(inputs=inputs_text)
    u = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
    if y.requires_grad:
        gx, *gp = torch.autograd.grad(y, [Xt, *params], u, allow_unused=True,
                                      retain_graph=True)
    else:
        gx, gp = None, [None] * len(params)

    def is_zero(g):
        return not bool(g.any())

    def finite(g):
        return bool(torch.isfinite(g).all())
    input_problem = _grad_problem([gx], "input", INPUT_WHICH, is_zero, finite)
    param_problem = _grad_problem(gp, "parameters", PARAM_WHICH, is_zero, finite) if params \
        else None
    coupled = False
    if gx is not None and X.shape[0] > 1:
        g = torch.autograd.grad(y[1:], Xt, u[1:], allow_unused=True)[0]
        coupled = g is not None and bool(g[0].any())
    return Facts(**common, output_problem=output_problem, input_problem=input_problem,
                 param_problem=param_problem, coupled=coupled)


def _inspect_jax(pair, X: np.ndarray, dtype: str, outputs, inputs_text) -> Facts:
    import jax
    import jax.numpy as jnp

    from jacbench.strategies.jax_model import jax_device, scope

    fn, params = pair
    digest = weights_digest(pair)
    with scope(dtype, jax_device("cpu")):
        def cast(a):
            a = jnp.asarray(a)
            return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
        params = jax.tree_util.tree_map(cast, params)
        Xj = jnp.asarray(X, dtype=dtype)
        try:
            y = fn(params, Xj)
        except UserModelError:
            raise
        except Exception as exc:
            raise _shape_error(exc, X, X.shape[1:]) from None
        m = _output_checks(y, X.shape[0], outputs, lambda t: isinstance(t, jax.Array))
        leaves = jax.tree_util.tree_leaves(params)
        common = dict(framework="jax", out_dim=m, param_count=sum(int(a.size) for a in leaves),
                      act_per_sample=0, digest=digest)
        if not jnp.issubdtype(y.dtype, jnp.floating):
            why = _INT_OUTPUT.format(dtype=str(y.dtype))
            return Facts(**common, output_problem=why, input_problem=why, param_problem=why,
                         coupled=False)
        output_problem = None if bool(jnp.isfinite(y).all()) else \
            _NAN_OUTPUT.format(inputs=inputs_text)
        u = jax.random.normal(jax.random.key(0), y.shape, y.dtype)
        _, pull = jax.vjp(fn, params, Xj)
        gp, gx = pull(u)

        def is_zero(g):
            return not bool(jnp.any(g != 0))

        def finite(g):
            return bool(jnp.isfinite(g).all())
        # JAX has no "no path" answer: a missing path is a zero gradient (said as such).
        input_problem = _grad_problem([gx], "input", INPUT_WHICH, is_zero, finite)
        float_leaves = [g for g in jax.tree_util.tree_leaves(gp)
                        if jnp.issubdtype(g.dtype, jnp.floating)]
        param_problem = _grad_problem(float_leaves, "parameters", PARAM_WHICH, is_zero,
                                      finite) if leaves else None
        coupled = False
        if X.shape[0] > 1:
            g = jax.grad(lambda x: jnp.sum(fn(params, x)[1:] * u[1:]))(Xj)
            coupled = bool(jnp.any(g[0] != 0))
    return Facts(**common, output_problem=output_problem, input_problem=input_problem,
                 param_problem=param_problem, coupled=coupled)


def inspect_model(obj, X: np.ndarray, dtype: str = "float32", outputs: int | None = None,
                  inputs_text: str = "these inputs") -> Facts:
    """Facts about a model (an nn.Module or (fn, params)) from one forward and backward pass
    on the batch X, in `dtype`; UserModelError for what makes the model unusable."""
    framework, obj = kind_of(obj)
    inspect = _inspect_torch if framework == "torch" else _inspect_jax
    return inspect(obj, np.asarray(X), dtype, outputs, inputs_text)


def inspect_factory(ref: str, seed: int, batches: dict[int, np.ndarray], dtype: str,
                    outputs: int | None) -> dict:
    """`inspect_model` of a factory's model on each batch; run in a child process (the
    runner's zygote must not compute). Returns {"facts": {batch: Facts}} or {"fatal": msg}."""
    import torch

    torch.set_num_threads(1)  # a forked child: OpenMP's pool may not survive the fork
    try:
        obj = kind_of(call_factory(ref, seed), f"--model {ref!r}")[1]
        return {"facts": {b: inspect_model(obj, X, dtype, outputs, _inputs_text(X))
                          for b, X in batches.items()}}
    except UserModelError as exc:
        return {"fatal": str(exc)}
    except Exception as exc:  # anything else the model does: one line, not a traceback
        return {"fatal": f"checking the model (one forward and backward pass) raised "
                         f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
                         if str(exc).strip() else type(exc).__name__}


def _inputs_text(X) -> str:
    return f"the batch of {X.shape[0]} inputs of shape {tuple(X.shape[1:])}"


# ------------------------------------------------------------------------------ problems
def _blocked(q: str, f: Facts, spec: UserModel) -> tuple[str, str] | None:
    if f.output_problem:
        return "error", f.output_problem
    if QUANTITIES[q].wrt == "params":
        if spec.param_count == 0:
            return "not_applicable", (f"the model has no parameters: {q} differentiates w.r.t. "
                                      "parameters; give a model with parameters, or ask for "
                                      "input quantities (jacobian, batch_jacobian, ...)")
        return ("error", f.param_problem) if f.param_problem else None
    return ("error", f.input_problem) if f.input_problem else None


def _draw(X: np.ndarray, second, rng) -> Draw:
    """The given batch as the quantity's model inputs: its samples one by one (standard normal
    past its end), and itself as every batch, the NTK's second one (B2) aside when given."""
    def point(i):
        return X[i].reshape(-1) if i < X.shape[0] else rng.normal(0, 1, X[0].size)

    def batch(key):
        return np.asarray(second) if key == "B2" and second is not None else X
    return Draw(point, batch)


def problems_for(spec: UserModel, batches: dict[int, np.ndarray], facts: dict[int, Facts],
                 quantities, modes=None, seed: int = 0, second: np.ndarray | None = None
                 ) -> list[Problem]:
    """The problems of a user model: per-sample quantities once per batch size, one-input
    quantities once (the first sample of the smallest batch)."""
    out = []
    smallest = min(batches)
    n, m, P = spec.in_dim, spec.out_dim, spec.param_count
    for q in quantities:
        Q = QUANTITIES[q]
        shaped, why = Q.shaped(Dims(n, m, P, spec.in_shape))
        key = Q.batch_key(shaped)  # None: the quantity is at one input vector
        for b in sorted(batches) if key else [smallest]:
            X, f = batches[b], facts[b]
            rng = np.random.default_rng([seed, b, len(q)])
            flags = shaped | ({"coupled"} if f.coupled else frozenset())
            blocked = _blocked(q, f, spec) or why
            if key:
                sizes, label = {key: b, "params": P, "scale": b}, f"{key}={b}"
            else:
                sizes, label = {"n": n, "m": m, "params": P, "scale": n}, f"n={n},m={m}"
            data = Q.inputs(Dims(n, m, P, spec.in_shape, sizes, flags), _draw(X, second, rng),
                            rng)
            for mode in ((list(modes) if modes else Q.modes) if Q.modes else [None]):
                out.append(Problem(spec.name, label, q, spec, data, sizes, flags, mode, seed,
                                   blocked))
    return out


def check_names(quantities, strategy_names, frameworks, modes) -> tuple[list, list, list, list]:
    """The filters, validated (UnknownName with close matches for a typo); no quantity given
    means the default quantities for a user model."""
    from .cases import check_filters

    qs, names, fws, ms = check_filters(quantities, strategy_names, frameworks, modes)
    return qs or list(DEFAULT_QUANTITIES), names, fws, ms


def _other_framework(problem: Problem, s, names) -> str | None:
    """Why a strategy of another framework than the model's is left out (a PyTorch model
    has no JAX rows: one line says why, not a row per case); None to keep it. A strategy
    named with --strategy is kept, and its row says why it does not apply."""
    from jacbench.strategies.applicability import model_framework

    return None if names and s.name in names else model_framework(problem, s.framework)


def _wanted(s, names, fws) -> bool:
    # compiled twins only when named: each compiles for seconds to minutes
    return (s.name in names if names else "compiled" not in s.tags) \
        and (not fws or s.framework in fws)


def left_out(problems: list[Problem], names=None, fws=None) -> list[str]:
    """One line per framework whose strategies `cases_for` left out, with the reason."""
    counts: dict[tuple[str, str], int] = {}
    for p in problems:
        for s in strategies.strategies(quantity=p.quantity):
            why = _wanted(s, names, fws) and _other_framework(p, s, names)
            if why:
                counts[(s.framework, why)] = counts.get((s.framework, why), 0) + 1
    return [f"{fw} strategies not run ({n} cases): {why}" for (fw, why), n in counts.items()]


def cases_for(problems: list[Problem], names, fws, device: str, dtype: str) -> list:
    from .cases import BadInput, Case

    order = {q: i for i, q in enumerate(QUANTITIES)}
    cases = [Case(p.quantity, p, s, device, dtype)
             for p in sorted(problems, key=lambda p: (order[p.quantity], p.mode or "",
                                                      p.size_param))
             for s in strategies.strategies(quantity=p.quantity)
             if _wanted(s, names, fws) and not _other_framework(p, s, names)]
    if not cases:
        why = "; ".join(left_out(problems, names, fws))
        raise BadInput("no registered strategy matches: quantity "
                       f"{','.join(sorted({p.quantity for p in problems}))}, strategy "
                       f"{','.join(names) or 'any'}, framework {','.join(fws) or 'any'}"
                       f"{f' ({why})' if why else ''}; see `python -m jacbench list`")
    return cases


def factory_cases(ref: str, in_shape, batches, outputs=None, quantities=None,
                  strategy_names=None, frameworks=None, modes=None, device="cpu",
                  dtype="float32", seed: int = 0, limits=None, notes: list | None = None
                  ) -> list:
    """The cases of `--model ref`: the module is imported here (so forked cases find it), the
    model is built and checked in a child process, one problem per quantity and batch. Lines
    the user should read before the results (the model's training mode) go to `notes`."""
    from .isolation import Limits, run_isolated
    from .cases import BadInput, check_device

    check_device(device)
    qs, names, fws, ms = check_names(quantities, strategy_names, frameworks, modes)
    in_shape = parse_ints(in_shape, "--input-shape")
    batch_sizes = sorted(set(parse_ints(batches or "8", "--batch")))
    load_factory(ref)  # import errors now, in one line; the module stays in sys.modules
    inputs = {b: sample_inputs(in_shape, b, seed) for b in batch_sizes}
    limits = limits or Limits()
    outcome = run_isolated(lambda send: inspect_factory(ref, seed, inputs, dtype, outputs),
                           Limits(timeout_s=max(limits.timeout_s, 60),
                                  mem_cap_bytes=limits.mem_cap_bytes))
    if outcome.status != "done":
        hint = "; try smaller --batch values or a larger --timeout/--mem-cap" \
            if outcome.status in ("timeout", "oom") else ""
        raise BadInput(f"--model {ref!r}: building and checking the model (one forward and "
                       f"backward pass per batch size) ended with {outcome.status}: "
                       f"{outcome.message}{hint}")
    if "fatal" in outcome.result:
        msg = outcome.result["fatal"]
        raise UserModelError(msg if msg.startswith("--model") else f"--model {ref!r}: {msg}")
    facts = outcome.result["facts"]
    f = facts[batch_sizes[0]]
    spec = UserModel(ref, f.framework, in_shape, f.out_dim, f.param_count, factory=ref,
                     seed=seed, digest=f.digest,
                     act_per_sample=max(x.act_per_sample for x in facts.values()),
                     forward_macs=max(x.forward_macs for x in facts.values()))
    cases = cases_for(problems_for(spec, inputs, facts, qs, ms, seed), names, fws, device, dtype)
    if notes is not None:
        notes += sorted({f"--model {ref!r}: {x.train_mode}" for x in facts.values()
                         if x.train_mode})
    return cases


def blocked_reasons(cases) -> list[str]:
    """Distinct reasons of blocked problems, for the command line's closing lines."""
    seen = []
    for c in cases:
        if c.problem.blocked:
            text = f"{c.problem.quantity} {c.problem.size}: {c.problem.blocked[1]}"
            if text not in seen:
                seen.append(text)
    return seen
