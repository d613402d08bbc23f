"""asv history is real: a planted slowdown in a throwaway repository is flagged by asv compare.

bench/asv_regression_demo.py makes the repository (this working tree, then a commit where one
strategy repeats its work), runs asv at both commits as `make asv-history` does, and parses
`asv compare --only-changed --no-stats`. 20 to 60 s on 2 cores, depending on load.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jacbench.bench import asv_regression_demo as demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_asv_compare_flags_the_planted_slowdown(tmp_path):
    out = demo.run(tmp_path, ROOT)
    assert not any(out.asv_status.values()), f"asv run failed: {out.asv_status}"
    assert out.slowed_row is not None, f"slowdown of {demo.SLOWED} not listed:\n{out.table}"
    assert out.slowed_row.lstrip("| ").startswith("+"), f"not marked worse:\n{out.table}"
    ratio = float(out.slowed_row.split("|")[4])
    assert ratio >= demo.FACTOR, out.table
    assert out.control_row is None, f"untouched {demo.CONTROL} flagged too:\n{out.table}"
    assert out.caught
