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

from .layer_kinds import KINDS, Elementwise, lacking
from .problem import ModelSpec
from .registry import register
from .torch_model import torch_view


def spec_covered(problem) -> str | None:
    """Layer-list models whose layers are all affine or elementwise."""
    if not isinstance(problem.spec, ModelSpec):
        return "needs a layer-list model (the backward rules are per layer kind)"
    kinds = lacking(problem.spec.layers, "hessian_backprop")
    if kinds:
        return f"no backward rule for layer kind(s) {', '.join(kinds)}"
    return None


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
    for module, name in zip(modules, kinds):
        out = module(z)
        trace.append((module, KINDS[name], z, out))
        z = out
    out = z.reshape(1, -1)
    first_mixing = min((i for i, (_, kind, _, _) in enumerate(trace) if kind.mixing), default=-1)
    # Row 0 carries the gradient (needed by the curvature terms); the rest are factor rows.
    rows = torch.cat([out, torch.eye(out.shape[1], dtype=x.dtype, device=x.device)])
    rows = rows.reshape(rows.shape[0], *z.shape[1:])
    signs = [torch.ones(out.shape[1], dtype=x.dtype, device=x.device)]
    d = None
    for i in reversed(range(len(trace))):
        module, kind, z, y = trace[i]
        if isinstance(kind, Elementwise):
            d1, d2 = kind.derivatives(z[0], y[0])
            if d is not None:
                d = d * d1 * d1
            if d2 is not None:
                d = rows[0] * d2 if d is None else d + rows[0] * d2
            rows = rows * d1
        elif not kind.mixing or i == first_mixing:
            d = None if d is None else kind.squared_transpose(module, d, z)
            rows = kind.transpose(module, rows, z)
        else:
            if d is not None:
                new, sign = _as_rows(d)
                rows, d = torch.cat([rows, new]), None
                signs.append(sign)
            rows = kind.transpose(module, rows, z)
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

