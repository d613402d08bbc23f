"""Structured-derivative empirical NTK for JAX (Novak et al. 2022; neural-tangents'
STRUCTURED_DERIVATIVES, which no longer runs on current JAX), over a problem's `ModelSpec`.

The same method as `strategies.torch_structured`, whose layer rules and cost model this module
reuses: one forward pass records the input `a` of every parameterised layer; one vjp w.r.t.
zero "probes" added to those layers' outputs, vmapped over the m unit cotangents at the network
output, gives every such layer's output cotangents `g` (m, B, ...). No per-sample parameter
Jacobian of the network is formed. Per layer kind (`RULES`, from each kind's
`jax_structured_rule` in `strategies.layer_kinds`):

- "patches" (linear, conv2d): the kind's patches P (B, T, K) (conv:
  `lax.conv_general_dilated_patches`) and cotangents G (m, B, T, C); a dense layer (T = 1) adds
  (a1 a2^T + 1) * (g1 g2^T), a conv layer takes torch's "gram" or "grads" route by the same
  flop estimate.
- "grads" (batchnorm2d, eval mode): the kind's per-sample gradients of its parameters, then
  contracted.
- Kinds without parameters (the activations, avgpool2, flatten): the vjp passes cotangents
  through.
- A parameterised kind without a rule falls back to per-sample Jacobians of exactly that layer's
  parameters (vjp of the layer alone at its recorded input, with its cotangents). The fallback
  is reported: a StructuredFallback warning when the computation is traced or run, and
  "fallback: ..." lines on the prepared callable's `.notes`, as in the torch strategy.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import torch_structured as rules
from .applicability import layer_list
from .jax_model import _apply, _param_names, einsum, eye, jax, jnp, matmul, register_jax
from .jax_ntk import _CONTRACT
from .layer_kinds import KINDS
from .problem import ModelSpec
from .torch_structured import _GRAM, StructuredFallback

# Layer kind -> rule, read from the kinds once: the tests take rules away here to exercise the
# fallback. Kinds not listed here and without parameters need none.
RULES = {name: kind.jax_structured_rule for name, kind in KINDS.items()
         if kind.jax_structured_rule}


def _plan(spec: ModelSpec):
    """[(layer index, rule or None)] for the parameterised layers, and the fallback notes."""
    entries, notes = [], []
    for idx, layer in enumerate(spec.layers):
        if not layer.params:
            continue
        rule = RULES.get(layer.kind)
        entries.append((idx, rule))
        if rule is None:
            count = sum(int(np.size(a)) for a in layer.params.values())
            notes.append(f"fallback: layer {idx} ({layer.kind}) has no structured rule; "
                         f"per-sample Jacobians of its {count} parameters")
    return entries, notes


def structured_notes(spec: ModelSpec) -> list[str]:
    """The fallback lines `jax.structured` reports for `spec`, without running it."""
    return _plan(spec)[1]


def _layer_arrays(v, idx: int):
    layer = v.problem.spec.layers[idx]
    return ({k: v.params[f"{idx}.{k}"] for k in layer.params},
            {k: v.buffers[f"{idx}.{k}"] for k in layer.buffers})


def _activations(v, probed: list[int], X):
    """Inputs (B, ...) of the probed layers and their output cotangents (m, B, ...)."""
    layers = v.problem.spec.layers

    def forward(probes):
        inputs, h = [], X
        for idx, layer in enumerate(layers):
            p, b = _layer_arrays(v, idx)
            if idx in probed:
                inputs.append(h)
                h = _apply(layer, p, b, h) + probes[len(inputs) - 1]
            else:
                h = _apply(layer, p, b, h)
        return h.reshape(h.shape[0], -1), inputs

    def outputs():  # the probed layers' outputs, for the probes' shapes
        shapes, h = [], X
        for idx, layer in enumerate(layers):
            h = _apply(layer, *_layer_arrays(v, idx), h)
            if idx in probed:
                shapes.append(h)
        return shapes
    probes = [jnp.zeros(s.shape, s.dtype) for s in jax.eval_shape(outputs)]
    y, pullback, inputs = jax.vjp(forward, probes, has_aux=True)
    m = y.shape[1]
    units = jnp.broadcast_to(jnp.eye(m, dtype=y.dtype)[:, None, :], (m, *y.shape))
    return inputs, jax.vmap(pullback)(units)[0]


def _dense(P1, G1, P2, G2, bias: bool, mode: str, unit: bool):
    """(a1 a2^T + 1) * (g1 g2^T) for a layer with one position (T = 1), as matrix products.
    `unit`: the layer's outputs are the network's, so its cotangents are the unit vectors,
    g1 g2^T = 1{o = o'}, and only a1 a2^T is formed."""
    A = matmul(P1[:, 0], P2[:, 0].T) + float(bias)  # (B1, B2)
    if unit:
        m = G1.shape[0]
        return {"full": lambda: A[:, :, None, None] * eye(m, A),
                "trace": lambda: m * A,
                "diagonal": lambda: jnp.broadcast_to(A[:, :, None], (*A.shape, m))}[mode]()
    g1, g2 = G1[:, :, 0].transpose(1, 0, 2), G2[:, :, 0].transpose(1, 0, 2)  # (B, m, C)
    (b1, m, c), b2 = g1.shape, g2.shape[0]
    if mode == "full":
        GG = matmul(g1.reshape(b1 * m, c), g2.reshape(b2 * m, c).T).reshape(b1, m, b2, m)
        return (A[:, None, :, None] * GG).transpose(0, 2, 1, 3)
    if mode == "trace":
        return A * matmul(g1.reshape(b1, -1), g2.reshape(b2, -1).T)
    return A[:, :, None] * einsum("iac,jac->ija", g1, g2)


def _patch_grads(P, G, bias: bool):
    """Per-sample gradients (B, m, C*K [+ C]) of a patches layer: G[o,i]^T P[i]."""
    W = einsum("aitc,itk->iack", G, P)
    W = W.reshape(*W.shape[:2], -1)
    return jnp.concatenate([W, G.sum(2).transpose(1, 0, 2)], axis=2) if bias else W


def _patches_term(layer, a1, g1, a2, g2, mode: str, unit: bool = False):
    bias = "bias" in layer.params
    kind = KINDS[layer.kind]
    P1, G1 = kind.jax_patches(layer, a1, g1)
    P2, G2 = kind.jax_patches(layer, a2, g2)
    (B1, T, K), B2, (m, C) = P1.shape, P2.shape[0], (G1.shape[0], G1.shape[3])
    if T == 1:
        return _dense(P1, G1, P2, G2, bias, mode, unit and kind.flat_output)
    # torch_structured's flop estimate, looked up at trace time so one switch picks the route
    # in both frameworks (the tests force each route through it).
    if rules._gram_is_cheaper(B1, B2, T, K, C, m, mode):
        first, second = _GRAM[mode]
        A = einsum("itk,jsk->ijts", P1, P2) + float(bias)
        return einsum(second, A, einsum(first, G1, G2))
    return einsum(_CONTRACT[mode], _patch_grads(P1, G1, bias), _patch_grads(P2, G2, bias))


def _layer_jacobian(layer, p: dict, b: dict, a, G):
    """Fallback: per-sample Jacobians (B, m, P_l) of one layer's own parameters, by vjp of the
    layer alone at each sample's input with that sample's m output cotangents."""
    names = _param_names(layer)

    def one(x, g):  # x: one sample's input; g: (m, *out)
        _, pullback = jax.vjp(lambda q: _apply(layer, q, b, x[None]), p)
        grads = jax.vmap(pullback)(g[:, None])[0]
        return jnp.concatenate([grads[k].reshape(g.shape[0], -1) for k in names], axis=1)
    return jax.vmap(one, in_axes=(0, 1))(a, G)


def ntk_structured(v, mode: str):
    """The NTK of `mode` of a JaxView's network between its data X1 and X2, by structured
    derivatives; warns with StructuredFallback for parameters handled by the fallback."""
    entries, notes = _plan(v.problem.spec)
    if notes:
        warnings.warn("; ".join(notes), StructuredFallback, stacklevel=2)
    X1, X2 = v.data["X1"], v.data["X2"]
    B1, B2, m = X1.shape[0], X2.shape[0], v.problem.spec.out_dim
    shape = {"full": (B1, B2, m, m), "trace": (B1, B2), "diagonal": (B1, B2, m)}[mode]
    out = jnp.zeros(shape, X1.dtype)
    if not entries:  # no parameters: the NTK is zero
        return out
    # Samples do not interact: one pass over both batches, with larger matrix products.
    a, g = _activations(v, [idx for idx, _ in entries], jnp.concatenate([X1, X2]))
    layers = v.problem.spec.layers
    for k, (idx, rule) in enumerate(entries):
        layer, (p, b) = layers[idx], _layer_arrays(v, idx)
        a1, a2, g1, g2 = a[k][:B1], a[k][B1:], g[k][:, :B1], g[k][:, B1:]
        if rule == "patches":
            out = out + _patches_term(layer, a1, g1, a2, g2, mode, unit=idx == len(layers) - 1)
            continue
        per_sample = KINDS[layer.kind].jax_sample_grads if rule == "grads" else _layer_jacobian
        out = out + einsum(_CONTRACT[mode], per_sample(layer, p, b, a1, g1),
                           per_sample(layer, p, b, a2, g2))
    return out


@register_jax("ntk", "structured", applies=layer_list,
              notes=lambda problem: structured_notes(problem.spec))
def _structured(v):
    """Structured derivatives: per layer, (a1 a2^T + 1) * (g1 g2^T) from layer inputs and output
    cotangents (conv: patches, or small per-sample weight gradients). Cost: one forward, m
    batched backward passes, O(B1 B2 m^2 width) per dense layer; no per-sample Jacobian."""
    return ntk_structured(v, v.problem.mode)
