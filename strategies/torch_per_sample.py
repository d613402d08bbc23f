"""Per-sample parameter Jacobians (param_jacobian) by the structured machinery of
torch.structured: the same captured layer inputs and output cotangents (torch_capture), and
per layer the per-sample weight gradients G[o,i]^T P[i] (BackPACK's BatchGrad, for any model).
"""
from __future__ import annotations

import warnings

import torch

from .registry import register
from .torch_capture import capture, layer_jacobian, model_jacobian, plan
from .torch_layer_rules import norm_grads
from .torch_model import torch_view
from .torch_structured import StructuredFallback, with_notes


def param_jacobian_structured(model, X: torch.Tensor, stats: dict | None = None) -> torch.Tensor:
    """(B, m, P) per-sample Jacobians w.r.t. all parameters in named_parameters order, per
    layer from its captured inputs and cotangents; fallbacks as in ntk_structured."""
    the_plan = plan(model)
    with torch.no_grad():
        cap = capture(model, X, the_plan)
        said = the_plan.notes + cap.notes
        if said:
            warnings.warn("; ".join(said), StructuredFallback, stacklevel=2)
        sizes = {n: p.numel() for n, p in model.named_parameters()}
        start, at = {}, 0
        for n, size in sizes.items():
            start[n], at = at, at + size
        like = next((p.G for p in cap.pieces), None)
        like = X if like is None else like
        out = like.new_zeros(cap.B, cap.m, at)
        flops = {"forward and backward": cap.flops, "per-sample gradients": 0}

        def put(name, offset, block):  # block (B, m, k): the entries offset.. of parameter name
            out[:, :, start[name] + offset:start[name] + offset + block.shape[2]] += block

        def put_all(names, block):  # whole parameters, in the order given
            at = 0
            for n in names:
                put(n, 0, block[:, :, at:at + sizes[n]])
                at += sizes[n]

        for piece in cap.pieces:
            g = piece.grads()
            size = piece.C * piece.K
            put(piece.weight[0], piece.weight[1], g[:, :, :size])
            if piece.bias is not None:
                put(piece.bias[0], piece.bias[1], g[:, :, size:])
            if piece.idx is None:
                flops["per-sample gradients"] += 2 * cap.B * cap.m * piece.T * size
        for prefix, (module, calls) in {**cap.norms, **cap.layers}.items():
            names = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()]
            norm = prefix in cap.norms
            block = sum(torch.cat(norm_grads(module, a, G), dim=2) if norm else
                        layer_jacobian(module, a, G) for a, G in calls)
            put_all(names, block)
        if cap.model_params:
            put_all(cap.model_params, model_jacobian(model, cap.model_params, X))
    if stats is not None:
        stats.update(routes={p.name: "grads" for p in cap.pieces}, flops=flops, notes=said)
    return out


@register("param_jacobian", "torch.structured")
def _param_jacobian_structured(problem, device, dtype):
    """Structured per-sample gradients on any model: hooks capture each layer's inputs and
    output cotangents, and each layer's per-sample weight gradients are G^T P (BackPACK's
    BatchGrad). Cost: one forward, m batched backward passes, O(B m T C K) per layer."""
    v = torch_view(problem, device, dtype)
    X = v.data["X"]
    return with_notes(lambda stats: param_jacobian_structured(v.model, X, stats),
                      plan(v.model).notes, X.dtype)
