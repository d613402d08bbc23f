"""The registry: strategies under (quantity, name), with look-ups that explain what went wrong."""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .problem import Problem

Prepare = Callable[..., Callable[[], Any]]
Applies = Callable[[Problem], "str | None"]


class UnknownName(KeyError):
    """An unknown quantity, strategy, framework or problem name; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def unknown(kind: str, name: str, known) -> UnknownName:
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"did you mean: {', '.join(close)}?" if close else f"known: {', '.join(known)}"
    return UnknownName(f"unknown {kind} {name!r}; {hint}")


@dataclass(frozen=True)
class Strategy:
    """One way to compute one quantity.

    `prepare(problem, device, dtype, **options)` does all untimed work and returns a
    zero-argument callable whose result is the quantity in its canonical layout.
    `applies(problem)` returns None when the strategy applies, else the reason it does not.
    """

    quantity: str
    name: str
    framework: str
    exact: bool
    prepare: Prepare
    applies: Applies
    options: dict = field(default_factory=dict)  # e.g. default sample count of an estimator
    # Declared facts that reports and torch.auto select by, never the name text: "compiled"
    # (torch.compile; its first call compiles).
    tags: frozenset = frozenset()

    @property
    def idea(self) -> str:
        """The idea and the cost, from the prepare function's docstring."""
        return " ".join((inspect.getdoc(self.prepare) or "").split())

    def not_applicable(self, problem: Problem) -> str | None:
        from .applicability import model_framework

        if problem.quantity != self.quantity:
            return f"{self.name} computes {self.quantity}, the problem asks for {problem.quantity}"
        return model_framework(problem, self.framework) or self.applies(problem)

    def __call__(self, problem: Problem, device="cpu", dtype=None, **options):
        """Prepare and run once: the library entry point."""
        return self.prepare(problem, device, dtype, **{**self.options, **options})()


_REGISTRY: dict[tuple[str, str], Strategy] = {}
FRAMEWORKS = ("torch", "jax", "backpack", "curvlinops")


def always(_problem: Problem) -> None:
    return None


def register(quantity: str, name: str, *, exact: bool = True, applies: Applies = always,
             tags=(), **options) -> Callable[[Prepare], Prepare]:
    """Decorator: register `prepare` as strategy `name` for `quantity`.

    The framework is the part of the name before the first dot ("torch.jacrev" -> "torch").
    """
    from .quantities import QUANTITIES  # late: quantities imports nothing from here at load

    if quantity not in QUANTITIES:
        raise unknown("quantity", quantity, QUANTITIES)
    framework = name.split(".", 1)[0]
    if framework not in FRAMEWORKS:
        raise ValueError(f"strategy {name!r}: framework prefix must be one of {FRAMEWORKS}")

    def deco(prepare: Prepare) -> Prepare:
        if (quantity, name) in _REGISTRY:
            raise ValueError(f"strategy {quantity}/{name} registered twice")
        if not inspect.getdoc(prepare):
            raise ValueError(f"strategy {quantity}/{name} needs a docstring: its idea and cost")
        _REGISTRY[(quantity, name)] = Strategy(quantity, name, framework, exact, prepare,
                                               applies, dict(options), frozenset(tags))
        return prepare

    return deco


def add(strategy: Strategy) -> None:
    """Register a ready-made Strategy (tests plant strategies this way); see `remove`."""
    _REGISTRY[(strategy.quantity, strategy.name)] = strategy


def remove(quantity: str, name: str) -> None:
    _REGISTRY.pop((quantity, name), None)


def get(quantity: str, name: str) -> Strategy:
    from .quantities import QUANTITIES

    if quantity not in QUANTITIES:
        raise unknown("quantity", quantity, QUANTITIES)
    try:
        return _REGISTRY[(quantity, name)]
    except KeyError:
        names = [n for q, n in _REGISTRY if q == quantity]
        raise unknown(f"strategy for {quantity}", name, names) from None


def strategies(quantity: str | None = None, framework: str | None = None,
               name: str | None = None, exact: bool | None = None,
               compiled: bool | None = None) -> list[Strategy]:
    """Registered strategies matching every given filter, sorted by (quantity, name).
    `compiled` False leaves out the torch.compile twins (tag "compiled"), True keeps only them."""
    from .quantities import QUANTITIES

    if quantity is not None and quantity not in QUANTITIES:
        raise unknown("quantity", quantity, QUANTITIES)
    if framework is not None and framework not in FRAMEWORKS:
        raise unknown("framework", framework, FRAMEWORKS)
    if name is not None and name not in {n for _, n in _REGISTRY}:
        raise unknown("strategy", name, [n for _, n in _REGISTRY])
    out = [s for s in _REGISTRY.values()
           if (quantity is None or s.quantity == quantity)
           and (framework is None or s.framework == framework)
           and (name is None or s.name == name)
           and (exact is None or s.exact == exact)
           and (compiled is None or ("compiled" in s.tags) == compiled)]
    return sorted(out, key=lambda s: (s.quantity, s.name))
