"""The layer kinds of built-in models (`strategies.problem.Layer.kind`): one class per kind
holds all the suite knows of it (torch module, JAX function, cost, derivative rules, which
peers cover it), and `KINDS` maps each name to its instance. A new kind is one class here,
registered in `KINDS`, plus its tests; test_layer_kinds checks that every hook is there.

Importing this package imports neither torch nor JAX: the hooks import them when called.
"""
from __future__ import annotations

from .activations import Relu, Sqrt, Tanh
from .base import FEATURES, OPTIONAL, Elementwise, LayerKind, Patches
from .batchnorm2d import BatchNorm2d
from .conv2d import Conv2d
from .linear import Linear
from .reshape import AvgPool2, Flatten

KINDS: dict[str, LayerKind] = {k.name: k for k in (
    Linear(), Conv2d(), BatchNorm2d(), Tanh(), Relu(), Sqrt(), Flatten(), AvgPool2())}


def covering(feature: str) -> list[str]:
    """The kinds with a rule for `feature`, sorted."""
    return sorted(name for name, kind in KINDS.items() if kind.supports(feature))


def lacking(layers, feature: str) -> list[str]:
    """The kinds among `layers` that have no rule for `feature`, sorted: what a strategy that
    needs the rule names when it is not applicable."""
    return sorted({layer.kind for layer in layers if not KINDS[layer.kind].supports(feature)})


__all__ = ["FEATURES", "KINDS", "OPTIONAL", "AvgPool2", "BatchNorm2d", "Conv2d", "Elementwise",
           "Flatten", "LayerKind", "Linear", "Patches", "Relu", "Sqrt", "Tanh", "covering",
           "lacking"]
