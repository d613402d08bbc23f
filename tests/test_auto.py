"""torch.auto and its cost model: registration and coverage, the fit recovering known
exponents, the pick following the calibration, the pick reaching the result row, the hit rate
and the report section, and `bench calibrate` end to end on rows of known cost."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from jacbench import strategies
from jacbench.bench import store
from jacbench.bench.calibrate import calibrate
from jacbench.bench.harness import Timing, run_case
from jacbench.bench.problems import problems
from conftest import assert_agrees, cases, reference_for, test_problem
from jacbench.reports import auto as A
from jacbench.strategies import cost_model
from jacbench.strategies.cost_model import FEATURES, Observation, features, fit, fit_loglinear, rank
from jacbench.strategies.torch_auto import AUTO, candidates, prepare_auto

FAST = Timing(max_run_time=0.01, min_run_time=0.001)


def _problem(quantity="jacobian"):
    return problems(quantity, "test", "mlp_width")[0]


def _calibration(times: dict[str, float], quantity="jacobian", mode=None) -> dict:
    """Models that predict a constant time for each named strategy."""
    k = cost_model.key(quantity, mode)
    return {"models": {k: {s: {"const": math.log(t), "exponents": dict.fromkeys(FEATURES, 0.0),
                               "rows": 3, "failed": []} for s, t in times.items()}}}


# ------------------------------------------------------------------------------ registration
@pytest.mark.parametrize("quantity", sorted(strategies.QUANTITIES))
def test_auto_is_registered_exact_for_every_quantity_and_checked_by_agreement(quantity):
    s = strategies.get(quantity, AUTO)
    assert s.exact and s.framework == "torch"
    checked = {c.values[1].id for c in cases(framework="torch") if c.values[0] is s}
    assert checked == {p.id for p in problems(quantity, "test")}, \
        "test_agreement runs torch.auto on every test problem of the quantity"


@pytest.mark.parametrize("quantity", sorted(strategies.QUANTITIES))
def test_candidates_are_exact_applicable_torch_strategies_never_auto(quantity):
    p = problems(quantity, "test")[0]
    names = {s.name for s in candidates(p)}
    assert names and AUTO not in names
    for s in strategies.strategies(quantity):
        if s.name in names:
            assert s.exact and s.framework == "torch" and s.not_applicable(p) is None
    approx = {s.name for s in strategies.strategies(quantity, exact=False)}
    assert not names & approx


# ------------------------------------------------------------------------------ the fit
def test_fit_recovers_known_exponents_from_synthetic_rows():
    rng = np.random.default_rng(0)
    true = np.array([1.0, 0.5, 2.0, 0.0, 0.8])  # n, m, B, P, W
    X = np.log(rng.integers(1, 5000, size=(40, len(FEATURES))))
    y = -9.0 + X @ true
    c0, c = fit_loglinear(X, y, ridge=0.0)
    assert c0 == pytest.approx(-9.0, abs=1e-8) and c == pytest.approx(true, abs=1e-8)
    noisy = y + rng.normal(0, 0.05, len(y))  # 5% timing noise
    c0, c = fit_loglinear(X, noisy, ridge=0.1)
    assert np.abs(c - true).max() < 0.05


def test_pooled_fit_recovers_each_strategy_and_lends_sparse_ones_the_shared_scaling():
    rng = np.random.default_rng(1)
    X = np.log(rng.integers(1, 5000, size=(30, len(FEATURES))))
    a, b = np.array([1.0, 0.0, 1.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    (ca, ea), (cb, eb) = cost_model.fit_pooled([X, X], [-10 + X @ a, -12 + X @ b], ridge=1e-9)
    assert (ca, cb) == (pytest.approx(-10, abs=1e-3), pytest.approx(-12, abs=1e-3))
    assert ea == pytest.approx(a, abs=1e-4) and eb == pytest.approx(b, abs=1e-4)
    # A strategy timed at one size only: alone it would get no exponents at all; pooled with
    # two that both scale as n * W, it is predicted to scale the same way.
    one = X[:1]
    fits = cost_model.fit_pooled([X, X, one], [X @ a, 1 + X @ a, 2 + one @ a], ridge=10.0)
    assert fits[2][1] == pytest.approx(a, abs=0.05)
    assert fit_loglinear(one, 2 + one @ a)[1] == pytest.approx(np.zeros(len(FEATURES)))


def test_fit_gives_a_constant_feature_no_exponent():
    X = np.log([[4, 1, 7, 9, 9], [8, 1, 7, 90, 90], [16, 1, 7, 900, 900]], dtype=float)
    y = X[:, 0] * 2.0 + 1.0
    _, c = fit_loglinear(X, y, ridge=0.0)
    assert c[1] == 0.0 and c[2] == 0.0


def test_fit_of_observations_models_wins_and_failure_points():
    obs = []
    for n in (10, 30, 1000):
        feats = {"n": n, "m": 5, "B": 1, "P": 5 * n, "W": 5 * n}
        obs.append(Observation("jacobian", "torch.a", f"p{n}", "f", feats, math.log(1e-6 * n)))
        obs.append(Observation("jacobian", "torch.b", f"p{n}", "f", feats,
                               math.log(1e-8 * n ** 2)))
    big = {"n": 10000, "m": 5, "B": 1, "P": 50000, "W": 50000}
    obs.append(Observation("jacobian", "torch.b", "p10000", "f", big, None, "oom"))
    cal = fit(obs, ridge=0.0)
    a, b = cal["models"]["jacobian"]["torch.a"], cal["models"]["jacobian"]["torch.b"]
    slope = a["exponents"]["n"] + a["exponents"]["P"] + a["exponents"]["W"]  # n, P, W collinear
    assert slope == pytest.approx(1, abs=1e-4)
    assert b["rows"] == 3 and b["failed"] == [{"features": big, "status": "oom"}]
    # b (1e-8 n^2) is faster below n = 100, a (1e-6 n) above
    assert cal["wins"]["jacobian"] == {"torch.a": 1, "torch.b": 2}


# ------------------------------------------------------------------------------ the pick
def test_auto_picks_the_predicted_fastest_strategy():
    p = _problem()
    names = [s.name for s in candidates(p)]
    for fastest in ("torch.jacfwd", "torch.autograd_loop"):
        times = {n: (1e-6 if n == fastest else 1e-3) for n in names}
        run = prepare_auto(p, "cpu", "float64", calibration=_calibration(times))
        assert run.picked == fastest
        assert run.notes[0].startswith(f"picked {fastest}: cost model predicts 1 us")
        assert_agrees(strategies.get("jacobian", fastest), p, "float64")
        assert np.allclose(run(), reference_for(p))


def test_rank_follows_exponents_across_sizes():
    small, large = problems("jacobian", "quick", "seed004_linear_tanh")[1:3]  # m >> n, n >> m
    cal = {"models": {"jacobian": {
        "torch.fwd": {"const": -20.0, "exponents": {**dict.fromkeys(FEATURES, 0.0), "n": 2.0},
                      "rows": 3, "failed": []},
        "torch.rev": {"const": -20.0, "exponents": {**dict.fromkeys(FEATURES, 0.0), "m": 2.0},
                      "rows": 3, "failed": []}}}}
    assert features(small)["m"] > features(small)["n"]
    assert rank(small, ["torch.fwd", "torch.rev"], cal)[0].name == "torch.fwd"
    assert rank(large, ["torch.fwd", "torch.rev"], cal)[0].name == "torch.rev"


def test_a_strategy_that_failed_at_a_smaller_problem_goes_last():
    p = _problem()
    cal = _calibration({"torch.jacrev": 1e-6, "torch.jacfwd": 1e-3})
    smaller = {f: 1 for f in FEATURES}
    cal["models"]["jacobian"]["torch.jacrev"]["failed"] = [{"features": smaller,
                                                            "status": "timeout"}]
    order = rank(p, ["torch.jacrev", "torch.jacfwd"], cal)
    assert [c.name for c in order] == ["torch.jacfwd", "torch.jacrev"]
    assert order[1].fails == "timeout"


def test_without_calibration_the_rule_order_picks_and_says_so():
    p = _problem()
    names = [s.name for s in candidates(p)]
    cal = {"wins": {"jacobian": {"torch.vmap_vjp": 5, "torch.jacrev": 2}}}
    order = rank(p, names, cal)
    assert [c.name for c in order[:2]] == ["torch.vmap_vjp", "torch.jacrev"]
    run = prepare_auto(p, "cpu", "float32", calibration={})
    assert run.picked in names and "by the rule order" in run.notes[0]
    # Modelled strategies come first; the others follow in the rule order.
    order = rank(p, names, {**cal, **_calibration({"torch.jacfwd": 1.0})})
    assert [c.name for c in order[:3]] == ["torch.jacfwd", "torch.vmap_vjp", "torch.jacrev"]


def test_a_candidate_that_fails_to_prepare_is_passed_over():
    bad = strategies.Strategy("jacobian", "torch.zz_broken", "torch", True,
                              lambda *a, **k: 1 / 0, lambda p: None)
    strategies.registry.add(bad)
    try:
        p = _problem()
        run = prepare_auto(p, "cpu", "float64",
                           calibration=_calibration({"torch.zz_broken": 1e-9,
                                                     "torch.jacrev": 1e-3}))
        assert run.picked == "torch.jacrev"
        assert "passed over: torch.zz_broken (prepare: ZeroDivisionError" in run.notes[0]
    finally:
        strategies.registry.remove("jacobian", "torch.zz_broken")


def test_the_pick_is_recorded_in_the_result_row():
    p = test_problem("jac_diag", problems("jac_diag", "test")[0].id)
    auto = strategies.get("jac_diag", AUTO)
    row = run_case(auto, p, "cpu", "float32", reference_for(p), threads=1, timing=FAST)
    assert row["status"] == "ok", row
    name = A.picked(row["message"])
    assert name in {s.name for s in candidates(p)}, row["message"]
    assert row["message"].startswith(f"picked {name}")


# ------------------------------------------------------------------------------ hit rate
def _rows():
    def r(problem, strategy, median, status="ok", message="", framework=None):
        return {"quantity": "jacobian", "problem": problem, "device": "cpu",
                "dtype": "float32", "strategy": strategy, "median_s": median,
                "framework": framework or strategy.split(".")[0], "exact": True,
                "status": status, "message": message, "mode": None, "family": "fam",
                "size": problem, "scale": int(problem[1:]), "forward_s": 1e-4}
    return pd.DataFrame([
        r("p1", "torch.a", 1e-3), r("p1", "torch.b", 2e-3),
        r("p1", AUTO, 2.1e-3, message="picked torch.b: cost model predicts 1 ms"),
        r("p2", "torch.a", 1e-3), r("p2", "jax.c_jit", 0.5e-3),
        r("p2", AUTO, 1.1e-3, message="picked torch.a: cost model predicts 1 ms"),
        r("p3", "torch.a", 1e-3), r("p3", AUTO, None, "timeout", "exceeded the 30 s limit"),
        r("p4", AUTO, 1e-3, message="picked torch.a by the rule order"),
    ])


def test_hit_rate_against_torch_and_against_every_framework():
    df = _rows()
    rate, table = A.hit_rate(df, "torch")
    assert (rate.cases, rate.hits, rate.uncompared) == (3, 1, 1)  # p4: nothing to compare
    miss = table.set_index("problem").loc["p1"]
    assert (miss.picked, miss.fastest, round(miss.ratio, 6)) == ("torch.b", "torch.a", 2.1)
    assert miss.pick_ratio == pytest.approx(2.0)
    assert table.set_index("problem").loc["p3"].ratio == np.inf
    rate_all, table_all = A.hit_rate(df, "all")
    assert (rate_all.cases, rate_all.hits) == (3, 0)
    assert table_all.set_index("problem").loc["p2"].fastest == "jax.c_jit"


def test_report_shows_the_hit_rate_and_the_misses(tmp_path):
    from jacbench.reports.build import build_report

    html = build_report(_rows(), tmp_path / "r.html").read_text()
    assert 'id="auto"' in html and "33.3%</b> (1 of 3" in html
    misses = html[html.index('id="auto-misses-torch"'):]
    assert "torch.b" in misses[:misses.index("</table>")]
    assert "2.10\u00d7" in misses and "timeout" in misses


# ------------------------------------------------------------------------------ calibrate
LAW = {"torch.jacfwd": lambda f: 1e-8 * f["n"] ** 2, "torch.jacrev": lambda f: 1e-8 * f["m"] ** 2}


def _law_rows(results) -> list:
    """Rows of two jacobian strategies whose medians follow the power laws in LAW."""
    probs = problems("jacobian", "quick", "seed004_linear_tanh") + \
        problems("jacobian", "quick", "mlp_outputs")
    for p in probs:
        for name, cost in LAW.items():
            store.append(results, {
                "case_id": store.case_id("jacobian", p.id, name, "cpu", "float32"),
                "quantity": "jacobian", "problem": p.id, "family": p.family, "size": p.size,
                "mode": None, "sizes": p.sizes, "strategy": name, "framework": "torch",
                "exact": True, "device": "cpu", "dtype": "float32", "status": "ok",
                "median_s": cost(features(p)), "commit": "abc", "run_id": "r1",
                "timestamp": "2025-01-01T00:00:00+00:00"})
    return probs


def test_calibrate_recovers_costs_written_as_rows_and_picks_the_fastest(tmp_path):
    """The calibration file recovers the exponents of the rows' power laws, and the offline
    picks all hit, in-sample and held out."""
    results, out = tmp_path / "results.jsonl", tmp_path / "cal.json"
    probs = _law_rows(results)
    cal, lines = calibrate(results, out, ridge=1e-6)
    written = json.loads(out.read_text())
    assert written["fitted_on"]["rows"] == 2 * len(probs) and written["fitted_on"]["commits"] \
        == ["abc"]
    fwd = written["models"]["jacobian"]["torch.jacfwd"]["exponents"]
    assert fwd["n"] == pytest.approx(2.0, abs=1e-3) and fwd["m"] == pytest.approx(0, abs=1e-3)
    assert "in-sample: 6/6 = 100.0%" in lines[1]
    assert "leave-one-problem-out: 6/6 = 100.0%" in lines[2]


def test_calibrate_command_writes_the_file_and_prints_the_hit_rates(tmp_path, capsys):
    from jacbench.cli import main

    results, out = tmp_path / "results.jsonl", tmp_path / "cal.json"
    _law_rows(results)
    assert main(["calibrate", str(results), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "leave-one-family-out" in printed and f"wrote {out}" in printed
    assert set(json.loads(out.read_text())["models"]["jacobian"]) == set(LAW)
    assert main(["calibrate", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
