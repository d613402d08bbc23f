"""The elementwise activations: tanh, relu and sqrt."""
from __future__ import annotations

from .base import Elementwise


class Tanh(Elementwise):
    """y = tanh(z): curvature -2 y (1 - y^2)."""

    name = "tanh"
    unsupported = frozenset({"backpack.diag_ggn"})  # its curvature: DiagGGN is not the Hessian

    def torch_module(self, layer):
        from torch import nn
        return nn.Tanh()

    def torch_fn(self):
        import torch
        return torch.tanh

    def jax_apply(self, layer, p, b, x):
        import jax.numpy as jnp
        return jnp.tanh(x)

    def derivatives(self, z, y):
        d1 = 1 - y * y
        return d1, -2 * y * d1

    def tangent_fn(self):
        import torch
        backward = torch.ops.aten.tanh_backward
        return lambda dz, z, y: backward(dz, y)


class Relu(Elementwise):
    """y = max(z, 0): piecewise linear, so DiagGGN is its exact Hessian diagonal."""

    name = "relu"
    unsupported = frozenset()
    kinked_at_zero = True

    def torch_module(self, layer):
        from torch import nn
        return nn.ReLU()

    def torch_fn(self):
        import torch
        return torch.relu

    def jax_apply(self, layer, p, b, x):
        import jax
        return jax.nn.relu(x)

    def derivatives(self, z, y):
        return (z > 0).to(z.dtype), None  # a'' = 0 almost everywhere: no curvature term

    def tangent_fn(self):
        import torch
        backward = torch.ops.aten.threshold_backward
        return lambda dz, z, y: backward(dz, z, 0)


class Sqrt(Elementwise):
    """y = sqrt(z) (seed 001): no module in torch, so none BackPACK has a second-order rule for."""

    name = "sqrt"

    def torch_module(self, layer):
        from .torch_modules import Sqrt
        return Sqrt()

    def torch_fn(self):
        import torch
        return torch.sqrt

    def jax_apply(self, layer, p, b, x):
        import jax.numpy as jnp
        return jnp.sqrt(x)

    def derivatives(self, z, y):
        return 0.5 / y, -0.25 / y ** 3

    def tangent_fn(self):
        return lambda dz, z, y: dz / (2 * y)
