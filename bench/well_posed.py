"""Keep built-in problems off the kinks of their non-smooth activations.

A ReLU input that float64 puts at +8.8e-10 may come out negative in a float32 forward: the
float32 strategy then differentiates another branch, and is judged wrong although it is right
to float32 (seed 003's conv net on the full ladder, B = 100, did exactly that). The problem,
not the strategy, is at fault, so such inputs are redrawn when the problem is built.

"Within rounding" is measured, not guessed: each ReLU's inputs are computed in float64 and in
float32, and a sample is on a kink when one of its ReLU inputs is smaller in magnitude than
MARGIN times the largest float32 error seen at that ReLU.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from jacbench.strategies.layer_kinds import KINDS
from jacbench.strategies.problem import ModelSpec
from jacbench.strategies.quantities import quantity as quantity_named
from jacbench.strategies.torch_model import build_module

MARGIN = 2.0
ATTEMPTS = 50


def _kinked(spec: ModelSpec) -> list[int]:
    """Indices of the layers with a kink at zero (layer_kinds: `kinked_at_zero`)."""
    return [i for i, layer in enumerate(spec.layers) if KINDS[layer.kind].kinked_at_zero]


def _kink_inputs(spec: ModelSpec, X: np.ndarray, dtype) -> list[torch.Tensor]:
    model = build_module(spec, "cpu", dtype)
    seen: list[torch.Tensor] = []
    hooks = [model[i].register_forward_hook(lambda m, inp, out: seen.append(inp[0].double()))
             for i in _kinked(spec)]
    try:
        with torch.no_grad():
            model(torch.as_tensor(X, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
    return seen


def on_kink(spec: ModelSpec, X: np.ndarray) -> np.ndarray:
    """A boolean per sample of X (B, *in_shape): does a ReLU input of that sample lie within
    rounding of zero?"""
    bad = np.zeros(X.shape[0], dtype=bool)
    for z64, z32 in zip(_kink_inputs(spec, X, torch.float64),
                        _kink_inputs(spec, X, torch.float32)):
        err = (z64 - z32).abs().max().item()
        scale = max(err, float(np.finfo(np.float32).eps) * z64.abs().max().item())
        bad |= (z64.abs().reshape(X.shape[0], -1) < MARGIN * scale).any(dim=1).numpy()
    return bad


def off_kinks(spec: ModelSpec, quantity: str, data: dict[str, np.ndarray],
              draw: Callable[[tuple], np.ndarray], label: str) -> dict[str, np.ndarray]:
    """`data` with every model input of `quantity` (its `views`; tangents and cotangents are
    left alone) that sits on a kink redrawn by `draw(shape)`: single samples of a batch
    (eval-mode models: samples do not interact), or the whole input of a one-input view.
    Raises ValueError when ATTEMPTS redraws do not get off the kinks."""
    if not _kinked(spec):
        return data
    out = dict(data)
    for key, view in quantity_named(quantity).views.items():
        if key not in out:
            continue
        batched = view == "fb"  # a batch of samples; "f" one input, "fd" one input of N
        X = np.array(out[key], dtype=np.float64).reshape(-1, *spec.in_shape)
        for _ in range(ATTEMPTS):
            bad = on_kink(spec, X)
            if not bad.any():
                break
            if batched:
                X[bad] = draw((int(bad.sum()), *spec.in_shape))
            else:
                X = draw(X.shape)
        else:
            raise ValueError(f"{label}: input {key} stays within float32 rounding of a ReLU "
                             f"kink after {ATTEMPTS} redraws")
        out[key] = X.reshape(np.shape(data[key]))
    return out
