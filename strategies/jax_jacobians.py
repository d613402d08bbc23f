"""JAX strategies for full Jacobians: jacobian, batch_jacobian, param_jacobian, cross_jacobian.

Each is registered eager ("jax.<name>") and jitted ("jax.<name>_jit"). Sizes in the cost
notes: n inputs, m outputs, B samples, P parameters.
"""
from __future__ import annotations

from .applicability import samples_independent
from .jax_model import eye, jax, jnp, matmul, register_jax


# ---------------------------------------------------------------- jacobian
@register_jax("jacobian", "jacrev")
def _jacrev(v):
    """jax.jacrev: vmap of vjp over the m unit cotangents. Cost: ~m reverse passes,
    vectorized; best when m < n."""
    return jax.jacrev(v.f)(v.data["x"])


@register_jax("jacobian", "jacfwd")
def _jacfwd(v):
    """jax.jacfwd: vmap of jvp over the n unit tangents. Cost: ~n forward passes, vectorized;
    best when m > n."""
    return jax.jacfwd(v.f)(v.data["x"])


@register_jax("jacobian", "vmap_vjp")
def _vmap_vjp(v):
    """One jax.vjp, then vmap of the pullback over the identity's rows (jacrev by hand). Cost:
    m reverse passes, vectorized, the forward pass done once."""
    y, pullback = jax.vjp(v.f, v.data["x"])
    return jax.vmap(pullback)(eye(y.size, y))[0]


@register_jax("jacobian", "vmap_jvp")
def _vmap_jvp(v):
    """vmap of jax.jvp over the identity's columns (jacfwd by hand). Cost: n forward passes,
    vectorized."""
    x = v.data["x"]
    return jax.vmap(lambda t: jax.jvp(v.f, (x,), (t,))[1], out_axes=1)(eye(x.size, x))


@register_jax("jacobian", "linearize_vmap")
def _linearize(v):
    """jax.linearize once, then vmap of the linear map over the identity's columns. Cost: one
    forward pass with stored residuals, then n tangent passes, vectorized."""
    x = v.data["x"]
    _, lin = jax.linearize(v.f, x)
    return jax.vmap(lin, out_axes=1)(eye(x.size, x))


# ---------------------------------------------------------------- batch_jacobian
def _one(v):
    return lambda x: v.fb(x[None])[0]


def _per_sample_flat(J, X):
    return J.reshape(X.shape[0], J.shape[1], -1)


@register_jax("batch_jacobian", "vmap_jacrev")
def _b_vmap_jacrev(v):
    """vmap over samples of jacrev of one sample. Cost: B*m reverse passes of one sample,
    vectorized."""
    X = v.data["X"]
    return _per_sample_flat(jax.vmap(jax.jacrev(_one(v)))(X), X)


@register_jax("batch_jacobian", "vmap_jacfwd")
def _b_vmap_jacfwd(v):
    """vmap over samples of jacfwd of one sample. Cost: B*n forward passes of one sample,
    vectorized."""
    X = v.data["X"]
    return _per_sample_flat(jax.vmap(jax.jacfwd(_one(v)))(X), X)


@register_jax("batch_jacobian", "sum_trick", applies=samples_independent)
def _b_sum_trick(v):
    """jacrev of the batch output summed over samples: independent samples make it the stacked
    per-sample Jacobians. Cost: m reverse passes of the whole batch."""
    X = v.data["X"]
    J = jax.jacrev(lambda X: v.fb(X).sum(0))(X)  # (m, B, ...)
    return _per_sample_flat(J.swapaxes(0, 1), X)


@register_jax("batch_jacobian", "sum_trick_fwd", applies=samples_independent)
def _b_sum_trick_fwd(v):
    """Forward sum trick: one tangent per input coordinate, shared by all samples. Cost: n
    forward passes of the whole batch; wins when n < m."""
    X = v.data["X"]
    n = X[0].size
    tangents = jnp.broadcast_to(eye(n, X).reshape(n, 1, *X.shape[1:]), (n, *X.shape))
    return jax.vmap(lambda t: jax.jvp(v.fb, (X,), (t,))[1], out_axes=2)(tangents)  # (B, m, n)


# ---------------------------------------------------------------- param_jacobian
def _per_sample(v):
    return lambda p, x: v.fp(p, x[None])[0]


@register_jax("param_jacobian", "vmap_jacrev")
def _p_vmap_jacrev(v):
    """vmap over samples of jacrev w.r.t. the parameter dict (the JAX NTK cookbook). Cost: B*m
    reverse passes of one sample, vectorized."""
    J = jax.vmap(jax.jacrev(_per_sample(v)), in_axes=(None, 0))(v.params, v.data["X"])
    return v.flat(J, lead=2)


@register_jax("param_jacobian", "vmap_jacfwd")
def _p_vmap_jacfwd(v):
    """vmap over samples of jacfwd w.r.t. the parameters. Cost: B*P forward passes: hopeless
    for large P, listed because users try it."""
    J = jax.vmap(jax.jacfwd(_per_sample(v)), in_axes=(None, 0))(v.params, v.data["X"])
    return v.flat(J, lead=2)


@register_jax("param_jacobian", "jacrev_batch")
def _p_jacrev_batch(v):
    """jacrev of the whole batch output w.r.t. the parameters, no per-sample vmap. Cost: B*m
    reverse passes of the whole batch (B times the work of vmap_jacrev)."""
    return v.flat(jax.jacrev(lambda p: v.fp(p, v.data["X"]))(v.params), lead=2)


# ---------------------------------------------------------------- cross_jacobian
@register_jax("cross_jacobian", "dense_jacfwd", tags={"baseline", "dense"})
def _c_jacfwd(v):
    """The direct route: J1 and J2 by jacfwd, then J1 @ J2.T. Cost: 2n forward passes
    and two (m, n) Jacobians in memory."""
    jac = jax.jacfwd(v.f)
    return matmul(jac(v.data["x1"]), jac(v.data["x2"]).T)


@register_jax("cross_jacobian", "dense_jacrev", tags={"dense"})
def _c_jacrev(v):
    """J1 and J2 by jacrev, then J1 @ J2.T. Cost: 2m reverse passes and two (m, n) Jacobians."""
    jac = jax.jacrev(v.f)
    return matmul(jac(v.data["x1"]), jac(v.data["x2"]).T)


@register_jax("cross_jacobian", "vmap_jvp_vjp", tags={"matrix-free"})
def _c_indirect(v):
    """The indirect route: vmap over unit cotangents e of jvp at x1 of vjp at x2. Cost: m
    reverse plus m forward passes, vectorized; never forms an (m, n) Jacobian."""
    x1, x2 = v.data["x1"], v.data["x2"]
    y, pullback = jax.vjp(v.f, x2)
    return jax.vmap(lambda e: jax.jvp(v.f, (x1,), pullback(e))[1], out_axes=1)(eye(y.size, y))
