"""Builds a pure JAX function from a `ModelSpec` and registers JAX strategies, eager and jitted.

The layers (each kind's `jax_apply`, `strategies.layer_kinds`) mirror their torch modules
exactly (NCHW/OIHW convolutions, eval-mode batch norm, torch's flatten order), so one problem is
one mathematical function in both frameworks.

float64 needs JAX's x64 mode. It is switched on only inside `jax.enable_x64(True)` scopes
(a thread-local context manager since JAX 0.8): the view is built in that scope and the
callable `prepare` returns runs in it again, because float64 arrays fed to JAX outside the
scope are silently truncated to float32. Nothing is flipped globally, so float32 runs never
see x64.

If JAX cannot be imported, this module still imports and every JAX strategy is registered with
an `applies` rule that reports "jax is not installed".
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .layer_kinds import KINDS
from .layer_kinds.base import JAX_PRECISION
from .problem import Layer, ModelSpec, Problem
from .registry import always, register
from .user_model import UserModel, jax_parts

try:
    import jax
    import jax.numpy as jnp
    JAX_MISSING: str | None = None
except ImportError as exc:  # the registry still lists JAX strategies, as not applicable
    jax = jnp = None
    JAX_MISSING = f"jax is not installed ({exc})"


# Thread pinning for JAX and torch alike is bench.harness.pin_threads: with jaxlib 0.10.2 the
# XLA flag alone does not pin (XLA sizes its pool from the CPU affinity mask), so it sets both.


def jax_dtype(dtype) -> np.dtype:
    """Accept numpy/JAX dtypes, torch dtypes and their names ("float32", "float64"); None means
    float32. Returns a numpy dtype (JAX uses numpy's)."""
    if dtype is None:
        return np.dtype("float32")
    name = str(getattr(dtype, "name", dtype)).replace("torch.", "").replace("jnp.", "")
    if name not in ("float32", "float64"):
        raise ValueError(f"unsupported dtype {dtype!r}; use float32 or float64")
    return np.dtype(name)


def jax_device(device="cpu"):
    """A JAX device for "cpu", "cuda", "cuda:1", "gpu"; a clear error when JAX has none."""
    if JAX_MISSING:
        raise RuntimeError(JAX_MISSING)
    if not isinstance(device, str):  # a jax Device already, or a torch.device
        if hasattr(device, "platform"):
            return device
        device = str(device)
    kind, _, index = device.partition(":")
    platform = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu"}.get(kind)
    if platform is None:
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        devices = []
    if not devices:
        raise RuntimeError(f"JAX has no {kind} device (it sees {jax.devices()}); for CUDA "
                           "install the JAX GPU plugin, e.g. pip install 'jax[cuda12]'")
    i = int(index or 0)
    if i >= len(devices):
        raise RuntimeError(f"JAX has {len(devices)} {kind} device(s), asked for index {i}")
    return devices[i]


def jax_gpu_available() -> bool:
    if JAX_MISSING:
        return False
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@contextlib.contextmanager
def scope(dtype, device):
    """x64 on exactly when the dtype is float64, and `device` the default for new arrays."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(jax.enable_x64(jax_dtype(dtype) == np.float64))
        stack.enter_context(jax.default_device(device))
        yield


# ---------------------------------------------------------------- the network
def _param_names(layer: Layer) -> list[str]:
    return KINDS[layer.kind].param_names(layer)


def _apply(layer: Layer, p: dict, b: dict, x):
    return KINDS[layer.kind].jax_apply(layer, p, b, x)


def build_function(spec: ModelSpec) -> Callable:
    """A pure function `(params, buffers, X) -> Y` of the spec's network; parameter and buffer
    keys are torch's names ("0.weight", "1.running_mean", ...)."""
    def forward(params: dict, buffers: dict, X):
        for i, layer in enumerate(spec.layers):
            p = {k: params[f"{i}.{k}"] for k in layer.params}
            b = {k: buffers[f"{i}.{k}"] for k in layer.buffers}
            X = _apply(layer, p, b, X)
        return X
    return forward


def _named(spec: ModelSpec, attr: str) -> dict[str, np.ndarray]:
    out = {}
    for i, layer in enumerate(spec.layers):
        arrays = getattr(layer, attr)
        names = _param_names(layer) if attr == "params" else list(arrays)
        out.update({f"{i}.{k}": np.asarray(arrays[k]) for k in names})
    return out


@dataclass(frozen=True)
class JaxView:
    """A problem on one device and dtype: the pure network, parameters, data, function views.

    The views match `TorchView`: f(x) (n,) -> (m,); phi(x) = 0.5 ||f(x)||^2; fb(X) (B, ...) ->
    (B, m); fp(params, X); fd(x) for jac_diag. `params` is a dict in torch's named_parameters
    order. JAX rebuilds dicts with sorted keys (jit arguments, jacobians), so `flat`/`unflat`
    follow `keys`, torch's order, never a dict's own order.
    """

    problem: Problem
    forward: Callable
    keys: tuple[str, ...]
    params: dict[str, Any]
    buffers: dict[str, Any]
    data: dict[str, Any]

    def f(self, x):
        return self.fb(x.reshape(1, *self.problem.spec.in_shape))[0]

    def phi(self, x):
        return 0.5 * jnp.sum(self.f(x) ** 2)

    def fb(self, X):
        return self.forward(self.params, self.buffers, X)

    def fp(self, params, X):
        return self.forward(params, self.buffers, X)

    def fd(self, x):
        if "separable" in self.problem.flags:  # one scalar input per sample (seed 002)
            return self.fb(x.reshape(-1, 1))
        return self.f(x).reshape(-1, 1)  # a square map R^N -> R^N

    @property
    def param_count(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.params.values())

    def flat(self, tree: dict, lead: int = 0):
        """Concatenate a params-shaped dict into one trailing axis, keeping `lead` leading axes."""
        return jnp.concatenate([tree[k].reshape(*tree[k].shape[:lead], -1) for k in self.keys],
                               axis=-1)

    def unflat(self, vec) -> dict:
        out, i = {}, 0
        for k in self.keys:
            shape = self.params[k].shape
            out[k] = vec[i:i + int(np.prod(shape))].reshape(shape)
            i += int(np.prod(shape))
        return out

    def with_arrays(self, params, buffers, data) -> "JaxView":
        """The same view over other (e.g. traced) arrays: what a jitted strategy closes over."""
        return dataclasses.replace(self, params=params, buffers=buffers, data=data)


def jax_view(problem: Problem, device="cpu", dtype=None) -> JaxView:
    """The problem's arrays on `device` in `dtype`; call inside `scope(dtype, device)` when the
    arrays are used (float64 arrays are truncated outside an x64 scope)."""
    dt, dev = jax_dtype(dtype), jax_device(device)
    with scope(dt, dev):
        def put(arrays):
            return {k: jax.device_put(np.asarray(v, dtype=dt), dev) for k, v in arrays.items()}
        if isinstance(problem.spec, UserModel):  # the user's function and params pytree
            forward, keys, flat = jax_parts(problem.spec)
            return JaxView(problem, forward, keys, put(flat), {}, put(problem.data))
        params = put(_named(problem.spec, "params"))
        return JaxView(problem, build_function(problem.spec), tuple(params), params,
                       put(_named(problem.spec, "buffers")), put(problem.data))


# ---------------------------------------------------------------- registration
def eye(k: int, like):
    return jnp.eye(k, dtype=like.dtype)


def matmul(a, b):
    return jnp.matmul(a, b, precision=JAX_PRECISION)


def einsum(eq: str, *operands):
    return jnp.einsum(eq, *operands, precision=JAX_PRECISION)


def _jax_applies(rule):
    def applies(problem: Problem) -> str | None:
        return JAX_MISSING or rule(problem)
    applies.__doc__ = rule.__doc__
    return applies


def _prepare(compute: Callable, jit: bool, notes: Callable | None = None) -> Callable:
    def prepare(problem, device="cpu", dtype=None, **options):
        if JAX_MISSING:
            raise RuntimeError(JAX_MISSING)
        dt, dev = jax_dtype(dtype), jax_device(device)
        v = jax_view(problem, dev, dt)
        arrays = (v.params, v.buffers, v.data)

        def step(params, buffers, data):
            return compute(v.with_arrays(params, buffers, data), **options)
        # A fresh jit per prepare, not compiled here: the first call traces and compiles, so
        # the harness sees compile time as first-call time, apart from the steady state.
        fn = jax.jit(step) if jit else step

        def run():
            with scope(dt, dev):
                return fn(*arrays)
        if notes is not None:
            run.notes = notes(problem)
        return run
    return prepare


def register_jax(quantity: str, name: str, *, exact: bool = True, applies=always,
                 notes: Callable | None = None, tags=(), **options):
    """Register `compute(view, **options) -> array` twice: "jax.<name>" runs it eagerly (op by
    op) and "jax.<name>_jit" under jax.jit, tagged "jit". Its docstring (idea and cost) and
    `tags` are shared. `notes(problem) -> list[str]`, when given, becomes the prepared
    callable's `.notes`."""
    def deco(compute: Callable) -> Callable:
        doc = " ".join((compute.__doc__ or "").split())
        for jit, suffix, note in ((False, "", "Eager (un-jitted)."),
                                  (True, "_jit", "Jitted; the first call compiles.")):
            prepare = _prepare(compute, jit, notes)
            prepare.__doc__ = f"{doc} {note}" if doc else ""
            prepare.__name__ = f"prepare_{quantity}_{name}{suffix}"
            register(quantity, f"jax.{name}{suffix}", exact=exact,
                     applies=_jax_applies(applies), tags={*tags, *(("jit",) if jit else ())},
                     **options)(prepare)
        return compute
    return deco
