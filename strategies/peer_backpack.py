"""BackPACK (f-dangel/backpack) as peer strategies, registered only where what it computes is
exactly the suite's quantity:

- BatchGrad gives per-sample gradients of a loss summed over the batch; with the loss
  sum_b f_o(x_b), one backward per output o gives row o of every per-sample parameter Jacobian
  (param_jacobian), and the NTK is their contraction (ntk).
- DiagHessian and DiagGGNExact give diagonals w.r.t. parameters. The suite's hessian_diag is
  w.r.t. the input, so the input is made the weight of a first layer BackPACK knows: a
  Linear(1, n) (flat inputs) or a ConvTranspose2d(1, C, (H, W)) (images) applied to a constant
  1, whose weight is x. The loss is MSELoss(reduction="sum") against zero, ||f||^2 = 2 phi, so
  the diagonals are halved. DiagGGN is the Hessian diagonal only where every layer is piecewise
  linear (no tanh or sqrt curvature), and is registered for those networks alone.

BackPACK dispatches on exact module classes and has no rule for some layers (batch norm in
DiagHessian, our Sqrt), so each strategy covers the layer kinds that declare its extension
supported (`strategies.layer_kinds`: the "backpack.*" features). BatchGrad also runs on
a user's own PyTorch module (`--model`, jacbench.compare), extended as it is: where a module that
holds parameters has no BatchGrad rule, BackPACK leaves those parameters out without a word, so
the strategy checks and the row is not applicable, naming them. If BackPACK cannot be imported,
the strategies stay registered and say so.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from .layer_kinds import covering, lacking
from .problem import ModelSpec
from .quantities import contract_ntk
from .registry import register
from .torch_model import torch_view
from .user_model import is_user

try:
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad, DiagGGNExact, DiagHessian
    MISSING: str | None = None
except ImportError as exc:  # listed anyway, as not applicable with the reason
    MISSING = f"backpack-for-pytorch is not installed ({exc}): pip install backpack-for-pytorch"


def _covers(feature: str, why: str, user_modules: bool = False):
    def applies(problem) -> str | None:
        if MISSING:
            return MISSING
        if user_modules and is_user(problem):
            return (None if problem.spec.framework == "torch" else
                    "a JAX function: BackPACK extends PyTorch modules")
        if not isinstance(problem.spec, ModelSpec):
            return "needs a layer-list model: BackPACK dispatches on known module classes"
        missing = lacking(problem.spec.layers, feature)
        if missing:
            return f"{why}: {', '.join(missing)}"
        return None
    applies.__doc__ = f"BackPACK is installed and the layers are among {covering(feature)}"
    return applies


def _modules(v) -> list[nn.Module]:
    """The view's layers, plain torch.nn classes where BackPACK has rules (it dispatches on
    exact classes), sharing the view's parameters."""
    if MISSING:
        raise RuntimeError(MISSING)
    return list(v.model)


# ------------------------------------------------------------------ per-sample gradients
@contextlib.contextmanager
def _quiet():
    """BackPACK's hooks are full backward hooks; with inputs that need no gradient torch warns
    on every backward that they fire on outputs, which is what BackPACK expects."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
        # said of every container holding parameters through its children; a leaf without a
        # rule is caught by _check_batch_grads, by name
        warnings.filterwarnings("ignore", "Extension saving to grad_batch does not have an "
                                "extension for Module", UserWarning)
        yield


def _param_jacobian(model: nn.Module, params: list[nn.Parameter], X) -> torch.Tensor:
    """(B, m, P): one BatchGrad backward per output o of sum_b f_o(x_b), on one forward."""
    out = model(X).reshape(X.shape[0], -1)
    rows = []
    with _quiet():
        for o in range(out.shape[1]):
            for p in params:
                p.grad = None
            keep = o + 1 < out.shape[1]  # BackPACK must keep its stored layer inputs as well
            with backpack(BatchGrad(), retain_graph=keep):
                out[:, o].sum().backward(retain_graph=keep)
            if o == 0:  # which parameters BackPACK covers does not change with o
                _check_batch_grads(model, params)
            rows.append(torch.cat([p.grad_batch.flatten(1) for p in params], dim=1))
    return torch.stack(rows, dim=1)


def _check_batch_grads(model: nn.Module, params) -> None:
    """BackPACK skips a parameter held by a module it has no rule for (a user's own layer)
    without a word; here that is an error naming the parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    bare = [names[id(p)] for p in params if not hasattr(p, "grad_batch")]
    if bare:
        raise NotImplementedError(f"BackPACK has no BatchGrad rule for the module(s) holding "
                                  f"{', '.join(bare[:4])}{' ...' if len(bare) > 4 else ''}")


def _out_of_place(model: nn.Module) -> list[str]:
    """Turns the modules' `inplace` flags (ReLU(inplace=True) and kin) off and returns the row's
    note naming them: the same values, and BackPACK's full backward hooks, which wrap each
    module's output in a custom Function, cannot follow an in-place write into that output
    (torch raises "... is a view and is being modified inplace"). An in-place op written in a
    forward method stays, and such a model is out of BackPACK's reach (bench.failures)."""
    turned = []
    for name, module in model.named_modules():
        if getattr(module, "inplace", None) is True:
            module.inplace = False
            turned.append(name or "(the model)")
    return [f"in-place flag turned off in BackPACK's copy: {', '.join(turned)}"] if turned else []


def _padding_gaps(model: nn.Module) -> list[str]:
    """The row's note naming convolutions padded other than with zeros: BackPACK's BatchGrad
    unfolds a convolution's input with zero padding whatever its padding_mode, so its
    gradients there are wrong (measured: a reflect-padded Conv2d's disagree by 0.39, the same
    layer zero-padded agrees); the row says why it disagrees, and the checker judges it."""
    odd = [f"{name or '(the model)'} ({module.padding_mode})"
           for name, module in model.named_modules()
           if isinstance(module, nn.modules.conv._ConvNd) and module.padding_mode != "zeros"
           and any(module._reversed_padding_repeated_twice)]  # what the conv pads by
    return [f"BackPACK pads convolutions with zeros whatever their padding_mode: "
            f"{', '.join(odd)}"] if odd else []


def _batchgrad_model(v):
    # A user's module is extended as it is (its copy in the view, so turning its in-place
    # activations out of place changes nothing of the user's); BackPACK extends children too.
    model = v.model if is_user(v.problem) else nn.Sequential(*_modules(v))
    notes = _out_of_place(model) + _padding_gaps(model)
    model = extend(model.requires_grad_(True))
    return model, list(model.parameters()), notes


_BATCHGRAD = _covers("backpack.batch_grad", "no BatchGrad rule for layer kind(s)",
                     user_modules=True)


@register("param_jacobian", "backpack.batch_grad", applies=_BATCHGRAD)
def _pj_batch_grad(problem, device, dtype):
    """BackPACK BatchGrad: one forward, then per output o a backward of sum_b f_o(x_b) that also
    extracts per-sample gradients. Cost: m backward passes with per-sample weight products."""
    v = torch_view(problem, device, dtype)
    model, params, notes = _batchgrad_model(v)

    def run():
        return _param_jacobian(model, params, v.data["X"])
    run.notes = notes
    return run


@register("ntk", "backpack.batch_grad", applies=_BATCHGRAD, tags={"dense"})
def _ntk_batch_grad(problem, device, dtype):
    """Per-sample parameter Jacobians of X1 and X2 in one BackPACK BatchGrad run over both
    batches (m backward passes), then contracted. Cost: (B1 + B2) m P memory, B1 B2 m^2 P flops."""
    v = torch_view(problem, device, dtype)
    model, params, notes = _batchgrad_model(v)
    X1, X2 = v.data["X1"], v.data["X2"]

    def run():
        J = _param_jacobian(model, params, torch.cat([X1, X2]))
        return contract_ntk(J[:X1.shape[0]], J[X1.shape[0]:], problem.mode)
    run.notes = notes
    return run


# ------------------------------------------------------------------ input-space diagonals
def _input_layer(x: torch.Tensor, in_shape) -> tuple[nn.Module, torch.Tensor]:
    """A BackPACK-known layer whose weight is x and whose output, on the returned constant
    input, is x shaped (1, *in_shape)."""
    if len(in_shape) == 1:
        layer = nn.Linear(1, in_shape[0], bias=False)
        layer.weight = nn.Parameter(x.detach().reshape(in_shape[0], 1).clone())
        return layer, x.new_ones(1, 1)
    if len(in_shape) == 3:
        C, H, W = in_shape
        layer = nn.ConvTranspose2d(1, C, (H, W), bias=False)
        layer.weight = nn.Parameter(x.detach().reshape(1, C, H, W).clone())
        return layer, x.new_ones(1, 1, 1, 1)
    raise ValueError(f"inputs of shape {tuple(in_shape)}: flat or (C, H, W) only")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """BackPACK 1.7's AvgPool rules build their averaging kernels in torch's default dtype, which
    fails on float64 inputs; they get the problem's dtype while BackPACK runs."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _input_diagonal(problem, device, dtype, extension, savefield):
    v = torch_view(problem, device, dtype)
    layer, one = _input_layer(v.data["x"], problem.spec.in_shape)
    model = extend(nn.Sequential(layer, *_modules(v)))  # only the input layer requires grad
    loss_fn = extend(nn.MSELoss(reduction="sum"))
    zero = v.data["x"].new_zeros(1, problem.spec.out_dim)

    def run():
        layer.weight.grad = None
        loss = loss_fn(model(one).reshape(1, -1), zero)
        with _quiet(), _default_dtype(loss.dtype), backpack(extension()):
            loss.backward()
        return 0.5 * getattr(layer.weight, savefield).flatten()
    return run


@register("hessian_diag", "backpack.diag_hessian",
          applies=_covers("backpack.diag_hessian", "no DiagHessian rule for layer kind(s)"))
def _hd_diag_hessian(problem, device, dtype):
    """BackPACK DiagHessian w.r.t. the input (made the weight of a first layer): backpropagates
    signed square-root factors of the Hessian. Cost: one backward of m + (activation sizes)
    factor columns."""
    return _input_diagonal(problem, device, dtype, DiagHessian, "diag_h")


@register("hessian_diag", "backpack.diag_ggn",
          applies=_covers("backpack.diag_ggn",
                          "DiagGGN is the Hessian diagonal only for piecewise-linear networks; "
                          "curvature from layer kind(s)"))
def _hd_diag_ggn(problem, device, dtype):
    """BackPACK DiagGGNExact w.r.t. the input: diag(J^T J), which is the Hessian diagonal for
    piecewise-linear networks (ReLU, conv, eval batch norm). Cost: one backward of m columns."""
    return _input_diagonal(problem, device, dtype, DiagGGNExact, "diag_ggn_exact")
