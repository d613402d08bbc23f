"""The exact Hessian diagonal in one backward pass, BackPACK's DiagHessian turned to the input.

For phi = 0.5 ||f||^2 the output Hessian is I. Going backwards, a Hessian is kept as signed
outer products of factor rows, H = sum_k s_k r_k r_k^T: a linear (affine) layer maps every row
through its transpose; an elementwise activation y = a(z) scales the rows by a'(z) and adds its
own curvature diag(g * a''(z)), g the gradient at y, as |.|^(1/2)-scaled unit rows with their
signs. At the input, diag(H) = sum_k s_k r_k^2. No loop over Hessian rows: every layer is one
batched operation over all factor rows; curvature that only diagonal layers separate from the
input is never turned into rows at all.
"""
from __future__ import annotations

import torch
from torch.func import vjp

from .problem import ModelSpec
from .registry import register
from .torch_model import torch_view


def _tanh(z, y):
    d1 = 1 - y * y
    return d1, -2 * y * d1


def _relu(z, y):
    return (z > 0).to(z.dtype), None  # a'' = 0 almost everywhere: no curvature term


def _sqrt(z, y):
    return 0.5 / y, -0.25 / y ** 3


_ACTIVATIONS = {"tanh": _tanh, "relu": _relu, "sqrt": _sqrt}
_AFFINE = ("linear", "conv2d", "batchnorm2d", "flatten", "avgpool2")


def spec_covered(problem) -> str | None:
    """Layer-list models whose layers are all affine or elementwise."""
    if not isinstance(problem.spec, ModelSpec):
        return "needs a layer-list model (the backward rules are per layer kind)"
    kinds = {layer.kind for layer in problem.spec.layers} - set(_AFFINE) - set(_ACTIVATIONS)
    if kinds:
        return f"no backward rule for layer kind(s) {', '.join(sorted(kinds))}"
    return None


def _affine_transpose(kind, module, rows, z):
    """Rows (r, *out_shape) mapped through the layer's transpose to (r, *in_shape)."""
    if kind == "linear":
        return rows @ module.weight
    if kind == "conv2d":
        return torch.nn.grad.conv2d_input((rows.shape[0], *z.shape[1:]), module.weight, rows,
                                          module.stride, module.padding, module.dilation,
                                          module.groups)
    if kind == "batchnorm2d":
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        return rows * scale[:, None, None]
    if kind == "flatten":
        return rows.reshape(rows.shape[0], *z.shape[1:])
    # avgpool: a linear map without weights; its transpose is a vjp at any point
    _, pull = vjp(module, z.expand(rows.shape[0], *z.shape[1:]))
    return pull(rows)[0]


def _squared_transpose(kind, module, d, z):
    """diag(A^T diag(d) A) = (A o A)^T d for the layer's linear map A, d of shape out_shape."""
    if kind == "linear":
        return d @ (module.weight * module.weight)
    if kind == "conv2d":
        return torch.nn.grad.conv2d_input((1, *z.shape[1:]), module.weight ** 2, d[None],
                                          module.stride, module.padding, module.dilation,
                                          module.groups)[0]
    return _affine_transpose(kind, module, d[None], z)[0] / 4  # avgpool2: weights 1/4, squared


_MIXING = ("linear", "conv2d", "avgpool2")  # affine layers that are not diagonal


def _as_rows(d: torch.Tensor):
    """Signed unit rows sqrt|d_i| e_i, so that sum_i sign_i row_i row_i^T = diag(d)."""
    flat = d.flatten()
    idx = flat.nonzero()[:, 0]
    rows = torch.zeros(idx.numel(), flat.numel(), dtype=d.dtype, device=d.device)
    rows[torch.arange(idx.numel(), device=d.device), idx] = flat[idx].abs().sqrt()
    return rows.reshape(-1, *d.shape), torch.sign(flat[idx])


def hessian_diag_backprop(modules, kinds, x, in_shape) -> torch.Tensor:
    """diag of the Hessian of 0.5 ||f(x)||^2 w.r.t. the flat input x, f = modules in order.

    Activation curvature is diagonal and stays a diagonal `d` through elementwise and batch-norm
    layers; it becomes factor rows only when a mixing layer other than the input-most one maps
    it. Past the input-most mixing layer only diagonals are needed, so there it is folded in
    with squared weights instead of becoming rows (for a conv net, every curvature term)."""
    z = x.reshape(1, *in_shape)
    trace = []
    for module, kind in zip(modules, kinds):
        out = module(z)
        trace.append((module, kind, z, out))
        z = out
    out = z.reshape(1, -1)
    first_mixing = min((i for i, k in enumerate(kinds) if k in _MIXING), default=-1)
    # Row 0 carries the gradient (needed by the curvature terms); the rest are factor rows.
    rows = torch.cat([out, torch.eye(out.shape[1], dtype=x.dtype, device=x.device)])
    rows = rows.reshape(rows.shape[0], *z.shape[1:])
    signs = [torch.ones(out.shape[1], dtype=x.dtype, device=x.device)]
    d = None
    for i in reversed(range(len(trace))):
        module, kind, z, y = trace[i]
        if kind in _ACTIVATIONS:
            d1, d2 = _ACTIVATIONS[kind](z[0], y[0])
            if d is not None:
                d = d * d1 * d1
            if d2 is not None:
                d = rows[0] * d2 if d is None else d + rows[0] * d2
            rows = rows * d1
        elif kind == "batchnorm2d":
            rows = _affine_transpose(kind, module, rows, z)
            if d is not None:
                scale = module.weight / torch.sqrt(module.running_var + module.eps)
                d = d * (scale * scale)[:, None, None]
        elif kind == "flatten":
            rows = _affine_transpose(kind, module, rows, z)
            d = None if d is None else d.reshape(z.shape[1:])
        elif i == first_mixing:
            d = None if d is None else _squared_transpose(kind, module, d, z)
            rows = _affine_transpose(kind, module, rows, z)
        else:
            if d is not None:
                new, sign = _as_rows(d)
                rows, d = torch.cat([rows, new]), None
                signs.append(sign)
            rows = _affine_transpose(kind, module, rows, z)
    factors = rows[1:].reshape(rows.shape[0] - 1, -1)
    diag = torch.cat(signs) @ (factors * factors)
    return diag if d is None else diag + d.flatten()


@register("hessian_diag", "torch.hessian_backprop", applies=spec_covered)
def _hd_backprop(problem, device, dtype):
    """BackPACK-style backward pass of signed Hessian factors (linear/conv transposes, activation
    curvature rows). Cost: one backward pass over m + (activation widths) rows, no row loop."""
    v = torch_view(problem, device, dtype)
    kinds = [layer.kind for layer in problem.spec.layers]

    def run():
        with torch.no_grad():
            return hessian_diag_backprop(list(v.model), kinds, v.data["x"],
                                         problem.spec.in_shape)
    return run

