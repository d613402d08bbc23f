"""Builds a torch module from a `ModelSpec` and exposes the function views every quantity uses.

Batch norm runs in eval mode: running statistics are fixed buffers, so the network is a fixed
function of its inputs and parameters, samples do not interact, and the NTK is well defined
(the usual choice for empirical NTKs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .layer_kinds import KINDS
from .problem import ModelSpec, Problem
from .user_model import UserModel, torch_module


def build_module(spec: ModelSpec, device="cpu", dtype=torch.float32) -> nn.Module:
    """An eval-mode `nn.Sequential` holding exactly the spec's numpy weights."""
    # Cast before copying: copying float64 numpy weights into float32 modules would round them.
    modules = [KINDS[layer.kind].torch_module(layer) for layer in spec.layers]
    model = nn.Sequential(*modules).to(dtype=dtype)
    with torch.no_grad():
        for module, layer in zip(model, spec.layers):
            for name, value in {**layer.params, **layer.buffers}.items():
                getattr(module, name).copy_(torch.from_numpy(np.asarray(value)))
    return model.to(device=device, dtype=dtype).eval()


def _per_sample(y: torch.Tensor) -> torch.Tensor:
    """(B, m): a user model may return (B,) or (B, C, H, W); a no-op view on (B, m)."""
    return y.reshape(y.shape[0], -1)


@dataclass
class TorchView:
    """A problem on one device and dtype: module, parameters, data, and the function views.

    - `f(x)`: one sample, flat vector (n,) -> (m,) (jacobian, jvp, vjp, cross_jacobian)
    - `phi(x)`: scalar 0.5 * ||f(x)||^2 (hessian family)
    - `fb(X)`: batch (B, *in_shape) -> (B, m) (batch_jacobian, batch_hessian)
    - `fp(params, X)`: parameters -> (B, m) (param_jacobian, ggn_vp, ntk)
    - `fd(x)`: jac_diag view, (N,) -> (N, k)
    """

    problem: Problem
    model: nn.Module
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    data: dict[str, torch.Tensor]

    def f(self, x):
        return self.model(x.reshape(1, *self.problem.spec.in_shape))[0].reshape(-1)

    def phi(self, x):
        return 0.5 * (self.f(x) ** 2).sum()

    def fb(self, X):
        # Inputs may come flat (B, n) (user problems' batch_jacobian), outputs are flattened
        # per sample (a user model may return (B, C, H, W)); both are no-ops otherwise.
        return _per_sample(self.model(X.reshape(X.shape[0], *self.problem.spec.in_shape)))

    def fp(self, params, X):
        return _per_sample(functional_call(self.model, (params, self.buffers), (X,)))

    def fd(self, x):
        if "separable" in self.problem.flags:  # one scalar input per sample (seed 002)
            return _per_sample(self.model(x.reshape(-1, *self.problem.spec.in_shape)))
        return self.f(x).reshape(-1, 1)  # a square map R^N -> R^N

    @property
    def param_count(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def flat(self, tree: dict[str, torch.Tensor], lead: int = 0) -> torch.Tensor:
        """Concatenate a params-shaped dict into one trailing axis, keeping `lead` leading axes."""
        return torch.cat([t.reshape(*t.shape[:lead], -1) for t in tree.values()], dim=-1)

    def unflat(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for k, p in self.params.items():
            out[k] = vec[i:i + p.numel()].reshape(p.shape)
            i += p.numel()
        return out


def torch_dtype(dtype) -> torch.dtype:
    """Accept torch dtypes and their names ("float32", "float64"); None means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "")
    if name not in ("float32", "float64"):
        raise ValueError(f"unsupported dtype {dtype!r}; use float32 or float64")
    return getattr(torch, name)


def torch_view(problem: Problem, device="cpu", dtype=torch.float32) -> TorchView:
    dtype = torch_dtype(dtype)
    # Parameters are differentiated through functional_call with explicit tensors; switching
    # their requires_grad off keeps input-derivative strategies from recording parameter graphs.
    if isinstance(problem.spec, UserModel):  # the user's own module, copied, as given
        model = torch_module(problem.spec, device, dtype).requires_grad_(False)
    else:
        model = build_module(problem.spec, device, dtype).requires_grad_(False)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    data = {k: torch.as_tensor(np.asarray(v), device=device, dtype=dtype)
            for k, v in problem.data.items()}
    return TorchView(problem, model, params, buffers, data)
