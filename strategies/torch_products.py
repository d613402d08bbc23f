"""PyTorch strategies for matrix-free products: hvp, jvp, vjp and ggn_vp (seed 000).

Sizes in the cost notes: n inputs, m outputs, B samples, P parameters. A "pass" is one
forward or reverse sweep through the network; a product costs a small constant number of them,
the dense baselines cost n or m of them and hold the whole matrix.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd import functional as af
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

from .registry import register
from .torch_model import torch_view


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_(True)


# ---------------------------------------------------------------- hvp
@register("hvp", "torch.fwd_over_rev", tags={"matrix-free"})
def _hvp_fwd_rev(problem, device, dtype):
    """jvp of torch.func.grad: forward-over-reverse. Cost: about one forward and one reverse
    pass with tangents; the usual best choice."""
    v = torch_view(problem, device, dtype)
    return lambda: jvp(grad(v.phi), (v.data["x"],), (v.data["v"],))[1]


@register("hvp", "torch.rev_over_rev", tags={"matrix-free"})
def _hvp_rev_rev(problem, device, dtype):
    """vjp of torch.func.grad: reverse-over-reverse (H is symmetric). Cost: a reverse pass
    through the gradient's graph, about twice fwd_over_rev's memory."""
    v = torch_view(problem, device, dtype)

    def run():
        _, pullback = vjp(grad(v.phi), v.data["x"])
        return pullback(v.data["v"])[0]
    return run


@register("hvp", "torch.rev_over_fwd", tags={"matrix-free"})
def _hvp_rev_fwd(problem, device, dtype):
    """grad of the directional derivative x -> jvp(phi, x, v): reverse-over-forward. Cost: one
    forward pass with a tangent, then a reverse pass through it."""
    v = torch_view(problem, device, dtype)
    return lambda: grad(lambda x: jvp(v.phi, (x,), (v.data["v"],))[1])(v.data["x"])


@register("hvp", "torch.double_backward", tags={"matrix-free"})
def _hvp_double_backward(problem, device, dtype):
    """torch.autograd.grad twice: the gradient with create_graph, then grad of <g, v>. Cost:
    one forward and two reverse passes, no torch.func."""
    v = torch_view(problem, device, dtype)

    def run():
        x = _leaf(v.data["x"])
        g = torch.autograd.grad(v.phi(x), x, create_graph=True)[0]
        return torch.autograd.grad(g, x, v.data["v"])[0]
    return run


@register("hvp", "torch.functional_hvp", tags={"matrix-free"})
def _hvp_functional(problem, device, dtype):
    """torch.autograd.functional.hvp: builds v^T H by double backward, then transposes it with
    the double-vjp trick. Cost: about three reverse passes."""
    v = torch_view(problem, device, dtype)
    return lambda: af.hvp(v.phi, v.data["x"], v.data["v"])[1]


@register("hvp", "torch.functional_vhp", tags={"matrix-free"})
def _hvp_functional_vhp(problem, device, dtype):
    """torch.autograd.functional.vhp: v^T H by double backward, equal to H v by symmetry.
    Cost: one forward and two reverse passes."""
    v = torch_view(problem, device, dtype)
    return lambda: af.vhp(v.phi, v.data["x"], v.data["v"])[1]


@register("hvp", "torch.dense", tags={"baseline", "dense"})
def _hvp_dense(problem, device, dtype):
    """Dense baseline: torch.func.hessian, then H @ v. Cost: n hvps and n^2 memory."""
    v = torch_view(problem, device, dtype)
    return lambda: hessian(v.phi)(v.data["x"]) @ v.data["v"]


# ---------------------------------------------------------------- jvp
@register("jvp", "torch.func_jvp", tags={"matrix-free"})
def _jvp_func(problem, device, dtype):
    """torch.func.jvp: forward mode. Cost: one forward pass carrying a tangent."""
    v = torch_view(problem, device, dtype)
    return lambda: jvp(v.f, (v.data["x"],), (v.data["v"],))[1]


@register("jvp", "torch.forward_ad", tags={"matrix-free"})
def _jvp_dual(problem, device, dtype):
    """Dual numbers with torch.autograd.forward_ad (make_dual / unpack_dual). Cost: one forward
    pass carrying a tangent."""
    v = torch_view(problem, device, dtype)

    def run():
        with fwAD.dual_level():
            return fwAD.unpack_dual(v.f(fwAD.make_dual(v.data["x"], v.data["v"]))).tangent
    return run


@register("jvp", "torch.double_vjp", tags={"matrix-free"})
def _jvp_double_vjp(problem, device, dtype):
    """The double-vjp trick: g(u) = J^T u is linear in a dummy u, so its vjp with v is J v.
    Cost: one forward and two reverse passes, reverse mode only."""
    v = torch_view(problem, device, dtype)

    def run():
        x = _leaf(v.data["x"])
        y = v.f(x)
        u = torch.zeros_like(y, requires_grad=True)
        g = torch.autograd.grad(y, x, u, create_graph=True)[0]
        return torch.autograd.grad(g, u, v.data["v"])[0]
    return run


@register("jvp", "torch.functional_jvp", tags={"matrix-free"})
def _jvp_functional(problem, device, dtype):
    """torch.autograd.functional.jvp (the double-vjp trick inside the library). Cost: one
    forward and two reverse passes."""
    v = torch_view(problem, device, dtype)
    return lambda: af.jvp(v.f, v.data["x"], v.data["v"])[1]


@register("jvp", "torch.dense", tags={"baseline", "dense"})
def _jvp_dense(problem, device, dtype):
    """Dense baseline: jacfwd, then J @ v. Cost: n forward passes and an (m, n) Jacobian."""
    v = torch_view(problem, device, dtype)
    return lambda: jacfwd(v.f)(v.data["x"]) @ v.data["v"]


# ---------------------------------------------------------------- vjp
@register("vjp", "torch.func_vjp", tags={"matrix-free"})
def _vjp_func(problem, device, dtype):
    """torch.func.vjp, then the pullback of u. Cost: one forward and one reverse pass."""
    v = torch_view(problem, device, dtype)

    def run():
        _, pullback = vjp(v.f, v.data["x"])
        return pullback(v.data["u"])[0]
    return run


@register("vjp", "torch.autograd_grad", tags={"matrix-free"})
def _vjp_grad(problem, device, dtype):
    """torch.autograd.grad with grad_outputs=u. Cost: one forward and one reverse pass."""
    v = torch_view(problem, device, dtype)

    def run():
        x = _leaf(v.data["x"])
        return torch.autograd.grad(v.f(x), x, v.data["u"])[0]
    return run


@register("vjp", "torch.functional_vjp", tags={"matrix-free"})
def _vjp_functional(problem, device, dtype):
    """torch.autograd.functional.vjp. Cost: one forward and one reverse pass."""
    v = torch_view(problem, device, dtype)
    return lambda: af.vjp(v.f, v.data["x"], v.data["u"])[1]


@register("vjp", "torch.dense", tags={"baseline", "dense"})
def _vjp_dense(problem, device, dtype):
    """Dense baseline: jacrev, then u @ J. Cost: m reverse passes and an (m, n) Jacobian."""
    v = torch_view(problem, device, dtype)
    return lambda: v.data["u"] @ jacrev(v.f)(v.data["x"])


# ---------------------------------------------------------------- ggn_vp
@register("ggn_vp", "torch.dense", tags={"baseline", "dense"})
def _ggn_dense(problem, device, dtype):
    """The dense route: per-sample Jacobians by vmap(jacrev), flattened to (B*m, P),
    then J.T @ (J @ v). Cost: B*m reverse passes of one sample and B*m*P memory."""
    v = torch_view(problem, device, dtype)

    def one(p, x):
        return v.fp(p, x[None])[0]

    def run():
        J = v.flat(vmap(jacrev(one), in_dims=(None, 0))(v.params, v.data["X"]), lead=2)
        J = J.reshape(-1, v.param_count)
        return J.T @ (J @ v.data["v"])
    return run


@register("ggn_vp", "torch.jvp_vjp", tags={"matrix-free"})
def _ggn_jvp_vjp(problem, device, dtype):
    """Matrix-free with torch.func: J v by jvp over the parameters, then J^T (J v) by vjp.
    Cost: two forward passes of the batch (one with tangents) and one reverse pass."""
    v = torch_view(problem, device, dtype)

    def run():
        def out(p):
            return v.fp(p, v.data["X"])
        _, Jv = jvp(out, (v.params,), (v.unflat(v.data["v"]),))
        _, pullback = vjp(out, v.params)
        return v.flat(pullback(Jv)[0])
    return run


@register("ggn_vp", "torch.double_backward", tags={"matrix-free"})
def _ggn_double_backward(problem, device, dtype):
    """torch.autograd only: J v by the double-vjp trick on a dummy cotangent, then one more
    backward for J^T (J v). Cost: one forward and three reverse passes of the batch."""
    v = torch_view(problem, device, dtype)

    def run():
        params = {k: _leaf(p) for k, p in v.params.items()}
        leaves = list(params.values())
        y = v.fp(params, v.data["X"])
        u = torch.zeros_like(y, requires_grad=True)
        g = torch.autograd.grad(y, leaves, u, create_graph=True)
        Jv = torch.autograd.grad(g, u, list(v.unflat(v.data["v"]).values()))[0]
        return torch.cat([t.reshape(-1) for t in torch.autograd.grad(y, leaves, Jv)])
    return run


@register("ggn_vp", "torch.vmap_per_sample")
def _ggn_per_sample(problem, device, dtype):
    """vmap over samples of J_b^T (J_b v) (jvp then vjp of one sample), summed over the batch.
    Cost: as jvp_vjp, plus B per-sample gradients (B*P memory) before the sum."""
    v = torch_view(problem, device, dtype)

    def run():
        tangent = v.unflat(v.data["v"])

        def one(x):
            def out(p):
                return v.fp(p, x[None])[0]
            _, Jv = jvp(out, (v.params,), (tangent,))
            _, pullback = vjp(out, v.params)
            return v.flat(pullback(Jv)[0])
        return vmap(one)(v.data["X"]).sum(0)
    return run
