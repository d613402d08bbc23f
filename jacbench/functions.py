"""One function per quantity: your model and tensors in, the quantity out (jacbench.compute).

Every function takes the model (an nn.Module taking a batch, or a pair (fn, params) with
fn(params, X) -> Y a JAX function), its inputs, and these keywords:
    strategy="auto"  torch.auto's pick for a PyTorch model (a cost model fitted to this suite's
                     measurements); for a JAX function the first applicable jitted JAX
                     strategy; or a registered name (`python -m jacbench list`)
    output=None      a dict key or tuple index when the model returns several outputs
    threads=None     torch's threads during the call, restored after (None: unchanged)
    device, dtype    default: the first input's device (cpu for numpy) and dtype (float32
                     unless it is float64)
A PyTorch model gives torch tensors, a JAX function JAX arrays. Outputs are flattened per
sample (m numbers), inputs likewise (n numbers); a tuple of inputs is differentiated as one
flat vector, the inputs' numbers in order (jacbench.models). P is the parameter count, in
`named_parameters` order. The Hessian family is that of phi(x) = 0.5 ||f(x)||^2.
"""
from __future__ import annotations

from .compute import compute


def jacobian(model, x, **options):
    """J of the model at one sample x (no batch dimension): shape (m, n)."""
    return compute("jacobian", model, x, **options)


def batch_jacobian(model, x, **options):
    """Per-sample Jacobians of a batch x (B, *sample shape): shape (B, m, n)."""
    return compute("batch_jacobian", model, x, **options)


def param_jacobian(model, x, **options):
    """Per-sample Jacobians w.r.t. all parameters, of a batch x: shape (B, m, P)."""
    return compute("param_jacobian", model, x, **options)


def jac_diag(model, x, **options):
    """D[i, k] = dy[i, k] / dx[i]: x a batch of scalar inputs, shape (N, 1), gives (N, k);
    x one input of a square map R^N -> R^N gives (N, 1)."""
    return compute("jac_diag", model, x, **options)


def hessian(model, x, **options):
    """H of phi(x) = 0.5 ||f(x)||^2 at one sample x: shape (n, n)."""
    return compute("hessian", model, x, **options)


def batch_hessian(model, x, **options):
    """Per-sample H of phi(x_b) = 0.5 ||f(x_b)||^2, of a batch x: shape (B, n, n)."""
    return compute("batch_hessian", model, x, **options)


def hessian_diag(model, x, **options):
    """diag(H) of phi(x) = 0.5 ||f(x)||^2 at one sample x: shape (n,)."""
    return compute("hessian_diag", model, x, **options)


def hvp(model, x, v, **options):
    """H v for phi(x) = 0.5 ||f(x)||^2 at one sample x, v of n numbers: shape (n,)."""
    return compute("hvp", model, x, v, **options)


def jvp(model, x, v, **options):
    """J v at one sample x, v of n numbers: shape (m,)."""
    return compute("jvp", model, x, v, **options)


def vjp(model, x, u, **options):
    """u^T J at one sample x, u of m numbers: shape (n,)."""
    return compute("vjp", model, x, u, **options)


def ggn_vp(model, x, v, **options):
    """J^T J v over a batch x, J the (B*m, P) parameter Jacobian, v of P numbers: shape (P,)."""
    return compute("ggn_vp", model, x, v, **options)


def cross_jacobian(model, x1, x2, **options):
    """J(x1) J(x2)^T, J w.r.t. the input, at two samples: shape (m, m)."""
    return compute("cross_jacobian", model, x1, x2, **options)


def ntk(model, x1, x2=None, mode="full", strategy="auto", **options):
    """Empirical NTK J(x1) J(x2)^T over the parameters, of batches x1 (B1, *sample shape)
    and x2 (default x1): mode "full" (B1, B2, m, m), "trace" (B1, B2), "diagonal"
    (B1, B2, m)."""
    return compute("ntk", model, x1, x2, mode=mode, strategy=strategy, **options)
