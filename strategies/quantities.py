"""Quantities: definition, data they need, canonical output layout, dense float64 reference.

Every reference is computed in float64 by the most direct dense route (torch.func on the
float64 model) and is itself checked against central finite differences in tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.func import hessian, jacfwd, jacrev, vmap

from .problem import Problem
from .torch_model import TorchView, torch_view

NTK_MODES = ("full", "trace", "diagonal")


@dataclass(frozen=True)
class Quantity:
    name: str
    meaning: str
    data: tuple[str, ...]  # keys a problem's data must hold
    layout: str  # human-readable canonical output shape
    shape: Callable[[Problem], tuple[int, ...]]
    reference: Callable[[TorchView], torch.Tensor]
    # Axes of the output indexed by samples (batch layouts), so that checks can tell a result
    # whose samples were mixed up (tests/test_mutation.py swaps two).
    sample_axes: tuple[int, ...] = ()


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


QUANTITIES: dict[str, Quantity] = {q.name: q for q in [
    Quantity("jacobian", "J of f: R^n -> R^m at one input", ("x",), "(m, n)",
             lambda p: (_m(p), _n(p)), lambda v: _jac(v, v.data["x"])),
    Quantity("batch_jacobian", "per-sample J of a batch map (B, n) -> (B, m)", ("X",), "(B, m, n)",
             lambda p: (_b(p), _m(p), _n(p)),
             lambda v: vmap(jacrev(lambda x: v.fb(x[None])[0]))(v.data["X"]).flatten(2),
             sample_axes=(0,)),
    Quantity("param_jacobian", "per-sample J of the outputs w.r.t. all parameters (flattened "
             "in named_parameters order)", ("X",), "(B, m, P)",
             lambda p: (_b(p), _m(p), _np(p)), lambda v: _param_jac(v, v.data["X"]),
             sample_axes=(0,)),
    Quantity("jac_diag", "D[i, k] = dy[i, k] / dx[i] for y = f(x), x in R^N (seed 002: a batch "
             "of scalar inputs; or a square map with k = 1)", ("x",), "(N, k)",
             lambda p: (p.data["x"].shape[0], _m(p) if "separable" in p.flags else 1),
             lambda v: _jac_diag(v, v.data["x"]),
             sample_axes=(0,)),
    Quantity("hessian", "H of phi(x) = 0.5 ||f(x)||^2", ("x",), "(n, n)",
             lambda p: (_n(p), _n(p)), lambda v: _hess(v, v.data["x"])),
    Quantity("batch_hessian", "per-sample H of phi(x_b) = 0.5 ||f(x_b)||^2", ("X",), "(B, n, n)",
             lambda p: (_b(p), _n(p), _n(p)),
             lambda v: vmap(hessian(_phi_one(v)))(v.data["X"]),
             sample_axes=(0,)),
    Quantity("hessian_diag", "diag(H) of phi(x) = 0.5 ||f(x)||^2", ("x",), "(n,)",
             lambda p: (_n(p),), lambda v: torch.diagonal(_hess(v, v.data["x"]))),
    Quantity("hvp", "H v for phi(x) = 0.5 ||f(x)||^2", ("x", "v"), "(n,)",
             lambda p: (_n(p),), lambda v: _hess(v, v.data["x"]) @ v.data["v"]),
    Quantity("jvp", "J v", ("x", "v"), "(m,)",
             lambda p: (_m(p),), lambda v: _jac(v, v.data["x"]) @ v.data["v"]),
    Quantity("vjp", "u^T J", ("x", "u"), "(n,)",
             lambda p: (_n(p),), lambda v: v.data["u"] @ _jac(v, v.data["x"])),
    Quantity("ggn_vp", "J^T J v over a batch, J the (B*m, P) parameter Jacobian (seed 000)",
             ("X", "v"), "(P,)", lambda p: (_np(p),),
             lambda v: _ggn(v, v.data["X"], v.data["v"])),
    Quantity("cross_jacobian", "J(x1) J(x2)^T, J w.r.t. the input (seed 001)", ("x1", "x2"),
             "(m, m)", lambda p: (_m(p), _m(p)),
             lambda v: _jac(v, v.data["x1"]) @ _jac(v, v.data["x2"]).T),
    Quantity("ntk", "empirical NTK J(X1) J(X2)^T over parameters; mode full (B1, B2, m, m), "
             "trace (B1, B2) or diagonal (B1, B2, m)", ("X1", "X2"), "see mode",
             _ntk_shape, lambda v: _ntk(v, v.data["X1"], v.data["X2"], v.problem.mode),
             sample_axes=(0, 1)),
]}


def quantity(name: str) -> Quantity:
    from .registry import unknown

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
