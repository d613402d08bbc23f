"""PyTorch strategies for full Jacobians: jacobian, batch_jacobian, param_jacobian, cross_jacobian.

Sizes in the cost notes: n inputs, m outputs, B samples, P parameters.
"""
from __future__ import annotations

import torch
from torch.autograd.functional import jacobian as af_jacobian
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

from .applicability import samples_independent
from .registry import register
from .torch_model import torch_view


def _eye(k, like):
    return torch.eye(k, device=like.device, dtype=like.dtype)


def _row_loop(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rows of dy/dx by one autograd.grad call per output element."""
    flat = y.reshape(-1)
    rows = [torch.autograd.grad(flat[i], x, retain_graph=True)[0] for i in range(flat.numel())]
    return torch.stack(rows).reshape(*y.shape, *x.shape)


# ---------------------------------------------------------------- jacobian
@register("jacobian", "torch.autograd_loop", tags={"baseline"})
def _jac_loop(problem, device, dtype):
    """Python loop of autograd.grad, one row per output. Cost: m reverse passes, unvectorized."""
    v = torch_view(problem, device, dtype)

    def run():
        x = v.data["x"].clone().requires_grad_(True)
        return _row_loop(v.f(x), x)
    return run


def _functional(quantity, name, doc, **kw):
    def prepare(problem, device, dtype):
        v = torch_view(problem, device, dtype)
        return lambda: af_jacobian(v.f, v.data["x"], **kw)
    prepare.__doc__ = doc
    register(quantity, name)(prepare)


_functional("jacobian", "torch.functional",
            "torch.autograd.functional.jacobian, vectorize=False: the same row loop inside the "
            "library. Cost: m reverse passes.")
_functional("jacobian", "torch.functional_vectorize",
            "torch.autograd.functional.jacobian, vectorize=True: rows batched with vmap. Cost: one "
            "batched reverse pass over m cotangents.", vectorize=True)
_functional("jacobian", "torch.functional_forward",
            "torch.autograd.functional.jacobian, strategy='forward-mode': columns by batched "
            "forward AD. Cost: one batched forward pass over n tangents.",
            vectorize=True, strategy="forward-mode")


@register("jacobian", "torch.jacrev")
def _jacrev(problem, device, dtype):
    """torch.func.jacrev: vmap of vjp over the m unit cotangents. Cost: ~m reverse passes,
    vectorized; best when m < n."""
    v = torch_view(problem, device, dtype)
    return lambda: jacrev(v.f)(v.data["x"])


@register("jacobian", "torch.jacrev_chunk16")
def _jacrev_chunk(problem, device, dtype):
    """torch.func.jacrev(chunk_size=16): vmap over 16 cotangents at a time. Cost: m reverse
    passes in m/16 batches; trades speed for peak memory."""
    v = torch_view(problem, device, dtype)
    return lambda: jacrev(v.f, chunk_size=16)(v.data["x"])


@register("jacobian", "torch.jacfwd")
def _jacfwd(problem, device, dtype):
    """torch.func.jacfwd: vmap of jvp over the n unit tangents. Cost: ~n forward passes,
    vectorized; best when m > n."""
    v = torch_view(problem, device, dtype)
    return lambda: jacfwd(v.f)(v.data["x"])


@register("jacobian", "torch.vmap_vjp")
def _vmap_vjp(problem, device, dtype):
    """One vjp closure, then vmap over the rows of the identity (jacrev by hand). Cost: m
    reverse passes, vectorized, the forward pass done once."""
    v = torch_view(problem, device, dtype)

    def run():
        y, pullback = vjp(v.f, v.data["x"])
        return vmap(pullback)(_eye(y.numel(), y))[0]
    return run


@register("jacobian", "torch.vmap_jvp")
def _vmap_jvp(problem, device, dtype):
    """vmap of torch.func.jvp over the identity's columns (jacfwd by hand). Cost: n forward
    passes, vectorized."""
    v = torch_view(problem, device, dtype)

    def run():
        x = v.data["x"]
        cols = vmap(lambda t: jvp(v.f, (x,), (t,))[1])(_eye(x.numel(), x))
        return cols.T
    return run


@register("jacobian", "torch.forward_ad_loop")
def _fwd_loop(problem, device, dtype):
    """Python loop of dual-number forward AD (torch.autograd.forward_ad), one column per input.
    Cost: n forward passes, unvectorized."""
    import torch.autograd.forward_ad as fwAD
    v = torch_view(problem, device, dtype)

    def run():
        x = v.data["x"]
        cols = []
        with fwAD.dual_level():
            for t in _eye(x.numel(), x):
                cols.append(fwAD.unpack_dual(v.f(fwAD.make_dual(x, t))).tangent)
        return torch.stack(cols, dim=1)
    return run


# ---------------------------------------------------------------- batch_jacobian
def _one(v):
    return lambda x: v.fb(x[None])[0]


@register("batch_jacobian", "torch.vmap_jacrev")
def _b_vmap_jacrev(problem, device, dtype):
    """vmap over samples of jacrev of one sample. Cost: B*m reverse passes of one sample,
    vectorized."""
    v = torch_view(problem, device, dtype)
    return lambda: vmap(jacrev(_one(v)))(v.data["X"])


@register("batch_jacobian", "torch.vmap_jacfwd")
def _b_vmap_jacfwd(problem, device, dtype):
    """vmap over samples of jacfwd of one sample. Cost: B*n forward passes of one sample,
    vectorized."""
    v = torch_view(problem, device, dtype)
    return lambda: vmap(jacfwd(_one(v)))(v.data["X"])


@register("batch_jacobian", "torch.sum_trick", applies=samples_independent)
def _b_sum_trick(problem, device, dtype):
    """jacrev of the batch output summed over samples: independent samples make it the stacked
    per-sample Jacobians. Cost: m reverse passes of the whole batch."""
    v = torch_view(problem, device, dtype)
    return lambda: jacrev(lambda X: v.fb(X).sum(0))(v.data["X"]).transpose(0, 1)


@register("batch_jacobian", "torch.sum_trick_fwd", applies=samples_independent)
def _b_sum_trick_fwd(problem, device, dtype):
    """Forward sum trick: one tangent per input coordinate, shared by all samples. Cost: n
    forward passes of the whole batch; wins when n < m."""
    v = torch_view(problem, device, dtype)

    def run():
        X = v.data["X"]
        n = X[0].numel()
        tangents = _eye(n, X).reshape(n, 1, *X.shape[1:]).expand(n, *X.shape)
        cols = vmap(lambda t: jvp(v.fb, (X,), (t,))[1])(tangents)  # (n, B, m)
        return cols.permute(1, 2, 0)
    return run


@register("batch_jacobian", "torch.autograd_loop", applies=samples_independent,
          tags={"baseline"})
def _b_loop(problem, device, dtype):
    """Loop over outputs with autograd.grad of the output column summed over samples. Cost: m
    reverse passes of the whole batch, unvectorized."""
    v = torch_view(problem, device, dtype)

    def run():
        X = v.data["X"].clone().requires_grad_(True)
        Y = v.fb(X)
        cols = [torch.autograd.grad(Y[:, k].sum(), X, retain_graph=True)[0]
                for k in range(Y.shape[1])]
        return torch.stack(cols, dim=1).flatten(2)
    return run


@register("batch_jacobian", "torch.functional_dense", tags={"dense"})
def _b_dense(problem, device, dtype):
    """autograd.functional.jacobian(vectorize=True) of the whole batch, then the block
    diagonal. Cost: B*m reverse passes and a (B, m, B, n) dense intermediate."""
    v = torch_view(problem, device, dtype)

    def run():
        X = v.data["X"]
        J = af_jacobian(v.fb, X, vectorize=True).flatten(3)  # (B, m, B, n)
        return torch.diagonal(J, dim1=0, dim2=2).permute(2, 0, 1)
    return run


# ---------------------------------------------------------------- param_jacobian
@register("param_jacobian", "torch.autograd_loop", tags={"baseline"})
def _p_loop(problem, device, dtype):
    """The usual loop: autograd.grad of every (sample, output) w.r.t. the parameters. Cost:
    B*m reverse passes of the batch, unvectorized."""
    v = torch_view(problem, device, dtype)

    def run():
        params = {k: p.clone().requires_grad_(True) for k, p in v.params.items()}
        out = v.fp(params, v.data["X"])
        rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            out[i, j], list(params.values()), retain_graph=True)])
            for i in range(out.shape[0]) for j in range(out.shape[1])]
        return torch.stack(rows).reshape(*out.shape, -1)
    return run


def _per_sample(v):
    return lambda p, x: v.fp(p, x[None])[0]


@register("param_jacobian", "torch.vmap_jacrev")
def _p_vmap_jacrev(problem, device, dtype):
    """vmap over samples of jacrev w.r.t. the parameter dict (the torch.func NTK tutorial).
    Cost: B*m reverse passes of one sample, vectorized."""
    v = torch_view(problem, device, dtype)
    return lambda: v.flat(vmap(jacrev(_per_sample(v)), in_dims=(None, 0))(v.params, v.data["X"]),
                          lead=2)


@register("param_jacobian", "torch.vmap_jacfwd")
def _p_vmap_jacfwd(problem, device, dtype):
    """vmap over samples of jacfwd w.r.t. the parameters. Cost: B*P forward passes: hopeless
    for large P, listed because users try it."""
    v = torch_view(problem, device, dtype)
    return lambda: v.flat(vmap(jacfwd(_per_sample(v)), in_dims=(None, 0))(v.params, v.data["X"]),
                          lead=2)


@register("param_jacobian", "torch.jacrev_batch")
def _p_jacrev_batch(problem, device, dtype):
    """jacrev of the whole batch output w.r.t. the parameters, no per-sample vmap. Cost: B*m
    reverse passes of the whole batch (B times the work of vmap_jacrev)."""
    v = torch_view(problem, device, dtype)
    return lambda: v.flat(jacrev(lambda p: v.fp(p, v.data["X"]))(v.params), lead=2)


@register("param_jacobian", "torch.functional_vectorize")
def _p_functional(problem, device, dtype):
    """autograd.functional.jacobian(vectorize=True) over the parameter tuple (a user's NTK code
    in a neural-tangents issue). Cost: B*m reverse passes of the whole batch, vectorized."""
    v = torch_view(problem, device, dtype)
    keys = list(v.params)

    def run():
        jac = af_jacobian(lambda *ps: v.fp(dict(zip(keys, ps)), v.data["X"]),
                          tuple(v.params.values()), vectorize=True)
        return torch.cat([j.flatten(2) for j in jac], dim=2)
    return run


# ---------------------------------------------------------------- cross_jacobian
@register("cross_jacobian", "torch.dense_jacfwd", tags={"baseline", "dense"})
def _c_jacfwd(problem, device, dtype):
    """The direct route: J1 and J2 by jacfwd, then J1 @ J2.T. Cost: 2n forward passes
    and two (m, n) Jacobians in memory."""
    v = torch_view(problem, device, dtype)
    return lambda: jacfwd(v.f)(v.data["x1"]) @ jacfwd(v.f)(v.data["x2"]).T


@register("cross_jacobian", "torch.dense_jacrev", tags={"dense"})
def _c_jacrev(problem, device, dtype):
    """J1 and J2 by jacrev, then J1 @ J2.T. Cost: 2m reverse passes and two (m, n) Jacobians."""
    v = torch_view(problem, device, dtype)
    return lambda: jacrev(v.f)(v.data["x1"]) @ jacrev(v.f)(v.data["x2"]).T


def _cross_op(v):
    _, pullback = vjp(v.f, v.data["x2"])
    return lambda e: jvp(v.f, (v.data["x1"],), pullback(e))[1]


@register("cross_jacobian", "torch.vmap_jvp_vjp", tags={"matrix-free"})
def _c_indirect(problem, device, dtype):
    """The indirect route: vmap over unit cotangents e of jvp at x1 of vjp at x2. Cost: m
    reverse plus m forward passes, vectorized; never forms an (m, n) Jacobian."""
    v = torch_view(problem, device, dtype)

    def run():
        m = problem.spec.out_dim
        return vmap(_cross_op(v))(_eye(m, v.data["x1"])).T
    return run


@register("cross_jacobian", "torch.loop_jvp_vjp", tags={"matrix-free"})
def _c_loop(problem, device, dtype):
    """The indirect route as a Python loop over the m unit cotangents. Cost: m reverse plus m
    forward passes, unvectorized."""
    v = torch_view(problem, device, dtype)

    def run():
        op = _cross_op(v)
        return torch.stack([op(e) for e in _eye(problem.spec.out_dim, v.data["x1"])], dim=1)
    return run
