"""Applicability rules shared by strategies of every framework: each returns None or a reason."""
from __future__ import annotations

from .problem import ModelSpec, Problem
from .quantities import quantity


def samples_independent(problem: Problem) -> str | None:
    """The sum-over-batch trick and one-jvp diagonals need outputs of one sample to depend on
    that sample's inputs only."""
    if quantity(problem.quantity).batch_key(problem.flags) is None:  # one input vector
        return "outputs mix all inputs (not a batch of independent samples)"
    if "coupled" in problem.flags:
        return "samples interact (e.g. train-mode batch norm)"
    return None


def at_most(key: str, limit: int):
    """A dense path that is hopeless above a size: say so instead of running out of memory."""
    def rule(problem: Problem) -> str | None:
        value = problem.sizes.get(key, 0)
        if value > limit:
            return f"{key}={value} exceeds {limit}: the dense intermediate would not fit"
        return None
    rule.__doc__ = f"{key} <= {limit}"
    return rule


def model_framework(problem: Problem, framework: str) -> str | None:
    """A user model lives in one framework; built-in layer lists are built in every one."""
    fw = getattr(problem.spec, "framework", None)
    if fw == "torch" and framework == "jax":
        return "PyTorch model: the JAX side needs a JAX function"
    if fw == "jax" and framework != "jax":
        return "JAX function: the PyTorch side needs an nn.Module"
    return None


def layer_list(problem: Problem) -> str | None:
    """Strategies that read the layer list of a built-in model (hand-written per-layer rules)."""
    if not isinstance(problem.spec, ModelSpec):
        return "needs a built-in layer-list model: its rules are written per layer kind"
    return None
