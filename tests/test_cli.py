"""The command line end to end: failures become rows, kill -9 then --resume, bad input.

Sweeps run in a subprocess: the runner forks one child per case, which is only safe from a
process that has not computed with torch (see bench.isolation), and the failing strategies of
planted_strategies.py must stay out of this process's registry.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from jacbench.bench import store
from jacbench.cli import main
from jacbench.bench.cases import select_cases
from jacbench.bench.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


def _command(args, planted=True):
    code = ("import sys; " + ("import planted_strategies; " if planted else "")
            + "from jacbench.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return [sys.executable, "-c", code, *map(str, args)], env


def jacbench(*args, planted=True, timeout=180):
    cmd, env = _command(args, planted)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _by_case(rows):
    return {(r["strategy"], r["size"]): r for r in rows}


def test_failing_strategies_become_rows_and_the_sweep_goes_on(tmp_path):
    results = tmp_path / "results.jsonl"
    names = ["torch.planted_raises", "torch.planted_hangs", "torch.planted_hog",
             "torch.planted_alloc_fails",
             "torch.planted_crash", "torch.planted_wrong", "torch.planted_approx",
             "torch.planted_nan_approx", "torch.planted_slow_later", "torch.planted_right"]
    run = jacbench("run", "--profile", "test", "--quantity", "jac_diag", "--problem",
                   "seed002_netx", "--strategy", ",".join(names), "--timeout", "3",
                   "--mem-cap", "0.2", "--results", results, "--quiet")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    rows = store.read_rows(results)
    small, large = "m=4,N=3", "m=7,N=5"  # the two sizes of the test ladder, scales 3 and 5
    got = _by_case(rows)
    assert len(got) == 2 * len(names)
    # Only the ok cases of a problem are written twice: alone, then timed side by side.
    seen, again = set(), []
    for r in rows:
        (again.append(r) if r["case_id"] in seen else seen.add(r["case_id"]))
    assert again and all(r["status"] == "ok" and r["timing"] == "paired" for r in again)

    def status(name, size):
        return got[(name, size)]["status"], got[(name, size)]["message"]

    assert status("torch.planted_raises", small) == \
        ("error", "first call: ValueError: planted failure")
    assert status("torch.planted_hangs", small)[0] == "timeout"
    assert "3 s time limit" in status("torch.planted_hangs", small)[1]
    assert status("torch.planted_hog", small)[0] == "oom"
    assert "0.2 GB cap" in status("torch.planted_hog", small)[1]
    assert status("torch.planted_alloc_fails", small)[0] == "oom"
    assert status("torch.planted_crash", small) == ("error", "child process died of SIGSEGV")
    # After a timeout or an OOM the larger size is not attempted; after an error it is.
    for name, why in [("torch.planted_hangs", "timeout"), ("torch.planted_hog", "oom"),
                      ("torch.planted_alloc_fails", "oom"),
                      ("torch.planted_slow_later", "timeout")]:
        assert status(name, large) == ("skipped", f"not attempted: {why} at the smaller size "
                                                  f"{small}")
    assert status("torch.planted_raises", large)[0] == "error"
    # A timeout while timing keeps what the first call measured.
    slow = got[("torch.planted_slow_later", small)]
    assert slow["message"].endswith("while timing")
    assert slow["first_call_s"] > 0 and slow["max_error"] == 0.0
    for size in (small, large):
        wrong = got[("torch.planted_wrong", size)]
        assert wrong["status"] == "disagrees" and wrong["max_error"] > wrong["tolerance"]
        approx = got[("torch.planted_approx", size)]
        assert approx["status"] == "ok" and approx["max_error"] == wrong["max_error"]
        assert got[("torch.planted_nan_approx", size)]["status"] == "disagrees"
        right = got[("torch.planted_right", size)]
        assert right["status"] == "ok" and right["max_error"] == 0.0
        assert right["median_s"] > 0 and right["runs"] >= 1 and right["forward_s"] > 0
        assert right["peak_mem_bytes"] >= 0 and right["first_call_s"] > 0
    df = store.load(results)
    assert list(df.columns) == list(store.COLUMNS)
    assert set(df.status) <= set(store.STATUSES)


def test_kill_9_mid_sweep_then_resume_loses_and_doubles_nothing(tmp_path):
    results = tmp_path / "results.jsonl"
    args = ["run", "--profile", "test", "--quantity", "jacobian", "--problem",
            "seed004_linear_tanh", "--framework", "torch", "--results", results, "--quiet"]
    real = [c.case_id for c in select_cases("test", "jacobian", None, "seed004_linear_tanh",
                                            None, "torch")]
    # The planted strategies of this module that finish: one slow to prepare, so the sweep
    # lasts long enough to be killed in the middle.
    planted = [c.replace("torch.jacrev|", "torch.planted_right|") for c in real
               if "|torch.jacrev|" in c]
    expected = set(real) | set(planted)
    cmd, env = _command([*args, "--strategy", ",".join(
        sorted({c.split("|")[2] for c in real} | {"torch.planted_right"}))])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = results.read_bytes()
    rows_before = store.read_rows(results)
    done_before = {r["case_id"] for r in rows_before}
    assert 4 <= len(done_before) < len(expected)
    assert before.endswith(b"\n") and len(before.splitlines()) == len(rows_before)

    run = jacbench(*args, "--resume", "--strategy",
                   ",".join(sorted({c.split("|")[2] for c in expected})))
    assert run.returncode == 0, run.stderr
    assert f"{len(done_before)} already done" in run.stdout
    after = results.read_bytes()
    assert after.startswith(before), "rows written before the kill are kept as they were"
    rows = [json.loads(line) for line in after.splitlines()]
    first = {}
    for r in rows:  # a case's second row: the same case timed side by side with its problem's
        assert r["case_id"] not in first or r["timing"] == "paired", "every case exactly once"
        first.setdefault(r["case_id"], r)
    assert sorted(first) == sorted(expected)
    df = store.load(results)
    assert len(df) == len(expected) and df.run_id.nunique() == 2
    ok = df[df.status == "ok"]
    assert len(ok) >= len(expected) - 2, df[df.status != "ok"][["case_id", "message"]]
    for col in ("median_s", "first_call_s", "forward_s", "max_error", "runs", "threads"):
        assert ok[col].notna().all(), col
    for col in ("torch_version", "numpy_version", "python_version", "cpu", "hostname",
                "timestamp"):
        assert ok[col].astype(bool).all(), col


@pytest.mark.parametrize("argv,expected", [
    (["run", "--quantity", "jacobain"], "did you mean: jacobian"),
    (["run", "--strategy", "torch.jacrevv"], "did you mean: torch.jacrev"),
    (["run", "--problem", "seed00_mlp"], "did you mean: seed000_mlp"),
    (["run", "--framework", "pytorch"], "did you mean: torch"),
    (["run", "--quantity", "jacobian", "--size", "77"], "known: "),
    (["run", "--quantity", "jacobian", "--problem", "seed000_mlp"], "families that do: "),
    (["run", "--quantity", "hessian", "--strategy", "torch.jacrev"], "no registered strategy"),
    (["run", "--device", "tpu"], "choose from 'cpu', 'cuda'"),
    (["run", "--dtype", "float16"], "choose from 'float32', 'float64'"),
    (["run", "--profile", "fast"], "choose from 'quick', 'full', 'test'"),
    (["run", "--timeout", "0"], "must be positive"),
    (["run", "--mem-cap", "lots"], "is not a number"),
    (["run", "--jobs", "999"], "needs 999 CPUs; this process may use"),
    (["frobnicate"], "choose from 'list', 'run', 'report'"),
    ([], "required: {list,run,report,calibrate,compare}"),
    (["report", "no/such/results.jsonl"], "does not exist"),
    (["list", "--quantity", "hesian"], "did you mean: hessian"),
])
def test_bad_input_is_one_line_with_what_is_allowed_and_status_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err and err.startswith("jacbench"), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_bad_input(capsys):
    assert main(["run", "--device", "cuda"]) == 2
    assert capsys.readouterr().err == ("jacbench run: device 'cuda' is not available here "
                                       "(torch.cuda.is_available() is False); allowed: cpu\n")


def test_bad_input_from_a_real_process_has_no_traceback():
    run = jacbench("run", "--quantity", "jacobain", planted=False)
    assert run.returncode == 2
    assert run.stderr.startswith("jacbench run: unknown quantity 'jacobain'")
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1


def test_list_shows_quantities_strategies_and_problems(capsys):
    assert main(["list", "--quantity", "jacobian", "--framework", "torch"]) == 0
    out = capsys.readouterr().out
    assert "Quantities:" in out and "Strategies" in out and "Problem families" in out
    assert "torch.jacrev" in out and "jax." not in out
    assert "seed004_linear_tanh" in out and "seed000_mlp" not in out


def _results_file(tmp_path):
    results = tmp_path / "results.jsonl"
    store.append(results, {"case_id": "q|p|s|cpu|float32", "quantity": "jacobian",
                           "status": "ok"})
    return results


def test_report_hands_the_results_to_the_builder(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("jacbench.reports.build")
    fake.build_report = lambda results, out, workers=1: calls.append((results, out)) or out
    monkeypatch.setitem(sys.modules, "jacbench.reports.build", fake)
    results, out = _results_file(tmp_path), tmp_path / "out" / "index.html"
    assert main(["report", str(results), "--out", str(out)]) == 0
    assert calls == [(results, out)] and out.parent.is_dir()
    assert capsys.readouterr().out == f"report: {out}\n"


def test_report_without_a_builder_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jacbench.reports.build", None)  # makes the import fail
    assert main(["report", str(_results_file(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jacbench report: no report builder") and err.count("\n") == 1


def test_progress_without_a_terminal_prints_count_elapsed_and_eta_per_case():
    cases = select_cases("test", "jacobian", "torch.jacrev,torch.jacfwd", "mlp_width")
    out = io.StringIO()
    progress = Progress(len(cases), stream=out, tty=False)
    progress.begin(cases[0])
    progress.end(cases[0], {"status": "ok", "median_s": 0.00123})
    progress.end(cases[1], {"status": "timeout", "message": "exceeded the 3 s time limit"})
    first, second = out.getvalue().splitlines()
    assert re.fullmatch(r"\[1/2 0:00:00 eta 0:00:00\] jacobian mlp_width@n=5,width=6,m=3 "
                        r"torch\.jacfwd: ok 1\.23 ms", first), first
    assert second.startswith("[2/2 ") and second.endswith("timeout exceeded the 3 s time limit")


def test_progress_on_a_terminal_is_a_bar_naming_the_current_case():
    cases = select_cases("test", "jacobian", "torch.jacrev", "mlp_width")
    out = io.StringIO()
    progress = Progress(1, stream=out, tty=True)
    progress.begin(cases[0])
    progress.end(cases[0], {"status": "ok"})
    progress.close()
    text = out.getvalue()
    assert "jacobian/mlp_width@n=5,width=6,m=3/torch.jacrev" in text and "1/1" in text


def test_quick_trims_jax_but_not_named_strategies_or_full():
    from jacbench.bench.cases import select_cases

    def sizes(cases, name):
        return sorted(c.problem.size_param for c in cases if c.strategy.name == name
                      and c.problem.family == "mlp_width" and c.quantity == "hvp")

    quick = select_cases("quick", quantities=["hvp", "ntk"])
    ladder = sizes(quick, "torch.double_backward")
    assert len(ladder) == 3
    assert sizes(quick, "jax.fwd_over_rev_jit") == ladder
    assert sizes(quick, "jax.fwd_over_rev") == ladder[:1]  # eager JAX: smallest size only
    assert sizes(select_cases("quick", quantities=["hvp"], strategy_names=["jax.fwd_over_rev"]),
                 "jax.fwd_over_rev") == ladder
    conv_modes = {c.problem.mode for c in quick
                  if c.problem.family == "seed003_convnet" and c.strategy.framework == "jax"}
    assert conv_modes == {"full"}
    full = select_cases("full", quantities=["ntk"], frameworks=["jax"])
    assert {c.problem.mode for c in full if c.problem.family == "seed003_convnet"} == \
        {"full", "trace", "diagonal"}


def test_planted_wrong_results_on_the_quick_seeds_all_disagree(tmp_path):
    """Issue 15's held-out check in miniature: the reference perturbed four ways, on seed 001's
    own workload (J(x1) J(x2)^T of about 3e-5, where the old rule passed zeros) and seed 000's
    J^T J v (entries up to 6805), through the command line."""
    results = tmp_path / "r.jsonl"
    code = ("import sys; import planted_mutants; from jacbench.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    args = ["run", "--profile", "quick", "--problem", "seed001_sqrt,seed000_mlp",
            "--quantity", "cross_jacobian,ggn_vp", "--strategy",
            "torch.mutant_zeros,torch.mutant_one_percent,torch.mutant_one_entry,"
            "torch.mutant_negated,torch.mutant_reference", "--results", results, "--quiet"]
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = store.read_rows(results)
    assert len({r["problem"] for r in rows}) == 6
    for r in rows:
        want = "ok" if r["strategy"] == "torch.mutant_reference" else "disagrees"
        assert r["status"] == want, r
        assert 0 < r["tolerance"] <= 1e-3 and r["noise_floor"] > 0
