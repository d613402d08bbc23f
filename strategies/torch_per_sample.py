"""param_jacobian and ggn_vp by the structured machinery of torch.structured: the same
captured layer inputs and output cotangents (torch_capture), and per layer
- param_jacobian: the per-sample weight gradients G[o,i]^T P[i] (BackPACK's BatchGrad, for any
  model), placed in named_parameters order;
- ggn_vp: J^T J v through the layer's factors, never its per-sample gradients: for a piece,
  (J v)[i, o] = sum_t G[o,i,t] . (V P[i,t] + v_b) and J^T u = sum_{i,t} (sum_o u[i,o]
  G[o,i,t]) P[i,t]^T; layers without a rule use their per-sample Jacobians.
"""
from __future__ import annotations

import torch

from .registry import register
from .torch_capture import layer_jacobian, model_jacobian, plan
from .torch_layer_rules import norm_grads
from .torch_model import torch_view
from .torch_structured import capture_noting_fallbacks, with_notes


def param_jacobian_structured(model, X: torch.Tensor, stats: dict | None = None) -> torch.Tensor:
    """(B, m, P) per-sample Jacobians w.r.t. all parameters in named_parameters order, per
    layer from its captured inputs and cotangents; fallbacks as in ntk_structured."""
    with torch.no_grad():
        cap, said = capture_noting_fallbacks(model, X)
        sizes, start, at = _offsets(model)
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
        for names, block in _per_sample_blocks(model, cap, X):
            put_all(names, block)
    if stats is not None:
        stats.update(routes={p.name: "grads" for p in cap.pieces}, flops=flops, notes=said)
    return out


def _offsets(model):
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    start, at = {}, 0
    for n, size in sizes.items():
        start[n], at = at, at + size
    return sizes, start, at


def _per_sample_blocks(model, cap, X):
    """[(parameter names, (B, m, P_names))] of the layers without a piece."""
    out = []
    for prefix, (module, calls) in {**cap.norms, **cap.layers}.items():
        names = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()]
        norm = prefix in cap.norms
        out.append((names, sum(torch.cat(norm_grads(module, a, G), dim=2) if norm else
                               layer_jacobian(module, a, G) for a, G in calls)))
    if cap.model_params:
        out.append((cap.model_params, model_jacobian(model, cap.model_params, X)))
    return out


def ggn_vp_structured(model, X: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """J^T J vec over the batch, J the (B*m, P) parameter Jacobian, by the layers' factors."""
    with torch.no_grad():
        cap, said = capture_noting_fallbacks(model, X)
        sizes, start, _ = _offsets(model)

        def part(where, size):
            return vec[start[where[0]] + where[1]:start[where[0]] + where[1] + size]

        Jv = vec.new_zeros(cap.B, cap.m)
        for p in cap.pieces:
            V = part(p.weight, p.C * p.K)
            if p.idx is not None:  # the rows each position used; none at padding
                U = V.reshape(p.K, p.C)[p.idx.clamp(min=0)] * (p.idx >= 0)[..., None]
            else:
                U = p.P @ V.reshape(p.C, p.K).T
            if p.bias is not None:
                U = U + part(p.bias, p.C)
            Jv += torch.einsum("obtc,btc->bo", p.G, U)
        blocks = _per_sample_blocks(model, cap, X)
        for names, J in blocks:
            Jv += J @ torch.cat([part((n, 0), sizes[n]) for n in names])
        out = torch.zeros_like(vec)
        for p in cap.pieces:
            Gu = torch.einsum("obtc,bo->btc", p.G, Jv)
            at = start[p.weight[0]] + p.weight[1]
            if p.idx is not None:
                rows = Gu.new_zeros(p.K + 1, p.C)  # row K: the padding positions' sink
                rows.index_add_(0, p.idx.where(p.idx >= 0, p.K).flatten(), Gu.flatten(0, 1))
                out[at:at + p.K * p.C] += rows[:p.K].flatten()
            else:
                out[at:at + p.C * p.K] += torch.einsum("btc,btk->ck", Gu, p.P).flatten()
            if p.bias is not None:
                at = start[p.bias[0]] + p.bias[1]
                out[at:at + p.C] += Gu.sum((0, 1))
        for names, J in blocks:
            back, at = torch.einsum("bo,bop->p", Jv, J), 0
            for n in names:
                out[start[n]:start[n] + sizes[n]] += back[at:at + sizes[n]]
                at += sizes[n]
    return out


@register("ggn_vp", "torch.structured", tags={"matrix-free"})
def _ggn_vp_structured(problem, device, dtype):
    """J^T J v through each layer's captured inputs and output cotangents (hooks, any model),
    never a per-sample gradient of a layer with a rule. Cost: one forward, m batched backward
    passes, then O(B m T C + B T C K) per layer."""
    v = torch_view(problem, device, dtype)
    X, vec = v.data["X"], v.data["v"]
    run = lambda: ggn_vp_structured(v.model, X, vec)  # noqa: E731
    run.notes = plan(v.model).notes
    return run


@register("param_jacobian", "torch.structured")
def _param_jacobian_structured(problem, device, dtype):
    """Structured per-sample gradients on any model: hooks capture each layer's inputs and
    output cotangents, and each layer's per-sample weight gradients are G^T P (BackPACK's
    BatchGrad). Cost: one forward, m batched backward passes, O(B m T C K) per layer."""
    v = torch_view(problem, device, dtype)
    X = v.data["X"]
    return with_notes(lambda stats: param_jacobian_structured(v.model, X, stats),
                      plan(v.model).notes, X.dtype)
