"""Batch norm over NCHW channels, in eval mode: fixed running statistics, so samples do not
interact and the layer is an affine map per channel."""
from __future__ import annotations

from .base import Elementwise, LayerKind


def _channels(t):
    return t[None, :, None, None]


class BatchNorm2d(LayerKind):
    """torch.nn.BatchNorm2d in eval mode, (x - mean) / sqrt(var + eps) * w + b."""

    name = "batchnorm2d"
    unsupported = frozenset({"neural_tangents", "forward_tangent", "backpack.diag_hessian"})
    parameterised = True
    jax_structured_rule = "grads"
    HOOKS = {**LayerKind.HOOKS, "jax_structured": ("jax_sample_grads",)}

    @staticmethod
    def _eps(layer) -> float:
        return layer.options.get("eps", 1e-5)

    def torch_module(self, layer):
        from torch import nn
        return nn.BatchNorm2d(layer.params["weight"].shape[0], eps=self._eps(layer))

    def jax_apply(self, layer, p, b, x):
        from jax import lax
        inv = lax.rsqrt(b["running_var"] + self._eps(layer))
        return (x - _channels(b["running_mean"])) * _channels(inv * p["weight"]) \
            + _channels(p["bias"])

    forward_macs = Elementwise.forward_macs  # one multiply-add per element, as an activation

    @staticmethod
    def _scale(module):
        import torch
        return module.weight / torch.sqrt(module.running_var + module.eps)

    def transpose(self, module, rows, z):
        return rows * self._scale(module)[:, None, None]

    def squared_transpose(self, module, d, z):
        scale = self._scale(module)
        return d * (scale * scale)[:, None, None]

    def jax_sample_grads(self, layer, p, b, a, G):
        import jax.numpy as jnp
        from jax import lax
        x_hat = (a - _channels(b["running_mean"])) * _channels(
            lax.rsqrt(b["running_var"] + self._eps(layer)))
        parts = {"weight": G * x_hat, "bias": G}  # (m, B, C, H, W)
        return jnp.concatenate([parts[k].sum((3, 4)).transpose(1, 0, 2)
                                for k in self.param_names(layer) if k in p], axis=2)
