"""The results store: atomic appends, torn lines, concurrent writers, pandas, resume ids."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from jacbench.bench import store


def _row(i=0, **extra):
    row = {"run_id": "r1", "case_id": store.case_id("jacobian", f"fam@n={i}", "torch.jacrev",
                                                      "cpu", "float32"),
           "quantity": "jacobian", "problem": f"fam@n={i}", "family": "fam", "size": f"n={i}",
           "mode": None, "scale": i, "sizes": {"n": i, "scale": i, "params": 10},
           "params": 10, "strategy": "torch.jacrev", "framework": "torch", "exact": True,
           "device": "cpu", "dtype": "float32", "status": "ok", "median_s": 1e-3 * (i + 1),
           "iqr_s": 1e-5, "runs": 40, "first_call_s": 0.01, "forward_s": 1e-4,
           "peak_mem_bytes": 1024, "max_error": 1e-7, "tolerance": 1e-4, "message": "",
           "threads": 2, "timestamp": "2026-01-01T00:00:00+00:00"}
    row.update(extra)
    return row


def test_round_trip_into_pandas_with_every_column(tmp_path):
    path = tmp_path / "sub" / "results.jsonl"
    for i in range(3):
        store.append(path, _row(i))
    store.append(path, _row(3, status="disagrees", max_error=float("inf"),
                            median_s=float("nan"), sizes={"n": np.int64(3)}))
    df = store.load(path)
    assert list(df.columns) == list(store.COLUMNS)
    assert len(df) == 4 and df.scale.tolist() == [0, 1, 2, 3]
    assert df.sizes[0] == {"n": 0, "scale": 0, "params": 10}
    assert df.median_s.dtype.kind == "f" and math.isnan(df.median_s[3])
    assert df.max_error[3] == float("inf")
    assert df.torch_version.isna().all()  # columns a row leaves out are null, not missing
    assert df.exact.tolist() == [True] * 4


def test_each_row_is_one_line_of_json(tmp_path):
    path = tmp_path / "r.jsonl"
    store.append(path, _row(1, message="two\nlines"))
    data = path.read_bytes()
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert json.loads(data)["message"] == "two\nlines"


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_afresh(tmp_path):
    path = tmp_path / "r.jsonl"
    store.append(path, _row(0))
    store.append(path, _row(1))
    with open(path, "ab") as fh:  # what a write cut off mid-line would leave
        fh.write(store.encode(_row(2))[:40])
    with pytest.warns(UserWarning, match="skipped 1 torn"):
        assert store.load(path).scale.tolist() == [0, 1]
    store.append(path, _row(3))
    with pytest.warns(UserWarning, match="skipped 1 torn"):
        assert store.load(path).scale.tolist() == [0, 1, 3]
        assert store.done_case_ids(path) == {_row(i)["case_id"] for i in (0, 1, 3)}


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")  # Python 3.12+
def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "r.jsonl"
    pids = []
    for w in range(4):
        pid = os.fork()
        if pid == 0:  # plain Python in the child: no torch work, safe to fork
            try:
                for i in range(50):
                    store.append(path, _row(w * 1000 + i, message="x" * 5000))
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    lines = path.read_bytes().splitlines()
    assert len(lines) == 200
    assert sorted(json.loads(line)["scale"] for line in lines) == sorted(
        w * 1000 + i for w in range(4) for i in range(50))


def test_latest_row_per_case_wins_unless_history_is_asked_for(tmp_path):
    path = tmp_path / "r.jsonl"
    store.append(path, _row(0, run_id="old", median_s=5.0))
    store.append(path, _row(1, run_id="old"))
    store.append(path, _row(0, run_id="new", median_s=1.0))
    latest = store.load(path)
    assert len(latest) == 2
    assert latest.set_index("scale").loc[0, "median_s"] == 1.0
    assert len(store.load(path, latest=False)) == 3


def test_missing_file_loads_empty_with_the_columns(tmp_path):
    df = store.load(tmp_path / "none.jsonl")
    assert df.empty and list(df.columns) == list(store.COLUMNS)
    assert store.done_case_ids(tmp_path / "none.jsonl") == set()


@pytest.mark.parametrize("bad,match", [
    ({"speed": 1}, "unknown result columns"),
    ({"status": "fine"}, "is not one of ok, disagrees"),
])
def test_bad_rows_are_refused(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        store.append(tmp_path / "r.jsonl", _row(0, **bad))
    assert not (tmp_path / "r.jsonl").exists()


def test_case_id_is_quantity_problem_strategy_device_dtype():
    assert store.case_id("ntk", "mlp[full]@B=4", "jax.structured", "cuda", "float64") == \
        "ntk|mlp[full]@B=4|jax.structured|cuda|float64"
