"""The torch module of the layer kind torch.nn has no class for, imported only by the kind's
torch hook, so that importing the layer kinds imports no torch."""
from __future__ import annotations

import torch
from torch import nn


class Sqrt(nn.Module):
    """torch.sqrt as a module: torch.nn has none."""

    def forward(self, x):
        return torch.sqrt(x)

