"""JAX matrix-free products: hvp, jvp, vjp, and ggn_vp (J^T J v over the parameters, seed 000).

Each is registered eager ("jax.<name>") and jitted ("jax.<name>_jit"). Sizes: n inputs,
m outputs, B samples, P parameters.
"""
from __future__ import annotations

from .jax_model import jax, jnp, matmul, register_jax
from .jax_jacobians import _p_vmap_jacrev


# ---------------------------------------------------------------- hvp
@register_jax("hvp", "fwd_over_rev", tags={"matrix-free"})
def _fwd_over_rev(v):
    """jvp of jax.grad(phi) along v. Cost: one forward-over-reverse pass, ~3x a gradient; the
    usual best."""
    return jax.jvp(jax.grad(v.phi), (v.data["x"],), (v.data["v"],))[1]


@register_jax("hvp", "rev_over_rev", tags={"matrix-free"})
def _rev_over_rev(v):
    """grad of <grad phi(x), v>: the double-backward trick. Cost: two reverse passes, the
    first one's tape kept for the second."""
    return jax.grad(lambda x: jnp.vdot(jax.grad(v.phi)(x), v.data["v"]))(v.data["x"])


@register_jax("hvp", "rev_over_fwd", tags={"matrix-free"})
def _rev_over_fwd(v):
    """grad of the directional derivative jvp(phi, x, v). Cost: a reverse pass through a
    forward-mode pass."""
    return jax.grad(lambda x: jax.jvp(v.phi, (x,), (v.data["v"],))[1])(v.data["x"])


@register_jax("hvp", "linearize_grad", tags={"matrix-free"})
def _linearize_grad(v):
    """jax.linearize of grad(phi), then the linear map at v. Cost: one forward-over-reverse
    pass; the linearization can be reused for more vectors."""
    _, hvp = jax.linearize(jax.grad(v.phi), v.data["x"])
    return hvp(v.data["v"])


# ---------------------------------------------------------------- jvp, vjp
@register_jax("jvp", "jvp", tags={"matrix-free"})
def _jvp(v):
    """jax.jvp: one forward pass carrying the tangent. Cost: ~2-3x a forward pass."""
    return jax.jvp(v.f, (v.data["x"],), (v.data["v"],))[1]


@register_jax("jvp", "linearize", tags={"matrix-free"})
def _linearize(v):
    """jax.linearize, then the linear map at v. Cost: a forward pass storing residuals, then a
    tangent pass."""
    _, lin = jax.linearize(v.f, v.data["x"])
    return lin(v.data["v"])


@register_jax("vjp", "vjp", tags={"matrix-free"})
def _vjp(v):
    """jax.vjp, then the pullback of u. Cost: one forward and one reverse pass."""
    _, pullback = jax.vjp(v.f, v.data["x"])
    return pullback(v.data["u"])[0]


@register_jax("vjp", "linearize_transpose", tags={"matrix-free"})
def _vjp_transpose(v):
    """jax.linearize, then jax.linear_transpose of the linear map applied to u. Cost: a forward
    pass, then a transposed (reverse) pass."""
    x = v.data["x"]
    _, lin = jax.linearize(v.f, x)
    return jax.linear_transpose(lin, x)(v.data["u"])[0]


# ---------------------------------------------------------------- ggn_vp
def _batch_map(v):
    X = v.data["X"]
    return lambda p: v.fp(p, X)


@register_jax("ggn_vp", "dense", tags={"baseline", "dense"})
def _ggn_dense(v):
    """Dense (B*m, P) parameter Jacobian by vmap(jacrev), then J^T (J v). Cost: B*m reverse
    passes and B*m*P memory."""
    J = _p_vmap_jacrev(v).reshape(-1, v.param_count)
    return matmul(J.T, matmul(J, v.data["v"]))


@register_jax("ggn_vp", "jvp_vjp", tags={"matrix-free"})
def _ggn_jvp_vjp(v):
    """Matrix-free: jvp of the batch map along v, then vjp of the result. Cost: one forward-mode
    and one reverse pass over the batch; no Jacobian stored."""
    g = _batch_map(v)
    Jv = jax.jvp(g, (v.params,), (v.unflat(v.data["v"]),))[1]
    _, pullback = jax.vjp(g, v.params)
    return v.flat(pullback(Jv)[0])


@register_jax("ggn_vp", "linearize_transpose", tags={"matrix-free"})
def _ggn_linearize(v):
    """jax.linearize of the batch map, then jax.linear_transpose of it: J^T (J v) from one
    linearization. Cost: a forward pass storing residuals, a tangent and a transposed pass."""
    _, lin = jax.linearize(_batch_map(v), v.params)
    Jt = jax.linear_transpose(lin, v.params)
    return v.flat(Jt(lin(v.unflat(v.data["v"])))[0])
