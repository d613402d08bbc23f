"""The dense layer, y = x W^T + b."""
from __future__ import annotations

from .base import JAX_PRECISION, Patches


class Linear(Patches):
    """torch.nn.Linear; every rule of the suite covers it, neural-tangents' worker included."""

    name = "linear"
    tangent_reads_primal = False
    flat_output = True

    def torch_module(self, layer):
        from torch import nn
        w = layer.params["weight"]
        return nn.Linear(w.shape[1], w.shape[0], bias="bias" in layer.params)

    def jax_apply(self, layer, p, b, x):
        import jax.numpy as jnp
        y = jnp.matmul(x, p["weight"].T, precision=JAX_PRECISION)
        return y + p["bias"] if "bias" in p else y

    def forward_macs(self, layer, shape):
        out_f, in_f = layer.params["weight"].shape
        return out_f * in_f, (*shape[:-1], out_f)

    def transpose(self, module, rows, z):
        return rows @ module.weight

    def squared_transpose(self, module, d, z):
        return d @ (module.weight * module.weight)

    def tangent_step(self, module):
        import torch
        wt = module.weight.detach().T.contiguous()
        b = None if module.bias is None else module.bias.detach()

        def step(x, dx, need_primal):
            if need_primal:
                x = torch.addmm(b, x, wt) if b is not None else x @ wt
            return x, dx @ wt
        return step

    def jax_patches(self, layer, a, g):
        return a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(*g.shape[:2], -1, g.shape[-1])
