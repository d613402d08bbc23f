"""PyTorch strategies for the empirical NTK J(X1) J(X2)^T over the parameters (seed 003).

Modes (problem.mode): full (B1, B2, m, m), trace (B1, B2), diagonal (B1, B2, m); Jacobian
routes contract with `quantities.contract_ntk`. Sizes in the cost notes: B = B1 + B2 samples,
m outputs, P parameters.
"""
from __future__ import annotations

import torch
from torch.autograd.functional import jacobian as af_jacobian
from torch.func import jacrev, jvp, vjp, vmap

from .quantities import contract_ntk
from .registry import register
from .torch_jacobians import _eye
from .torch_model import torch_view


def _one(v):
    return lambda p, x: v.fp(p, x[None])[0]


def _loop_jacobian(v, X) -> torch.Tensor:
    """(B, m, P): one forward per sample, one autograd.grad per output (seed 003's loop)."""
    params = {k: p.clone().requires_grad_(True) for k, p in v.params.items()}
    leaves = list(params.values())
    rows = []
    for x in X:
        out = v.fp(params, x[None])[0]
        rows.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            out[j], leaves, retain_graph=True)]) for j in range(out.shape[0])]))
    return torch.stack(rows)


@register("ntk", "torch.autograd_loop", tags={"baseline", "dense"})
def _ntk_loop(problem, device, dtype):
    """The usual loop: autograd.grad per sample and output for both batches, then one
    contraction. Cost: B*m reverse passes of one sample, unvectorized; B*m*P memory."""
    v = torch_view(problem, device, dtype)

    def run():
        return contract_ntk(_loop_jacobian(v, v.data["X1"]), _loop_jacobian(v, v.data["X2"]),
                            problem.mode)
    return run


@register("ntk", "torch.functional_vectorize", tags={"dense"})
def _ntk_functional(problem, device, dtype):
    """autograd.functional.jacobian(vectorize=True) over the parameter tuple, batch at once,
    then one contraction. Cost: B*m vmapped reverse passes of a whole batch; B*m*P memory."""
    v = torch_view(problem, device, dtype)
    keys = list(v.params)

    def jac(X):
        blocks = af_jacobian(lambda *ps: v.fp(dict(zip(keys, ps)), X),
                             tuple(v.params.values()), vectorize=True)
        return torch.cat([b.flatten(2) for b in blocks], dim=2)

    return lambda: contract_ntk(jac(v.data["X1"]), jac(v.data["X2"]), problem.mode)


@register("ntk", "torch.jacobian_contraction", tags={"dense"})
def _ntk_contraction(problem, device, dtype):
    """torch.func NTK tutorial, method 1: vmap(jacrev) per-sample Jacobians, contracted one
    parameter tensor at a time and summed. Cost: B*m vmapped reverse passes; B*m*P memory."""
    v = torch_view(problem, device, dtype)
    per_sample = vmap(jacrev(_one(v)), in_dims=(None, 0))

    def run():
        j1 = per_sample(v.params, v.data["X1"])
        j2 = per_sample(v.params, v.data["X2"])
        return sum(contract_ntk(j1[k].flatten(2), j2[k].flatten(2), problem.mode) for k in j1)
    return run


@register("ntk", "torch.ntk_vps", tags={"matrix-free"})
def _ntk_vps(problem, device, dtype):
    """torch.func NTK tutorial, method 2: for each pair, vmap over unit cotangents of vjp at x1
    then jvp at x2. Cost: B1*B2*m vjp+jvp pairs, no Jacobian; trace/diagonal keep only their
    entries."""
    v = torch_view(problem, device, dtype)
    one, mode = _one(v), problem.mode

    def pair(x1, x2):
        out, pullback = vjp(lambda p: one(p, x1), v.params)
        basis = _eye(out.numel(), out)

        def column(e):  # J(x2) J(x1)^T e_a is row a of J(x1) J(x2)^T
            row = jvp(lambda p: one(p, x2), (v.params,), pullback(e))[1]
            return row if mode == "full" else (row * e).sum()
        block = vmap(column)(basis)  # full: (m, m) with [a, b] = (J1 J2^T)[a, b]
        return block.sum() if mode == "trace" else block

    pairs = vmap(vmap(pair, in_dims=(None, 0)), in_dims=(0, None))
    return lambda: pairs(v.data["X1"], v.data["X2"])


@register("ntk", "torch.ntk_vps_batched", tags={"matrix-free"})
def _ntk_vps_batched(problem, device, dtype):
    """NTK-vector products with X2 as one batch: vmap over x1 and unit cotangents of vjp at x1,
    then one jvp over all of X2. Cost: B1*m vjps and B1*m batched jvps; no Jacobian."""
    v = torch_view(problem, device, dtype)
    one, mode = _one(v), problem.mode

    def row(x1):
        out, pullback = vjp(lambda p: one(p, x1), v.params)

        def column(e):  # (B2, m): entry [j, b] is (J(x1) J(x2_j)^T)[a, b] for e = e_a
            return jvp(lambda p: v.fp(p, v.data["X2"]), (v.params,), pullback(e))[1]
        block = vmap(column)(_eye(out.numel(), out))  # (m, B2, m), indexed [a, j, b]
        if mode == "full":
            return block.permute(1, 0, 2)
        diag = torch.diagonal(block, dim1=0, dim2=2)  # (B2, m)
        return diag if mode == "diagonal" else diag.sum(-1)

    return lambda: vmap(row)(v.data["X1"])
