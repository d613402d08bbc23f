"""Forward-mode by hand for layer-list MLPs: the primal and the tangent carried through each layer
with aten's own derivative kernels, no autograd machinery. For seed 002's Jacobian diagonal this
is the cheapest exact route: torch.func.jvp pays dual-tensor bookkeeping on every op, which on a
tiny net costs more than the arithmetic (7x a forward pass against ~2x here)."""
from __future__ import annotations

import torch

from .applicability import layer_list, samples_independent
from .layer_kinds import KINDS, lacking
from .registry import register
from .torch_model import torch_view


def layers_covered(problem) -> str | None:
    """Linear layers and elementwise activations only: the hand-written tangent rules."""
    if layer_list(problem):
        return layer_list(problem)
    kinds = lacking(problem.spec.layers, "forward_tangent")
    if kinds:
        return f"no hand-written tangent rule for layer kind(s) {', '.join(kinds)}"
    return samples_independent(problem)


@register("jac_diag", "torch.forward_tangent", applies=layers_covered, tags={"matrix-free"})
def _d_forward_tangent(problem, device, dtype):
    """One forward pass carrying primal and tangent (ones) by hand with aten derivative kernels;
    the last layer's primal is skipped. Cost: about two forward passes, no autograd."""
    v = torch_view(problem, device, dtype)
    kinds = [KINDS[layer.kind] for layer in problem.spec.layers]
    # The primal is needed after layer i only if a later layer's tangent rule reads it.
    plan = [(kind.tangent_step(module), any(k.tangent_reads_primal for k in kinds[i + 1:]))
            for i, (module, kind) in enumerate(zip(v.model, kinds))]

    def run():
        with torch.no_grad():
            x = v.data["x"].reshape(-1, 1)
            dx = torch.ones_like(x)
            for step, need_primal in plan:
                x, dx = step(x, dx, need_primal)
            return dx
    return run
