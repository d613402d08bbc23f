"""Test-only strategies that return the float64 reference, perturbed, for every quantity.

Import it only in a child process (the registry is global). The held-out check of issue 15
in miniature: through the command line, every perturbed one must be `disagrees` and the
unperturbed reference `ok`.
"""
from __future__ import annotations

import numpy as np

from jacbench import strategies
from jacbench.strategies.registry import Strategy, add, always
from test_mutation import _negated, _one_entry, _one_percent, _zeros

# The mutation test's own wrong results (tests/test_mutation.py), as strategies.
PERTURB = {"torch.mutant_zeros": _zeros, "torch.mutant_one_percent": _one_percent,
           "torch.mutant_one_entry": _one_entry, "torch.mutant_negated": _negated,
           "torch.mutant_reference": lambda ref, quantity: ref}


def _maker(perturb):
    def prepare(problem, device, dtype):
        """The float64 reference, perturbed, in the asked dtype. Cost: one reference, untimed."""
        ref = strategies.reference(problem)
        out = perturb(ref, problem.quantity).astype(np.dtype(str(dtype)))
        return lambda: out
    return prepare


for _quantity in strategies.QUANTITIES:
    for _name, _perturb in PERTURB.items():
        add(Strategy(_quantity, _name, "torch", True, _maker(_perturb), always))
