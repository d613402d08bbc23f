"""Peer-library strategies (BackPACK, curvlinops): each agrees with the float64 reference on every
applicable test problem and on conv nets built here, and says so when its library is missing."""
import numpy as np
import pytest
import torch

import jacbench

from jacbench import strategies
from jacbench.bench.problems import batchnorm, conv, conv_bn_net, linear, problems
from conftest import assert_agrees, cases
from jacbench.strategies import peer_backpack, peer_curvlinops
from jacbench.strategies.agreement import max_error, to_numpy, tolerance
from jacbench.strategies.problem import Layer, ModelSpec, Problem

PEERS = ("backpack", "curvlinops")
needs = {"backpack": pytest.mark.skipif(bool(peer_backpack.MISSING), reason="no BackPACK"),
         "curvlinops": pytest.mark.skipif(bool(peer_curvlinops.MISSING), reason="no curvlinops")}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("strategy,problem", [c for fw in PEERS for c in cases(framework=fw)])
def test_peer_strategy_agrees(strategy, problem, dtype):
    assert_agrees(strategy, problem, dtype)


def test_every_peer_strategy_runs_on_some_test_problem():
    checked = {(c.values[0].quantity, c.values[0].name) for fw in PEERS
               for c in cases(framework=fw)}
    for fw, module in zip(PEERS, (peer_backpack, peer_curvlinops)):
        if module.MISSING:
            continue
        for s in strategies.strategies(framework=fw):
            if s.quantity != "hessian_diag":  # the diagonals are checked on the nets below
                assert (s.quantity, s.name) in checked, f"{s.quantity}/{s.name}: no test problem"


# ------------------------------------------------------------------ conv nets built here
def _hessian_diag_problem(family: str, spec: ModelSpec, seed: int, gain: float) -> Problem:
    """`spec` with its linear and conv weights times `gain`: at torch's default init scale the
    input Hessian diagonals of these small nets are ~1e-5, too small for the error rule
    (|x - y| / max(1, |x| + |y|)) to tell a right diagonal from zeros."""
    spec = ModelSpec(tuple(Layer(layer.kind, {k: (gain * a if k == "weight" and layer.kind in
                                                 ("linear", "conv2d") else a)
                                              for k, a in layer.params.items()},
                                 layer.buffers, layer.options) for layer in spec.layers),
                     spec.in_shape, spec.out_dim)
    rng = np.random.default_rng(seed)
    return Problem(family, "test", "hessian_diag", spec, {"x": rng.normal(0, 1, spec.in_dim)},
                   {"n": spec.in_dim, "params": spec.param_count})


def _conv_tanh_no_bn(rng) -> ModelSpec:
    layers = [conv(rng, 2, 3), Layer("tanh"), Layer("avgpool2"), conv(rng, 3, 2), Layer("tanh"),
              Layer("flatten"), linear(rng, 2 * 3 * 3, 4)]
    return ModelSpec(tuple(layers), (2, 6, 6), 4)


def _relu_mlp(rng) -> ModelSpec:
    return ModelSpec((linear(rng, 5, 7), Layer("relu"), linear(rng, 7, 3)), (5,), 3)


def _conv_relu_bn(rng) -> ModelSpec:
    return ModelSpec((conv(rng, 1, 3), batchnorm(rng, 3), Layer("relu"), Layer("avgpool2"),
                      Layer("flatten"), linear(rng, 3 * 2 * 2, 2)), (1, 4, 4), 2)


NETS = {
    "conv_tanh": _hessian_diag_problem("conv_tanh_no_bn",
                                       _conv_tanh_no_bn(np.random.default_rng(1)), 2, 3.0),
    "seed003_convnet": _hessian_diag_problem(
        "seed003_convnet", conv_bn_net(np.random.default_rng(3), 2, 6, 8), 4, 4.0),
    "relu_mlp": _hessian_diag_problem("relu_mlp", _relu_mlp(np.random.default_rng(5)), 6, 3.0),
    "conv_relu_bn": _hessian_diag_problem("conv_relu_bn",
                                          _conv_relu_bn(np.random.default_rng(7)), 8, 3.0),
}
EXPECT = {  # which BackPACK diagonal covers which net
    "backpack.diag_hessian": {"conv_tanh", "relu_mlp"},
    "backpack.diag_ggn": {"seed003_convnet", "relu_mlp", "conv_relu_bn"},
}


@needs["backpack"]
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name,net", [(n, k) for n, nets in EXPECT.items() for k in sorted(nets)])
def test_backpack_input_diagonal_on_conv_and_relu_nets(name, net, dtype):
    problem = NETS[net]
    s = strategies.get("hessian_diag", name)
    assert s.not_applicable(problem) is None
    ref = strategies.reference(problem)
    assert np.abs(ref).max() > 0.1  # a diagonal the error rule can check (see the gains)
    err = max_error(s.prepare(problem, "cpu", dtype)(), ref)
    assert err <= tolerance(dtype), f"{name} on {net} ({dtype}): error {err:.3g}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("net", sorted(NETS))
def test_hessian_backprop_on_held_out_nets_matches_reference_and_backpack(net, dtype):
    """jacbench's one-pass diagonal on nets outside the suite (ReLU kinks, BN before and after
    the activation), against the float64 reference and, where it applies, BackPACK."""
    problem = NETS[net]
    ours = strategies.get("hessian_diag", "torch.hessian_backprop").prepare(problem, "cpu", dtype)()
    ref = strategies.reference(problem)
    assert np.abs(ref).max() > 0.1
    assert max_error(ours, ref) <= tolerance(dtype)
    for name, nets in EXPECT.items():
        peer = strategies.get("hessian_diag", name)
        if net in nets and peer.not_applicable(problem) is None:
            assert max_error(ours, to_numpy(peer.prepare(problem, "cpu", "float64")())) <= tolerance(dtype)


@needs["backpack"]
def test_backpack_diagonals_refuse_nets_they_would_get_wrong():
    ggn = strategies.get("hessian_diag", "backpack.diag_ggn")
    assert "piecewise-linear" in ggn.not_applicable(NETS["conv_tanh"])  # tanh curvature
    hess = strategies.get("hessian_diag", "backpack.diag_hessian")
    assert "batchnorm2d" in hess.not_applicable(NETS["seed003_convnet"])


@pytest.mark.parametrize("module,package", [(peer_backpack, "backpack-for-pytorch"),
                                            (peer_curvlinops, "curvlinops-for-pytorch")])
def test_missing_library_is_reported_not_hidden(monkeypatch, module, package):
    fw = module.__name__.rsplit("_", 1)[1]
    monkeypatch.setattr(module, "MISSING", f"{package} is not installed: pip install {package}")
    registered = strategies.strategies(framework=fw)
    assert registered
    for s in registered:
        problem = problems(s.quantity, "test")[0]
        assert f"pip install {package}" in s.not_applicable(problem), s.name


# ------------------------------------------------------------------ user modules (held out)
class _Gated(torch.nn.Module):
    """A user layer holding its own parameter: no BackPACK module, so no BatchGrad rule."""

    def __init__(self):
        super().__init__()
        self.lin, self.out = torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)
        self.gate = torch.nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x):
        return self.out(torch.tanh(self.lin(x)) * self.gate)


@needs["backpack"]
def test_backpack_batch_grad_on_user_modules_it_was_never_shown(tmp_path):
    """Modules the suite's own nets do not use (Conv1d, BatchNorm1d, ELU, MaxPool1d, SiLU), run
    as the user's module: BackPACK agrees with the float64 reference and with torch.structured;
    a module it has no rule for is not applicable, named, instead of a silent wrong answer."""
    nn = torch.nn
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv1d(3, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ELU(),
                        nn.MaxPool1d(2), nn.Flatten(), nn.Linear(30, 16), nn.SiLU(),
                        nn.Linear(16, 4))
    net[1].running_mean.uniform_(-0.5, 0.5)  # eval-mode statistics that are not the identity
    df = jacbench.compare(net, torch.randn(5, 3, 10), ["param_jacobian", "ntk"],
                          ["backpack.batch_grad", "torch.structured"], modes="full",
                          profile="test", dtype="float64", results=tmp_path / "r.jsonl")
    assert (df["status"] == "ok").all(), df[["strategy", "status", "message"]]
    assert (df["reference"] == "float64").all() and (df["max_error"] <= 1e-8).all()
    assert set(df["strategy"]) == {"backpack.batch_grad", "torch.structured"}

    gated = jacbench.compare(_Gated(), torch.randn(4, 8), ["param_jacobian"],
                             ["backpack.batch_grad"], profile="test",
                             results=tmp_path / "g.jsonl")
    assert gated["status"].tolist() == ["not_applicable"]
    assert "no BatchGrad rule for the module(s) holding gate" in gated["message"].iloc[0]


class _InPlaceInForward(torch.nn.Module):
    """An in-place write into a module's output in the forward method itself."""

    def __init__(self):
        super().__init__()
        self.lin, self.out = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        h = self.lin(x)
        h.relu_()
        return self.out(h)


@needs["backpack"]
def test_backpack_batch_grad_on_in_place_activations(tmp_path):
    """ReLU(inplace=True) modules (as in torchvision's ResNets) are made out of place in
    BackPACK's copy, so the row is ok; an in-place op in a forward method, which BackPACK's
    backward hooks cannot follow, is not applicable with the reason, not an error."""
    nn = torch.nn
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 8),
                        nn.Hardtanh(inplace=True), nn.Linear(8, 3))
    df = jacbench.compare(net, torch.randn(4, 6), ["param_jacobian"], ["backpack.batch_grad"],
                          profile="test", dtype="float64", results=tmp_path / "r.jsonl")
    assert df["status"].tolist() == ["ok"], df[["status", "message"]]
    assert "in-place flag turned off in BackPACK's copy: 1, 3" in df["message"].iloc[0]
    assert net[1].inplace and net[3].inplace  # the user's model is untouched
    inside = jacbench.compare(_InPlaceInForward(), torch.randn(4, 6), ["param_jacobian"],
                              ["backpack.batch_grad"], profile="test",
                              results=tmp_path / "i.jsonl")
    assert inside["status"].tolist() == ["not_applicable"], inside[["status", "message"]]
    assert "in-place op on a module's output" in inside["message"].iloc[0]


@needs["backpack"]
def test_backpack_on_a_reflect_padded_convolution_disagrees_and_says_why(tmp_path):
    """BackPACK pads every convolution with zeros: on a reflect-padded one its per-sample
    gradients are wrong, which the checker must catch; the row's note names the layer."""
    nn = torch.nn
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Tanh(),
                        nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    df = jacbench.compare(net, torch.randn(3, 3, 5, 5), ["param_jacobian"],
                          ["backpack.batch_grad"], profile="test", dtype="float64",
                          results=tmp_path / "r.jsonl")
    assert df["status"].tolist() == ["disagrees"], df[["status", "message"]]
    assert "pads convolutions with zeros whatever their padding_mode: 0 (reflect)" in \
        df["message"].iloc[0]
    net[0].padding_mode = "zeros"  # the same layer zero-padded: BackPACK is right, no note
    df = jacbench.compare(net, torch.randn(3, 3, 5, 5), ["param_jacobian"],
                          ["backpack.batch_grad"], profile="test", dtype="float64",
                          results=tmp_path / "z.jsonl")
    assert df["status"].tolist() == ["ok"] and "padding_mode" not in df["message"].iloc[0], \
        df[["status", "message"]]
