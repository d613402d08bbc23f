"""The framework-neutral description of a workload: a layer list with numpy weights, and inputs.

Both the torch and the JAX builders read the same `ModelSpec`, so a problem is one
mathematical function in every framework and their results can be compared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .layer_kinds import KINDS

# Layer kinds the builders understand: `strategies.layer_kinds.KINDS`, one class per kind.
# Parameterised ones carry numpy arrays in `params` (ordered as torch's named_parameters) and,
# for batch norm, eval-mode statistics in `buffers`.


@dataclass(frozen=True)
class Layer:
    kind: str
    params: dict[str, np.ndarray] = field(default_factory=dict)
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:  # the registry itself: a kind registered later counts
            raise ValueError(f"unknown layer kind {self.kind!r}; known: {', '.join(KINDS)}")


@dataclass(frozen=True)
class ModelSpec:
    """A feed-forward network: `layers` applied in order to a batch of shape (B, *in_shape)."""

    layers: tuple[Layer, ...]
    in_shape: tuple[int, ...]
    out_dim: int

    @property
    def param_count(self) -> int:
        return sum(int(a.size) for layer in self.layers for a in layer.params.values())

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.in_shape))


@dataclass(frozen=True)
class Problem:
    """One workload at one size, for one quantity.

    `data` holds the inputs the quantity needs (see `strategies.quantities`); `sizes` holds the
    numbers a report plots against (n, m, batch, width, params...); `flags` holds facts that
    decide applicability, such as "separable" (samples do not interact).
    """

    family: str
    size: str
    quantity: str
    spec: ModelSpec  # or a strategies.user_model.UserModel: the user's own network
    data: dict[str, np.ndarray]
    sizes: dict[str, int]
    flags: frozenset[str] = frozenset()
    mode: str | None = None  # ntk: "full", "trace" or "diagonal"
    seed: int = 0
    # (status, reason) when no strategy can run on this problem: a user model whose output
    # holds NaN, or that has no parameters for a parameter quantity. The runner records every
    # case of the problem with it, and runs nothing.
    blocked: tuple[str, str] | None = None

    @property
    def id(self) -> str:
        mode = f"[{self.mode}]" if self.mode else ""
        return f"{self.family}{mode}@{self.size}"

    @property
    def size_param(self) -> int:
        """The single number a size ladder grows along: the work scale of this problem."""
        return int(self.sizes.get("scale", max(self.sizes.values())))

    def __repr__(self) -> str:  # problems carry big arrays; keep logs readable
        return f"Problem({self.quantity}, {self.id}, {self.sizes})"
