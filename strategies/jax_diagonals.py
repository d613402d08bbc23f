"""JAX strategies for diagonals: jac_diag (seed 002) and hessian_diag.

Each is registered eager ("jax.<name>") and jitted ("jax.<name>_jit"). Sizes: N inputs of
jac_diag with k outputs each, n inputs of phi. Hutchinson estimators take an explicit PRNG key
made from the `seed` option, so a run is reproducible.
"""
from __future__ import annotations

from .applicability import samples_independent
from .jax_model import eye, jax, jnp, register_jax


def _rademacher(seed: int, samples: int, like):
    return jax.random.rademacher(jax.random.key(seed), (samples, like.size), dtype=like.dtype)


# ---------------------------------------------------------------- jac_diag
@register_jax("jac_diag", "full_jacobian", tags={"baseline", "dense"})
def _d_full(v):
    """Full (N, k, N) Jacobian by jacrev, then its diagonal. Cost: N*k reverse passes and
    N^2 k memory: the route a diagonal is wanted to avoid."""
    J = jax.jacrev(v.fd)(v.data["x"])
    return jnp.diagonal(J, axis1=0, axis2=2).T


@register_jax("jac_diag", "sum_trick", applies=samples_independent, tags={"matrix-free"})
def _d_sum_trick(v):
    """jacrev of the outputs summed over samples: with independent samples, column i is sample
    i's derivative. Cost: k reverse passes of the batch."""
    return jax.jacrev(lambda x: v.fd(x).sum(0))(v.data["x"]).T


@register_jax("jac_diag", "single_jvp", applies=samples_independent, tags={"matrix-free"})
def _d_single_jvp(v):
    """One jvp with a tangent of ones: with independent samples, J 1 is the diagonal. Cost: one
    forward pass with tangents."""
    x = v.data["x"]
    return jax.jvp(v.fd, (x,), (jnp.ones_like(x),))[1]


@register_jax("jac_diag", "hutchinson", exact=False, samples=64, seed=0,
              tags={"matrix-free"})
def _d_hutchinson(v, samples, seed):
    """Hutchinson estimate E[z * (J z)] with Rademacher z, jvps vmapped over `samples` probes.
    Cost: `samples` forward passes; approximate, error ~ 1/sqrt(samples)."""
    x = v.data["x"]
    z = _rademacher(seed, samples, x)
    Jz = jax.vmap(lambda t: jax.jvp(v.fd, (x,), (t,))[1])(z)  # (S, N, k)
    return jnp.mean(z[:, :, None] * Jz, axis=0)


# ---------------------------------------------------------------- hessian_diag
def _hvp(v, x):
    return lambda t: jax.jvp(jax.grad(v.phi), (x,), (t,))[1]


@register_jax("hessian_diag", "full_hessian", tags={"baseline", "dense"})
def _h_full(v):
    """Dense jax.hessian (forward-over-reverse), then its diagonal. Cost: n hvps and n^2
    memory."""
    return jnp.diagonal(jax.hessian(v.phi)(v.data["x"]))


@register_jax("hessian_diag", "vmap_hvp")
def _h_vmap_hvp(v):
    """vmap over the identity of e_i . (H e_i), forward-over-reverse hvps. Cost: n hvps,
    vectorized; keeps n scalars instead of the n x n Hessian."""
    x = v.data["x"]
    hvp = _hvp(v, x)
    return jax.vmap(lambda e: jnp.vdot(e, hvp(e)))(eye(x.size, x))


@register_jax("hessian_diag", "hutchinson", exact=False, samples=64, seed=0,
              tags={"matrix-free"})
def _h_hutchinson(v, samples, seed):
    """Hutchinson estimate E[z * (H z)] with Rademacher z, hvps vmapped over `samples` probes.
    Cost: `samples` hvps; approximate, error ~ 1/sqrt(samples)."""
    x = v.data["x"]
    z = _rademacher(seed, samples, x)
    return jnp.mean(z * jax.vmap(_hvp(v, x))(z), axis=0)
