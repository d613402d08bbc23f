"""The registry: strategies under (quantity, name), with look-ups that explain what went wrong."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .names import unknown
from .problem import Problem
from .quantities import QUANTITIES

Prepare = Callable[..., Callable[[], Any]]
Applies = Callable[[Problem], "str | None"]


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
    # Declared facts (TAGS) that reports, claims and torch.auto select by, never the name
    # text, so that renaming a strategy changes no verdict.
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
FRAMEWORKS = ("torch", "jax", "backpack", "curvlinops", "neural_tangents")
PEERS = ("backpack", "curvlinops", "neural_tangents")  # other libraries, run beside ours

# The tag vocabulary, the one place it is defined. "approximate" and "peer" are derived from
# the strategy's exactness and framework; the others are declared where it is registered
# ("jit" and "compiled" by the helpers that register the JAX and torch.compile twins).
TAGS = {
    "baseline": "the naive route speed-ups are measured against: the questions' own code or "
                "the plain autograd loop (one per quantity and framework)",
    "dense": "materialises the full Jacobian or Hessian where the quantity needs less (a "
             "product, a diagonal, a kernel)",
    "matrix-free": "never materialises the full Jacobian or Hessian, where the quantity "
                   "needs less",
    "compiled": "torch.compile; its first call compiles",
    "jit": "jax.jit; its first call traces and compiles",
    "approximate": "a statistical estimate, checked statistically (derived: exact=False)",
    "peer": "another library's implementation (derived: framework backpack, curvlinops or "
            "neural_tangents)",
}
_EXCLUSIVE = (("dense", "matrix-free"), ("compiled", "jit"))


def checked_tags(quantity: str, name: str, framework: str, exact: bool, tags) -> frozenset:
    """The strategy's tags: the declared ones, validated, plus the derived ones."""
    if isinstance(tags, str):  # a lone tag would become a set of letters
        tags = (tags,)
    tags = frozenset(tags)
    where = f"strategy {quantity}/{name}"
    bad = sorted(tags - set(TAGS))
    if bad:
        raise ValueError(f"{where}: unknown tag(s) {', '.join(map(repr, bad))}; known: "
                         f"{', '.join(TAGS)}")
    derived = {"approximate": not exact, "peer": framework in PEERS}
    for tag, holds in derived.items():
        if tag in tags and not holds:
            raise ValueError(f"{where}: tag {tag!r} is derived ({TAGS[tag]}) and does not "
                             "hold here")
    for a, b in _EXCLUSIVE:
        if a in tags and b in tags:
            raise ValueError(f"{where}: tags {a!r} and {b!r} exclude each other")
    return tags | {t for t, holds in derived.items() if holds}


def tags_of(quantity, name) -> tuple[str, ...]:
    """The registered strategy's tags, sorted; () for a name this checkout does not register
    (rows of older result files have no tags column)."""
    s = _REGISTRY.get((quantity, name))
    return tuple(sorted(s.tags)) if s is not None else ()


def always(_problem: Problem) -> None:
    return None


def register(quantity: str, name: str, *, exact: bool = True, applies: Applies = always,
             tags=(), **options) -> Callable[[Prepare], Prepare]:
    """Decorator: register `prepare` as strategy `name` for `quantity`.

    The framework is the part of the name before the first dot ("torch.jacrev" -> "torch").
    `tags`: declared facts from TAGS (an unknown one is an error); the derived ones are added.
    """
    if quantity not in QUANTITIES:
        raise unknown("quantity", quantity, QUANTITIES)
    framework = name.split(".", 1)[0]
    if framework not in FRAMEWORKS:
        raise ValueError(f"strategy {name!r}: framework prefix must be one of {FRAMEWORKS}")

    tags = checked_tags(quantity, name, framework, exact, tags)

    def deco(prepare: Prepare) -> Prepare:
        if (quantity, name) in _REGISTRY:
            raise ValueError(f"strategy {quantity}/{name} registered twice")
        if not inspect.getdoc(prepare):
            raise ValueError(f"strategy {quantity}/{name} needs a docstring: its idea and cost")
        _REGISTRY[(quantity, name)] = Strategy(quantity, name, framework, exact, prepare,
                                               applies, dict(options), tags)
        return prepare

    return deco


def add(strategy: Strategy) -> None:
    """Register a ready-made Strategy (tests plant strategies this way); see `remove`. Its tags
    are checked and completed as `register` does."""
    tags = checked_tags(strategy.quantity, strategy.name, strategy.framework, strategy.exact,
                        strategy.tags)
    _REGISTRY[(strategy.quantity, strategy.name)] = replace(strategy, tags=tags)


def remove(quantity: str, name: str) -> None:
    _REGISTRY.pop((quantity, name), None)


def get(quantity: str, name: str) -> Strategy:
    if quantity not in QUANTITIES:
        raise unknown("quantity", quantity, QUANTITIES)
    try:
        return _REGISTRY[(quantity, name)]
    except KeyError:
        names = [n for q, n in _REGISTRY if q == quantity]
        raise unknown(f"strategy for {quantity}", name, names) from None


def strategies(quantity: str | None = None, framework: str | None = None,
               name: str | None = None, exact: bool | None = None,
               compiled: bool | None = None, tag: str | None = None,
               without: str | None = None) -> list[Strategy]:
    """Registered strategies matching every given filter, sorted by (quantity, name).
    `compiled` False leaves out the torch.compile twins (tag "compiled"), True keeps only them;
    `tag` keeps only strategies with that tag, `without` leaves out those with it."""
    if quantity is not None and quantity not in QUANTITIES:
        raise unknown("quantity", quantity, QUANTITIES)
    if framework is not None and framework not in FRAMEWORKS:
        raise unknown("framework", framework, FRAMEWORKS)
    for t in (tag, without):
        if t is not None and t not in TAGS:
            raise unknown("tag", t, TAGS)
    if name is not None and name not in {n for _, n in _REGISTRY}:
        raise unknown("strategy", name, [n for _, n in _REGISTRY])
    out = [s for s in _REGISTRY.values()
           if (quantity is None or s.quantity == quantity)
           and (framework is None or s.framework == framework)
           and (name is None or s.name == name)
           and (exact is None or s.exact == exact)
           and (compiled is None or ("compiled" in s.tags) == compiled)
           and (tag is None or tag in s.tags) and (without is None or without not in s.tags)]
    return sorted(out, key=lambda s: (s.quantity, s.name))
