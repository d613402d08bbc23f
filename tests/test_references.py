"""Keep the references honest: each float64 reference matches central finite differences that
use nothing but evaluations of the float64 model."""
import pytest
import torch

from jacbench import strategies
from jacbench.bench.problems import problems
from conftest import reference_for
from jacbench.strategies.agreement import max_error
from jacbench.strategies.quantities import contract_ntk
from jacbench.strategies.torch_model import torch_view

H1 = 1e-6  # first differences: truncation ~h^2, rounding ~eps/h, both ~1e-11 relative
H2 = 1e-4  # second differences: truncation ~h^2, rounding ~eps/h^2, both ~1e-8
FD_TOL = 1e-6


def fd_jacobian(g, x):
    """d g(x) / d x by central differences; returns (*g(x).shape, *x.shape)."""
    cols = []
    flat = x.reshape(-1)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = H1
        cols.append((g((flat + e).reshape(x.shape)) - g((flat - e).reshape(x.shape))) / (2 * H1))
    return torch.stack(cols, dim=-1).reshape(*cols[0].shape, *x.shape)


def fd_hessian(phi, x):
    n = x.numel()
    eye = torch.eye(n, dtype=x.dtype) * H2
    H = torch.empty(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            a, b = eye[i], eye[j]
            H[i, j] = (phi(x + a + b) - phi(x + a - b) - phi(x - a + b) + phi(x - a - b)) / (4 * H2**2)
    return H


def fd_param_jacobian(v, X):
    flat = v.flat(v.params)
    return fd_jacobian(lambda theta: v.fp(v.unflat(theta), X), flat)  # (B, m, P)


def finite_differences(problem):
    v = torch_view(problem, "cpu", torch.float64)
    d, q = v.data, problem.quantity
    with torch.no_grad():
        if q == "jacobian":
            return fd_jacobian(v.f, d["x"])
        if q == "jvp":
            return fd_jacobian(v.f, d["x"]) @ d["v"]
        if q == "vjp":
            return d["u"] @ fd_jacobian(v.f, d["x"])
        if q == "cross_jacobian":
            return fd_jacobian(v.f, d["x1"]) @ fd_jacobian(v.f, d["x2"]).T
        if q == "batch_jacobian":
            return torch.stack([fd_jacobian(lambda x: v.fb(x[None])[0], x) for x in d["X"]])
        if q == "jac_diag":
            J = fd_jacobian(v.fd, d["x"])  # (N, k, N)
            return torch.diagonal(J, dim1=0, dim2=2).T
        if q in ("hessian", "hessian_diag", "hvp"):
            H = fd_hessian(v.phi, d["x"])
            return {"hessian": H, "hessian_diag": torch.diagonal(H),
                    "hvp": H @ d.get("v", d["x"])}[q]
        if q == "batch_hessian":
            return torch.stack([fd_hessian(lambda x: 0.5 * (v.fb(x[None])[0] ** 2).sum(), x)
                                for x in d["X"]])
        if q == "param_jacobian":
            return fd_param_jacobian(v, d["X"]).flatten(2)
        if q == "ggn_vp":
            J = fd_param_jacobian(v, d["X"]).reshape(-1, v.param_count)
            return J.T @ (J @ d["v"])
        if q == "ntk":
            return contract_ntk(fd_param_jacobian(v, d["X1"]), fd_param_jacobian(v, d["X2"]),
                                problem.mode)
    raise AssertionError(f"no finite-difference check for {q}")


def _all_test_problems():
    return [pytest.param(p, id=f"{p.quantity}-{p.id}")
            for q in strategies.QUANTITIES for p in problems(q, "test")]


@pytest.mark.parametrize("problem", _all_test_problems())
def test_reference_matches_finite_differences(problem):
    ref = reference_for(problem)
    fd = finite_differences(problem)
    assert max_error(fd, ref) < FD_TOL
    # Not vacuous: the reference is not zero where the function varies.
    assert abs(ref).max() > 1e-3


def test_finite_differences_catch_a_wrong_reference():
    """A reference that is off by a small relative amount must fail the check."""
    p = problems("jacobian", "test")[0]
    wrong = reference_for(p) * (1 + 1e-3)
    assert max_error(finite_differences(p), wrong) > FD_TOL


def test_every_quantity_has_test_problems():
    for q in strategies.QUANTITIES:
        assert problems(q, "test"), f"{q} has no test problem"
