"""PyTorch strategies for Hessians of phi(x) = 0.5 ||f(x)||^2: hessian and batch_hessian.

Sizes in the cost notes: n inputs, B samples. One hvp costs a few forward/backward passes.
"""
from __future__ import annotations

import torch
from torch.autograd.functional import hessian as af_hessian
from torch.func import grad, hessian, jacfwd, jacrev, vmap

from .applicability import samples_independent
from .registry import register
from .torch_jacobians import _row_loop
from .torch_model import torch_view


def _double_backward(phi, x: torch.Tensor) -> torch.Tensor:
    """Rows of the Hessian: the gradient with create_graph, then one backward per element."""
    x = x.clone().requires_grad_(True)
    g = torch.autograd.grad(phi(x), x, create_graph=True)[0]
    return _row_loop(g, x)


# ---------------------------------------------------------------- hessian
@register("hessian", "torch.autograd_loop", tags={"baseline"})
def _h_loop(problem, device, dtype):
    """Double backward: autograd.grad with create_graph, then one autograd.grad per gradient
    element. Cost: n reverse-over-reverse passes, unvectorized."""
    v = torch_view(problem, device, dtype)
    return lambda: _double_backward(v.phi, v.data["x"])


def _functional(name, doc, **kw):
    def prepare(problem, device, dtype):
        v = torch_view(problem, device, dtype)
        return lambda: af_hessian(v.phi, v.data["x"], **kw)
    prepare.__doc__ = doc
    register("hessian", name)(prepare)


_functional("torch.functional",
            "torch.autograd.functional.hessian, vectorize=False, reverse-mode outer Jacobian: the "
            "double-backward loop inside the library. Cost: n reverse-over-reverse passes.")
_functional("torch.functional_vectorize",
            "autograd.functional.hessian, vectorize=True, reverse-mode outer Jacobian. Cost: one "
            "vmapped reverse-over-reverse pass over n cotangents.",
            vectorize=True, outer_jacobian_strategy="reverse-mode")
_functional("torch.functional_forward",
            "autograd.functional.hessian, vectorize=True, forward-mode outer Jacobian "
            "(forward-over-reverse). Cost: one vmapped pass over n tangents.",
            vectorize=True, outer_jacobian_strategy="forward-mode")


def _composed(name, doc, transform):
    def prepare(problem, device, dtype):
        v = torch_view(problem, device, dtype)
        h = transform(v.phi)
        return lambda: h(v.data["x"])
    prepare.__doc__ = doc
    register("hessian", name)(prepare)


_composed("torch.hessian",
          "torch.func.hessian (jacfwd of jacrev, forward-over-reverse). Cost: n vmapped hvps.",
          hessian)
_composed("torch.jacfwd_jacrev",
          "jacfwd(jacrev(phi)) spelled out: forward-over-reverse. Cost: n vmapped hvps; usually "
          "the fastest dense route.", lambda f: jacfwd(jacrev(f)))
_composed("torch.jacrev_jacrev",
          "jacrev(jacrev(phi)): reverse-over-reverse. Cost: n vmapped double-backward passes, "
          "storing the gradient's graph.", lambda f: jacrev(jacrev(f)))
_composed("torch.jacrev_jacfwd",
          "jacrev(jacfwd(phi)): reverse-over-forward. Cost: n forward passes inside a reverse "
          "pass over n cotangents; memory grows with n.", lambda f: jacrev(jacfwd(f)))
_composed("torch.jacfwd_jacfwd",
          "jacfwd(jacfwd(phi)): forward-over-forward. Cost: n^2 vmapped forward passes of a "
          "scalar function: wasteful when phi has one output.", lambda f: jacfwd(jacfwd(f)))


# ---------------------------------------------------------------- batch_hessian
def _phi_one(v):
    return lambda x: 0.5 * (v.fb(x[None])[0] ** 2).sum()


def _batch_shape(H: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    n = X[0].numel()
    return H.reshape(X.shape[0], n, n)


def _vmapped(name, doc, transform):
    def prepare(problem, device, dtype):
        v = torch_view(problem, device, dtype)
        h = vmap(transform(_phi_one(v)))
        return lambda: _batch_shape(h(v.data["X"]), v.data["X"])
    prepare.__doc__ = doc
    register("batch_hessian", name)(prepare)


_vmapped("torch.vmap_hessian",
         "vmap over samples of torch.func.hessian (forward-over-reverse). Cost: B*n hvps of one "
         "sample, vectorized.", hessian)
_vmapped("torch.vmap_jacrev_jacrev",
         "vmap over samples of jacrev(jacrev): reverse-over-reverse. Cost: B*n double-backward "
         "passes of one sample, vectorized.", lambda f: jacrev(jacrev(f)))
_vmapped("torch.vmap_jacfwd_jacfwd",
         "vmap over samples of jacfwd(jacfwd): forward-over-forward. Cost: B*n^2 forward passes "
         "of one sample, vectorized.", lambda f: jacfwd(jacfwd(f)))
_vmapped("torch.vmap_jacrev_jacfwd",
         "vmap over samples of jacrev(jacfwd): reverse-over-forward. Cost: B*n forward passes "
         "inside B*n reverse passes of one sample, vectorized.", lambda f: jacrev(jacfwd(f)))


@register("batch_hessian", "torch.sum_trick", applies=samples_independent)
def _bh_sum_trick(problem, device, dtype):
    """Gradient of the batch's summed phi gives every sample's gradient at once; jacrev of those
    gradients summed over samples gives every Hessian. Cost: n reverse-over-reverse passes of
    the batch."""
    v = torch_view(problem, device, dtype)

    def grads(X):
        return grad(lambda X: 0.5 * (v.fb(X) ** 2).sum())(X).reshape(X.shape[0], -1)

    def run():
        X = v.data["X"]
        H = jacrev(lambda X: grads(X).sum(0))(X)  # (n, B, *in_shape)
        return H.reshape(H.shape[0], X.shape[0], -1).transpose(0, 1)
    return run


@register("batch_hessian", "torch.autograd_loop", tags={"baseline"})
def _bh_loop(problem, device, dtype):
    """Python loop over samples of the double-backward Hessian of one sample. Cost: B*n
    reverse-over-reverse passes, unvectorized."""
    v = torch_view(problem, device, dtype)

    def run():
        X = v.data["X"]
        return _batch_shape(torch.stack([_double_backward(_phi_one(v), x) for x in X]), X)
    return run
