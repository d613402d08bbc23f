"""JAX strategies: agreement with the float64 reference (eager and jitted, float64 and float32),
x64 kept scoped, the torch and JAX views of one problem being one function, estimators that
converge, registration without JAX, and the CUDA path (skipped without a JAX GPU)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jacbench import strategies
from jacbench.bench.problems import problems
from conftest import cases, reference_for, tolerance_for
from jacbench.strategies.agreement import convergence, max_error, tolerance
from jacbench.strategies.jax_model import JAX_MISSING, jax_gpu_available, jax_view
from jacbench.strategies.torch_model import torch_view

ROOT = Path(__file__).resolve().parents[1]
needs_jax = pytest.mark.skipif(JAX_MISSING is not None, reason=str(JAX_MISSING))


def _run(strategy, problem, dtype, device="cpu", **options):
    out = strategy.prepare(problem, device, dtype, **{**strategy.options, **options})()
    assert str(out.dtype) == dtype, f"{strategy.name} returned {out.dtype}, asked for {dtype}"
    return out


def _check(strategy, problem, dtype, device="cpu"):
    err = max_error(_run(strategy, problem, dtype, device), reference_for(problem))
    tol = tolerance_for(problem, dtype)
    assert err <= tol, f"{strategy.name} on {problem.id} ({dtype}, {device}): error {err:.3g} > {tol:.2g}"


def _dtype_cases():
    """Jitted strategies in both dtypes; eager ones in float64 only. An eager strategy runs the
    very function its jitted twin compiles, op by op (20 s for a conv-net NTK on 2 cores), so
    its float32 run would test nothing the jitted float32 run does not."""
    out = []
    for param in cases(framework="jax"):
        strategy = param.values[0]
        for dtype in ("float64", "float32"):
            if dtype == "float64" or strategy.name.endswith("_jit"):
                out.append(pytest.param(*param.values, dtype, id=f"{param.id}-{dtype}",
                                        marks=param.marks))
    return out


@needs_jax
@pytest.mark.parametrize("strategy,problem,dtype", _dtype_cases())
def test_exact_jax_strategy_agrees(strategy, problem, dtype):
    _check(strategy, problem, dtype)


def _estimator_cases():
    """Eager estimators only: a jitted twin compiles the very same function once per sample
    count (five counts, ~5 s each), and test_estimators_are_reproducible_and_seeded ties the
    two together."""
    return [pytest.param(s, p, id=f"{s.quantity}-{s.name}-{p.id}")
            for s in strategies.strategies(framework="jax", exact=False)
            if not s.name.endswith("_jit")
            for p in problems(s.quantity, "test") if s.not_applicable(p) is None]


@needs_jax
@pytest.mark.parametrize("strategy,problem", _estimator_cases())
def test_jax_estimator_converges_at_its_promised_rate_without_bias(strategy, problem):
    c = convergence(lambda k, seed: _run(strategy, problem, "float64", samples=k, seed=seed),
                    reference_for(problem))
    assert np.isfinite(c.rms).all()
    assert not c.problems(), (c.problems(), c)


@needs_jax
def test_estimators_are_reproducible_and_seeded():
    s = strategies.get("hessian_diag", "jax.hutchinson_jit")
    p = problems("hessian_diag", "test")[0]
    run = s.prepare(p, "cpu", "float64", **s.options)
    a, b = np.asarray(run()), np.asarray(run())
    c = np.asarray(_run(s, p, "float64", seed=1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    eager = strategies.get("hessian_diag", "jax.hutchinson")  # the twin the rate test runs
    assert np.allclose(np.asarray(_run(eager, p, "float64", **s.options)), a, rtol=1e-12)


@needs_jax
def test_every_quantity_has_jax_strategies_eager_and_jitted():
    for q in strategies.QUANTITIES:
        names = {s.name for s in strategies.strategies(q, framework="jax")}
        eager = {n for n in names if not n.endswith("_jit")}
        assert eager, f"no JAX strategy for {q}"
        assert {f"{n}_jit" for n in eager} == names - eager, q
        for n in names:
            idea = strategies.get(q, n).idea
            assert ("Jitted" in idea) == n.endswith("_jit") and "Cost" in idea, (n, idea)


# ---------------------------------------------------------------- x64 scoping
@needs_jax
def test_float64_is_scoped_and_does_not_leak_into_float32():
    import jax
    import jax.numpy as jnp

    p = problems("jacobian", "test")[0]
    for name in ("jax.jacrev", "jax.jacrev_jit"):
        s = strategies.get("jacobian", name)
        run64, run32 = s.prepare(p, "cpu", "float64"), s.prepare(p, "cpu", torch.float32)
        assert run64().dtype == jnp.float64
        assert run32().dtype == jnp.float32  # after a float64 call
        with jax.enable_x64(False):  # a float64 strategy is float64 whatever the caller's mode
            assert run64().dtype == jnp.float64
        assert max_error(run64(), reference_for(p)) <= tolerance("float64")
    assert not jax.config.jax_enable_x64
    assert jnp.ones(2).dtype == jnp.float32


# ---------------------------------------------------------------- torch and JAX
_CROSS = [("ntk", "seed003_convnet"), ("param_jacobian", "seed003_convnet"),
          ("jacobian", "seed004_linear_tanh"), ("jac_diag", "seed002_netx"),
          ("jac_diag", "mlp_square"), ("cross_jacobian", "seed001_sqrt"), ("ggn_vp", "seed000_mlp")]


def _cross_problem(quantity, family):
    return next(p for p in problems(quantity, "test", family=family) if p.mode in (None, "full"))


def _views(p):
    """(view, data key) pairs the problem's data can feed, as (torch call, JAX call) makers."""
    if p.quantity == "jac_diag":
        return [("fd", "x")]
    return ([(v, k) for k in ("x", "x1", "x2") if k in p.data for v in ("f", "phi")]
            + [(v, k) for k in ("X", "X1", "X2") if k in p.data for v in ("fb", "fp")])


@needs_jax
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("quantity,family", _CROSS)
def test_torch_and_jax_views_are_one_function(quantity, family, dtype):
    """Same parameter order and the same outputs from every function view, batch norm included."""
    import jax

    p = _cross_problem(quantity, family)
    tv, jv = torch_view(p, "cpu", dtype), jax_view(p, "cpu", dtype)
    assert list(jv.keys) == list(tv.params)
    with jax.enable_x64(dtype == "float64"):
        assert max_error(jv.flat(jv.params), tv.flat(tv.params).numpy()) == 0.0
        for view, key in _views(p):
            t_arg, j_arg = tv.data[key], jv.data[key]
            if view == "fp":
                want, got = tv.fp(tv.params, t_arg), jv.fp(jv.params, j_arg)
            else:
                want, got = getattr(tv, view)(t_arg), getattr(jv, view)(j_arg)
            assert got.dtype == dtype
            assert max_error(got, want.numpy()) <= tolerance(dtype), (view, key)


@needs_jax
@pytest.mark.parametrize("quantity,torch_name,jax_name", [
    ("jacobian", "torch.jacrev", "jax.jacfwd_jit"),
    ("param_jacobian", "torch.vmap_jacrev", "jax.vmap_jacrev_jit"),
    ("batch_jacobian", "torch.vmap_jacrev", "jax.vmap_jacrev_jit"),
    ("cross_jacobian", "torch.vmap_jvp_vjp", "jax.vmap_jvp_vjp_jit"),
])
def test_torch_and_jax_strategies_agree_in_float32(quantity, torch_name, jax_name):
    ts, js = strategies.get(quantity, torch_name), strategies.get(quantity, jax_name)
    for p in problems(quantity, "test"):
        t = ts.prepare(p, "cpu", "float32")().detach().numpy()
        assert max_error(_run(js, p, "float32"), t) <= tolerance("float32"), p.id


@needs_jax
def test_batch_norm_is_exercised():
    """The conv net's eval-mode batch norm is not the identity, so agreement above means
    something: dropping its statistics changes the output."""
    p = _cross_problem("param_jacobian", "seed003_convnet")
    jv = jax_view(p, "cpu", "float32")
    plain = {k: (np.zeros_like(b) if "mean" in k else np.ones_like(b)) for k, b in jv.buffers.items()}
    X = jv.data["X"]
    assert np.abs(np.asarray(jv.fb(X) - jv.forward(jv.params, plain, X))).max() > 1e-3


# ---------------------------------------------------------------- environment
def _python(code: str, **env):
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@needs_jax
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_thread_pinning_is_accepted_by_xla_and_pins():
    """XLA aborts on unknown flags in XLA_FLAGS, so a run that computes proves them valid."""
    out = _python("import os\n"
                  "from jacbench.bench.harness import pin_threads\n"
                  "pin_threads(1)\n"
                  "import jax.numpy as jnp\n"
                  "print(float((jnp.ones((64, 64)) @ jnp.ones(64)).sum()), len(os.sched_getaffinity(0)),"
                  " 'eigen=false' in os.environ['XLA_FLAGS'])")
    assert out.split() == ["4096.0", "1", "True"]


def test_without_jax_the_strategies_stay_registered_and_say_why():
    out = _python(
        "import sys\n"
        "class NoJax:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('jax', 'jaxlib'):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, NoJax())\n"
        "from jacbench import strategies\n"
        "from jacbench.bench.problems import problems\n"
        "print(len(strategies.strategies(framework='jax')))\n"
        "print(strategies.get('ntk', 'jax.jacobian_contraction_jit')"
        ".not_applicable(problems('ntk', 'test')[0]))\n")
    count, reason = out.strip().splitlines()
    assert int(count) == len(strategies.strategies(framework="jax"))
    assert reason.startswith("jax is not installed")


# ---------------------------------------------------------------- GPU
def _gpu_cases():
    out = []
    for s in strategies.strategies(framework="jax", exact=True):
        p = next((p for p in problems(s.quantity, "test") if s.not_applicable(p) is None), None)
        if p is not None:
            out.append(pytest.param(s, p, id=f"{s.quantity}-{s.name}-{p.id}"))
    return out


@pytest.mark.gpu
@pytest.mark.skipif(not jax_gpu_available(), reason="JAX has no GPU device (no CUDA plugin or GPU)")
@pytest.mark.parametrize("strategy,problem", _gpu_cases())
def test_exact_jax_strategy_agrees_on_cuda(strategy, problem):
    for dtype in ("float32", "float64"):
        _check(strategy, problem, dtype, device="cuda")
    out = strategy.prepare(problem, "cuda", "float32")()
    assert {d.platform for d in out.devices()} == {"gpu"}


@needs_jax
@pytest.mark.skipif(jax_gpu_available(), reason="this machine has a JAX GPU")
def test_cuda_without_a_jax_gpu_fails_clearly():
    p = problems("jacobian", "test")[0]
    with pytest.raises(RuntimeError, match="JAX has no cuda device"):
        strategies.get("jacobian", "jax.jacrev").prepare(p, "cuda", "float32")
