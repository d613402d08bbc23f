"""Results files are checked like every other input: a file that is not a jacbench results
file (CSV, another JSON schema, empty, a folder, missing) gets one line and exit status 2 from
`report`, `compare`, `calibrate` and `run` (with or without --resume), and is never written to."""
from __future__ import annotations

import json

import pytest

import jacbench
from jacbench.bench import store
from jacbench.cli import main

BAD = {
    "csv": ("a,b\n1,2\n", "first line is not JSON"),
    "schema": ('{"foo": 1, "bar": [2]}\n', "first row has no case_id"),
    "array": ("[1, 2, 3]\n", "first row has no case_id"),
    "empty": ("", "is empty"),
    "blank": ("\n\n", "is empty"),
}


def _bad(tmp_path, kind):
    text, _ = BAD[kind]
    path = tmp_path / f"{kind}.jsonl"
    path.write_text(text)
    return path


def _one_line(capsys, rc, expect):
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert expect in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("kind", sorted(BAD))
def test_report_compare_and_calibrate_refuse_a_bad_file(tmp_path, capsys, kind):
    path, expect = _bad(tmp_path, kind), BAD[kind][1]
    _one_line(capsys, main(["report", str(path), "--out", str(tmp_path / "r.html")]), expect)
    assert not (tmp_path / "r.html").exists()
    _one_line(capsys, main(["compare", str(path), str(path)]), expect)
    _one_line(capsys, main(["calibrate", str(path), "--dry-run"]), expect)


@pytest.mark.parametrize("resume", [["--resume"], []])
@pytest.mark.parametrize("kind", sorted(BAD))
def test_run_never_appends_to_a_bad_file(tmp_path, capsys, kind, resume):
    path, expect = _bad(tmp_path, kind), BAD[kind][1]
    before = path.read_bytes()
    rc = main(["run", "--profile", "test", "--quantity", "jvp", "--strategy", "torch.dense",
               "--results", str(path), "--quiet", *resume])
    _one_line(capsys, rc, expect)
    assert path.read_bytes() == before


def test_a_folder_or_a_missing_file(tmp_path, capsys):
    _one_line(capsys, main(["report", str(tmp_path)]), "is a folder")
    _one_line(capsys, main(["compare", str(tmp_path / "no.jsonl"), str(tmp_path / "no.jsonl")]),
              "does not exist")
    store.check(tmp_path / "new.jsonl", must_exist=False)  # a sweep may start a new file


def test_a_real_results_file_passes_even_with_a_torn_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    store.append(path, {"case_id": "q|p|s|cpu|float32", "quantity": "jvp", "problem": "p",
                        "strategy": "torch.dense", "status": "ok"})
    store.check(path)
    with path.open("ab") as f:
        f.write(b'{"case_id": "torn')
    store.check(path)
    assert json.loads(path.read_text().splitlines()[0])["status"] == "ok"


def test_compare_from_python_refuses_a_bad_results_path(tmp_path):
    import torch

    path = _bad(tmp_path, "csv")
    model = torch.nn.Linear(3, 2)
    with pytest.raises(store.BadResults, match="first line is not JSON"):
        jacbench.compare(model, torch.randn(2, 3), results=path)
