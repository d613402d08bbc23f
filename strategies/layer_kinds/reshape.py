"""Parameterless linear maps that change the shape: flatten and 2x2 average pooling."""
from __future__ import annotations

import math

from .base import LayerKind


class Flatten(LayerKind):
    """torch.nn.Flatten: (B, C, H, W) to (B, C*H*W), C, H, W in that order."""

    name = "flatten"
    unsupported = frozenset({"neural_tangents", "forward_tangent"})

    def torch_module(self, layer):
        from torch import nn
        return nn.Flatten()

    def jax_apply(self, layer, p, b, x):
        return x.reshape(x.shape[0], -1)

    def forward_macs(self, layer, shape):
        return 0, (math.prod(shape),)

    def transpose(self, module, rows, z):
        return rows.reshape(rows.shape[0], *z.shape[1:])

    def squared_transpose(self, module, d, z):
        return d.reshape(z.shape[1:])  # a permutation: its squared entries are itself


class AvgPool2(LayerKind):
    """nn.AvgPool2d(2): stride 2, no padding, odd edges dropped."""

    name = "avgpool2"
    unsupported = frozenset({"neural_tangents", "forward_tangent"})
    mixing = True

    def torch_module(self, layer):
        from torch import nn
        return nn.AvgPool2d(2)

    def jax_apply(self, layer, p, b, x):
        n, ch, h, w = x.shape
        x = x[:, :, :h // 2 * 2, :w // 2 * 2]
        return x.reshape(n, ch, h // 2, 2, w // 2, 2).mean(axis=(3, 5))

    def forward_macs(self, layer, shape):
        return math.prod(shape), (*shape[:-2], shape[-2] // 2, shape[-1] // 2)

    def transpose(self, module, rows, z):
        from torch.func import vjp
        # a linear map without weights: its transpose is a vjp at any point
        _, pull = vjp(module, z.expand(rows.shape[0], *z.shape[1:]))
        return pull(rows)[0]

    def squared_transpose(self, module, d, z):
        return self.transpose(module, d[None], z)[0] / 4  # weights 1/4, squared
