"""The public compute API (jacbench.ntk, jacobian, ..., prepare, best) on a small model of the
user's own, checked against the float64 reference with the suite's agreement rule, and the
models users write: several inputs, dict and tuple outputs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import jacbench
from jacbench.compute import problem
from jacbench.strategies.agreement import max_error, tolerance
from jacbench.strategies.quantities import noise_floor, reference

ROOT = Path(__file__).resolve().parents[1]


def _mlp(n=4, m=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n, 6), nn.Tanh(), nn.Linear(6, m))


MODEL = _mlp()
P = sum(p.numel() for p in MODEL.parameters())
G = torch.Generator().manual_seed(1)
X = torch.randn(5, 4, generator=G)
X2 = torch.randn(3, 4, generator=G)
V_N, U_M = torch.randn(4, generator=G), torch.randn(3, generator=G)
V_P = torch.randn(P, generator=G)
SQUARE = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
SCALAR_IN = nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 2))
XS = torch.randn(7, 1, generator=G)

# (quantity, model, inputs, mode, shape): every public function, with its documented layout.
CASES = [
    ("jacobian", MODEL, (X[0],), None, (3, 4)),
    ("batch_jacobian", MODEL, (X,), None, (5, 3, 4)),
    ("param_jacobian", MODEL, (X,), None, (5, 3, P)),
    ("jac_diag", SCALAR_IN, (XS,), None, (7, 2)),
    ("jac_diag", SQUARE, (X[0],), None, (4, 1)),
    ("hessian", MODEL, (X[0],), None, (4, 4)),
    ("batch_hessian", MODEL, (X,), None, (5, 4, 4)),
    ("hessian_diag", MODEL, (X[0],), None, (4,)),
    ("hvp", MODEL, (X[0], V_N), None, (4,)),
    ("jvp", MODEL, (X[0], V_N), None, (3,)),
    ("vjp", MODEL, (X[0], U_M), None, (4,)),
    ("ggn_vp", MODEL, (X, V_P), None, (P,)),
    ("cross_jacobian", MODEL, (X[0], X[1]), None, (3, 3)),
    ("ntk", MODEL, (X, X2), "full", (5, 3, 3, 3)),
    ("ntk", MODEL, (X, X2), "trace", (5, 3)),
    ("ntk", MODEL, (X,), "diagonal", (5, 5, 3)),
]
IDS = [f"{q}-{m or ''}{i}" for i, (q, _, _, m, _) in enumerate(CASES)]


def _check(q, model, args, mode, out, dtype="float32"):
    p = problem(q, model, *args, mode=mode, dtype=dtype)
    ref = reference(p)
    err = max_error(out.detach().cpu().numpy(), ref)
    tol = tolerance(dtype, noise_floor(p, ref))
    assert err <= tol, (q, mode, err, tol)
    return p


@pytest.mark.parametrize("q, model, args, mode, shape", CASES, ids=IDS)
def test_each_quantity_agrees_with_the_float64_reference(q, model, args, mode, shape):
    options = {"mode": mode} if mode else {}
    out = getattr(jacbench, q)(model, *args, **options)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == shape
    assert out.dtype == torch.float32
    p = _check(q, model, args, mode, out)
    # the problem holds the user's inputs as given, not drawn ones
    flat = [np.asarray(a, dtype=np.float64).reshape(-1) for a in args]
    held = [np.asarray(v).reshape(-1) for v in p.data.values()]
    if q != "ntk" or len(args) == 2:
        for a in flat:
            assert any(h.size == a.size and np.array_equal(h, a) for h in held), q


def test_float64_inputs_give_float64_and_a_named_strategy_runs():
    x = X.double()
    K = jacbench.ntk(MODEL, x, mode="trace", strategy="torch.ntk_vps")
    assert K.dtype == torch.float64
    _check("ntk", MODEL, (x,), "trace", K, dtype="float64")


def test_independent_of_the_suite_jacobian_and_ntk_by_hand():
    """The same numbers as a hand-written torch.func route on the caller's model."""
    x = X.double()
    model = _mlp().double()
    J = jacrev(lambda s: model(s[None])[0])(x[0])
    assert torch.allclose(jacbench.jacobian(model, x[0]), J, atol=1e-12)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def jac(X_):
        blocks = vmap(jacrev(lambda p, s: functional_call(model, p, (s[None],))[0]),
                      in_dims=(None, 0))(params, X_)
        return torch.cat([b.flatten(2) for b in blocks.values()], dim=2)
    K = torch.einsum("iap,jbp->ijab", jac(x), jac(X2.double()))
    assert torch.allclose(jacbench.ntk(model, x, X2.double()), K, atol=1e-12)


def test_prepare_gives_a_callable_for_repeated_use_and_restores_threads():
    before = torch.get_num_threads()
    f = jacbench.prepare("ntk", MODEL, X, mode="trace", threads=1)
    assert torch.get_num_threads() == before
    assert f.strategy == "torch.auto" and f.picked and f.picked != "torch.auto"
    first, again = f(), f()
    assert torch.get_num_threads() == before
    assert torch.equal(first, again)
    # the model is copied when prepared: the caller's later changes do not leak in
    model = _mlp()
    g = jacbench.prepare("jacobian", model, X[0])
    J = g()
    with torch.no_grad():
        model[0].weight.mul_(2)
    assert torch.equal(g(), J)


def test_auto_picks_an_applicable_strategy_everywhere():
    for q, model, args, mode, _ in CASES:
        f = jacbench.prepare(q, model, *args, **({"mode": mode} if mode else {}))
        assert f.picked and not f.picked.endswith(".auto"), q


def test_several_inputs_are_one_flat_vector_per_sample():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

        def forward(self, x, z):
            return torch.tanh(self.a(x) * self.b(z))

    torch.manual_seed(0)
    model = TwoInputs().double()
    x, z = X.double(), torch.randn(5, 2, dtype=torch.float64)
    J = jacbench.jacobian(model, (x[0], z[0]))
    assert J.shape == (3, 6)
    Jx = jacrev(lambda s: model(s[None], z[:1])[0])(x[0])
    Jz = jacrev(lambda s: model(x[:1], s[None])[0])(z[0])
    assert torch.allclose(J, torch.cat([Jx, Jz], dim=1), atol=1e-12)
    B = jacbench.batch_jacobian(model, (x, z))
    assert B.shape == (5, 3, 6) and torch.allclose(B[0], J, atol=1e-12)
    K = jacbench.ntk(model, (x, z), mode="trace")
    assert K.shape == (5, 5)
    _check("ntk", model, ((x, z),), "trace", K, dtype="float64")
    with pytest.raises(jacbench.UserModelError, match="more inputs than one.*as a tuple"):
        jacbench.ntk(model, x)
    with pytest.raises(jacbench.UserModelError, match="more inputs than one"):
        jacbench.compare(model, x)
    with pytest.raises(jacbench.UserModelError, match="batch sizes"):
        jacbench.ntk(model, (x, z[:3]))
    with pytest.raises(jacbench.UserModelError, match=r"x2\[1\] has shape"):
        jacbench.ntk(model, (x, z), (x, x))


def test_dict_and_tuple_outputs_are_picked_by_key_or_index():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _mlp()

        def forward(self, x):
            y = self.body(x)
            return {"logits": y, "energy": (y ** 2).sum(-1, keepdim=True)}

    class Pair(Heads):
        def forward(self, x):
            return tuple(super().forward(x).values())

    ref = jacbench.jacobian(MODEL, X[0])
    assert torch.allclose(jacbench.jacobian(Heads(), X[0], output="logits"), ref)
    assert torch.allclose(jacbench.jacobian(Pair(), X[0], output=0), ref)
    assert jacbench.param_jacobian(Pair(), X, output=-1).shape == (5, 1, P)
    with pytest.raises(jacbench.UserModelError, match="output=KEY"):
        jacbench.jacobian(Heads(), X[0])
    with pytest.raises(jacbench.UserModelError, match="keys 'logits', 'energy'"):
        jacbench.jacobian(Heads(), X[0], output="loss")
    with pytest.raises(jacbench.UserModelError, match="tuple of 2"):
        jacbench.jacobian(Pair(), X[0], output=2)
    with pytest.raises(jacbench.UserModelError, match="returns one Tensor"):
        jacbench.jacobian(MODEL, X[0], output=0)


def test_bad_calls_say_what_is_wrong():
    with pytest.raises(jacbench.UserModelError, match="v has 5 numbers; hvp needs 4"):
        jacbench.hvp(MODEL, X[0], torch.randn(5))
    with pytest.raises(TypeError, match="hvp needs v"):
        jacbench.prepare("hvp", MODEL, X[0])
    with pytest.raises(jacbench.UserModelError, match="x2 has shape"):
        jacbench.ntk(MODEL, X, torch.randn(3, 5))
    with pytest.raises(jacbench.UserModelError, match="x2 has shape"):
        jacbench.cross_jacobian(MODEL, X[0], torch.randn(5))
    with pytest.raises(ValueError, match="modes full, trace, diagonal"):
        jacbench.ntk(MODEL, X, mode="sum")
    with pytest.raises(jacbench.UserModelError, match="does not apply"):
        jacbench.ntk(MODEL, X, strategy="jax.structured")
    with pytest.raises(jacbench.UserModelError, match="integer"):
        jacbench.jacobian(MODEL, torch.arange(4))
    with pytest.raises(ValueError, match="threads"):
        jacbench.jacobian(MODEL, X[0], threads=0)


def test_compare_checks_x2_up_front_and_cleans_up(tmp_path, monkeypatch):
    import tempfile

    with pytest.raises(jacbench.UserModelError, match=r"x2 has shape \(3, 5\)"):
        jacbench.compare(MODEL, X, quantities="ntk", x2=torch.randn(3, 5))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    df = jacbench.compare(MODEL, X, quantities="ntk", modes="trace", profile="test",
                          strategies="torch.jacobian_contraction,torch.ntk_vps")
    assert set(df["status"]) == {"ok"}
    assert not list(tmp_path.glob("jacbench-*"))  # the temporary results folder is gone
    pick = jacbench.best(df)
    assert pick.strategy in {"torch.jacobian_contraction", "torch.ntk_vps"}
    K = pick(MODEL, X)
    assert K.shape == (5, 5)
    _check("ntk", MODEL, (X,), "trace", K)


def _rows(**columns):
    base = {"quantity": "ntk", "mode": "trace", "problem": "M[trace]@B=8", "scale": 8,
            "status": "ok", "exact": True}
    n = len(next(iter(columns.values())))
    return pd.DataFrame({**{k: [v] * n for k, v in base.items()}, **columns})


def test_best_prefers_the_side_by_side_ratio_and_names_ties():
    df = _rows(strategy=["torch.a", "torch.b", "torch.c", "torch.auto", "torch.h"],
               median_s=[1.0, 1.1, 3.0, 0.5, 0.1],
               ratio_to_fastest=[1.05, 1.0, 3.0, 0.9, 0.1],
               tied_with_fastest=[True, True, False, True, True])
    df.loc[4, "exact"] = False  # an estimator is never the winner
    pick = jacbench.best(df)
    assert (pick.strategy, pick.quantity, pick.mode, pick.tied) == \
        ("torch.b", "ntk", "trace", ("torch.a",))
    # without paired timing: the median decides; failed rows never win
    df = _rows(strategy=["torch.a", "torch.b"], median_s=[2.0, 1.0])
    df.loc[1, "status"] = "disagrees"
    assert jacbench.best(df).strategy == "torch.a"


def test_best_asks_which_quantity_and_uses_the_largest_size():
    df = pd.concat([_rows(strategy=["torch.a"], median_s=[1.0]),
                    _rows(strategy=["torch.b"], median_s=[1.0]).assign(mode="full")])
    with pytest.raises(ValueError, match="best\\(df, 'ntk', mode='full'\\)"):
        jacbench.best(df)
    assert jacbench.best(df, "ntk", mode="full").strategy == "torch.b"
    big = _rows(strategy=["torch.a", "torch.b"], median_s=[5.0, 1.0]).assign(
        scale=64, problem="M[trace]@B=64")
    small = _rows(strategy=["torch.a", "torch.b"], median_s=[0.1, 1.0])
    both = pd.concat([small, big])
    assert jacbench.best(both).strategy == "torch.b"
    assert jacbench.best(both, problem="M[trace]@B=8").strategy == "torch.a"
    with pytest.raises(ValueError, match="nothing to pick"):
        jacbench.best(_rows(strategy=["torch.a"], median_s=[1.0]).assign(status="error"))


JAX_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
import jacbench
from jacbench.strategies.agreement import max_error
rng = np.random.default_rng(0)
params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
def f(p, x):
    return jnp.tanh(x @ p["w"] + p["b"])
x = rng.normal(size=(5, 4)).astype(np.float32)
K = jacbench.ntk((f, params), x, mode="trace")
assert isinstance(K, jax.Array) and K.shape == (5, 5), K
pr = jacbench.prepare("jacobian", (f, params), x[0])
assert pr.strategy.endswith("_jit"), pr.strategy
J = pr()
expect = jax.jacrev(lambda s: f(params, s[None])[0])(jnp.asarray(x[0]))
assert max_error(np.asarray(J), np.asarray(expect, dtype=np.float64)) < 1e-6
print("ok", pr.strategy)
"""


def test_a_jax_function_gives_jax_arrays():
    """In a child process: a JAX backend started here would make later forks unsafe."""
    pytest.importorskip("jax")
    run = subprocess.run([sys.executable, "-c", JAX_SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-2000:]
