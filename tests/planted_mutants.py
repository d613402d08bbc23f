"""Test-only strategies that return the float64 reference, perturbed, for every quantity.

Import it only in a child process (the registry is global). The held-out check of issue 15
in miniature: through the command line, every perturbed one must be `disagrees` and the
unperturbed reference `ok`.
"""
from __future__ import annotations

import numpy as np

from jacbench import strategies
from jacbench.strategies.registry import Strategy, add, always

PERTURB = {
    "torch.mutant_zeros": np.zeros_like,
    "torch.mutant_one_percent": lambda r: 1.01 * r,
    "torch.mutant_one_entry": lambda r: r + 0.01 * np.abs(r).max() * (
        np.arange(r.size).reshape(r.shape) == np.argmin(np.abs(r))),
    "torch.mutant_negated": np.negative,
    "torch.mutant_reference": lambda r: r,
}


def _maker(perturb):
    def prepare(problem, device, dtype):
        """The float64 reference, perturbed, in the asked dtype. Cost: one reference, untimed."""
        out = perturb(strategies.reference(problem)).astype(np.dtype(str(dtype)))
        return lambda: out
    return prepare


for _quantity in strategies.QUANTITIES:
    for _name, _perturb in PERTURB.items():
        add(Strategy(_quantity, _name, "torch", True, _maker(_perturb), always))
