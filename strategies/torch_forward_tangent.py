"""Forward-mode by hand for layer-list MLPs: the primal and the tangent carried through each layer
with aten's own derivative kernels, no autograd machinery. For seed 002's Jacobian diagonal this
is the cheapest exact route: torch.func.jvp pays dual-tensor bookkeeping on every op, which on a
tiny net costs more than the arithmetic (7x a forward pass against ~2x here)."""
from __future__ import annotations

import torch

from .applicability import layer_list, samples_independent
from .registry import register
from .torch_model import torch_view

aten = torch.ops.aten

# d(activation) applied to a tangent, from the activation's input z and output y.
_TANGENT = {
    "tanh": lambda dz, z, y: aten.tanh_backward(dz, y),
    "relu": lambda dz, z, y: aten.threshold_backward(dz, z, 0),
    "sqrt": lambda dz, z, y: dz / (2 * y),
}
_ACTIVATION = {"tanh": torch.tanh, "relu": torch.relu, "sqrt": torch.sqrt}


def layers_covered(problem) -> str | None:
    """Linear layers and elementwise activations only: the hand-written tangent rules."""
    if layer_list(problem):
        return layer_list(problem)
    kinds = {layer.kind for layer in problem.spec.layers} - {"linear", *_TANGENT}
    if kinds:
        return f"no hand-written tangent rule for layer kind(s) {', '.join(sorted(kinds))}"
    return samples_independent(problem)


@register("jac_diag", "torch.forward_tangent", applies=layers_covered, tags={"matrix-free"})
def _d_forward_tangent(problem, device, dtype):
    """One forward pass carrying primal and tangent (ones) by hand with aten derivative kernels;
    the last layer's primal is skipped. Cost: about two forward passes, no autograd."""
    v = torch_view(problem, device, dtype)
    plan = []
    for module, layer in zip(v.model, problem.spec.layers):
        if layer.kind == "linear":
            plan.append(("linear", module.weight.detach().T.contiguous(),
                         None if module.bias is None else module.bias.detach()))
        else:
            plan.append((layer.kind, None, None))
    # The primal is needed after layer i only if an activation follows it.
    need_primal = [any(k != "linear" for k, _, _ in plan[i + 1:]) for i in range(len(plan))]

    def run():
        with torch.no_grad():
            x = v.data["x"].reshape(-1, 1)
            dx = torch.ones_like(x)
            for i, (kind, wt, b) in enumerate(plan):
                if kind == "linear":
                    dx = dx @ wt
                    if need_primal[i]:
                        x = torch.addmm(b, x, wt) if b is not None else x @ wt
                else:
                    y = _ACTIVATION[kind](x)
                    dx, x = _TANGENT[kind](dx, x, y), y
            return dx
    return run
