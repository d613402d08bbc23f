"""torch.auto on a user's model: it never ends on a strategy that does not apply (a pick whose
first call fails gives way to the next), its cost model sees the model's real forward work,
and its calibration is written outside the source tree."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from jacbench import strategies
from jacbench.bench.harness import Timing, run_case
from jacbench.compute import problem as user_problem
from jacbench.strategies import cost_model
from jacbench.strategies.torch_auto import AUTO, prepare_auto

FAST = Timing(max_run_time=0.01, min_run_time=0.001)


class _TanhNoJvp(torch.autograd.Function):
    """tanh with a backward and a vmap rule but no forward-mode rule (no `jvp`), as many
    custom ops have."""
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class _NoJvpNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(_TanhNoJvp.apply(self.a(x)))


def _ntk_problem():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    return user_problem("ntk", _NoJvpNet(), x, x[:3], mode="trace")


def _ranked_first(name: str, quantity="ntk", mode="trace") -> dict:
    """A calibration whose models predict `name` fastest, every other candidate slower."""
    k = cost_model.key(quantity, mode)
    names = [s.name for s in strategies.strategies(quantity, framework="torch")]
    return {"models": {k: {s: {"const": math.log(1e-6 if s == name else 1.0),
                               "exponents": dict.fromkeys(cost_model.FEATURES, 0.0),
                               "rows": 3, "failed": []} for s in names}}}


def test_a_pick_without_forward_mode_gives_way_and_the_row_is_ok():
    p = _ntk_problem()
    vps = strategies.get("ntk", "torch.ntk_vps")
    assert vps.not_applicable(p) is None  # nothing about the problem says it fails...
    with pytest.raises(Exception, match="jvp"):  # ...but its first call does
        vps.prepare(p, "cpu", "float32")()
    fn = prepare_auto(p, "cpu", "float32", calibration=_ranked_first("torch.ntk_vps"))
    assert fn.picked == "torch.ntk_vps"  # the cost model's first choice, before it runs
    out = fn()
    assert fn.picked != "torch.ntk_vps"
    assert "passed over: torch.ntk_vps (first call" in fn.notes[0]
    ref = strategies.reference(p)
    assert strategies.max_error(out.detach().numpy(), ref) < 1e-4
    assert np.array_equal(fn().detach().numpy(), out.detach().numpy())  # the same pick again


def test_auto_row_on_that_model_is_ok(monkeypatch):
    p = _ntk_problem()
    cal = _ranked_first("torch.ntk_vps")
    monkeypatch.setattr(cost_model, "load", lambda path=None: cal)
    row = run_case(strategies.get("ntk", AUTO), p, "cpu", "float32", strategies.reference(p),
                   threads=1, timing=FAST)
    assert row["status"] == "ok", row["message"]
    assert "passed over: torch.ntk_vps" in row["message"]
