"""The 2-d convolution, NCHW inputs and OIHW weights as torch has them."""
from __future__ import annotations

from .base import JAX_PRECISION, Patches


class Conv2d(Patches):
    """torch.nn.Conv2d with the layer's "stride" and "padding" options (square kernels)."""

    name = "conv2d"
    unsupported = frozenset({"neural_tangents", "forward_tangent"})

    @staticmethod
    def _geometry(layer):
        return layer.options.get("stride", 1), layer.options.get("padding", 0)

    def torch_module(self, layer):
        from torch import nn
        w, (stride, pad) = layer.params["weight"], self._geometry(layer)
        return nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], stride=stride, padding=pad,
                         bias="bias" in layer.params)

    def jax_apply(self, layer, p, b, x):
        from jax import lax
        s, pad = self._geometry(layer)
        y = lax.conv_general_dilated(x, p["weight"], (s, s), [(pad, pad), (pad, pad)],
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     precision=JAX_PRECISION)
        return y + p["bias"][None, :, None, None] if "bias" in p else y

    def forward_macs(self, layer, shape):
        c_out, c_in, kh, kw = layer.params["weight"].shape
        stride, pad = self._geometry(layer)
        h = (shape[-2] + 2 * pad - kh) // stride + 1
        w = (shape[-1] + 2 * pad - kw) // stride + 1
        return c_out * c_in * kh * kw * h * w, (c_out, h, w)

    @staticmethod
    def _input_grad(module, weight, rows, z):
        import torch
        return torch.nn.grad.conv2d_input((rows.shape[0], *z.shape[1:]), weight, rows,
                                          module.stride, module.padding, module.dilation,
                                          module.groups)

    def transpose(self, module, rows, z):
        return self._input_grad(module, module.weight, rows, z)

    def squared_transpose(self, module, d, z):
        return self._input_grad(module, module.weight ** 2, d[None], z)[0]

    def jax_patches(self, layer, a, g):
        from jax import lax
        s, pad = self._geometry(layer)
        kh, kw = layer.params["weight"].shape[2:]
        P = lax.conv_general_dilated_patches(a, (kh, kw), (s, s), [(pad, pad), (pad, pad)],
                                             dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                             precision=lax.Precision.HIGHEST)  # (B, K, H', W')
        return (P.reshape(*P.shape[:2], -1).transpose(0, 2, 1),
                g.reshape(*g.shape[:3], -1).transpose(0, 1, 3, 2))
