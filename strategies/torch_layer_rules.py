"""Per-layer rules of the structured derivatives (torch.structured): what one call of a
parameterised PyTorch layer contributes, from its input and its output cotangents.

Each layer kind maps to one of two forms:
- a `Piece`: a linear map applied at T positions of a sample, y[t] = W p[t] (+ b), given by
  its patches P (B, T, K) and cotangents G (m, B, T, C). nn.Linear (tokens: T = the leading
  dimensions), nn.Conv1d/Conv2d (T = output positions, P = unfolded patches), nn.Embedding
  (P = one-hot rows, kept as the indices) and nn.MultiheadAttention's projections (its
  forward is replaced, during capture, by `attention_forward`, which calls the same math
  through `record`, so its projections are pieces like any Linear). A piece's per-sample
  weight gradient is G[o,i]^T P[i]; its NTK term has a "gram" and a "grads" route
  (torch_structured).
- per-sample gradients of a normalisation layer's affine parameters (`norm_grads`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# Normalisations within one sample: no batch statistics, so no mode to check.
SAMPLE_NORMS = (nn.GroupNorm, nn.LayerNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_CONVS = (nn.Conv2d, nn.Conv1d)
LINEAR = "linear"  # the rule of a plain nn.Linear: y = a W^T + b


def _own(module: nn.Module, names: set[str]) -> bool:
    """The module's parameters are exactly its own direct `weight` (and maybe `bias`): only
    then do the layer rules know how they enter (weight_norm, for one, renames them)."""
    direct = {n for n, _ in module.named_parameters(recurse=False)}
    nested = len(list(module.parameters())) != len(direct)
    return "weight" in direct and direct <= names and not nested


def _plain(module: nn.Module, cls) -> bool:
    return isinstance(module, cls) and type(module).forward is cls.forward


def rule_of(module: nn.Module) -> str | None:
    """The rule for a module with direct parameters: "linear", "conv", "embedding", "norm",
    "attention", or None (no rule: its parameters fall back)."""
    if nn.utils.parametrize.is_parametrized(module):
        return None  # the gradient would be w.r.t. the computed weight, not the parameters
    if _plain(module, nn.MultiheadAttention):
        plain = module.bias_k is None and module.bias_v is None and not module.add_zero_attn
        return "attention" if plain else None
    if _plain(module, nn.Linear):
        return LINEAR if _own(module, {"weight", "bias"}) else None
    if any(_plain(module, c) for c in _CONVS):
        return "conv" if _own(module, {"weight", "bias"}) else None  # groups: split_groups
    if _plain(module, nn.Embedding):
        # max_norm rewrites rows during the forward; scale_grad_by_freq makes one sample's
        # gradient depend on the others.
        simple = module.max_norm is None and not module.scale_grad_by_freq
        return "embedding" if simple and _own(module, {"weight"}) else None
    if isinstance(module, _BatchNorm) and type(module).forward is _BatchNorm.forward:
        if module.training or module.running_mean is None:
            raise ValueError(f"{type(module).__name__} uses batch statistics (training mode or "
                             "no running stats): samples interact and the per-sample NTK is "
                             "not defined; call model.eval()")
        return "norm" if _own(module, {"weight", "bias"}) else None
    if any(_plain(module, n) for n in SAMPLE_NORMS):
        return "norm" if _own(module, {"weight", "bias"}) else None
    return None


# ------------------------------------------------------------------------------ pieces
@dataclass
class Piece:
    """A linear map used at T positions per sample, all its calls concatenated along T.

    `weight` and `bias` are (parameter name, flat offset within it): attention's q, k and v
    projections are row blocks of one in_proj_weight. `idx` (B, T) replaces P for an
    embedding (-1: no gradient, padding_idx), whose table is stored (K, C), not (C, K)."""

    name: str
    P: torch.Tensor | None  # (B, T, K)
    G: torch.Tensor  # (m, B, T, C)
    weight: tuple[str, int]
    bias: tuple[str, int] | None
    K: int
    idx: torch.Tensor | None = None
    unit: bool = False  # G is the identity: a dense layer whose outputs are the network's
    backward_flops: int = 0  # the cotangent passed through it to its input, m times

    @property
    def C(self) -> int:
        return self.G.shape[-1]

    @property
    def T(self) -> int:
        return self.G.shape[2]

    def half(self, lo: int, hi: int) -> "Piece":
        """The samples lo:hi of the piece."""
        cut = (lambda t: None if t is None else t[lo:hi])
        return Piece(self.name, cut(self.P), self.G[:, lo:hi], self.weight, self.bias, self.K,
                     cut(self.idx), self.unit)

    def dense_P(self) -> torch.Tensor:
        if self.P is not None:
            return self.P
        hot = F.one_hot(self.idx.clamp(min=0), self.K).to(self.G.dtype)
        return hot * (self.idx >= 0)[..., None].to(hot.dtype)

    def A(self, other: "Piece") -> torch.Tensor:
        """(B1, B2, T1, T2): P1[i, t] . P2[j, s] (+ 1 for a bias); index matches for an
        embedding, so the one-hot rows are never formed."""
        if self.idx is not None:
            a, b = self.idx[:, None, :, None], other.idx[None, :, None, :]
            return ((a == b) & (a >= 0)).to(self.G.dtype)
        return torch.einsum("itk,jsk->ijts", self.P, other.P) + float(self.bias is not None)

    def grads(self) -> torch.Tensor:
        """Per-sample gradients (B, m, C*K [+ C]) in the parameters' own flat layout."""
        eq = "aitc,itk->iakc" if self.idx is not None else "aitc,itk->iack"
        W = torch.einsum(eq, self.G, self.dense_P()).flatten(2)
        if self.bias is None:
            return W
        return torch.cat([W, self.G.sum(2).transpose(0, 1)], dim=2)

    def forward_flops(self) -> int:
        return 0 if self.idx is not None else 2 * self.G.shape[1] * self.T * self.K * self.C


def linear_parts(layer: nn.Linear, a: torch.Tensor, g: torch.Tensor):
    """P (B, T, K) and G (m, B, T, C) of a Linear on (B, ..., K) inputs: every leading
    dimension after the batch is a position."""
    return a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(*g.shape[:2], -1, g.shape[-1])


def conv_parts(layer: nn.Module, a: torch.Tensor, g: torch.Tensor):
    """P (B, T, K) and G (m, B, T, C) of a Conv2d or Conv1d (a Conv2d of height 1)."""
    pad = layer._reversed_padding_repeated_twice  # what the conv itself pads with
    pad_mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    a = F.pad(a, pad, mode=pad_mode)
    kernel, dilation, stride = layer.kernel_size, layer.dilation, layer.stride
    if isinstance(layer, nn.Conv1d):  # (B, C, L) as (B, C, 1, L); (C, k) patches as (C, 1, k)
        a = a[:, :, None]
        kernel, dilation, stride = ((1,) + t for t in (kernel, dilation, stride))
    P = F.unfold(a, kernel, dilation=dilation, stride=stride)
    return P.transpose(1, 2), g.flatten(3).transpose(2, 3)


def split_groups(piece: Piece, groups: int) -> list[Piece]:
    """A convolution of `groups` groups as one piece per group: group g maps its block of
    input channels (a block of K: unfold orders K by channel) to its block of output
    channels, with its own row block of the weight (and bias) at the offsets given."""
    if groups == 1:
        return [piece]
    K, C = piece.K // groups, piece.C // groups
    (w, w_at), b = piece.weight, piece.bias
    return [Piece(piece.name, piece.P[..., g * K:(g + 1) * K], piece.G[..., g * C:(g + 1) * C],
                  (w, w_at + g * C * K), None if b is None else (b[0], b[1] + g * C), K)
            for g in range(groups)]


def embedding_parts(layer: nn.Embedding, a: torch.Tensor, g: torch.Tensor):
    """Indices (B, T) (-1 at padding_idx, which gets no gradient) and G (m, B, T, C)."""
    idx = a.reshape(a.shape[0], -1)
    if layer.padding_idx is not None:
        idx = idx.masked_fill(idx == layer.padding_idx, -1)
    return idx, g.reshape(*g.shape[:2], -1, g.shape[-1])


# ------------------------------------------------------------------------------ norms
def _normalized(layer: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """x_hat: the layer's input as the layer normalises it, before its affine map."""
    if isinstance(layer, _BatchNorm):
        view = (1, -1) + (1,) * (a.dim() - 2)
        return (a - layer.running_mean.reshape(view)) * torch.rsqrt(
            layer.running_var.reshape(view) + layer.eps)
    if isinstance(layer, nn.GroupNorm):
        return F.group_norm(a, layer.num_groups, eps=layer.eps)
    if isinstance(layer, nn.LayerNorm):
        return F.layer_norm(a, layer.normalized_shape, eps=layer.eps)
    return F.rms_norm(a, layer.normalized_shape, eps=layer.eps)


def norm_grads(layer: nn.Module, a, G) -> list[torch.Tensor]:
    """Per-sample gradients [(B, m, size)] of a normalisation layer's weight and bias (those it
    has, in its parameter order); G is (m, B, *out). Batch and group norm share a parameter
    over the positions after the channel dimension; layer and RMS norm over the dimensions
    before their normalized_shape."""
    x_hat = _normalized(layer, a)
    m, B, size = G.shape[0], G.shape[1], layer.weight.numel()
    channels = isinstance(layer, (_BatchNorm, nn.GroupNorm))
    parts = []
    for name, grad in (("weight", lambda: G * x_hat), ("bias", lambda: G)):
        if getattr(layer, name, None) is not None:
            t = grad()
            t = t.reshape(m, B, size, -1).sum(3) if channels else t.reshape(m, B, -1, size).sum(2)
            parts.append(t.transpose(0, 1))
    return parts


# ------------------------------------------------------------------------------ attention
def _where(bias, name: str, offset: int):
    return None if bias is None else (name, offset)


def _float_mask(mask, dtype):
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)


def attention_forward(mha: nn.MultiheadAttention, prefix: str, record):
    """nn.MultiheadAttention.forward, re-implemented with its projections made explicit, so
    that each is captured as a piece: `record(name, x, weight, bias, where_w, where_b)` applies
    one projection and returns its output (probed). Self-attention (query, key and value one
    tensor) takes in_proj_weight as one projection with C = 3E, as the module itself does.
    Attention itself is plain matmuls and softmax, whose batched backward vmap handles.
    Returns (forward, flops of the attention matmuls per sample pass)."""
    E, h = mha.embed_dim, mha.num_heads
    d = E // h
    name = prefix + "." if prefix else ""
    flops = [0]

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if query.dim() != 3:
            raise ValueError("torch.structured needs batched attention inputs (3-D)")
        if not mha.batch_first:  # (L, B, E) -> (B, L, E): the batch leads every piece
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, L, S = query.shape[0], query.shape[1], key.shape[1]
        bias = mha.in_proj_bias
        if mha._qkv_same_embed_dim and query is key and key is value:
            qkv = record(name + "in_proj", query, mha.in_proj_weight, bias,
                         (name + "in_proj_weight", 0), _where(bias, name + "in_proj_bias", 0))
            q, k, v = qkv.chunk(3, dim=-1)
        else:
            if mha._qkv_same_embed_dim:
                ws = [(mha.in_proj_weight[i * E:(i + 1) * E], (name + "in_proj_weight", i * E * E))
                      for i in range(3)]
            else:
                ws = [(getattr(mha, f"{c}_proj_weight"), (name + f"{c}_proj_weight", 0))
                      for c in "qkv"]
            q, k, v = (record(name + f"{c}_proj", x, w, None if bias is None else
                              bias[i * E:(i + 1) * E], where,
                              _where(bias, name + "in_proj_bias", i * E))
                       for i, (c, x, (w, where)) in enumerate(zip("qkv", (query, key, value), ws)))
        q, k, v = (t.reshape(B, -1, h, d).transpose(1, 2) for t in (q, k, v))  # (B, h, L, d)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)
        mask = _float_mask(attn_mask, scores.dtype)
        if mask is not None:
            scores = scores + (mask.reshape(B, h, L, S) if mask.dim() == 3 else mask)
        pad = _float_mask(key_padding_mask, scores.dtype)
        if pad is not None:
            scores = scores + pad[:, None, None, :]
        weights = torch.softmax(scores, dim=-1)
        if mha.training and mha.dropout > 0:
            weights = F.dropout(weights, mha.dropout)
        o = (weights @ v).transpose(1, 2).reshape(B, L, E)
        flops[0] += 4 * B * h * L * S * d
        out = record(name + "out_proj", o, mha.out_proj.weight, mha.out_proj.bias,
                     (name + "out_proj.weight", 0),
                     _where(mha.out_proj.bias, name + "out_proj.bias", 0))
        if not mha.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights

    return forward, flops
