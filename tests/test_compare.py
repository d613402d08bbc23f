"""`jacbench compare`: repeatability of two sweeps, cases that moved, status changes."""
from __future__ import annotations

import pytest

from jacbench import cli
from jacbench.bench import store
from jacbench.reports.compare import compare_lines, paired, repeatability
from test_store import _row


def _write(path, medians: dict[int, float], by_case=None):
    for i, median in medians.items():
        store.append(path, _row(i, median_s=median, **(by_case or {}).get(i, {})))
    return store.load(path)


@pytest.fixture
def two_runs(tmp_path):
    # Cases 0-3 repeat within 10%; 4 is twice as slow after; 5 is under 1 ms in both (left
    # out of the timing comparison); 6 timed out after; 7 only ran before.
    before = _write(tmp_path / "a.jsonl", {0: 2e-3, 1: 0.01, 2: 0.1, 3: 1.0, 4: 0.02, 5: 1e-4,
                                           6: 0.5, 7: 0.3})
    after = _write(tmp_path / "b.jsonl", {0: 2.1e-3, 1: 0.0095, 2: 0.109, 3: 0.93, 4: 0.04,
                                          5: 3e-4, 6: float("nan")},
                   by_case={6: {"status": "timeout"}})
    return before, after


def test_repeatability_counts_cases_over_a_millisecond_within_ten_percent(two_runs):
    rep = repeatability(paired(*two_runs))
    assert (rep.cases, rep.within) == (5, 4)  # 0-4; 5 is too fast, 6 not ok in both
    assert rep.share == pytest.approx(0.8)
    ratios = [2.1 / 2, 0.95, 1.09, 0.93, 2.0]
    geo = 1.0
    for r in ratios:
        geo *= r
    assert rep.geomean_ratio == pytest.approx(geo ** (1 / 5))
    # A looser tolerance takes the 2x case in; a stricter one drops 2, 3 (9%, 7.5%) and keeps 0, 1.
    assert repeatability(paired(*two_runs), tolerance=1.0).within == 5
    assert repeatability(paired(*two_runs), tolerance=0.06).within == 2


def test_the_lines_name_what_moved_and_what_changed_status(two_runs):
    text = "\n".join(compare_lines(*two_runs, factor=1.5))
    assert "7 cases in both files; 1 only in the first, 0 only in the second" in text
    assert "ok -> timeout: jacobian fam@n=6 torch.jacrev" in text
    assert "1 cases moved by more than 1.5x" in text
    assert "2.00x  jacobian fam@n=4 torch.jacrev: 0.02 s -> 0.04 s" in text
    assert "fam@n=5 " not in text.split("moved")[1]  # 3x, but under a millisecond


def test_command_line_prints_the_comparison_and_refuses_a_missing_file(two_runs, tmp_path,
                                                                       capsys):
    assert cli.main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"),
                     "--factor", "1.05"]) == 0
    out = capsys.readouterr().out
    assert "4 (80.0%) within 10%" in out
    assert "cases moved by more than 1.05x" in out and "0.93x" in out
    assert cli.main(["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "does not exist" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ verdicts
def _problem_rows(path, medians: dict[str, float], tied=(), problem="p@n=1"):
    """One problem's rows: strategy -> median; `tied` strategies marked tied with the fastest."""
    for name, median in medians.items():
        case = store.case_id("jacobian", problem, name, "cpu", "float32")
        store.append(path, _row(1, case_id=case, problem=problem, strategy=name,
                                median_s=median, tied_with_fastest=name in tied))


def test_verdicts_compare_ratios_to_the_fastest_and_the_fastest_itself(tmp_path):
    from jacbench.reports.compare import verdicts

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # Problem 1: the host ran 2x slower in b, ratios unchanged; same fastest.
    _problem_rows(a, {"torch.jacrev": 2e-3, "torch.jacfwd": 4e-3, "torch.auto": 1e-3})
    _problem_rows(b, {"torch.jacrev": 4e-3, "torch.jacfwd": 8e-3, "torch.auto": 2e-3})
    # Problem 2: the fastest changed, but a marked the new one tied; jacfwd's ratio moved 15%.
    _problem_rows(a, {"torch.jacrev": 2e-3, "torch.vmap_vjp": 2.1e-3, "torch.jacfwd": 6e-3},
                  tied={"torch.jacrev", "torch.vmap_vjp"}, problem="p@n=2")
    _problem_rows(b, {"torch.jacrev": 2.1e-3, "torch.vmap_vjp": 2e-3, "torch.jacfwd": 6.9e-3},
                  problem="p@n=2")
    # Problem 3: another fastest, not tied: a changed verdict.
    _problem_rows(a, {"torch.jacrev": 2e-3, "torch.jacfwd": 3e-3}, problem="p@n=3")
    _problem_rows(b, {"torch.jacrev": 3e-3, "torch.jacfwd": 2e-3}, problem="p@n=3")
    v = verdicts(store.load(a), store.load(b))
    # torch.auto is no rival (it runs one of the others) but its own ratio is compared.
    assert (v.problems, v.same_or_tied) == (3, 2)
    # Cases: 3 + 3 + 2; within 10%: problem 1 all three, problem 2 jacrev (1 vs 1.05) and
    # vmap_vjp (1.05 vs 1); not jacfwd (3 vs 3.45) nor either of problem 3.
    assert (v.cases, v.ratios_within) == (8, 5)
    text = "\n".join(compare_lines(store.load(a), store.load(b)))
    assert "5 of 8 cases over 1 ms (62.5%)" in text and "2 of 3 problems (66.7%)" in text
    assert "torch.auto, first run: auto within 1.25x" in text


def test_verdicts_compare_like_with_like_a_strategy_in_one_run_only_moves_nothing(tmp_path):
    from jacbench.reports.compare import verdicts

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _problem_rows(a, {"torch.jacrev": 2e-3, "torch.jacfwd": 4e-3})
    # b also ran a compiled twin, twice as fast as anything: every ratio of b would halve.
    _problem_rows(b, {"torch.jacrev": 2e-3, "torch.jacfwd": 4e-3,
                      "torch.jacrev_compiled": 1e-3})
    v = verdicts(store.load(a), store.load(b))
    assert (v.cases, v.ratios_within, v.problems, v.same_or_tied) == (2, 2, 1, 1)
