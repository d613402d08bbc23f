"""Quantities: definition, data they need, canonical output layout, dense float64 reference.

Every reference is computed in float64 by the most direct dense route (torch.func on the
float64 model) and is itself checked against central finite differences in tests.

A quantity owns what it knows (issue 15): the data it needs (`inputs`, for the built-in
families and for user models alike), the function view the model takes each input through,
its output shape, its reference, the memory its reference needs and its modes. The rest of
the suite asks the `Quantity`, so adding one touches its definition here, its reference and
its strategies (tests/test_quantity_owns.py holds the rest of the code to that).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.func import hessian, jacfwd, jacrev, vmap

from .names import unknown
from .problem import Problem
from .torch_model import TorchView, torch_view

NTK_MODES = ("full", "trace", "diagonal")


@dataclass(frozen=True)
class Dims:
    """The sizes a quantity's rules read: n inputs and m outputs per sample, P parameters, the
    shape of one sample, the problem's size dict (B, B1, B2, N, ...), its flags, and `act`
    activation elements of one sample's forward pass (known for user models only)."""

    n: int
    m: int
    P: int
    in_shape: tuple[int, ...]
    sizes: dict = field(default_factory=dict)
    flags: frozenset = frozenset()
    act: int = 1


@dataclass(frozen=True)
class Draw:
    """Where a quantity's model inputs come from. Built-in families draw fresh samples from
    the problem's rng (uniform or normal, `bench.problems`); a user model's come from the
    batch it was given (`bench.user`). Directions (v, u) are drawn by the quantity itself,
    standard normal, from the rng passed beside this."""

    point: Callable[[int], np.ndarray]  # the i-th input vector, flat (n,)
    batch: Callable[[str], np.ndarray]  # a batch of sizes[key] inputs, (sizes[key], *in_shape)


def _one(flags) -> str | None:
    return None


def _batch_b(flags) -> str | None:
    return "B"


def _not_shaped(d: Dims):
    return frozenset(), None


def _work_default(d: Dims, data) -> int:
    """A bound for any dense route: per-sample Jacobians w.r.t. inputs and parameters."""
    B = max((v.shape[0] for v in data.values() if np.ndim(v) > 1), default=1)
    return B * d.m * (d.P + d.n + d.act)


@dataclass(frozen=True)
class Quantity:
    """One quantity and everything the suite needs to know about it.

    The tolerance rule needs no field: every quantity's tolerance is its own noise floor, the
    error of its reference route run in float32 against float64 (`noise_floor` below), turned
    into a tolerance by strategies.agreement.tolerance. No per-quantity code.
    """

    name: str
    meaning: str
    data: tuple[str, ...]  # keys a problem's data must hold
    layout: str  # human-readable canonical output shape
    shape: Callable[[Problem], tuple[int, ...]]
    reference: Callable[[TorchView], torch.Tensor]
    # inputs(dims, draw, rng) -> the problem's data: model inputs from `draw`, in the order
    # the keys are listed (the built-in families' random stream depends on it), directions
    # standard normal from rng.
    inputs: Callable[[Dims, Draw, np.random.Generator], dict]
    # Axes of the output indexed by samples (batch layouts), so that checks can tell a result
    # whose samples were mixed up (tests/test_mutation.py swaps two).
    sample_axes: tuple[int, ...] = ()
    # The data keys that are inputs of the model, each with the function view that takes it
    # (TorchView/JaxView: f one flat input, fb a batch, fd jac_diag's); the forward pass a
    # strategy's cost is relative to evaluates these. The other keys are directions (v, u).
    views: dict = field(default_factory=dict)
    # The size key a batch of samples goes under (one user problem per batch size), or None
    # when the data is one input vector; it may depend on the problem's flags.
    batch_key: Callable[[frozenset], str | None] = _one
    # What a model's shape alone says about this quantity (user models, whose shape is not
    # chosen for it): (flags it implies, (status, reason) when it does not apply, or None).
    shaped: Callable[[Dims], tuple] = _not_shaped
    # Elements the dense float64 reference builds (reference_bytes, below).
    reference_work: Callable[[Dims, dict], int] = _work_default
    modes: tuple[str, ...] = ()  # one problem per mode (the NTK's)
    wrt: str = "input"  # what it differentiates with respect to: "input" or "params"


def _n(p): return p.spec.in_dim
def _m(p): return p.spec.out_dim
def _b(p, key="X"): return p.data[key].shape[0]
def _np(p): return p.spec.param_count


def _jac(v: TorchView, x):
    return jacrev(v.f)(x).reshape(_m(v.problem), -1)


def _param_jac(v: TorchView, X) -> torch.Tensor:
    """(B, m, P) per-sample Jacobians, one parameter tensor at a time to bound memory."""
    def one(p, x):
        return v.fp(p, x[None])[0]
    blocks = vmap(jacrev(one), in_dims=(None, 0))(v.params, X)
    return v.flat(blocks, lead=2)


# Bound on the float64 elements of one per-sample Jacobian block the references hold at once
# (~256 MiB), so the issue-7 NTK targets (width 1024, batch 64) stay checkable on 24 GiB.
_BLOCK = 2 ** 25


def _ntk(v: TorchView, X1, X2, mode: str) -> torch.Tensor:
    """Sum over parameter tensors and sample chunks of J1 J2^T, never holding all of J at once."""
    out = None
    with torch.no_grad():  # the output count; tests pass views of bare modules, with no problem
        m = v.fp(v.params, X1[:1]).numel()
    for name in v.params:
        def one(p, x, name=name):
            return v.fp({**v.params, name: p}, x[None])[0]
        jac = vmap(jacrev(one), in_dims=(None, 0))
        c = max(1, _BLOCK // (v.params[name].numel() * m))
        rows = []
        for a in range(0, len(X1), c):
            j1 = jac(v.params[name], X1[a:a + c]).flatten(2)
            rows.append(torch.cat([contract_ntk(j1, jac(v.params[name], X2[b:b + c]).flatten(2),
                                                mode) for b in range(0, len(X2), c)], dim=1))
        term = torch.cat(rows)
        out = term if out is None else out + term
    return out


def contract_ntk(j1: torch.Tensor, j2: torch.Tensor, mode: str) -> torch.Tensor:
    """Contract per-sample Jacobians (B1, m, P) and (B2, m, P) into the NTK of `mode`."""
    eq = {"full": "iap,jbp->ijab", "trace": "iap,jap->ij", "diagonal": "iap,jap->ija"}[mode]
    return torch.einsum(eq, j1, j2)


def _ntk_shape(p: Problem):
    b1, b2, m = _b(p, "X1"), _b(p, "X2"), _m(p)
    return {"full": (b1, b2, m, m), "trace": (b1, b2), "diagonal": (b1, b2, m)}[p.mode]


def _hess(v: TorchView, x):
    return hessian(v.phi)(x)


def _phi_one(v: TorchView):
    return lambda x: 0.5 * (v.fb(x[None])[0] ** 2).sum()


def _jac_diag(v: TorchView, x):
    # The whole dense Jacobian, by forward mode: N tangents, where reverse mode would need N*k
    # cotangents (40000 at seed 002's N = 100, m = 400: 12 GB at once, or minutes in chunks).
    J = jacfwd(v.fd)(x)  # (N, k, N)
    return torch.diagonal(J, dim1=0, dim2=2).T  # (N, k)


def _ggn(v: TorchView, X, vec):
    J = _param_jac(v, X).reshape(-1, v.param_count)
    return J.T @ (J @ vec)


# ------------------------------------------------------------------------------ data
# Each rule draws in the order of its keys: the built-in families' data depend on it.
def _at_x(d, draw, rng):
    return {"x": draw.point(0)}


def _at_x_along(key: str, size: Callable[[Dims], int]):
    """x and a standard normal direction `key` of size(dims) (v for J v and H v, u for u^T J)."""
    return lambda d, draw, rng: {"x": draw.point(0), key: rng.normal(0, 1, size(d))}


def _jac_diag_inputs(d, draw, rng):
    if "separable" in d.flags:  # N independent scalar inputs: a batch of one-element samples
        return {"x": draw.batch("N").reshape(-1)}
    return {"x": draw.point(0)}  # a square map R^N -> R^N


def _jac_diag_shaped(d: Dims):
    if d.in_shape == (1,):  # a batch of scalar inputs: D[i, k] = dy[i, k] / dx[i]
        return frozenset({"separable"}), None
    if d.n == d.m:
        return frozenset(), None
    return frozenset(), ("not_applicable", f"jac_diag needs one scalar input per sample "
                                           f"(--input-shape 1) or a square map; this model maps "
                                           f"{d.n} inputs to {d.m} outputs per sample")


def _flat_batch(d, draw, rng):
    X = draw.batch("B")  # layouts (B, m, n) and (B, n, n): samples flattened
    return {"X": X.reshape(X.shape[0], -1)}


# ------------------------------------------------------------------------------ memory
# Elements of the dense arrays each reference builds, and of the activations its (vmapped)
# reverse passes hold; reference_bytes (below) turns them into bytes.
def _ntk_work(d, data):
    B1, B2 = data["X1"].shape[0], data["X2"].shape[0]
    return B1 * B2 * d.m * d.m + 2 * min(B1 * d.m * d.P, _BLOCK) + B1 * d.m * d.act


def _jac_diag_work(d, data):
    N = data["x"].shape[0]
    return N * N * d.m + 64 * d.act * N


def _input_jac_work(d, data, count=1):
    return count * d.m * (d.n + d.act)


def _param_jac_work(d, data, passes=1):
    return passes * data["X"].shape[0] * d.m * (d.P + d.act)


def _hess_work(d, data):
    return d.n * (d.n + 2 * d.act)


_POINT = {"x": "f"}
_BATCH = {"X": "fb"}


def _N(d): return d.n
def _M(d): return d.m


QUANTITIES: dict[str, Quantity] = {q.name: q for q in [
    Quantity("jacobian", "J of f: R^n -> R^m at one input", ("x",), "(m, n)",
             lambda p: (_m(p), _n(p)), lambda v: _jac(v, v.data["x"]), _at_x,
             views=_POINT, reference_work=_input_jac_work),
    Quantity("batch_jacobian", "per-sample J of a batch map (B, n) -> (B, m)", ("X",), "(B, m, n)",
             lambda p: (_b(p), _m(p), _n(p)),
             lambda v: vmap(jacrev(lambda x: v.fb(x[None])[0]))(v.data["X"]).flatten(2),
             _flat_batch, sample_axes=(0,), views=_BATCH, batch_key=_batch_b,
             reference_work=lambda d, data: _input_jac_work(d, data, data["X"].shape[0])),
    Quantity("param_jacobian", "per-sample J of the outputs w.r.t. all parameters (flattened "
             "in named_parameters order)", ("X",), "(B, m, P)",
             lambda p: (_b(p), _m(p), _np(p)), lambda v: _param_jac(v, v.data["X"]),
             lambda d, draw, rng: {"X": draw.batch("B")},
             sample_axes=(0,), views=_BATCH, batch_key=_batch_b, wrt="params",
             reference_work=_param_jac_work),
    Quantity("jac_diag", "D[i, k] = dy[i, k] / dx[i] for y = f(x), x in R^N (a batch "
             "of scalar inputs; or a square map with k = 1)", ("x",), "(N, k)",
             lambda p: (p.data["x"].shape[0], _m(p) if "separable" in p.flags else 1),
             lambda v: _jac_diag(v, v.data["x"]), _jac_diag_inputs,
             sample_axes=(0,), views={"x": "fd"},
             batch_key=lambda flags: "N" if "separable" in flags else None,
             shaped=_jac_diag_shaped, reference_work=_jac_diag_work),
    Quantity("hessian", "H of phi(x) = 0.5 ||f(x)||^2", ("x",), "(n, n)",
             lambda p: (_n(p), _n(p)), lambda v: _hess(v, v.data["x"]), _at_x,
             views=_POINT, reference_work=_hess_work),
    Quantity("batch_hessian", "per-sample H of phi(x_b) = 0.5 ||f(x_b)||^2", ("X",), "(B, n, n)",
             lambda p: (_b(p), _n(p), _n(p)),
             lambda v: vmap(hessian(_phi_one(v)))(v.data["X"]), _flat_batch,
             sample_axes=(0,), views=_BATCH, batch_key=_batch_b,
             reference_work=lambda d, data: data["X"].shape[0] * _hess_work(d, data)),
    Quantity("hessian_diag", "diag(H) of phi(x) = 0.5 ||f(x)||^2", ("x",), "(n,)",
             lambda p: (_n(p),), lambda v: torch.diagonal(_hess(v, v.data["x"])), _at_x,
             views=_POINT, reference_work=_hess_work),
    Quantity("hvp", "H v for phi(x) = 0.5 ||f(x)||^2", ("x", "v"), "(n,)",
             lambda p: (_n(p),), lambda v: _hess(v, v.data["x"]) @ v.data["v"],
             _at_x_along("v", _N), views=_POINT, reference_work=_hess_work),
    Quantity("jvp", "J v", ("x", "v"), "(m,)",
             lambda p: (_m(p),), lambda v: _jac(v, v.data["x"]) @ v.data["v"],
             _at_x_along("v", _N), views=_POINT, reference_work=_input_jac_work),
    Quantity("vjp", "u^T J", ("x", "u"), "(n,)",
             lambda p: (_n(p),), lambda v: v.data["u"] @ _jac(v, v.data["x"]),
             _at_x_along("u", _M), views=_POINT, reference_work=_input_jac_work),
    Quantity("ggn_vp", "J^T J v over a batch, J the (B*m, P) parameter Jacobian",
             ("X", "v"), "(P,)", lambda p: (_np(p),),
             lambda v: _ggn(v, v.data["X"], v.data["v"]),
             lambda d, draw, rng: {"X": draw.batch("B"), "v": rng.normal(0, 1, d.P)},
             views=_BATCH, batch_key=_batch_b, wrt="params",
             reference_work=lambda d, data: _param_jac_work(d, data, passes=2)),
    Quantity("cross_jacobian", "J(x1) J(x2)^T, J w.r.t. the input", ("x1", "x2"),
             "(m, m)", lambda p: (_m(p), _m(p)),
             lambda v: _jac(v, v.data["x1"]) @ _jac(v, v.data["x2"]).T,
             lambda d, draw, rng: {"x1": draw.point(0), "x2": draw.point(1)},
             views={"x1": "f", "x2": "f"},
             reference_work=lambda d, data: _input_jac_work(d, data, 2)),
    Quantity("ntk", "empirical NTK J(X1) J(X2)^T over parameters; mode full (B1, B2, m, m), "
             "trace (B1, B2) or diagonal (B1, B2, m)", ("X1", "X2"), "see mode",
             _ntk_shape, lambda v: _ntk(v, v.data["X1"], v.data["X2"], v.problem.mode),
             lambda d, draw, rng: {"X1": draw.batch("B1"), "X2": draw.batch("B2")},
             sample_axes=(0, 1), views={"X1": "fb", "X2": "fb"}, batch_key=_batch_b,
             modes=NTK_MODES, wrt="params", reference_work=_ntk_work),
]}


def quantity(name: str) -> Quantity:
    if name not in QUANTITIES:
        raise unknown("quantity", name, QUANTITIES)
    return QUANTITIES[name]


def reference(problem: Problem, dtype=torch.float64) -> np.ndarray:
    """The dense reference of the problem's quantity, as a float64 numpy array; computed in
    float64 unless `dtype` says otherwise (float32: the noise floor's route)."""
    view = torch_view(problem, "cpu", dtype)
    out = quantity(problem.quantity).reference(view).detach().cpu().numpy().astype(np.float64)
    expected = quantity(problem.quantity).shape(problem)
    assert out.shape == tuple(expected), (problem, out.shape, expected)
    return out


def noise_floor(problem: Problem, ref: np.ndarray) -> float:
    """The float32 noise floor of the problem's quantity: the error (strategies.agreement's
    rule) of the same dense reference route run in float32, against `ref`, the float64 one.
    It is what rounding alone does to the quantity on this problem, long reductions included;
    strategies.agreement.tolerance turns it into the tolerance."""
    from .agreement import max_error

    return max_error(reference(problem, torch.float32), ref)


# ------------------------------------------------------------------------------ memory
def reference_bytes(problem) -> int:
    """A generous estimate of the memory the dense float64 reference of a user problem needs:
    the model in float64, the dense arrays the reference builds (strategies.quantities) and
    the activations its vmapped reverse passes hold, twice over for autograd's copies."""
    spec = problem.spec
    dims = Dims(spec.in_dim, spec.out_dim, spec.param_count, spec.in_shape, problem.sizes,
                problem.flags, max(spec.act_per_sample, 1))
    P, work = spec.param_count, quantity(problem.quantity).reference_work(dims, problem.data)
    data = sum(int(np.asarray(v).size) for v in problem.data.values())
    return int(8 * (2 * P + 2 * work + data))


def reference_fits(problem, cap_bytes: int | None) -> tuple[bool, str]:
    """Whether the float64 reference of a user problem fits: its estimate against what the
    machine has available now and the per-case memory cap. Returns (fits, explanation)."""
    import psutil

    need = reference_bytes(problem)
    room = int(psutil.virtual_memory().available * 0.8)
    if cap_bytes:
        room = min(room, int(cap_bytes))
    gib = 1024 ** 3
    why = f"the float64 reference needs ~{need / gib:.3g} GiB, {room / gib:.3g} GiB available"
    return need <= room, why
