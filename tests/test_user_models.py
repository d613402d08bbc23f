"""Benchmark your own model: the examples through the command line and jacbench.compare, and
every bad input a new user might give (tests/bad_models.py), at tiny sizes.

The command line runs once in a subprocess, as a user would; the bad-input cases call
`jacbench.cli.main` here (their cases fork from this process with one thread each, which is safe
after torch has run here; see bench.isolation).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import jacbench
from jacbench.bench import store
from jacbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from resnet_block import make_tiny as resnet_tiny  # noqa: E402
from transformer_layer import make_tiny as transformer_tiny  # noqa: E402

JAX_NA = "PyTorch model: the JAX side needs a JAX function"


def _check_rows(df, min_ok: int, reference: str = "float64"):
    """Every case ran ok against the reference or was not applicable with a reason."""
    assert set(df["status"]) <= {"ok", "not_applicable"}, \
        df.loc[~df["status"].isin(["ok", "not_applicable"]), ["strategy", "message"]]
    ok = df[df["status"] == "ok"]
    assert len(ok) >= min_ok
    assert (ok["reference"] == reference).all()
    assert (ok["max_error"] <= ok["tolerance"]).all(), ok[["strategy", "max_error"]]
    na = df[df["status"] == "not_applicable"]
    assert na["message"].str.len().gt(0).all()
    return ok, na


def test_cli_runs_the_resnet_block_example_and_reports_it(tmp_path):
    results = tmp_path / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "jacbench", "run", "--model", "examples.resnet_block:make_tiny",
         "--input-shape", "3,6,6", "--batch", "2,3", "--outputs", "3", "--quantity",
         "ntk,param_jacobian,jacobian", "--mode", "trace", "--profile", "test",
         "--results", results, "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    df = store.load(results)
    ok, na = _check_rows(df, min_ok=20)
    # one problem per batch size for the per-sample quantities, one for the input Jacobian
    assert set(df["problem"]) == {
        "examples.resnet_block:make_tiny[trace]@B=2", "examples.resnet_block:make_tiny[trace]@B=3",
        "examples.resnet_block:make_tiny@B=2", "examples.resnet_block:make_tiny@B=3",
        "examples.resnet_block:make_tiny@n=108,m=3"}  # the input Jacobian: x[0], flattened
    assert set(ok["quantity"]) == {"ntk", "param_jacobian", "jacobian"}
    # a PyTorch model: no JAX rows, one line says why
    assert not (df["framework"] == "jax").any()
    assert re.search(r"^jax strategies not run \(\d+ cases\): " + JAX_NA + "$", run.stdout,
                     re.M), run.stdout[-2000:]
    assert "torch.structured" in set(ok["strategy"])  # hooks follow the residual block
    said = ok.loc[ok["strategy"] == "torch.structured", "message"]
    # every parameter has a rule, and the row says each layer's route
    assert not said.str.contains("fallback|warning").any() and said.str.contains("routes").all()

    out = tmp_path / "report.html"
    assert main(["report", str(results), "--out", str(out)]) == 0
    page = out.read_text()
    assert "examples.resnet_block:make_tiny" in page and "checked against the float64" in page


def test_compare_runs_the_transformer_example_with_its_report(tmp_path):
    model = transformer_tiny()
    x = torch.randn(3, 5, 4)
    df = jacbench.compare(model, x, quantities=["ntk", "param_jacobian", "batch_jacobian"],
                          modes="full", frameworks="torch", profile="test",
                          report=tmp_path / "r.html", results=tmp_path / "r.jsonl")
    ok, na = _check_rows(df, min_ok=10)
    assert set(ok["quantity"]) == {"ntk", "param_jacobian", "batch_jacobian"}
    # Fused attention has no forward-mode rule: those strategies say so instead of failing.
    fwd = na[na["strategy"].isin(["torch.vmap_jacfwd", "torch.ntk_vps"])]
    assert len(fwd) and fwd["message"].str.contains("out of this strategy's reach").all()
    assert (tmp_path / "r.html").is_file()
    assert not model.training and all(p.requires_grad for p in model.parameters())  # untouched


def test_compare_falls_back_to_the_consensus_when_the_reference_does_not_fit(tmp_path):
    df = jacbench.compare(resnet_tiny(), np.random.default_rng(0).normal(size=(2, 3, 5, 5)),
                          quantities=["param_jacobian"],
                          strategies="torch.vmap_jacrev,torch.autograd_loop,torch.jacrev_batch",
                          profile="test", mem_cap_gb=1e-6, isolate=False,
                          results=tmp_path / "r.jsonl", report=tmp_path / "r.html")
    ok, _ = _check_rows(df, min_ok=3, reference="consensus")
    assert ok["message"].str.contains("median of 3 exact strategies").all()
    assert "consensus (median) of the exact strategies" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("head,m", [(torch.nn.Flatten(0), 1), (torch.nn.Unflatten(1, (1, 2, 2)), 4)])
def test_outputs_of_any_shape_are_flattened_per_sample(tmp_path, head, m):
    """A scalar per sample (B,) and an image per sample (B, 1, 2, 2)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, m), torch.nn.Tanh(), head)
    df = jacbench.compare(model, torch.randn(2, 3), quantities=["batch_jacobian", "ntk"],
                          modes="trace", results=tmp_path / "r.jsonl", profile="test",
                          strategies="torch.vmap_jacrev,torch.jacobian_contraction,"
                                     "torch.structured")
    _check_rows(df, min_ok=3)


# ------------------------------------------------------------------------------ bad input
def _run(tmp_path, capsys, model, *args):
    rc = main(["run", "--model", model, *args, "--profile", "test", "--quiet",
               "--results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err, store.load(tmp_path / "r.jsonl")


@pytest.mark.parametrize("model,shape,message", [
    ("no_such_pkg.models:make_net", "4", "no module named 'no_such_pkg'"),
    ("bad_models:make_nothing", "4", "module 'bad_models' has no attribute 'make_nothing'"),
    ("bad_models", "4", "is not of the form module.path:callable"),
    ("bad_models:returns_dict", "4", "returned a dict, which is not a model"),
    ("bad_models:returns_tuple", "4", "returns a tuple, not one tensor"),
    ("bad_models:mlp", "3,4", "cannot take inputs of shape (8, 3, 4)"),
])
def test_a_model_that_cannot_be_used_is_one_line_and_status_2(tmp_path, capsys, model, shape,
                                                               message):
    rc, err, df = _run(tmp_path, capsys, model, "--input-shape", shape)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert df.empty


def test_outputs_that_do_not_match_and_a_missing_input_shape_are_status_2(tmp_path, capsys):
    rc, err, _ = _run(tmp_path, capsys, "bad_models:mlp", "--input-shape", "10", "--outputs",
                      "5")
    assert rc == 2 and "returns 3 outputs per sample" in err and "--outputs says 5" in err
    assert main(["run", "--model", "bad_models:mlp"]) == 2
    assert "--model needs --input-shape" in capsys.readouterr().err


def test_a_model_without_parameters_skips_parameter_quantities_only(tmp_path, capsys):
    rc, err, df = _run(tmp_path, capsys, "bad_models:no_params", "--input-shape", "4",
                       "--quantity", "ntk,batch_jacobian", "--mode", "trace",
                       "--strategy", "torch.jacobian_contraction,torch.vmap_jacrev")
    assert rc == 0 and "the model has no parameters" in err
    rows = df.set_index("quantity")
    assert rows.loc["ntk", "status"] == "not_applicable"
    assert "no parameters" in rows.loc["ntk", "message"]
    assert rows.loc["batch_jacobian", "status"] == "ok"
    rc, err, _ = _run(tmp_path, capsys, "bad_models:no_params", "--input-shape", "4",
                      "--quantity", "ntk", "--mode", "trace")
    assert rc == 2 and "the model has no parameters" in err  # nothing could run


def test_a_model_in_training_mode_is_run_in_eval_mode_and_the_user_is_told(tmp_path, capsys):
    rc, err, df = _run(tmp_path, capsys, "bad_models:training_mode_net", "--input-shape", "4",
                       "--quantity", "batch_jacobian", "--strategy", "torch.vmap_jacrev")
    assert rc == 0 and df["status"].tolist() == ["ok"], err
    assert "the model is in training mode" in err and "1 dropout module(s), 1 batch norm " \
        "module(s) act as after model.eval()" in err, err
    # a new module is in training mode too; without dropout or batch norm nothing changes
    rc, err, _ = _run(tmp_path, capsys, "bad_models:mlp", "--input-shape", "10", "--quantity",
                      "batch_jacobian", "--strategy", "torch.vmap_jacrev")
    assert rc == 0 and "training mode" not in err, err
    from bad_models import training_mode_net
    with pytest.warns(UserWarning, match="the model is in training mode"):
        jacbench.compare(training_mode_net(), torch.randn(3, 4), ["batch_jacobian"],
                         ["torch.vmap_jacrev"], profile="test", results=tmp_path / "c.jsonl")


@pytest.mark.parametrize("model,quantity,message", [
    ("bad_models:argmax_net", "batch_jacobian", "argmax or an integer cast"),
    ("bad_models:nan_net", "batch_jacobian", "output holds NaN or inf"),
    ("bad_models:round_net", "batch_jacobian", "derivative w.r.t. the input is exactly zero"),
])
def test_non_differentiable_or_nan_models_become_error_rows(tmp_path, capsys, model, quantity,
                                                           message):
    rc, err, df = _run(tmp_path, capsys, model, "--input-shape", "4", "--quantity",
                       "batch_jacobian,param_jacobian", "--strategy", "torch.vmap_jacrev")
    row = df.set_index("quantity").loc[quantity]
    assert row["status"] == "error" and message in row["message"] and message in err
    other = df.set_index("quantity").loc["param_jacobian", "status"]
    if model.endswith("round_net"):  # the last layer's parameters still have a path
        assert rc == 0 and other == "ok"
    else:
        assert rc == 2 and other == "error"


def test_data_dependent_control_flow_is_out_of_reach_of_vmap_only(tmp_path, capsys):
    rc, _, df = _run(tmp_path, capsys, "bad_models:branchy_net", "--input-shape", "4",
                     "--quantity", "batch_jacobian",
                     "--strategy", "torch.vmap_jacrev,torch.autograd_loop,torch.functional_dense")
    rows = df.set_index("strategy")
    assert rc == 0
    assert rows.loc["torch.vmap_jacrev", "status"] == "not_applicable"
    assert "data-dependent control flow" in rows.loc["torch.vmap_jacrev", "message"]
    # The float64 reference needs vmap too: the two loops' agreement is the reference.
    for name in ("torch.autograd_loop", "torch.functional_dense"):
        assert rows.loc[name, "status"] == "ok" and rows.loc[name, "reference"] == "consensus"


def test_compare_rejects_what_it_cannot_use():
    with pytest.raises(jacbench.UserModelError, match="not a model"):
        jacbench.compare(lambda x: x, torch.ones(2, 3))
    with pytest.raises(jacbench.UserModelError, match="cannot take inputs of shape"):
        jacbench.compare(resnet_tiny(), torch.ones(2, 7))
    with pytest.raises(jacbench.UserModelError, match="give a batch"):
        jacbench.compare(resnet_tiny(), torch.ones(7))


# Last: it starts a JAX backend in this process, after which forking (the cases above) is unsafe.
def test_compare_takes_a_jax_function_and_the_torch_side_says_why_not(tmp_path):
    import jax
    import jax.numpy as jnp

    def net(params, X):
        return jnp.tanh(X.reshape(X.shape[0], -1) @ params["w"]) @ params["v"]
    params = {"w": jax.random.normal(jax.random.key(0), (6, 5)) / 3, "v": jnp.ones((5, 2)) / 2}
    x = np.random.default_rng(1).normal(size=(3, 2, 3))
    cache = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {k: getattr(jax.config, k) for k in cache}
    df = jacbench.compare((net, params), x, quantities=["batch_jacobian", "ntk"], modes="trace",
                          strategies="jax.vmap_jacrev,jax.jacobian_contraction,jax.sum_trick,"
                                     "jax.per_sample_loop,torch.vmap_jacrev",
                          profile="test", results=tmp_path / "r.jsonl")
    ok, na = _check_rows(df, min_ok=4, reference="consensus")
    assert set(ok["framework"]) == {"jax"}
    assert (na["message"] == "JAX function: the PyTorch side needs an nn.Module").all()
    # The cases ran in this process (its JAX backend is up): it does not go on writing its
    # compilations into the cache directory the run used and removed.
    assert {k: getattr(jax.config, k) for k in cache} == before
