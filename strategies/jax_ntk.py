"""JAX strategies for the empirical NTK J(X1) J(X2)^T over the parameters (seed 003).

Each is registered eager ("jax.<name>") and jitted ("jax.<name>_jit"). Layouts by
`problem.mode` (see strategies.quantities): full (B1, B2, m, m), trace (B1, B2), diagonal
(B1, B2, m). Sizes: B1, B2 samples, m outputs, P parameters.
"""
from __future__ import annotations

from .jax_model import einsum, eye, jax, jnp, register_jax

_CONTRACT = {"full": "iap,jbp->ijab", "trace": "iap,jap->ij", "diagonal": "iap,jap->ija"}


def _per_sample(v):
    return lambda p, x: v.fp(p, x[None])[0]


def _contract(v, j1: dict, j2: dict):
    """Sum over parameter tensors of the contraction of (B1, m, ...) and (B2, m, ...) blocks,
    so the (B, m, P) Jacobian is never concatenated."""
    eq = _CONTRACT[v.problem.mode]
    terms = [einsum(eq, j1[k].reshape(*j1[k].shape[:2], -1), j2[k].reshape(*j2[k].shape[:2], -1))
             for k in v.keys]
    return sum(terms[1:], terms[0])


def _from_full(full, mode: str):
    if mode == "full":
        return full
    diagonal = jnp.diagonal(full, axis1=2, axis2=3)  # (B1, B2, m)
    return diagonal if mode == "diagonal" else diagonal.sum(-1)


@register_jax("ntk", "jacobian_contraction", tags={"dense"})
def _jacobian_contraction(v):
    """Per-sample parameter Jacobians by vmap(jacrev) for X1 and X2, contracted by mode. Cost:
    (B1+B2)*m reverse passes and (B1+B2)*m*P memory."""
    jac = jax.vmap(jax.jacrev(_per_sample(v)), in_axes=(None, 0))
    return _contract(v, jac(v.params, v.data["X1"]), jac(v.params, v.data["X2"]))


@register_jax("ntk", "ntk_vector_products", tags={"matrix-free"})
def _ntk_vp(v):
    """NTK-vector products: vmap over unit cotangents u of jvp at X1 of vjp at X2 (the
    neural-tangents route); trace and diagonal are read off the full NTK. Cost: B2*m vjps and
    jvps of the X1, X2 batches; no Jacobian stored."""
    X1, X2 = v.data["X1"], v.data["X2"]
    y2, pullback = jax.vjp(lambda p: v.fp(p, X2), v.params)

    def column(u):
        return jax.jvp(lambda p: v.fp(p, X1), (v.params,), pullback(u.reshape(y2.shape)))[1]
    cols = jax.vmap(column)(eye(y2.size, y2))  # (B2*m, B1, m)
    full = cols.reshape(*y2.shape, *cols.shape[1:]).transpose(2, 0, 3, 1)
    return _from_full(full, v.problem.mode)


@register_jax("ntk", "per_sample_loop", tags={"baseline", "dense"})
def _per_sample_loop(v):
    """A Python loop over samples of jacrev of one sample's outputs, then the contraction.
    Cost: (B1+B2)*m reverse passes, unvectorized (unrolled when jitted)."""
    jac = jax.jacrev(_per_sample(v))

    def stacked(X):
        rows = [jac(v.params, x) for x in X]
        return {k: jnp.stack([r[k] for r in rows]) for k in v.keys}
    return _contract(v, stacked(v.data["X1"]), stacked(v.data["X2"]))
