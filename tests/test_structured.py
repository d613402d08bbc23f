"""torch.structured and jax.structured: the structured-derivative NTK agrees with the float64
reference on every NTK test problem and mode, takes both of its routes correctly, handles the
layouts the rules cover (wrappers, nested Sequentials, Linear on (B, T, K) inputs, strided and
padded convolutions), follows the parameters through models that are no Sequential (residual
blocks with batch norm, transformer encoder layers, cross-attention with masks, shared layers,
embeddings, custom forwards with branches), and falls back, reporting it, for exactly the
parameters the rules do not cover."""
import re
import warnings

import pytest
import torch
from torch import nn

from jacbench import strategies
from jacbench.bench.problems import problems
from conftest import assert_agrees, reference_for, tolerance_for
from jacbench.strategies import jax_structured, torch_structured
from jacbench.strategies.agreement import max_error, tolerance
from jacbench.strategies.jax_model import JAX_MISSING
from jacbench.strategies.quantities import NTK_MODES, _ggn, _ntk, _param_jac
from jacbench.strategies.torch_model import TorchView
from jacbench.strategies.torch_per_sample import ggn_vp_structured, param_jacobian_structured
from jacbench.strategies.torch_structured import StructuredFallback, ntk_structured

STRUCTURED = strategies.get("ntk", "torch.structured")
JAX_EAGER, JAX_JIT = (strategies.get("ntk", n) for n in ("jax.structured", "jax.structured_jit"))
needs_jax = pytest.mark.skipif(JAX_MISSING is not None, reason=str(JAX_MISSING))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("problem", problems("ntk", "test"), ids=lambda p: p.id)
def test_agrees_with_reference_on_every_ntk_test_problem(problem, dtype):
    run = STRUCTURED.prepare(problem, "cpu", dtype)
    assert max_error(run(), reference_for(problem)) <= tolerance_for(problem, dtype)
    assert not [n for n in run.notes if "fallback" in str(n)]  # suite models need none


@needs_jax
@pytest.mark.parametrize("problem", problems("ntk", "test"), ids=lambda p: p.id)
def test_jax_structured_eager_agrees_in_float32(problem):
    """test_jax checks every JAX strategy against the reference: jitted in float64 and float32,
    eager in float64. This adds the eager float32 runs, so jax.structured is checked in both
    variants and both dtypes on every NTK test problem and mode."""
    run = JAX_EAGER.prepare(problem, "cpu", "float32")
    assert run.notes == []  # suite models need no fallback
    assert_agrees(JAX_EAGER, problem, "float32")


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "grads"])
@pytest.mark.parametrize("strategy", [STRUCTURED, pytest.param(JAX_JIT, marks=needs_jax)],
                         ids=lambda s: s.name)
def test_both_patch_routes_agree(monkeypatch, strategy, gram):
    """The cost model picks one route per layer; force each everywhere, conv layers included.
    jax.structured looks the same estimate up in torch_structured, at trace time."""
    monkeypatch.setattr(torch_structured, "_gram_is_cheaper", lambda *_: gram)
    for problem in problems("ntk", "test"):
        assert_agrees(strategy, problem, "float64")


@needs_jax
@pytest.mark.parametrize("rules", [{"linear": "patches"}, {}], ids=["conv-and-bn", "every-layer"])
def test_jax_layers_without_a_rule_fall_back_and_say_so(monkeypatch, rules):
    """Every layer kind of the suite has a rule, so the fallback is exercised by taking rules
    away: the layers left without one are computed by per-sample Jacobians of their own
    parameters, agree with the reference, and are reported by warning and by `.notes`."""
    monkeypatch.setattr(jax_structured, "RULES", rules)
    problem = problems("ntk", "test", "seed003_convnet")[0]
    uncovered = [f"layer {i} ({layer.kind})" for i, layer in enumerate(problem.spec.layers)
                 if layer.params and layer.kind not in rules]
    for strategy in (JAX_EAGER, JAX_JIT):
        with pytest.warns(torch_structured.StructuredFallback, match="no structured rule"):
            assert_agrees(strategy, problem, "float64")
        notes = strategy.prepare(problem, "cpu", "float64").notes
        assert [n.split(" has")[0] for n in notes] == [f"fallback: {u}" for u in uncovered]


def _reference(model, x1, x2, mode):
    """The suite's float64 reference contraction, on a model that no Problem describes."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    return _ntk(TorchView(None, model, params, buffers, {}), x1, x2, mode)


def _check(model, x1, x2, notes_expected=False, same_function=None):
    """`same_function`: a model computing the same function that the reference can vmap.
    Floating inputs are taken to float64, index inputs (embeddings) are kept."""
    model = model.double().eval()
    reference_model = (same_function or model).double().eval()
    if x1.is_floating_point():
        x1, x2 = x1.double(), x2.double()
    for mode in NTK_MODES:
        notes = []
        result = ntk_structured(model, x1, x2, mode, notes=notes)
        ref = _reference(reference_model, x1, x2, mode).numpy()
        err = max_error(result, ref)
        assert err <= tolerance("float64"), (mode, err)
        assert bool(notes) == notes_expected, notes
    return notes


class Wrapper(nn.Module):
    def __init__(self, net, scale=1.0):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        return self.scale * self.net(x)


def _convnet(dim: int, groups: int = 1, **conv):
    conv_cls, bn_cls = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
    c_out = 3 * groups  # 2 input and 3 output channels per group
    return nn.Sequential(conv_cls(2 * groups, c_out, 3, groups=groups, **conv), bn_cls(c_out),
                         nn.Tanh(), nn.Sequential(nn.Flatten(), nn.LazyLinear(4)))


@pytest.mark.parametrize("dim", [2, 1], ids=["conv2d", "conv1d"])  # Conv1d: a Conv2d of height 1
@pytest.mark.parametrize("gram", [True, False], ids=["gram", "grads"])
@pytest.mark.parametrize("conv", [dict(stride=2, padding=1), dict(padding="same", bias=False),
                                  dict(dilation=2, padding=2, padding_mode="reflect"),
                                  dict(padding=1, padding_mode="circular"),
                                  dict(groups=2, stride=2, padding=1),
                                  dict(groups=3, padding=1, padding_mode="reflect", bias=False)],
                         ids=["stride", "same-nobias", "dilation-reflect", "circular", "groups",
                              "groups-reflect-nobias"])
def test_conv_options_and_nested_sequential(monkeypatch, conv, gram, dim):
    monkeypatch.setattr(torch_structured, "_gram_is_cheaper", lambda *_: gram)
    torch.manual_seed(0)
    model = _convnet(dim, **conv)
    x = torch.randn(3, model[0].in_channels, *(7,) * dim)
    model(x)  # materialise the lazy layer
    with torch.no_grad():  # eval-mode statistics that are not the identity
        model[1].running_mean.uniform_(-.5, .5)
        model[1].running_var.uniform_(.5, 1.5)
    _check(model, x, x[:2] + 0.5)  # no fallback notes: every parameter has a rule


def _affine_noise(norm: nn.Module) -> nn.Module:
    with torch.no_grad():  # affine parameters that are not 1 and 0
        for p in norm.parameters():
            p.add_(torch.rand_like(p) - 0.5)
    return norm


@pytest.mark.parametrize("make_norm", [
    lambda: nn.GroupNorm(2, 4), lambda: nn.GroupNorm(4, 4, affine=False),
    lambda: nn.LayerNorm([4, 5]), lambda: nn.LayerNorm(5, bias=False),
    lambda: nn.RMSNorm(5)], ids=["group", "group-noaffine", "layer-2d", "layer-nobias", "rms"])
def test_per_sample_norms_have_a_rule(make_norm):
    """GroupNorm, LayerNorm and RMSNorm normalise within one sample: their affine parameters get
    the norm rule (no fallback notes), in a conv net and over tokens."""
    torch.manual_seed(7)
    norm = _affine_noise(make_norm())
    if isinstance(norm, nn.GroupNorm):
        model = nn.Sequential(nn.Conv1d(2, 4, 3), norm, nn.Tanh(), nn.Flatten(), nn.LazyLinear(3))
        x = torch.randn(3, 2, 7)  # Conv1d: (B, 4, 5) into the norm
    else:  # tokens (B, 4, 5): LayerNorm([4, 5]) normalises both, the others the last dimension
        model = nn.Sequential(nn.Linear(3, 5), norm, nn.GELU(), nn.Linear(5, 2), nn.Flatten())
        x = torch.randn(3, 4, 3)
    model(x)
    _check(model, x, x[:2] * 0.7 + 0.2)


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "grads"])
def test_linear_on_token_inputs_batchnorm1d_and_a_wrapper(monkeypatch, gram):
    monkeypatch.setattr(torch_structured, "_gram_is_cheaper", lambda *_: gram)
    torch.manual_seed(1)
    bn = nn.BatchNorm1d(5)
    with torch.no_grad():
        bn.running_mean.uniform_(-.5, .5)
        bn.running_var.uniform_(.5, 1.5)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(20, 5), bn,
                        nn.Linear(5, 2))
    x1, x2 = torch.randn(2, 5, 3), torch.randn(3, 5, 3)
    _check(net, x1, x2)
    _check(Wrapper(net), x1, x2)


class Scale(nn.Module):
    """A user layer with its own parameter and no structured rule."""

    def __init__(self, n, vmappable=True):
        super().__init__()
        self.s, self.vmappable = nn.Parameter(torch.linspace(0.5, 1.5, n)), vmappable

    def forward(self, x):
        # Data-dependent control flow: torch.func cannot vmap it, plain autograd can.
        if not self.vmappable and bool((x.abs() > 1e6).any()):
            return x
        return torch.sin(x) * self.s + x


@pytest.mark.parametrize("vmappable", [True, False], ids=["vmap", "autograd-loop"])
def test_unsupported_layer_falls_back_for_its_parameters_and_says_so(vmappable):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 5), Scale(5, vmappable), nn.Tanh(), nn.Linear(5, 2))
    twin = nn.Sequential(*model[:1], Scale(5), *model[2:])  # the reference needs vmap
    with pytest.warns(StructuredFallback, match=r"layer 1 \(Scale\)"):
        notes = _check(model, torch.randn(3, 3), torch.randn(2, 3), notes_expected=True,
                       same_function=twin)
    assert notes == ["fallback: layer 1 (Scale) has no structured rule; per-sample Jacobians "
                     "of its 5 parameters"]
    assert torch_structured.structured_notes(model) == notes


def test_training_mode_batch_norm_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten())
    with pytest.raises(ValueError, match="model.eval"):
        ntk_structured(model, torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4))


# ------------------------------------------------------------------------------ any model
# Held-out models, built here: the rules follow the parameters wherever the forward uses them.
def _bn(channels: int) -> nn.Module:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():  # eval-mode statistics and affine parameters that are not trivial
        bn.running_mean.uniform_(-.5, .5)
        bn.running_var.uniform_(.5, 1.5)
    return _affine_noise(bn)


class ResidualBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, identity shortcut, in-place ReLU, pooled linear head."""

    def __init__(self, c=3):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), _bn(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), _bn(c)
        self.relu, self.head = nn.ReLU(inplace=True), nn.Linear(c, 2)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.head(self.relu(out + x).mean((2, 3)))


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "grads"])
def test_residual_block_with_batch_norm_needs_no_fallback(monkeypatch, gram):
    monkeypatch.setattr(torch_structured, "_gram_is_cheaper", lambda *_: gram)
    torch.manual_seed(5)
    x = torch.randn(3, 3, 5, 5) + 1.0  # shifted: ReLUs away from their kink at 0
    _check(ResidualBlock(), x, x[:2] * 0.8)


class Encoder(nn.Module):
    def __init__(self, batch_first=True, d=8):
        super().__init__()
        self.embed = nn.Linear(3, d)
        self.layer = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=batch_first)
        self.head, self.batch_first = nn.Linear(d, 2), batch_first

    def forward(self, x):  # (B, T, 3)
        h = self.embed(x)
        h = self.layer(h) if self.batch_first else self.layer(h.transpose(0, 1)).transpose(0, 1)
        return self.head(h.mean(1))


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "grads"])
def test_transformer_encoder_layer_needs_no_fallback(monkeypatch, gram):
    """Attention's in_proj_weight (one projection of width 3E: self-attention), out_proj,
    the feed-forward Linears on tokens and the LayerNorms all have rules."""
    monkeypatch.setattr(torch_structured, "_gram_is_cheaper", lambda *_: gram)
    torch.manual_seed(6)
    model = Encoder()
    for norm in (model.layer.norm1, model.layer.norm2):
        _affine_noise(norm)
    x = torch.randn(3, 4, 3)
    _check(model, x, x[:2] * 0.5)
    stats = {}
    ntk_structured(model, x.double(), x.double(), "trace", stats=stats)
    assert {"layer.self_attn.in_proj", "layer.self_attn.out_proj", "layer.linear1",
            "layer.norm2"} <= set(stats["routes"])


def test_a_sequence_first_encoder_falls_back_for_exactly_the_layers_that_see_it():
    """batch_first=False: attention transposes for itself, but the feed-forward Linears and
    LayerNorms see (T, B, d) and cannot tell the samples apart: only their parameters fall
    back (per-sample Jacobians of the model w.r.t. them), and the notes name each."""
    torch.manual_seed(7)
    with pytest.warns(StructuredFallback, match="batch as its first dimension"):
        notes = _check(Encoder(batch_first=False), torch.randn(3, 4, 3), torch.randn(2, 4, 3),
                       notes_expected=True)
    assert sorted(n.split(" (")[0] for n in notes) == [
        f"fallback: layer layer.{n}" for n in ("linear1", "linear2", "norm1", "norm2")]


class CrossAttention(nn.Module):
    """Query from one projection, keys and values from another (kdim and vdim differ from
    the embedding: separate q/k/v weights), sequence-first, with both masks."""

    def __init__(self, separate: bool):
        super().__init__()
        self.q, self.kv = nn.Linear(3, 4), nn.Linear(3, 5 if separate else 4)
        kdim = 5 if separate else None
        self.mha = nn.MultiheadAttention(4, 2, kdim=kdim, vdim=kdim)
        self.head = nn.Linear(4, 2)

    def forward(self, x):  # (B, T, 3)
        q, kv = self.q(x).transpose(0, 1), torch.tanh(self.kv(x)).transpose(0, 1)
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        pad = torch.zeros(x.shape[0], T, dtype=torch.bool)
        pad[:, -1] = True  # the last token is padding
        out, _ = self.mha(q, kv, kv, key_padding_mask=pad, attn_mask=causal)
        return self.head(out[:-1].mean(0))


@pytest.mark.parametrize("separate", [False, True], ids=["in-proj-blocks", "separate-weights"])
def test_cross_attention_with_masks_needs_no_fallback(separate):
    torch.manual_seed(8)
    x = torch.randn(3, 4, 3)
    _check(CrossAttention(separate), x, x[:2] + 0.3)


def test_one_linear_used_twice_sums_the_cross_terms():
    """Shared weights: the layer is one piece over both calls' positions, so the cross
    terms between its calls are in; no fallback."""
    torch.manual_seed(9)
    lin = nn.Linear(3, 3)
    _check(nn.Sequential(lin, nn.Tanh(), lin, nn.Tanh(), nn.Linear(3, 2)),
           torch.randn(2, 3), torch.randn(3, 3))


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "grads"])
def test_embedding_with_padding(monkeypatch, gram):
    monkeypatch.setattr(torch_structured, "_gram_is_cheaper", lambda *_: gram)
    torch.manual_seed(10)
    model = nn.Sequential(nn.Embedding(7, 4, padding_idx=0), nn.Tanh(), nn.Flatten(),
                          nn.Linear(12, 2))
    x = torch.randint(0, 7, (4, 3))
    x[0, 0] = x[1, 2] = 0  # padding rows get no gradient
    _check(model, x[:3], x[1:])


class Branches(nn.Module):
    """A custom forward: two branches from one input, one used twice, a parameter of the model
    itself (no layer to hook) and a weight tied between two Linears (two modules, one
    parameter): the last two fall back, each for exactly its parameters."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Conv1d(1, 2, 3, padding=1)
        self.c, self.d = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
        self.d.weight = self.c.weight
        self.scale = nn.Parameter(torch.tensor([0.7, 1.3]))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        left = torch.tanh(self.a(x))
        right = self.b(x[:, None, :]).mean(1)  # (B, 3)
        h = left + self.a(right) + self.d(torch.tanh(self.c(left)))
        return self.head(h) * self.scale


def test_custom_forward_with_branches_falls_back_for_exactly_two_parameters():
    torch.manual_seed(11)
    with pytest.warns(StructuredFallback):
        notes = _check(Branches(), torch.randn(2, 3), torch.randn(3, 3), notes_expected=True)
    assert notes == [
        "fallback: layer (the model) (Branches) owns parameters and calls other modules; "
        "per-sample Jacobians of the model w.r.t. its 2 parameters",
        "fallback: layer c (Linear) shares a parameter with another module; per-sample "
        "Jacobians of the model w.r.t. its 16 parameters",
        "fallback: layer d (Linear) shares a parameter with another module; per-sample "
        "Jacobians of the model w.r.t. its 16 parameters"]


def test_registered_strategy_says_routes_and_bound_after_its_first_call():
    problem = problems("ntk", "test", "mlp_batch")[0]
    run = STRUCTURED.prepare(problem, "cpu", "float64")
    assert run.notes == []  # said after the first call, which knows the shapes
    run()
    routes, bound = (str(n) for n in run.notes)
    assert routes.startswith("routes: ") and "unit: " in routes  # the output layer
    assert re.fullmatch(r"bound \S+ ms at \S+ GFLOP/s \(\S+ GFLOP: forward and backward \S+, "
                        r"contractions \S+\); achieved \S+ GFLOP/s", bound), bound
    assert run.bound.flops > 0 and run.bound.bound_s() > 0


def _depthwise():
    """A depthwise convolution (one group per channel, two outputs each), then a pointwise one."""
    return nn.Sequential(nn.Conv2d(3, 6, 3, groups=3), nn.Tanh(), nn.Conv2d(6, 2, 1),
                         nn.Flatten(), nn.Linear(2 * 3 * 3, 2))


def _embedding_model():
    return nn.Sequential(nn.Embedding(7, 4, padding_idx=0), nn.Tanh(), nn.Flatten(),
                         nn.Linear(12, 2))


@pytest.mark.parametrize("make,x", [
    (ResidualBlock, lambda: torch.randn(3, 3, 5, 5) + 1.0),
    (Encoder, lambda: torch.randn(3, 4, 3)),
    (lambda: CrossAttention(True), lambda: torch.randn(3, 4, 3)),
    (Branches, lambda: torch.randn(3, 3)),
    (_embedding_model, lambda: torch.randint(0, 7, (3, 3))),
    (_depthwise, lambda: torch.randn(3, 3, 5, 5))],
    ids=["residual-bn", "encoder", "cross-attention", "branches", "embedding", "depthwise"])
def test_param_jacobian_and_ggn_vp_follow_the_same_layers(make, x):
    """param_jacobian's and ggn_vp's torch.structured: per-sample gradients per layer, placed
    in named_parameters order, and J^T J v through the layers' factors, against the float64
    references (per-sample jacrev)."""
    torch.manual_seed(12)
    model, x = make().double().eval(), x()
    x = x.double() if x.is_floating_point() else x
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    view = TorchView(None, model, params, buffers, {})
    vec = torch.randn(view.param_count, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StructuredFallback)  # Branches' two, tested above
        result, ggn = param_jacobian_structured(model, x), ggn_vp_structured(model, x, vec)
    assert max_error(result, _param_jac(view, x).numpy()) <= tolerance("float64")
    assert max_error(ggn, _ggn(view, x, vec).numpy()) <= tolerance("float64")
