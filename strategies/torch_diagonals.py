"""PyTorch strategies for diagonals: jac_diag (seed 002) and hessian_diag.

Sizes in the cost notes: N inputs of jac_diag with k outputs each (k = 1 for a square map),
n inputs of phi. Hutchinson estimators draw their Rademacher probes in prepare from a
generator seeded by the `seed` option, so a run is reproducible and the draw is not timed.
"""
from __future__ import annotations

import torch
from torch.autograd.functional import jacobian as af_jacobian
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

from .applicability import samples_independent
from .registry import register
from .torch_jacobians import _eye
from .torch_model import torch_view


def rademacher(samples: int, n: int, like: torch.Tensor, seed: int) -> torch.Tensor:
    """(samples, n) random signs from a generator of their own: reproducible, and the global
    torch RNG is left alone."""
    gen = torch.Generator(device=like.device).manual_seed(seed)
    bits = torch.randint(0, 2, (samples, n), generator=gen, device=like.device)
    return (2 * bits - 1).to(like.dtype)


# ---------------------------------------------------------------- jac_diag
def _diag_of_full(J: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(J, dim1=0, dim2=2).T  # (N, k, N) -> (N, k)


def _full(name, doc, jac, tags=("dense",)):
    def prepare(problem, device, dtype):
        v = torch_view(problem, device, dtype)
        return lambda: _diag_of_full(jac(v.fd, v.data["x"]))
    prepare.__doc__ = doc
    register("jac_diag", name, tags=tags)(prepare)


_full("torch.full_functional",
      "The first try: autograd.functional.jacobian (vectorize=False) of the whole map, "
      "then the diagonal. Cost: N*k reverse passes and an (N, k, N) Jacobian.", af_jacobian,
      tags=("baseline", "dense"))
_full("torch.full_functional_vectorize",
      "autograd.functional.jacobian(vectorize=True), then the diagonal (slower than the loop "
      "in the Stack Overflow question). "
      "Cost: N*k cotangents in one batched reverse pass, (N, k, N) memory.",
      lambda f, x: af_jacobian(f, x, vectorize=True))
_full("torch.full_jacrev",
      "torch.func.jacrev of the whole map, then the diagonal. Cost: N*k vmapped reverse passes "
      "and (N, k, N) memory.", lambda f, x: jacrev(f)(x))
_full("torch.full_jacfwd",
      "torch.func.jacfwd of the whole map, then the diagonal. Cost: N vmapped forward passes "
      "and (N, k, N) memory.", lambda f, x: jacfwd(f)(x))


@register("jac_diag", "torch.onehot_backward", applies=samples_independent,
          tags={"matrix-free"})
def _d_onehot(problem, device, dtype):
    """The Stack Overflow answer: one backward per output channel c with cotangent one-hot in c for
    every sample. Cost: k reverse passes of the batch."""
    v = torch_view(problem, device, dtype)

    def run():
        x = v.data["x"].clone().requires_grad_(True)
        out = v.fd(x)
        cols = []
        for c in range(out.shape[1]):
            m = torch.zeros_like(out)
            m[:, c] = 1
            cols.append(torch.autograd.grad(out, x, m, retain_graph=True)[0])
        return torch.stack(cols, dim=1)
    return run


@register("jac_diag", "torch.sum_trick", applies=samples_independent, tags={"matrix-free"})
def _d_sum_trick(problem, device, dtype):
    """jacrev of the outputs summed over samples: with independent samples, column i is sample
    i's derivative. Cost: k vmapped reverse passes of the batch."""
    v = torch_view(problem, device, dtype)
    return lambda: jacrev(lambda x: v.fd(x).sum(0))(v.data["x"]).T


@register("jac_diag", "torch.single_jvp", applies=samples_independent, tags={"matrix-free"})
def _d_single_jvp(problem, device, dtype):
    """One jvp with a tangent of ones: with independent samples, J 1 is the diagonal. Cost: one
    forward pass with tangents."""
    v = torch_view(problem, device, dtype)

    def run():
        x = v.data["x"]
        return jvp(v.fd, (x,), (torch.ones_like(x),))[1]
    return run


@register("jac_diag", "torch.row_loop")
def _d_row_loop(problem, device, dtype):
    """Loop over inputs i: one backward batched over the k channels of output row i, keep
    element i. Cost: N reverse passes; works when outputs mix all inputs."""
    v = torch_view(problem, device, dtype)

    def run():
        x = v.data["x"].clone().requires_grad_(True)
        out = v.fd(x)
        k = out.shape[1]
        eye = _eye(k, out)
        rows = [torch.autograd.grad(out[i], x, eye, retain_graph=True,
                                    is_grads_batched=True)[0][:, i]
                for i in range(out.shape[0])]
        return torch.stack(rows)
    return run


@register("jac_diag", "torch.hutchinson", exact=False, samples=64, seed=0,
          tags={"matrix-free"})
def _d_hutchinson(problem, device, dtype, samples=64, seed=0):
    """Hutchinson estimate E[z * (J z)] per output channel, Rademacher z, jvps vmapped over
    `samples` probes. Cost: `samples` forward passes; error ~ 1/sqrt(samples)."""
    v = torch_view(problem, device, dtype)
    x = v.data["x"]
    z = rademacher(samples, x.numel(), x, seed)

    def run():
        Jz = vmap(lambda t: jvp(v.fd, (x,), (t,))[1])(z)  # (S, N, k)
        return (z[:, :, None] * Jz).mean(0)
    return run


# ---------------------------------------------------------------- hessian_diag
def _hvp(v, x):
    """Forward-over-reverse Hessian-vector product of phi at x."""
    return lambda t: jvp(grad(v.phi), (x,), (t,))[1]


@register("hessian_diag", "torch.full_hessian", tags={"baseline", "dense"})
def _h_full(problem, device, dtype):
    """Dense torch.func.hessian (forward-over-reverse), then its diagonal. Cost: n hvps and
    n^2 memory."""
    v = torch_view(problem, device, dtype)
    return lambda: torch.diagonal(hessian(v.phi)(v.data["x"]))


@register("hessian_diag", "torch.row_loop")
def _h_row_loop(problem, device, dtype):
    """Double backward: the gradient with create_graph, then one backward per coordinate i
    keeping element i. Cost: n reverse-over-reverse passes, unvectorized, n numbers kept."""
    v = torch_view(problem, device, dtype)

    def run():
        x = v.data["x"].clone().requires_grad_(True)
        g = torch.autograd.grad(v.phi(x), x, create_graph=True)[0]
        return torch.stack([torch.autograd.grad(g[i], x, retain_graph=True)[0][i]
                            for i in range(x.numel())])
    return run


@register("hessian_diag", "torch.vmap_hvp")
def _h_vmap_hvp(problem, device, dtype):
    """vmap of forward-over-reverse hvps over the identity's rows, then the diagonal. Cost: n
    hvps, vectorized, with an (n, n) intermediate."""
    v = torch_view(problem, device, dtype)

    def run():
        x = v.data["x"]
        return torch.diagonal(vmap(_hvp(v, x))(_eye(x.numel(), x)))
    return run


@register("hessian_diag", "torch.hutchinson", exact=False, samples=64, seed=0,
          tags={"matrix-free"})
def _h_hutchinson(problem, device, dtype, samples=64, seed=0):
    """Hutchinson estimate E[z * (H z)], Rademacher z, hvps vmapped over `samples` probes.
    Cost: `samples` hvps; error ~ 1/sqrt(samples)."""
    v = torch_view(problem, device, dtype)
    x = v.data["x"]
    z = rademacher(samples, x.numel(), x, seed)
    return lambda: (z * vmap(_hvp(v, x))(z)).mean(0)
