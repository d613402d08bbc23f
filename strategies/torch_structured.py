"""Structured-derivative empirical NTK for PyTorch (Novak et al. 2022, "Fast finite width NTK";
neural-tangents' STRUCTURED_DERIVATIVES), for any model, without per-sample Jacobians of it.

strategies.torch_capture records, in one forward with hooks and one backward batched over the
m unit output cotangents, the input `a` and output cotangents `g` of every call of every
parameterised layer, wherever the forward calls it. Each layer's NTK term then comes from its
rule (strategies.torch_layer_rules):

- Pieces (Linear on any leading dimensions, Conv1d/Conv2d, Embedding, attention's
  projections; a layer called several times is one piece whose positions are all its calls,
  so the cross terms of shared weights are included): over patches P (B, T, K) and
  cotangents G (m, B, T, C),
      K_l[i, j, o, o'] = sum_{t,s} (P1[i,t] . P2[j,s] + 1{bias}) * (G1[o,i,t] . G2[o',j,s])
  computed one of two ways, chosen per piece by the flop estimate `_gram_is_cheaper`:
  "gram" forms (P1 P2^T + 1) and (G1 G2^T) and multiplies them, O(B1 B2 T^2 (K + m_e C));
  "grads" forms the per-sample weight gradients G[o,i]^T P[i] (B m C K numbers, small for
  conv weights) and contracts them, O(B m T C K + B1 B2 m_e C K); m_e is m*m for mode full
  and m for trace and diagonal. A dense layer whose outputs are the network's ("unit")
  skips G1 G2^T: its cotangents are the unit vectors. An embedding's P1 P2^T is the match
  of the rows used, never a one-hot product.
- Normalisation layers (eval-mode batch norm, GroupNorm, LayerNorm, RMSNorm): per-sample
  gradients of the affine parameters, then contracted.
- Fallbacks, for exactly the parameters without a rule (torch_capture), reported by a
  "fallback: ..." note and a StructuredFallback warning.

The registered strategy's prepared callable carries `.notes`: the fallbacks, the route taken
per layer, and the matrix-product bound (strategies.flops) with the GFLOP/s achieved.
"""
from __future__ import annotations

import time
import warnings

import torch

from .flops import BoundNote
from .quantities import NTK_MODES, contract_ntk
from .registry import register
from .torch_capture import capture, layer_jacobian, model_jacobian, plan
from .torch_layer_rules import norm_grads
from .torch_model import torch_view


class StructuredFallback(UserWarning):
    """Some parameters had no structured rule and were handled by per-sample Jacobians."""


def structured_notes(model) -> list[str]:
    """The fallback lines `ntk_structured` reports for `model`, as far as the module tree
    tells (a layer that turns out not to see the batch first is found when run)."""
    return plan(model).notes


def _gram_is_cheaper(B1, B2, T, K, C, m, mode) -> bool:
    """Flop estimates of the two routes for one piece (see the module docstring)."""
    me = m * m if mode == "full" else m  # output pairs per sample pair
    gram = B1 * B2 * T * T * (K + me * C + me)
    grads = (B1 + B2) * m * T * C * K + B1 * B2 * me * (C * K + C)
    return gram <= grads


_GRAM = {"full": ("aitc,bjsc->ijabts", "ijts,ijabts->ijab"),
         "trace": ("aitc,ajsc->ijts", "ijts,ijts->ij"),
         "diagonal": ("aitc,ajsc->ijats", "ijts,ijats->ija")}


def _add_gram(out, p1, p2, mode: str) -> None:
    """out += the piece's term by the "gram" route."""
    if p1.idx is None and p1.T == 1 and p2.T == 1:  # dense layer: plain matrix products
        A = p1.P[:, 0] @ p2.P[:, 0].T + float(p1.bias is not None)  # (B1, B2)
        g1, g2 = p1.G[:, :, 0], p2.G[:, :, 0]  # (m, B, C)
        m, (b1, b2) = g1.shape[0], A.shape
        if mode == "full":  # into out's (B1, m, B2, m) storage, the layout of this product
            GG = g1.transpose(0, 1).reshape(b1 * m, -1) @ g2.transpose(0, 1).reshape(b2 * m, -1).T
            # A repeated along o' first: the product then runs over contiguous rows of B2 m
            # values, where broadcasting A[i, j] over a row of m ran ~4x slower
            A = A[:, None, :, None].expand(b1, 1, b2, m).reshape(b1, 1, b2 * m)
            out.permute(0, 2, 1, 3).view(b1, m, b2 * m).addcmul_(A, GG.view(b1, m, b2 * m))
        elif mode == "trace":
            flat1, flat2 = g1.transpose(0, 1).reshape(b1, -1), g2.transpose(0, 1).reshape(b2, -1)
            out.addcmul_(A, flat1 @ flat2.T)
        else:
            out.addcmul_(A[:, :, None], torch.bmm(g1, g2.transpose(1, 2)).permute(1, 2, 0))
        return
    first, second = _GRAM[mode]
    out += torch.einsum(second, p1.A(p2), torch.einsum(first, p1.G, p2.G))


def _add_output_layer(out, p1, p2, m: int, mode: str) -> None:
    """out += the term of a dense layer whose outputs are the network's: its cotangents are the
    unit vectors, so (G1 G2^T)[i, o, j, o'] = 1{o = o'} and only (P1 P2^T + 1) is computed."""
    A = p1.P[:, 0] @ p2.P[:, 0].T + float(p1.bias is not None)
    if mode == "full":
        out.diagonal(dim1=2, dim2=3).add_(A[:, :, None])
    elif mode == "trace":
        out.add_(A, alpha=m)
    else:
        out.add_(A[:, :, None])


def _zeros(B1: int, B2: int, m: int, like: torch.Tensor, mode: str) -> torch.Tensor:
    """The result, indexed (B1, B2, m[, m]); in full mode stored as (B1, m, B2, m), the layout
    the dense layers' products come out in, so they accumulate without strided passes."""
    if mode == "full":
        return like.new_zeros(B1, m, B2, m).permute(0, 2, 1, 3)
    return like.new_zeros((B1, B2) if mode == "trace" else (B1, B2, m))


def _piece_term(out, piece, B1: int, same: bool, m: int, mode: str) -> tuple[str, dict]:
    """Adds one piece's term; returns its route and the flops of its contractions."""
    p1 = piece.half(0, B1)
    p2 = p1 if same else piece.half(B1, piece.G.shape[1])
    b1, b2, T, K, C = p1.G.shape[1], p2.G.shape[1], piece.T, piece.K, piece.C
    me = m * m if mode == "full" else m
    if piece.unit and piece.idx is None:
        _add_output_layer(out, p1, p2, m, mode)
        return "unit", {"contractions": 2 * b1 * b2 * K}
    if _gram_is_cheaper(b1, b2, T, K, C, m, mode):
        _add_gram(out, p1, p2, mode)
        a = 0 if piece.idx is not None else 2 * b1 * b2 * T * T * K
        return "gram", {"contractions": a + 2 * b1 * b2 * T * T * me * (C + 1)}
    j1 = p1.grads()
    j2 = j1 if same else p2.grads()
    out += contract_ntk(j1, j2, mode)
    size = j1.shape[2]
    make = 0 if piece.idx is not None else 2 * (b1 + (0 if same else b2)) * m * T * C * K
    return "grads", {"per-sample gradients": make, "contractions": 2 * b1 * b2 * me * size}


# ------------------------------------------------------------------------------ the NTK
def capture_noting_fallbacks(model, X: torch.Tensor, notes: list | None = None):
    """(capture, fallback lines) of `model` on X (torch_capture's plan and capture): each
    fallback line is appended to `notes` (when given) and warned as a StructuredFallback."""
    the_plan = plan(model)
    cap = capture(model, X, the_plan)
    said = the_plan.notes + cap.notes
    if said:
        if notes is not None:
            notes.extend(said)
        warnings.warn("; ".join(said), StructuredFallback, stacklevel=3)
    return cap, said


def ntk_structured(model, x1: torch.Tensor, x2: torch.Tensor, mode: str = "full",
                   notes: list | None = None, stats: dict | None = None) -> torch.Tensor:
    """Empirical NTK J(x1) J(x2)^T over all parameters of `model` by structured derivatives.

    `model` is any module whose samples do not interact (eval mode); its outputs are
    flattened per sample to m values. mode "full" -> (B1, B2, m, m), "trace" -> (B1, B2),
    "diagonal" -> (B1, B2, m). Parameters without a rule use per-sample Jacobians of exactly
    those parameters; each such fallback appends a "fallback: ..." line to `notes` (when
    given) and warns with StructuredFallback. `stats`, when given, receives "routes" (layer
    name -> route) and "flops" (part -> count). requires_grad of the parameters is ignored.
    """
    if mode not in NTK_MODES:
        raise ValueError(f"unknown NTK mode {mode!r}; known: {', '.join(NTK_MODES)}")
    same = x2 is x1
    B1, B2 = x1.shape[0], x2.shape[0]
    with torch.no_grad():  # graphs only where capture enables them (torch.func ignores it)
        X = x1 if same else torch.cat([x1, x2])
        cap, said = capture_noting_fallbacks(model, X, notes)
        m = cap.m
        out = _zeros(B1, B2, m, X if X.is_floating_point() else cap.pieces[0].G, mode)
        routes, flops = {}, {"forward and backward": cap.flops}

        def add(parts):
            for k, v in parts.items():
                flops[k] = flops.get(k, 0) + v

        def per_sample(j):  # (B, m, P) over both batches: contract its halves
            j1, j2 = j[:B1], (j[:B1] if same else j[B1:])
            out.add_(contract_ntk(j1, j2, mode))
            add({"contractions": 2 * B1 * B2 * (m * m if mode == "full" else m) * j.shape[2]})

        for piece in cap.pieces:
            route, parts = _piece_term(out, piece, B1, same, m, mode)
            routes[piece.name] = route
            add(parts)
        for prefix, (module, calls) in cap.norms.items():
            per_sample(sum(torch.cat(norm_grads(module, a, G), dim=2) for a, G in calls))
            routes[prefix] = "grads"
        for prefix, (module, calls) in cap.layers.items():
            per_sample(sum(layer_jacobian(module, a, G) for a, G in calls))
            routes[prefix] = "fallback (layer)"
        if cap.model_params:
            per_sample(model_jacobian(model, cap.model_params, X))
            routes["model w.r.t. " + ", ".join(cap.model_params)] = "fallback (model)"
    if stats is not None:
        stats.update(routes=routes, flops=flops, notes=said)
    return out.contiguous()


def route_note(routes: dict) -> str:
    """One line: each layer's route, grouped by route."""
    by: dict[str, list] = {}
    for name, route in routes.items():
        by.setdefault(route, []).append(name or "(the model)")
    return "routes: " + "; ".join(f"{r}: {', '.join(names)}" for r, names in by.items())


def with_notes(compute, notes: list, dtype):
    """The prepared callable: runs `compute(stats)`, times each call for the bound note, and
    after its first call adds the routes, run-time fallbacks and the bound to `notes`."""
    bound = BoundNote(dtype)

    def run():
        stats = {}
        t0 = time.process_time()  # CPU time, as flops.matmul_rate measures the rate
        out = compute(stats)
        bound.seconds.append(time.process_time() - t0)
        if not bound.flops:
            bound.flops, bound.parts = sum(stats["flops"].values()), stats["flops"]
            notes.extend(n for n in stats["notes"] if n not in notes)
            notes.extend([route_note(stats["routes"]), bound])
        return out
    run.notes = notes
    run.bound = bound
    return run


@register("ntk", "torch.structured")
def _ntk_structured(problem, device, dtype):
    """Structured derivatives on any model: hooks capture each layer's inputs and output
    cotangents; per layer (a1 a2^T + 1) * (g1 g2^T), or contracted per-sample weight gradients,
    whichever costs fewer flops. Cost: one forward, m batched backward passes, O(B1 B2 m^2
    width) per dense layer; a per-sample Jacobian only for parameters without a rule."""
    v = torch_view(problem, device, dtype)
    X1, X2 = v.data["X1"], v.data["X2"]
    return with_notes(lambda stats: ntk_structured(v.model, X1, X2, problem.mode, stats=stats),
                      structured_notes(v.model), X1.dtype)
