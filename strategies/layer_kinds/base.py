"""The base class of a layer kind: every hook the suite calls on a kind of built-in layer.

A hook a kind does not implement raises; whether a kind has a rule at all is what its
`unsupported` says, so that the strategies needing that rule report themselves not applicable,
naming the kind, before anything runs.
"""
from __future__ import annotations

import math

# What a kind can do beyond building itself. "jax_structured" unsupported means the parameters
# fall back to per-sample Jacobians; the backpack.* entries say whether BackPACK has a rule for
# the module (diag_ggn: and the layer has no curvature, so DiagGGN is the Hessian diagonal).
OPTIONAL = ("hessian_backprop", "forward_tangent", "jax_structured", "neural_tangents",
            "backpack.batch_grad", "backpack.diag_hessian", "backpack.diag_ggn")
FEATURES = ("torch", "jax", "cost", *OPTIONAL)

# float32 products at full precision: on GPUs XLA's default precision may use TF32 for float32
# dots and convolutions, which torch does not do by default and which breaks the float32
# tolerance. Stated per operation so no global setting changes.
JAX_PRECISION = "highest"


def missing(hook):
    """A hook left to the kinds that have the rule; test_layer_kinds finds these by the mark."""
    def raises(self, *args, **kwargs):
        raise NotImplementedError(f"layer kind {self.name!r} has no {hook.__name__} rule")
    raises.missing = True
    raises.__name__, raises.__doc__ = hook.__name__, hook.__doc__
    return raises


class LayerKind:
    """One kind of built-in layer: its torch module, JAX function, cost and derivative rules."""

    name = ""
    unsupported: frozenset[str] = frozenset()
    parameterised = False
    # Which methods each feature needs of this kind (test_layer_kinds checks they exist).
    HOOKS = {**dict.fromkeys(FEATURES, ()), "torch": ("torch_module",), "jax": ("jax_apply",),
             "cost": ("forward_macs",), "hessian_backprop": ("transpose", "squared_transpose"),
             "forward_tangent": ("tangent_step",)}
    # The hessian_backprop pass folds curvature through diagonal maps; a mixing one (not
    # diagonal) turns it into factor rows unless it is the input-most mixing layer.
    mixing = False
    # Not differentiable where its input is zero (ReLU's kink): bench.well_posed redraws the
    # inputs that land within rounding of one, where float32 and float64 take different sides.
    kinked_at_zero = False
    # forward_tangent keeps the primal only while a later layer's tangent rule reads it.
    tangent_reads_primal = True
    # jax_structured's rule for the parameters: "patches" (jax_patches), "grads"
    # (jax_sample_grads) or None (per-sample Jacobians of the layer: the fallback).
    jax_structured_rule: str | None = None

    def supports(self, feature: str) -> bool:
        return feature not in self.unsupported

    def param_names(self, layer) -> list[str]:
        """The layer's parameters in torch's named_parameters order (weight before bias)."""
        return sorted(layer.params, key=lambda k: ("weight", "bias").index(k))

    @missing
    def torch_module(self, layer):
        """An nn.Module of the layer's shapes (build_module copies the weights in)."""

    @missing
    def jax_apply(self, layer, p: dict, b: dict, x):
        """The layer on a batch x in JAX, with parameters p and buffers b by torch's names."""

    @missing
    def forward_macs(self, layer, shape: tuple) -> tuple[int, tuple]:
        """(multiply-adds, output shape) of the layer on one sample of `shape`."""

    @missing
    def transpose(self, module, rows, z):
        """Rows (r, *out_shape) mapped through the layer's transpose to (r, *in_shape), z the
        layer's input (1, *in_shape)."""

    @missing
    def squared_transpose(self, module, d, z):
        """diag(A^T diag(d) A) = (A o A)^T d for the layer's linear map A, d of out_shape."""

    @missing
    def tangent_step(self, module):
        """step(x, dx, need_primal) -> (x, dx): primal and tangent batch through the layer."""

    @missing
    def jax_patches(self, layer, a, g):
        """Patches P (B, T, K) and cotangents G (m, B, T, C) of a layer y[t] = W p[t] (+ b)."""

    @missing
    def jax_sample_grads(self, layer, p: dict, b: dict, a, G):
        """Per-sample gradients (B, m, P_l) of the layer's parameters from its input a and
        output cotangents G (m, B, ...)."""


class Elementwise(LayerKind):
    """A parameterless y = a(z), element by element: its derivatives give every rule."""

    unsupported = frozenset({"neural_tangents", "backpack.diag_hessian", "backpack.diag_ggn"})
    HOOKS = {**LayerKind.HOOKS, "hessian_backprop": ("derivatives",),
             "forward_tangent": ("torch_fn", "derivatives")}

    @missing
    def derivatives(self, z, y):
        """(a'(z), a''(z)) from the input z and output y; a'' None where it is zero."""

    # forward_tangent counts microseconds: these two return the torch callables once, so that
    # a step calls them without a module call or an import.
    @missing
    def torch_fn(self):
        """a as a torch callable."""

    def tangent_fn(self):
        """(dz, z, y) -> a'(z) dz; kinds override it with aten's own derivative kernel."""
        return lambda dz, z, y: dz * self.derivatives(z, y)[0]

    def forward_macs(self, layer, shape):
        return math.prod(shape), shape

    def tangent_step(self, module):
        act, tangent = self.torch_fn(), self.tangent_fn()

        def step(x, dx, need_primal):
            y = act(x)
            return y, tangent(dx, x, y)
        return step


class Patches(LayerKind):
    """A weight applied at T positions of a sample, y[t] = W p[t] (+ b): linear or conv."""

    parameterised = True
    mixing = True
    jax_structured_rule = "patches"
    HOOKS = {**LayerKind.HOOKS, "jax_structured": ("jax_patches",)}
    # jax.structured: when the layer is the network's last, its cotangents are unit vectors
    # and only a1 a2^T is formed; that holds where the output is (B, C) as the network's.
    flat_output = False
