"""curvlinops (f-dangel/curvlinops) as peer strategies: its GGN, Hessian and Jacobian linear
operators, each multiplied onto the problem's vector, so reports set jacbench's products beside
the library users would reach for.

curvlinops differentiates w.r.t. `nn.Parameter`s of a model. For the suite's input-space
products (hvp, jvp, vjp at x) the input itself becomes the only parameter: the operator sees
`Sequential(InputAsParameter(x), model)`, which maps a dummy batch of one to x and runs the
model, so its parameter Jacobian is the input Jacobian J(x). Losses are MSELoss(reduction="sum")
against zero targets, i.e. ||f||^2 = 2 phi: curvature operators are halved to match phi and
J^T J. If curvlinops cannot be imported, the strategies stay registered and say so.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register
from .torch_model import torch_view

try:
    from curvlinops import (GGNLinearOperator, HessianLinearOperator, JacobianLinearOperator,
                            TransposedJacobianLinearOperator)
    MISSING: str | None = None
except ImportError as exc:  # listed anyway, as not applicable with the reason
    MISSING = f"curvlinops-for-pytorch is not installed ({exc}): pip install curvlinops-for-pytorch"


def installed(_problem) -> str | None:
    """curvlinops-for-pytorch can be imported."""
    return MISSING


class InputAsParameter(nn.Module):
    """Holds the input x as a parameter and returns it for a dummy batch of one."""

    def __init__(self, x: torch.Tensor, in_shape):
        super().__init__()
        self.x = nn.Parameter(x.detach().reshape(1, *in_shape).clone())

    def forward(self, dummy):
        return self.x


def _at_input(v):
    """(operator model, [input parameter], data) for derivatives w.r.t. the input at x."""
    if MISSING:
        raise RuntimeError(MISSING)
    inp = InputAsParameter(v.data["x"], v.problem.spec.in_shape)
    model = nn.Sequential(inp, v.model, nn.Flatten())  # outputs as the suite's flat (1, m)
    dummy = v.data["x"].new_zeros(1, 1)
    target = v.data["x"].new_zeros(1, v.problem.spec.out_dim)
    return model, [inp.x], [(dummy, target)]


@register("ggn_vp", "curvlinops.ggn", applies=installed, tags={"matrix-free"})
def _ggn(problem, device, dtype):
    """curvlinops GGNLinearOperator of MSELoss(sum) over the batch (= 2 J^T J), halved, times v.
    Cost: one jvp and one vjp of the batch (torch.func inside), plus list packing."""
    if MISSING:
        raise RuntimeError(MISSING)
    v = torch_view(problem, device, dtype)
    # The view switches requires_grad off; curvlinops' construction checks take gradients.
    params = list(v.model.requires_grad_(True).parameters())
    X = v.data["X"]
    G = GGNLinearOperator(nn.Sequential(v.model, nn.Flatten()), nn.MSELoss(reduction="sum"), params,
                          [(X, X.new_zeros(X.shape[0], problem.spec.out_dim))])
    vec = v.data["v"]
    return lambda: 0.5 * (G @ vec)


@register("hvp", "curvlinops.hessian", applies=installed, tags={"matrix-free"})
def _hvp(problem, device, dtype):
    """curvlinops HessianLinearOperator w.r.t. the input (held as the only parameter) of
    MSELoss(sum) = 2 phi, halved, times v. Cost: one reverse-over-reverse pass."""
    v = torch_view(problem, device, dtype)
    model, params, data = _at_input(v)
    H = HessianLinearOperator(model, nn.MSELoss(reduction="sum"), params, data)
    vec = v.data["v"]
    return lambda: 0.5 * (H @ vec)


@register("jvp", "curvlinops.jacobian", applies=installed, tags={"matrix-free"})
def _jvp(problem, device, dtype):
    """curvlinops JacobianLinearOperator w.r.t. the input (held as the only parameter) times v.
    Cost: one forward-mode pass (torch.func.jvp inside)."""
    v = torch_view(problem, device, dtype)
    model, params, data = _at_input(v)
    J = JacobianLinearOperator(model, params, data)
    vec = v.data["v"]
    return lambda: J @ vec


@register("vjp", "curvlinops.transposed_jacobian", applies=installed, tags={"matrix-free"})
def _vjp(problem, device, dtype):
    """curvlinops TransposedJacobianLinearOperator w.r.t. the input (held as the only parameter)
    times u. Cost: one reverse pass (torch.func.vjp inside)."""
    v = torch_view(problem, device, dtype)
    model, params, data = _at_input(v)
    Jt = TransposedJacobianLinearOperator(model, params, data)
    vec = v.data["u"]
    return lambda: Jt @ vec
