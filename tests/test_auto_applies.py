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


# ------------------------------------------------------------------------------ calibration
def test_calibrate_writes_to_the_cache_dir_and_auto_reads_it_first(tmp_path, monkeypatch):
    from test_auto import LAW, _law_rows

    from jacbench.cli import main

    shipped = cost_model.CALIBRATION.read_bytes()
    monkeypatch.setenv(cost_model.CACHE_ENV, str(tmp_path / "cache"))
    assert cost_model.calibration_path() == cost_model.CALIBRATION  # nothing refit yet
    results = tmp_path / "results.jsonl"
    _law_rows(results)
    assert main(["calibrate", str(results)]) == 0
    written = tmp_path / "cache" / "auto_calibration.json"
    assert cost_model.calibration_path() == written
    assert set(cost_model.load()["models"]["jacobian"]) == set(LAW)
    assert cost_model.CALIBRATION.read_bytes() == shipped  # the source tree is left alone


def _user_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 2))


def test_a_user_models_forward_work_is_its_counted_multiply_adds():
    p = user_problem("batch_jacobian", _user_cnn(), torch.randn(2, 3, 8, 8))
    conv, linear = 4 * 3 * 3 * 3 * 8 * 8, 4 * 8 * 8 * 2
    assert p.spec.forward_macs == conv + linear
    # W, not P: a conv net does 10x more multiply-adds than it has parameters here.
    feats = cost_model.features(p)
    assert feats["W"] == conv + linear + p.spec.act_per_sample
    assert feats["W"] > 10 * feats["P"]


def test_calibrate_learns_from_rows_of_a_users_model(tmp_path):
    """Rows of a model the suite cannot rebuild (family = the user's factory) are fitted from
    the features their run wrote into them; the offline picks hit."""
    from jacbench.bench import store
    from jacbench.bench.calibrate import calibrate

    law = {"torch.vmap_jacrev": lambda f: 1e-9 * f["B"] * f["W"],
           "torch.sum_trick": lambda f: 1e-7 * f["B"] ** 2}
    results = tmp_path / "results.jsonl"
    for B in (2, 8, 32, 128, 512):
        feats = {"n": 192, "m": 2, "B": B, "P": 3000, "W": 30000}
        pid = f"mine.models:cnn@B={B}"
        for name, cost in law.items():
            store.append(results, {
                "case_id": store.case_id("batch_jacobian", pid, name, "cpu", "float32"),
                "quantity": "batch_jacobian", "problem": pid, "family": "mine.models:cnn",
                "size": f"B={B}", "sizes": {"B": B}, "strategy": name, "framework": "torch",
                "exact": True, "tags": [], "features": feats, "device": "cpu",
                "dtype": "float32", "status": "ok", "median_s": cost(feats)})
    cal, lines = calibrate(results, tmp_path / "cal.json", ridge=1e-6)
    models = cal["models"]["batch_jacobian"]
    assert set(models) == set(law) and cal["fitted_on"]["rows"] == 10
    assert models["torch.sum_trick"]["exponents"]["B"] == pytest.approx(2.0, abs=1e-3)
    assert "in-sample: 5/5 = 100.0%" in lines[1]
