"""Problem families: the five seed workloads of design.md and MLP sweeps, each at size ladders.

Ladders: `test` (tiny, for agreement tests), `quick` (the default `make bench` sweep, at least
three sizes per quantity on a 2-core CPU), `full` (the seeds' own sizes and beyond).
Weights and inputs come from a numpy seed, so torch and JAX build the same function.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from jacbench.strategies.problem import Layer, ModelSpec, Problem
from jacbench.strategies.quantities import QUANTITIES, Dims, Draw
from jacbench.strategies.quantities import quantity as definition
from jacbench.strategies.names import unknown

from .well_posed import off_kinks

LADDERS = ("test", "quick", "full")


def _uniform(rng, shape, fan_in):
    bound = 1.0 / np.sqrt(fan_in)  # torch's default init scale
    return rng.uniform(-bound, bound, size=shape)


def linear(rng, n_in, n_out, bias=True) -> Layer:
    params = {"weight": _uniform(rng, (n_out, n_in), n_in)}
    if bias:
        params["bias"] = _uniform(rng, (n_out,), n_in)
    return Layer("linear", params)


def conv(rng, c_in, c_out, k=3) -> Layer:
    fan = c_in * k * k
    return Layer("conv2d", {"weight": _uniform(rng, (c_out, c_in, k, k), fan),
                            "bias": _uniform(rng, (c_out,), fan)}, options={"padding": k // 2})


def batchnorm(rng, c) -> Layer:
    # Eval-mode statistics that are not the identity, so batch norm really is exercised.
    return Layer("batchnorm2d", {"weight": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, .1, c)},
                 buffers={"running_mean": rng.normal(0, .1, c),
                          "running_var": rng.uniform(0.5, 1.5, c)})


def tanh_mlp(rng, dims: list[int], act="tanh", out_act: str | None = None) -> ModelSpec:
    layers: list[Layer] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(linear(rng, a, b))
        if i < len(dims) - 2:
            layers.append(Layer(act))
    if out_act:
        layers.append(Layer(out_act))
    return ModelSpec(tuple(layers), (dims[0],), dims[-1])


def conv_bn_net(rng, channels: int, hidden: int, image: int, classes: int = 10) -> ModelSpec:
    """Seed 003: conv-BN-relu-pool twice, then an MLP head; channels 16, hidden 192 and image 32
    give ~400k parameters."""
    c = channels
    layers = [conv(rng, 3, c), batchnorm(rng, c), Layer("relu"), Layer("avgpool2"),
              conv(rng, c, 2 * c), batchnorm(rng, 2 * c), Layer("relu"), Layer("avgpool2"),
              Layer("flatten"), linear(rng, 2 * c * (image // 4) ** 2, hidden), Layer("relu"),
              linear(rng, hidden, classes)]
    return ModelSpec(tuple(layers), (3, image, image), classes)


def conv_tanh_net(rng, channels: int, image: int, classes: int) -> ModelSpec:
    """One-channel images through conv-BN-tanh-pool and a linear head: every layer kind that
    has curvature or a transpose rule, at an input size small enough for dense Hessians."""
    layers = [conv(rng, 1, channels), batchnorm(rng, channels), Layer("tanh"), Layer("avgpool2"),
              Layer("flatten"), linear(rng, channels * (image // 2) ** 2, classes)]
    return ModelSpec(tuple(layers), (1, image, image), classes)


def sqrt_linear(rng, n: int, m: int) -> ModelSpec:
    """Seed 001: f(x) = sqrt(F x / N) with F uniform in [0, 1)."""
    return ModelSpec((Layer("linear", {"weight": rng.uniform(0, 1, (m, n)) / n}), Layer("sqrt")),
                     (n,), m)


@dataclass(frozen=True)
class Family:
    name: str
    about: str
    build: Callable[[np.random.Generator, dict], ModelSpec]
    ladders: dict[str, dict[str, list[dict]]]  # ladder -> quantity -> list of size dicts
    flags: frozenset = frozenset()
    positive_inputs: bool = False  # seed 001 takes sqrt of F x, so inputs stay in [0, 1)


def _sample(rng, shape, positive):
    return rng.uniform(0, 1, shape) if positive else rng.normal(0, 1, shape)


def _data(fam: Family, q: str, spec: ModelSpec, s: dict, rng) -> dict[str, np.ndarray]:
    """The quantity's data (strategies.quantities), its model inputs drawn from the problem's
    rng: uniform in [0, 1) for positive-input families, standard normal otherwise."""
    def point(i):  # fresh samples: the i-th is the next one drawn
        return _sample(rng, spec.in_dim, fam.positive_inputs)

    def batch(key):
        return _sample(rng, (s[key], *spec.in_shape), fam.positive_inputs)
    dims = Dims(spec.in_dim, spec.out_dim, spec.param_count, spec.in_shape, s, fam.flags)
    return definition(q).inputs(dims, Draw(point, batch), rng)


def _mlp(rng, s):
    return tanh_mlp(rng, [s["n"], s["width"], s["width"], s["m"]])


def _sizes(key: str, values, **fixed) -> list[dict]:
    return [{**fixed, key: v, "scale": v} for v in values]


_INPUT_Q = ("jacobian", "jvp", "vjp", "hessian", "hessian_diag", "hvp", "cross_jacobian")
_PARAM_Q = ("param_jacobian", "ggn_vp")

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("seed000_mlp", "J^T J v without the dense Jacobian: tanh MLP 4->H->H->1 on "
           "a batch, over its parameters (a PyTorch forum question)",
           lambda rng, s: tanh_mlp(rng, [4, s["width"], s["width"], 1]),
           {"test": {"ggn_vp": [{"width": 6, "B": 5, "scale": 5}],
                     "param_jacobian": [{"width": 6, "B": 4, "scale": 4}]},
            "quick": {"ggn_vp": _sizes("B", [256, 1024, 4096], width=64),
                      "param_jacobian": _sizes("B", [64, 256, 1024], width=64)},
            "full": {"ggn_vp": _sizes("B", [1024, 4096, 16384], width=64),
                     "param_jacobian": _sizes("B", [256, 1024, 4096], width=64)}}),
    Family("seed001_sqrt", "J(x1) J(x2)^T without whole Jacobians: f(x) = "
           "sqrt(F x / N), M = 5 outputs (a Stack Overflow question)",
           lambda rng, s: sqrt_linear(rng, s["n"], s["m"]),
           {"test": {q: [{"n": 7, "m": 3, "scale": 7}] for q in ("cross_jacobian", "jacobian")},
            "quick": {"cross_jacobian": _sizes("n", [1000, 10000, 100000], m=5),
                      "jacobian": _sizes("n", [1000, 10000, 100000], m=5)},
            "full": {"cross_jacobian": _sizes("n", [10000, 100000, 1000000], m=5)}},
           positive_inputs=True),
    Family("seed002_netx", "only the Jacobian's diagonal: net_x 1->20->20->m on N "
           "scalar inputs, samples independent (a Stack Overflow question)",
           lambda rng, s: tanh_mlp(rng, [1, 20, 20, s["m"]]),
           {"test": {"jac_diag": [{"m": 4, "N": 3, "scale": 3}, {"m": 7, "N": 5, "scale": 5}]},
            "quick": {"jac_diag": [{"m": 4, "N": 3, "scale": 3}, {"m": 400, "N": 30, "scale": 30},
                                   {"m": 400, "N": 100, "scale": 100}]},
            "full": {"jac_diag": _sizes("N", [100, 300, 1000], m=400)}},
           flags=frozenset({"separable"})),
    Family("seed003_convnet", "per-sample parameter Jacobians and NTKs: conv net with "
           "eval-mode batch norm, 10 logits (a neural-tangents issue)",
           lambda rng, s: conv_bn_net(rng, s["channels"], s["hidden"], s["image"]),
           {"test": {"param_jacobian": [{"channels": 2, "hidden": 6, "image": 8, "B": 3,
                                         "scale": 3}],
                     "ntk": [{"channels": 2, "hidden": 6, "image": 8, "B1": 3, "B2": 2,
                              "scale": 3}]},
            # One NTK size in quick: its three modes with eager JAX (5-7 s of first calls
            # per case) are the sweep's largest block; the full ladder has three sizes.
            "quick": {"param_jacobian": _sizes("B", [4, 8], channels=4, hidden=32, image=16),
                      "ntk": [{"channels": 4, "hidden": 32, "image": 16, "B1": 8, "B2": 8,
                               "scale": 8}]},
            "full": {"param_jacobian": _sizes("B", [25, 50, 100], channels=16, hidden=192,
                                              image=32),
                     "ntk": [{"channels": 16, "hidden": 192, "image": 32, "B1": b, "B2": b,
                              "scale": b} for b in (10, 25, 100)]}}),
    Family("seed004_linear_tanh", "jacfwd or jacrev, vmap or a loop: predict(x) = "
           "tanh(W x + b) (the torch.func tutorial on Jacobians and Hessians)",
           lambda rng, s: tanh_mlp(rng, [s["n"], s["m"]], out_act="tanh"),
           {"test": {"jacobian": [{"n": 3, "m": 5, "scale": 15}, {"n": 5, "m": 3, "scale": 15}],
                     "batch_jacobian": [{"n": 4, "m": 3, "B": 3, "scale": 3}],
                     "hessian": [{"n": 4, "m": 4, "scale": 4}],
                     "batch_hessian": [{"n": 3, "m": 4, "B": 3, "scale": 3}]},
            "quick": {"jacobian": [{"n": 16, "m": 16, "scale": 256},
                                   {"n": 32, "m": 2048, "scale": 65536},
                                   {"n": 2048, "m": 32, "scale": 65536}],
                      "batch_jacobian": _sizes("B", [16, 64, 256], n=31, m=33),
                      "hessian": _sizes("n", [16, 64, 256], m=16),
                      "batch_hessian": _sizes("B", [16, 64, 256], n=16, m=16)},
            "full": {"jacobian": [{"n": 32, "m": 2048, "scale": 65536},
                                  {"n": 2048, "m": 32, "scale": 65536}],
                     "batch_jacobian": _sizes("B", [64, 256, 1024], n=31, m=33)}}),
    Family("conv_tanh", "conv-BN-tanh-pool-linear on one-channel images: input Hessians of a "
           "conv net", lambda rng, s: conv_tanh_net(rng, s["channels"], s["image"], s["m"]),
           {"test": {"hessian_diag": [{"channels": 2, "image": 4, "m": 3, "scale": 4}]},
            "quick": {"hessian_diag": _sizes("image", [8, 16, 32], channels=8, m=10)},
            "full": {"hessian_diag": _sizes("image", [16, 32, 64], channels=16, m=10)}}),
    Family("mlp_square", "tanh MLP N->W->N on one input: a jac_diag whose outputs all mix",
           lambda rng, s: tanh_mlp(rng, [s["N"], s["width"], s["N"]]),
           {"test": {"jac_diag": [{"N": 6, "width": 5, "scale": 6}]},
            "quick": {"jac_diag": _sizes("N", [16, 64, 256], width=64)},
            "full": {"jac_diag": _sizes("N", [256, 1024, 4096], width=256)}}),
    Family("mlp_width", "tanh MLP n->W->W->m, width sweep",
           _mlp,
           {"test": {**{q: [{"n": 5, "width": 6, "m": 3, "scale": 6}] for q in _INPUT_Q},
                     **{q: [{"n": 3, "width": 5, "m": 2, "B": 3, "scale": 5}] for q in _PARAM_Q},
                     "batch_jacobian": [{"n": 4, "width": 5, "m": 3, "B": 3, "scale": 5}],
                     "batch_hessian": [{"n": 3, "width": 4, "m": 2, "B": 3, "scale": 4}],
                     "ntk": [{"n": 3, "width": 5, "m": 2, "B1": 3, "B2": 2, "scale": 5}]},
            "quick": {**{q: _sizes("width", [32, 128, 512], n=32, m=8) for q in _INPUT_Q},
                      **{q: _sizes("width", [32, 128, 512], n=16, m=4, B=32) for q in _PARAM_Q},
                      "batch_jacobian": _sizes("width", [32, 128, 512], n=16, m=16, B=32),
                      "batch_hessian": _sizes("width", [32, 128, 512], n=8, m=4, B=16),
                      "ntk": _sizes("width", [32, 128, 512], n=16, m=4, B1=16, B2=16)},
            "full": {**{q: _sizes("width", [128, 512, 2048], n=64, m=16) for q in _INPUT_Q},
                     **{q: _sizes("width", [128, 512, 2048], n=32, m=10, B=64) for q in _PARAM_Q},
                     "ntk": _sizes("width", [256, 512, 1024], n=32, m=10, B1=64, B2=64)}}),
    Family("mlp_outputs", "tanh MLP n->64->64->m, output-count sweep",
           _mlp,
           {"test": {"jacobian": [{"n": 4, "width": 5, "m": 9, "scale": 9}]},
            "quick": {q: _sizes("m", [1, 16, 256], n=32, width=64)
                      for q in ("jacobian", "cross_jacobian")},
            "full": {q: _sizes("m", [1, 64, 1024], n=64, width=128)
                     for q in ("jacobian", "cross_jacobian")}}),
    Family("ntk_targets", "large NTKs: tanh MLP 32->W->W->10, B1 = B2 = batch, up to width 1024",
           _mlp,
           {"test": {"ntk": [{"n": 5, "width": 6, "m": 3, "B1": 4, "B2": 4, "scale": 6}]},
            "full": {"ntk": [{"n": 32, "width": w, "m": 10, "B1": b, "B2": b, "scale": w}
                             for w, b in ((256, 64), (512, 128), (1024, 64))]}}),
    Family("mlp_batch", "tanh MLP 16->64->64->4, batch sweep",
           _mlp,
           {"test": {"ntk": [{"n": 4, "width": 5, "m": 3, "B1": 2, "B2": 3, "scale": 3}]},
            "quick": {"ntk": [{"n": 16, "width": 64, "m": 4, "B1": b, "B2": b, "scale": b}
                              for b in (16, 64)],
                      "batch_jacobian": _sizes("B", [16, 128, 1024], n=16, width=64, m=4)},
            "full": {"ntk": [{"n": 16, "width": 64, "m": 4, "B1": b, "B2": b, "scale": b}
                             for b in (64, 256, 1024)]}}),
]}


def _label(s: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in s.items() if k != "scale")


def make(family: str, quantity: str, sizes: dict, mode: str | None = None,
         seed: int = 0) -> Problem:
    """Build one problem; its weights and data depend only on (family, sizes, seed)."""
    if family not in FAMILIES:
        raise unknown("problem family", family, FAMILIES)
    fam = FAMILIES[family]
    rng = np.random.default_rng([seed, zlib.crc32(family.encode()), *(int(v) for v in sizes.values())])
    spec = fam.build(rng, sizes)
    data = _data(fam, quantity, spec, sizes, rng)
    label = _label(sizes)
    data = off_kinks(spec, quantity, data, lambda shape: _sample(rng, shape, fam.positive_inputs),
                     f"{family}@{label}")
    counts = {**sizes, "params": spec.param_count}
    return Problem(family, label, quantity, spec, data, counts, fam.flags,
                   mode if QUANTITIES[quantity].modes else None, seed)


def problems(quantity: str | None = None, ladder: str = "quick",
             family: str | None = None) -> list[Problem]:
    """Every problem of the ladder, optionally for one quantity and one family. NTK problems
    come once per mode."""
    if ladder not in LADDERS:
        raise unknown("ladder", ladder, LADDERS)
    if quantity is not None and quantity not in QUANTITIES:
        raise unknown("quantity", quantity, QUANTITIES)
    if family is not None and family not in FAMILIES:
        raise unknown("problem family", family, FAMILIES)
    out = []
    for fam in FAMILIES.values():
        if family not in (None, fam.name):
            continue
        for q, ladder_sizes in fam.ladders.get(ladder, {}).items():
            if quantity not in (None, q):
                continue
            for s in ladder_sizes:
                for mode in (QUANTITIES[q].modes or (None,)):
                    out.append(make(fam.name, q, s, mode))
    return out
