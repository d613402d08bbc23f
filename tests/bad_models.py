"""Models a new user might bring, each wrong in one way (tests/test_user_models.py)."""
import torch
from torch import nn


def mlp():
    """Fine, but expects 10 input features."""
    return nn.Sequential(nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 3))


def returns_dict():
    return {"weight": torch.ones(3)}


def returns_tuple():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x), x
    return TwoHeads()


def no_params():
    return nn.Sequential(nn.Tanh(), nn.Softplus())


class _Argmax(nn.Module):
    def forward(self, x):
        return x.argmax(dim=1, keepdim=True)


def argmax_net():
    return nn.Sequential(nn.Linear(4, 3), _Argmax())


class _Round(nn.Module):
    def forward(self, x):
        return torch.round(x)


def round_net():
    """Input derivatives are exactly zero; the last layer's parameters still have a path."""
    return nn.Sequential(nn.Linear(4, 5), _Round(), nn.Linear(5, 2))


class _Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


def nan_net():
    return nn.Sequential(nn.Linear(4, 3), _Log())


class _Branchy(nn.Module):
    """Data-dependent control flow: fine eagerly, out of reach of vmap."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        y = self.lin(x)
        if y.sum() > 0:
            return torch.tanh(y)
        return y


def branchy_net():
    return _Branchy()


def training_mode_net():
    """Handed over in training mode: dropout and batch norm act otherwise in eval mode."""
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Tanh(),
                         nn.Linear(6, 3)).train()
