"""Case selection: a profile's cases narrowed by the user's filters, each name checked (a typo
gets the close matches), in the order the sweep runs them (by quantity, family, size)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from jacbench import strategies
from jacbench.strategies.problem import Problem
from jacbench.strategies.quantities import NTK_MODES
from jacbench.strategies.names import unknown
from jacbench.strategies.registry import FRAMEWORKS, Strategy

from . import store
from .problems import FAMILIES, problems
from .profiles import PROFILES, Profile

DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float64")


class BadInput(ValueError):
    """A request the suite cannot run; the message says what is allowed (one line)."""


@dataclass(frozen=True)
class Case:
    quantity: str
    problem: Problem
    strategy: Strategy
    device: str
    dtype: str

    @property
    def case_id(self) -> str:
        return store.case_id(self.quantity, self.problem.id, self.strategy.name, self.device,
                             self.dtype)

    @property
    def ladder(self) -> tuple:
        """Cases that differ only in size: a timeout at one size predicts the larger ones."""
        p = self.problem
        return (self.quantity, p.family, p.mode, self.strategy.name, self.device, self.dtype)


def _names(values) -> list[str]:
    """Repeated options and comma-separated lists alike."""
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values or ():
        out.extend(x.strip() for x in str(v).split(",") if x.strip())
    return out


def cuda_available() -> bool:
    # NVML answers without initialising CUDA in this process; children forked from a
    # process with CUDA initialised cannot use it.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.is_available()


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise unknown("device", device, DEVICES)
    if device == "cuda" and not cuda_available():
        raise BadInput("device 'cuda' is not available here (torch.cuda.is_available() is "
                       "False); allowed: cpu")


def _size_matches(p: Problem, size: str) -> bool:
    return size == p.size or size == str(p.size_param)


def check_filters(quantities, strategy_names, frameworks, modes) -> tuple[list, list, list, list]:
    """The name filters as lists, validated (UnknownName with close matches for a typo)."""
    quantities = _names(quantities)
    for q in quantities:
        strategies.quantity(q)
    names = _names(strategy_names)
    for n in names:
        strategies.strategies(name=n)
    fws = _names(frameworks)
    for f in fws:
        if f not in FRAMEWORKS:
            raise unknown("framework", f, FRAMEWORKS)
    modes = _names(modes)
    for m in modes:
        if m not in NTK_MODES:
            raise unknown("ntk mode", m, NTK_MODES)
    return quantities, names, fws, modes


def select_cases(profile: Profile | str = "quick", quantities=None, strategy_names=None,
                 families=None, sizes=None, frameworks=None, device: str = "cpu",
                 dtype: str | None = None, modes=None) -> list[Case]:
    """The cases of a profile, narrowed by the filters (names, or comma-separated lists).

    Raises UnknownName (with close matches) or BadInput for anything that selects nothing.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise unknown("profile", profile, PROFILES)
        profile = PROFILES[profile]
    dtype = dtype or profile.dtype
    if dtype not in DTYPES:
        raise unknown("dtype", dtype, DTYPES)
    check_device(device)
    quantities, names, fws, modes = check_filters(quantities, strategy_names, frameworks, modes)
    fams = _names(families)
    for f in fams:
        if f not in FAMILIES:
            raise unknown("problem family", f, FAMILIES)
    sizes = _names(sizes)

    family_order = {name: i for i, name in enumerate(FAMILIES)}
    probs = [p for p in problems(ladder=profile.ladder)
             if (not quantities or p.quantity in quantities) and (not fams or p.family in fams)
             and (not modes or p.mode is None or p.mode in modes)]
    if not probs:
        having = sorted({p.family for q in (quantities or [None])
                         for p in problems(q, profile.ladder)})
        raise BadInput(f"no {profile.ladder}-ladder problem of family {','.join(fams)} has "
                       f"quantity {','.join(quantities)}; families that do: {', '.join(having)}")
    for s in sizes:
        if not any(_size_matches(p, s) for p in probs):
            allowed = [str(x) for x in sorted({p.size_param for p in probs})] + \
                sorted({p.size for p in probs})
            raise unknown(f"size on the {profile.ladder} ladder for these problems", s, allowed)
    if sizes:
        probs = [p for p in probs if any(_size_matches(p, s) for s in sizes)]
    quantity_order = {q: i for i, q in enumerate(strategies.QUANTITIES)}
    probs.sort(key=lambda p: (quantity_order[p.quantity], family_order[p.family], p.mode or "",
                              p.size_param))
    ladders: dict = {}  # (quantity, family, mode) -> its sizes, smallest first
    for p in probs:
        ladders.setdefault((p.quantity, p.family, p.mode), []).append(p.size_param)
    ladders = {k: sorted(set(v)) for k, v in ladders.items()}
    cases = []
    for p in probs:
        ladder = ladders[p.quantity, p.family, p.mode]
        for s in strategies.strategies(quantity=p.quantity):
            if (not names or s.name in names) and (not fws or s.framework in fws):
                case = Case(p.quantity, p, s, device, dtype)
                if names or profile.trim is None or profile.trim(
                        case, ladder.index(p.size_param), len(ladder)):
                    cases.append(case)
    if not cases:
        raise BadInput("no registered strategy matches: quantity "
                       f"{','.join(quantities) or 'any'}, strategy {','.join(names) or 'any'}, "
                       f"framework {','.join(fws) or 'any'}; see `python -m jacbench list`")
    return cases


def problem_key(case: Case) -> tuple:
    """The cases that share one problem: its reference, forward pass and paired timing."""
    return (case.problem.quantity, case.problem.id, case.device, case.dtype)
