"""Models as users write them: several inputs, and outputs that are a dict or a tuple.

The suite differentiates a model of one input batch X, shape (B, *sample shape), returning one
tensor with the batch first. A user's model may instead be `forward(x, z)` or return
`{"logits": ..., "aux": ...}`. `adapt` turns such a model into the one-input, one-output form:

- Several inputs, given as a tuple `(x, z)` (each with the batch first): every input is
  differentiated. One sample's inputs are flattened and concatenated in the order given, so a
  sample is a vector of n = n_x + n_z numbers, and input derivatives are laid out over it
  (`jacobian` (m, n): columns [:n_x] are x's, the rest z's), as
  `torch.autograd.functional.jacobian` does for a tuple, flattened into one axis. Samples stay
  together: per-sample quantities see sample i's x and z as one sample. Parameter quantities
  (`param_jacobian`, `ggn_vp`, `ntk`) are unaffected. To hold an input fixed instead, close
  over it in a wrapper module.
- `output=KEY` picks one output of a dict (by key), or of a tuple or list (by index).

A model of one input and one tensor output is used as it is.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from jacbench.strategies.user_model import UserModelError


def parts(x) -> list:
    """A tuple or list of inputs as a list; one input as a list of one."""
    return list(x) if isinstance(x, (tuple, list)) else [x]


def as_numpy(a, what: str = "x") -> np.ndarray:
    """A torch tensor, JAX or numpy array as float64 numpy; UserModelError for integer or
    non-array inputs (every input is differentiated)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
    try:
        arr = np.asarray(a)
    except Exception as exc:  # noqa: BLE001 - one line for anything numpy cannot read
        raise UserModelError(f"{what} is a {type(a).__name__}, not an array or tensor: "
                             f"{exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)
                                   or np.issubdtype(arr.dtype, np.integer)):
        raise UserModelError(f"{what} is a {type(a).__name__} of {arr.dtype}, not an array "
                             "or tensor of numbers")
    if not np.issubdtype(arr.dtype, np.floating):
        raise UserModelError(f"{what} has dtype {arr.dtype}: inputs are differentiated, so "
                             "they must be floating point; to pass integers (token ids, "
                             "masks), close over them in a wrapper module")
    return arr.astype(np.float64)


def pack(xs: list[np.ndarray]) -> np.ndarray:
    """Inputs (B, *shape_i) as one (B, sum n_i) batch: each sample's inputs flattened and
    concatenated in order."""
    B = {x.shape[0] for x in xs}
    if len(B) != 1:
        raise UserModelError("the inputs have different batch sizes "
                             f"({', '.join(str(x.shape[0]) for x in xs)}): give every input "
                             "with the same batch first")
    return np.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=1)


def _pick(y, output):
    if output is None:
        return y
    if isinstance(y, dict):
        if output not in y:
            raise UserModelError(f"output={output!r}: the model returns a dict with keys "
                                 f"{', '.join(map(repr, y))}; pick one of them")
        return y[output]
    if isinstance(y, (tuple, list)):
        if not isinstance(output, int) or not -len(y) <= output < len(y):
            raise UserModelError(f"output={output!r}: the model returns a {type(y).__name__} "
                                 f"of {len(y)}; pick one by index, 0 to {len(y) - 1}")
        return y[output]
    raise UserModelError(f"output={output!r}, but the model returns one "
                         f"{type(y).__name__}, not a dict or a tuple: leave output out")


class UserForward(nn.Module):
    """The user's module seen with one input batch and one output tensor."""

    def __init__(self, model: nn.Module, shapes, output):
        super().__init__()
        self.model = model
        self.shapes = shapes  # sample shape of each input, or None: one input as given
        self.output = output

    def forward(self, X):
        if self.shapes is None:
            y = self.model(X)
        else:
            sizes = [int(np.prod(s)) for s in self.shapes]
            chunks = torch.split(X.reshape(X.shape[0], -1), sizes, dim=1)
            y = self.model(*[c.reshape(X.shape[0], *s) for c, s in zip(chunks, self.shapes)])
        return _pick(y, self.output)


def adapt(model: Any, shapes, output=None):
    """The model with one input batch and one output: `shapes` lists each input's sample shape
    (None: one input, passed through), `output` picks a dict key or tuple index (None: the
    output as it is). An nn.Module stays an nn.Module, (fn, params) stays a pair."""
    if shapes is None and output is None:
        return model
    if isinstance(model, nn.Module):
        return UserForward(model, shapes, output)
    if isinstance(model, tuple) and len(model) == 2 and callable(model[0]):
        fn, params = model
        if shapes is not None:
            ends = np.cumsum([int(np.prod(s)) for s in shapes]).tolist()
            starts = [0, *ends[:-1]]

        def forward(p, X):
            if shapes is None:
                return _pick(fn(p, X), output)
            flat = X.reshape(X.shape[0], -1)
            xs = [flat[:, a:b].reshape(X.shape[0], *s) for a, b, s in zip(starts, ends, shapes)]
            return _pick(fn(p, *xs), output)
        forward.__name__ = getattr(fn, "__name__", "jax_function")
        return forward, params
    return model  # not a model: kind_of says so, in one line


def name(obj) -> str:
    """The label of a model in results: its class name, or its JAX function's name."""
    if isinstance(obj, UserForward):
        obj = obj.model
    if isinstance(obj, nn.Module):
        return type(obj).__name__
    return getattr(obj[0], "__name__", "jax_function")


def inputs(model: Any, x, output=None, what: str = "x"):
    """(model with one input and one output, the batch as float64 numpy (B, *sample shape) or
    packed (B, n), the sample shapes of the inputs). `x` is a batch, or a tuple of batches
    for a model of several inputs."""
    xs = [as_numpy(a, what if len(parts(x)) == 1 else f"{what}[{i}]")
          for i, a in enumerate(parts(x))]
    for i, a in enumerate(xs):
        if a.ndim < 1:
            raise UserModelError(f"{what} is a scalar: give a batch, shape (B, *sample shape)")
    shapes = [tuple(a.shape[1:]) for a in xs]
    if len(xs) == 1:
        return adapt(model, None, output), xs[0], shapes
    return adapt(model, shapes, output), pack(xs), shapes


def check_second(x2, shapes, what: str = "x2", first: str = "x") -> np.ndarray:
    """A second batch (the NTK's K(x, x2)): each input's sample shape must be the first's.
    Returns it as the first was (packed when there are several inputs)."""
    xs = [as_numpy(a, what) for a in parts(x2)]
    if len(xs) != len(shapes):
        raise UserModelError(f"{what} holds {len(xs)} input(s), {first} holds {len(shapes)}: "
                             "give both with the same inputs")
    for i, (a, s) in enumerate(zip(xs, shapes)):
        if tuple(a.shape[1:]) != tuple(s) or a.ndim < 1:
            name = what if len(xs) == 1 else f"{what}[{i}]"
            raise UserModelError(f"{name} has shape {tuple(a.shape)}: its samples must have "
                                 f"the shape of {first}'s, {tuple(s)} (a batch "
                                 f"(B2, {', '.join(map(str, s))}))")
    return xs[0] if len(xs) == 1 else pack(xs)
