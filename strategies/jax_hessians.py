"""JAX strategies for dense Hessians of phi(x) = 0.5 ||f(x)||^2: hessian and batch_hessian.

Each is registered eager ("jax.<name>") and jitted ("jax.<name>_jit"). Sizes: n inputs,
B samples.
"""
from __future__ import annotations

from .applicability import samples_independent
from .jax_model import eye, jax, jnp, register_jax

# name -> (outer, inner) differentiation operators
_COMPOSITIONS = {
    "jacfwd_jacrev": ("jacfwd", "jacrev",
                      "forward-over-reverse: n jvps of the gradient, vectorized; the usual best."),
    "jacrev_jacrev": ("jacrev", "jacrev",
                      "reverse-over-reverse: n vjps of the gradient, storing the gradient's tape."),
    "jacrev_jacfwd": ("jacrev", "jacfwd",
                      "reverse-over-forward: vjps through an n-tangent forward pass."),
    "jacfwd_jacfwd": ("jacfwd", "jacfwd",
                      "forward-over-forward: n x n tangent pairs; cheap only for small n."),
}


@register_jax("hessian", "hessian")
def _hessian(v):
    """jax.hessian (jacfwd of jacrev). Cost: n forward-over-reverse hvps, vectorized, and an
    n x n result."""
    return jax.hessian(v.phi)(v.data["x"])


def _composition(name: str, outer: str, inner: str, cost: str):
    def compute(v):
        return getattr(jax, outer)(getattr(jax, inner)(v.phi))(v.data["x"])
    compute.__doc__ = f"jax.{outer}(jax.{inner}(phi)). Cost: {cost}"
    register_jax("hessian", name)(compute)


for _name, (_outer, _inner, _cost) in _COMPOSITIONS.items():
    _composition(_name, _outer, _inner, _cost)


def _phi_one(v):
    return lambda x: 0.5 * jnp.sum(v.fb(x[None])[0] ** 2)


@register_jax("batch_hessian", "vmap_hessian")
def _b_vmap_hessian(v):
    """vmap over samples of jax.hessian of one sample's phi. Cost: B*n hvps of one sample,
    vectorized."""
    return jax.vmap(jax.hessian(_phi_one(v)))(v.data["X"])


@register_jax("batch_hessian", "sum_trick", applies=samples_independent)
def _b_sum_trick(v):
    """Gradient of the batch sum of phi, then n jvps with one tangent per input coordinate
    shared by all samples: independent samples keep the blocks apart. Cost: n hvps of the batch."""
    X = v.data["X"]
    n = X.shape[1]
    grad = jax.grad(lambda X: 0.5 * jnp.sum(v.fb(X) ** 2))
    tangents = jnp.broadcast_to(eye(n, X)[:, None, :], (n, *X.shape))
    return jax.vmap(lambda t: jax.jvp(grad, (X,), (t,))[1], out_axes=2)(tangents)  # (B, n, n)
