"""User models: a network the suite has never seen, in place of a built-in `ModelSpec`.

A `UserModel` is what a `Problem.spec` holds for "benchmark your own model". It is either
- a factory reference "package.module:make_net" (or "path/to/file.py:make_net") whose
  callable returns a torch.nn.Module or a pair (jax_function, params), called again in every
  process that needs the model, with torch, numpy and random seeded first so that a factory
  that initialises weights at random builds the same weights everywhere (checked by `digest`);
- or the object itself (jacbench.compare): an nn.Module, or (fn, params).

A PyTorch model runs as given: its weights and its own buffers (batch norm statistics) are
used unchanged, on a deep copy moved to the case's device and dtype (float64 for the
reference), in eval mode. A JAX function `fn(params, X) -> Y` takes a batch X of shape
(B, *in_shape); params is any pytree of arrays. Outputs are flattened per sample to `out_dim`.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FRAMEWORKS = ("torch", "jax")


class UserModelError(ValueError):
    """A user model that cannot be used; the message says what was wrong and what to do."""


@dataclass(frozen=True, eq=False)
class UserModel:
    name: str  # the label in results: the factory reference, or the model's class name
    framework: str  # "torch" (an nn.Module) or "jax" (a pure function with its params)
    in_shape: tuple[int, ...]  # one sample, without the batch dimension
    out_dim: int  # outputs per sample, flattened
    param_count: int
    factory: str | None = None
    obj: Any = field(default=None, repr=False)
    seed: int = 0
    digest: str = ""  # of weights and buffers as built, checked in every process
    act_per_sample: int = 0  # activation elements of one sample's forward pass
    # Multiply-adds of one sample's forward pass (matrix products and convolutions, counted
    # by torch's FlopCounterMode); 0: not counted (a JAX function). The cost model's W.
    forward_macs: int = 0

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.in_shape))

    def build(self):
        """The model object: the factory's result (seeded), or the object given."""
        if self.factory is None:
            return self.obj
        return kind_of(call_factory(self.factory, self.seed), self.factory)[1]


def is_user(problem) -> bool:
    return isinstance(problem.spec, UserModel)


# ------------------------------------------------------------------------------ factories
def load_factory(ref: str):
    """The callable named by "module.path:attr" (or "file.py:attr"); UserModelError otherwise.

    The current directory is searched first, as `python -m` does, so that a model next to the
    user's shell works with the `jacbench` script too.
    """
    module_name, sep, attr = str(ref).partition(":")
    if not sep or not module_name or not attr:
        raise UserModelError(f"--model {ref!r} is not of the form module.path:callable "
                             "(e.g. mypkg.models:make_net, or models.py:make_net)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name).resolve()
            if not path.is_file():
                raise UserModelError(f"--model {ref!r}: file {str(path)!r} does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module  # so forked children and pickling find it
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UserModelError:
        raise
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise UserModelError(
                f"--model {ref!r}: no module named {missing!r}; run from the directory that "
                f"holds it or add that directory to PYTHONPATH (searched: the current "
                f"directory {os.getcwd()!r}, then sys.path)") from None
        raise UserModelError(f"--model {ref!r}: importing {module_name!r} needs module "
                             f"{missing!r}, which is not installed; install it in this "
                             "environment") from None
    except Exception as exc:  # the user's module raised while importing
        raise UserModelError(f"--model {ref!r}: importing {module_name!r} raised "
                             f"{type(exc).__name__}: {_first_line(exc)}; fix the module "
                             "(try `python -c 'import " + module_name + "'`)") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")
                     and callable(getattr(module, n, None))]
            raise UserModelError(f"--model {ref!r}: module {module_name!r} has no attribute "
                                 f"{attr!r}; callables it has: {', '.join(names[:12]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserModelError(f"--model {ref!r}: {attr!r} is a {type(obj).__name__}, not a "
                             "callable; name a function (or class) that returns the model")
    return obj


def seed_everything(seed: int) -> None:
    """The same seed in every process, so a factory that initialises at random agrees."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def call_factory(ref: str, seed: int = 0):
    factory = load_factory(ref)
    seed_everything(seed)
    try:
        return factory()
    except Exception as exc:
        raise UserModelError(f"--model {ref!r}: calling {ref.partition(':')[2]}() raised "
                             f"{type(exc).__name__}: {_first_line(exc)}; the factory is "
                             "called with no arguments") from None


def kind_of(obj, where: str = "the model") -> tuple[str, Any]:
    """("torch", module) or ("jax", (fn, params)); UserModelError for anything else."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return "torch", obj
    if isinstance(obj, tuple) and len(obj) == 2 and callable(obj[0]) \
            and not isinstance(obj[0], torch.nn.Module):
        return "jax", obj
    what = type(obj).__name__
    hint = ("a class, not an instance: return make_net() not make_net" if isinstance(obj, type)
            else "return a torch.nn.Module, or a pair (jax_function, params) with "
                 "jax_function(params, X) -> Y")
    raise UserModelError(f"{where} returned a {what}, which is not a model: {hint}")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:240] if lines else ""


# ------------------------------------------------------------------------------ torch side
def weights_digest(model) -> str:
    """A hash of a module's parameters and buffers (names, shapes, values), or of a JAX
    params pytree."""
    import torch

    h = hashlib.blake2b(digest_size=8)
    if hasattr(model, "state_dict"):
        items = list(model.state_dict(keep_vars=False).items())
        for name, t in items:
            t = t.detach().cpu().contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
        return h.hexdigest()
    import jax

    fn, params = model
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def torch_module(spec: UserModel, device, dtype):
    """The user's nn.Module on `device` in `dtype`, eval mode, weights and buffers as given;
    a copy, so the caller's model is never changed."""
    if spec.framework != "torch":
        raise UserModelError(f"{spec.name} is a JAX function: the PyTorch side needs an "
                             "nn.Module")
    if spec.factory is None:
        try:
            model = _PREBUILT.pop(id(spec), None) or copy.deepcopy(spec.obj)
        except Exception as exc:
            raise UserModelError(f"{spec.name}: copy.deepcopy(model) raised "
                                 f"{type(exc).__name__}: {_first_line(exc)}; the suite works "
                                 "on a copy, so the model must be deep-copyable") from None
    else:
        model = _PREBUILT.pop(id(spec), None) or _build_checked(spec)
    _no_inference_fastpath()
    return model.to(device=device, dtype=dtype).eval()


def _build_checked(spec: UserModel):
    model = spec.build()  # freshly built in this process: already a private copy
    if spec.digest and weights_digest(model) != spec.digest:
        raise UserModelError(f"--model {spec.factory!r} builds different weights on each "
                             "call even with torch, numpy and random seeded: seed its own "
                             "generator or load a checkpoint")
    return model


# Models built ahead of a case (`prebuild`), taken by the next torch_module call for them.
_PREBUILT: dict[int, Any] = {}


def prebuild(problem) -> None:
    """Build (or copy) a user model's module now, before a case's peak-memory window opens,
    so that the factory's own temporaries (a checkpoint read, warm-up passes) and the copy
    are not charged to the strategy. Its weights still are, as for the built-in models."""
    spec = problem.spec
    if isinstance(spec, UserModel) and spec.framework == "torch":
        _PREBUILT[id(spec)] = _build_checked(spec) if spec.factory else copy.deepcopy(spec.obj)


def _no_inference_fastpath() -> None:
    """Eval-mode nn.TransformerEncoderLayer / MultiheadAttention take a fused inference kernel
    when no parameter requires grad (the suite passes parameters explicitly, so none does);
    that kernel has no forward-mode or vmap rules. Differentiation needs the plain path, so
    it is switched off (process-wide: torch has no narrower switch)."""
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is not None and hasattr(mha, "set_fastpath_enabled"):
        mha.set_fastpath_enabled(False)


# ------------------------------------------------------------------------------ JAX side
def jax_parts(spec: UserModel):
    """(forward(params, buffers, X) -> (B, m), keys, flat params dict) of a JAX user model.

    The params pytree is flattened to a dict keyed by its paths, in the pytree's own order
    (what flat/unflat follow), and rebuilt before each call of the user's function.
    """
    import jax

    if spec.framework != "jax":
        raise UserModelError(f"{spec.name} is a PyTorch model: the JAX side needs a JAX "
                             "function")
    fn, params = spec.build()
    if spec.factory and spec.digest and weights_digest((fn, params)) != spec.digest:
        raise UserModelError(f"--model {spec.factory!r} builds different parameters on each "
                             "call: use a fixed jax.random key or load a checkpoint")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = tuple(jax.tree_util.keystr(path) for path, _ in leaves)
    flat = {k: leaf for k, (_, leaf) in zip(keys, leaves)}

    def forward(p, buffers, X):  # X may come flat (B, n): batch_jacobian, batch_hessian
        X = X.reshape(X.shape[0], *spec.in_shape)
        y = fn(jax.tree_util.tree_unflatten(treedef, [p[k] for k in keys]), X)
        return y.reshape(X.shape[0], -1)
    return forward, keys, flat
