"""Less clutter, plain words (issue 19): list shows each family's sizes, run --dry-run prints the
cases and an estimated time, user-facing text carries no internal words, and a report of your
own model has no seed-claims section and counts every row it names."""
from __future__ import annotations

import re

import torch
from torch import nn

import jacbench
from jacbench.cli import main

INTERNAL = re.compile(r"seed \d{3}|issue[ -]\d|design\.md", re.I)


def test_list_shows_the_sizes_of_each_ladder_in_plain_words(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "quick: ggn_vp: B 256, 1024, 4096 (width=64)" in out
    assert "full: cross_jacobian: n 10000, 100000, 1000000 (m=5)" in out
    assert "(a neural-tangents issue)" in out
    assert not INTERNAL.search(out), INTERNAL.search(out)


def test_dry_run_prints_the_cases_and_an_estimate_and_runs_nothing(tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    assert main(["run", "--dry-run", "--profile", "test", "--quantity", "jvp", "--framework",
                 "torch", "--results", str(results)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    cases, total = out[:-1], out[-1]
    assert cases and all(line.startswith("jvp ") and "torch." in line for line in cases)
    m = re.match(r"(\d+) cases \(.*\) on (\d+) problems, profile test: about (\d+) s with", total)
    assert m and int(m.group(1)) == len(cases), total
    assert not results.exists()


def test_a_report_of_your_own_model_names_no_seed_and_counts_every_row(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    df = jacbench.compare(model, torch.randn(4, 3), quantities="ntk", modes="trace",
                          strategies="torch.jacobian_contraction,torch.ntk_vps,jax.structured",
                          profile="test", report=tmp_path / "r.html")
    assert sorted(df["status"]) == ["not_applicable", "ok", "ok"]
    page = (tmp_path / "r.html").read_text()
    assert 'id="seed-claims"' not in page and "Seed claims" not in page
    assert "2 of 3 ok; 1 not applicable" in page
    assert not INTERNAL.search(page), INTERNAL.search(page)
