"""Captures what the structured rules need from any PyTorch model: the inputs of every
parameterised layer and its output cotangents, wherever and however often the forward calls
it (residual connections, branches, custom forward methods, shared layers), as
per-sample-gradient libraries (Opacus, BackPACK) do.

`plan(model)` assigns each module that owns parameters a rule (strategies.torch_layer_rules)
or a fallback; `capture(model, x, plan)` runs one forward with forward hooks that record each
call's input and add a zero "probe" leaf to its output, then one backward batched over the m
unit cotangents of the network's outputs, whose gradients w.r.t. the probes are every call's
output cotangents. The probes, not the parameters, are what the gradient is taken w.r.t., so
the parameters need not require grad and later in-place layers cannot alter the cotangents.
Plain autograd (is_grads_batched) rather than torch.func: the same batched backward without
torch.func's first-call import of torch._dynamo (seconds and ~80 MB of RSS).

Fallbacks, each for exactly the parameters concerned and each reported as a "fallback: ..."
note: a leaf module without a rule gets per-sample Jacobians of its own parameters by vjp of
that layer alone (`layer_jacobian`); parameters a rule cannot reach (owned by a module with
children, shared by two modules, or of a layer that does not see the batch first) get
per-sample Jacobians of the whole model w.r.t. just those parameters (`model_jacobian`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vjp, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from .torch_layer_rules import (LINEAR, Piece, attention_forward, conv_parts, embedding_parts,
                                linear_parts, rule_of, split_groups)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@dataclass
class Plan:
    rules: dict  # prefix -> (module, rule), rule "layer" for the per-layer fallback
    model_params: list  # parameter names falling back to whole-model Jacobians
    notes: list


def plan(model: nn.Module) -> Plan:
    owners: dict[int, list[str]] = {}
    modules = dict(model.named_modules())
    for prefix, module in modules.items():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(prefix)
    shared = {o for prefixes in owners.values() if len(prefixes) > 1 for o in prefixes}
    rules, model_params, notes = {}, [], []
    inside = []  # attention modules: their out_proj is theirs
    for prefix, module in modules.items():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not own or any(prefix.startswith(a + ".") for a in inside):
            continue
        kind = type(module).__name__
        count = sum(p.numel() for p in module.parameters(recurse=False))
        where = f"layer {prefix or '(the model)'} ({kind})"
        if prefix in shared:
            model_params += [_join(prefix, n) for n in own]
            notes.append(f"fallback: {where} shares a parameter with another module; "
                         f"per-sample Jacobians of the model w.r.t. its {count} parameters")
            continue
        rule = rule_of(module)
        if rule == "attention":
            inside.append(prefix)
            count = sum(p.numel() for p in module.parameters())
        if rule is None and next(module.children(), None) is not None:
            model_params += [_join(prefix, n) for n in own]
            notes.append(f"fallback: {where} owns parameters and calls other modules; "
                         f"per-sample Jacobians of the model w.r.t. its {count} parameters")
            continue
        if rule is None:
            rule = "layer"
            notes.append(f"fallback: {where} has no structured rule; per-sample Jacobians "
                         f"of its {count} parameters")
        rules[prefix] = (module, rule)
    # named_parameters' names, which named_modules' prefixes reproduce for unshared modules
    names = [n for n, _ in model.named_parameters()]
    model_params = [n for n in names if n in set(model_params)]
    return Plan(rules, model_params, notes)


@dataclass
class _Call:
    prefix: str
    rule: str
    module: nn.Module | None
    a: torch.Tensor
    probe: torch.Tensor
    out: torch.Tensor
    version: int
    needs_input_cotangent: bool
    weight: tuple | None = None  # attention projections: (name, offset) and the K of it
    bias: tuple | None = None
    input_version: int = 0
    source: torch.Tensor | None = None  # the input itself, in the graph

    def is_output_of(self, y: torch.Tensor, m: int) -> bool:
        """This call's output is the network's (B, m) output, unchanged since."""
        return self.out is not None and self.out.data_ptr() == y.data_ptr() and \
            self.out.numel() == y.numel() and self.out._version == self.version and \
            self.out.dim() == 2 and self.out.shape[1] == m


@dataclass
class Capture:
    """What one forward and one batched backward gave, over a batch of B samples and m
    outputs: the pieces, norm and per-layer-fallback calls [(a, G)] by module, the parameters
    left to whole-model Jacobians, notes discovered at run time, and the forward and backward
    matrix-product flops."""

    B: int
    m: int
    pieces: list = field(default_factory=list)
    norms: dict = field(default_factory=dict)  # prefix -> (module, [(a, G)])
    layers: dict = field(default_factory=dict)  # prefix -> (module, [(a, G)])
    model_params: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    flops: int = 0


def _record(calls, prefix, rule, module, a, output, weight=None, bias=None, copy=False):
    probe = torch.zeros_like(output, requires_grad=True)
    out = output + probe
    kept = a.detach().clone() if copy else a.detach()  # detach() shares the version counter
    calls.append(_Call(prefix, rule, module, kept, probe, out, out._version,
                       a.requires_grad, weight, bias, a._version, a))
    return out


def _hook(calls, prefix, rule, copy):
    def hook(module, args, kwargs, output):
        if len(args) != 1 or kwargs or not isinstance(output, torch.Tensor):
            calls.append(_Call(prefix, "unsupported", module, None, None, None, 0, False))
            return None
        return _record(calls, prefix, rule, module, args[0], output, copy=copy)
    return hook


def _forward(model, x, the_plan: Plan, calls: list, copy: bool):
    handles, patched, core = [], [], []

    def project(name, a, w, b, where_w, where_b):
        return _record(calls, name, "projection", None, a, F.linear(a, w, b), where_w, where_b,
                       copy)
    try:
        for prefix, (module, rule) in the_plan.rules.items():
            if rule == "attention":
                forward, flops = attention_forward(module, prefix, project)
                module.forward = forward  # an instance attribute: nn.Module.__call__ uses it
                patched.append(module)
                core.append(flops)
            if isinstance(module, _BatchNorm):
                # the same eval-mode map in plain ops: the batched backward of batch_norm has
                # no vmap rule and would loop over the m cotangents
                module.forward = _eval_batch_norm(module)
                patched.append(module)
            if rule != "attention":
                handles.append(module.register_forward_hook(_hook(calls, prefix, rule, copy),
                                                            with_kwargs=True))
        with torch.enable_grad():
            y = model(x)
            flat = y.reshape(x.shape[0], -1) if isinstance(y, torch.Tensor) else None
    finally:
        for h in handles:
            h.remove()
        for module in patched:
            del module.forward
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"torch.structured needs a model returning one tensor, got "
                        f"{type(y).__name__}")
    return y, flat, [f[0] for f in core]


def _eval_batch_norm(bn: _BatchNorm):
    def forward(x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(bn.running_var + bn.eps)
        shift = -bn.running_mean * scale
        if bn.weight is not None:
            scale, shift = scale * bn.weight, shift * bn.weight
        if bn.bias is not None:
            shift = shift + bn.bias
        return x * scale.reshape(view) + shift.reshape(view)
    return forward


def capture(model: nn.Module, x: torch.Tensor, the_plan: Plan) -> Capture:
    if torch.compiler.is_compiling():
        # hooks and a backward batched by vmap are no graph to compile (AOT autograd's
        # backward cannot be vmapped): torch.compile runs the capture eagerly
        return _eager_capture()(model, x, the_plan)
    return _capture(model, x, the_plan)


_EAGER = []


def _eager_capture():
    if not _EAGER:  # torch._dynamo is imported only when compiling
        _EAGER.append(torch.compiler.disable(_capture))
    return _EAGER[0]


def _capture(model: nn.Module, x: torch.Tensor, the_plan: Plan) -> Capture:
    calls: list[_Call] = []
    y, flat, core = _forward(model, x, the_plan, calls, copy=False)
    if any(c.a is not None and c.a._version != c.input_version for c in calls):
        # an in-place layer changed an input after its layer read it: again, keeping copies
        calls = []
        y, flat, core = _forward(model, x, the_plan, calls, copy=True)
    B = x.shape[0]
    m = flat.shape[1]
    cap = Capture(B, m, model_params=list(the_plan.model_params))
    grads = iter(_output_cotangents(calls, y, flat, m))
    cap.flops += sum(core) * (1 + 2 * m)  # attention's matmuls: forward, and two per cotangent
    bad: dict[str, str] = {}
    groups: dict[tuple, list] = {}
    for c in calls:
        if c.probe is None:
            bad[c.prefix] = "is called with several inputs or returns no single tensor"
            continue
        g = next(grads)
        g = torch.zeros((m, *c.out.shape), dtype=c.out.dtype, device=c.out.device) if g is None else g
        if c.a.shape[0] != B or c.out.shape[0] != B:
            if c.rule == "projection":
                raise ValueError(f"torch.structured: attention {c.prefix} does not see the "
                                 f"batch of {B} samples")
            bad[c.prefix] = "does not take the batch as its first dimension"
            continue
        unit = c.is_output_of(y, m)
        groups.setdefault((c.prefix, c.rule), []).append((c, g, unit))
    owner = {prefix: module for prefix, (module, _) in the_plan.rules.items()}
    for (prefix, rule), entries in groups.items():
        if prefix in bad:
            continue
        module = entries[0][0].module
        if rule in ("norm", "layer"):
            target = cap.norms if rule == "norm" else cap.layers
            target[prefix] = (module, [(c.a, g) for c, g, _ in entries])
            continue
        for piece in _piece(prefix, rule, module, entries, m):
            cap.pieces.append(piece)
            cap.flops += piece.forward_flops() + piece.backward_flops
    for prefix, why in bad.items():
        module = owner.get(prefix)
        names = [_join(prefix, n) for n, _ in module.named_parameters()]
        cap.model_params += names
        count = sum(p.numel() for p in module.parameters())
        cap.notes.append(f"fallback: layer {prefix} ({type(module).__name__}) {why}; "
                         f"per-sample Jacobians of the model w.r.t. its {count} parameters")
    return cap


def _output_cotangents(calls: list, y, flat, m: int) -> list:
    """Every probe's gradient under each of the m unit cotangents of the outputs, (m, *out),
    by one backward batched over them (None: the output does not depend on it).

    When the output is a plain Linear's, y = a W^T + b, the backward starts at its input a
    with the cotangents W[o] for every sample, and that layer's own are the unit vectors:
    the same numbers without the batched matrix product of the units by W."""
    probes = [c.probe for c in calls if c.probe is not None]
    units = torch.eye(m, dtype=flat.dtype, device=flat.device)[:, None, :].expand(m, *flat.shape)
    root, targets, cotangents, known = flat, probes, units, []
    last = next((c for c in reversed(calls) if c.probe is not None), None)
    # an input changed in place after the call has a new autograd history: not a start then
    if last is not None and last.rule == LINEAR and last.is_output_of(y, m) and \
            last.source._version == last.input_version:
        root, targets, known = last.source, probes[:-1], [units]
        cotangents = last.module.weight.detach()[:, None, :].expand(m, *root.shape)
    grads = [None] * len(targets)
    if targets and root.requires_grad:
        with torch.enable_grad():
            grads = list(torch.autograd.grad(root, targets, cotangents, is_grads_batched=True,
                                             allow_unused=True))
    return grads + known


def _piece(prefix, rule, module, entries, m) -> list[Piece]:
    """The pieces from every call of one layer (or projection): the calls' positions are
    concatenated, since the parameter's gradient is the sum over its calls; a grouped
    convolution is one piece per group (split_groups)."""
    parts, idx = [], []
    for c, g, _ in entries:
        if rule == "embedding":
            i, G = embedding_parts(module, c.a, g)
            idx.append(i)
            parts.append((None, G))
        elif rule == "conv":
            parts.append(conv_parts(module, c.a, g))
        else:
            parts.append(linear_parts(module, c.a, g))
    def joined(ts, dim):  # one call needs no copy
        return ts[0] if len(ts) == 1 else torch.cat(ts, dim)
    G = joined([G for _, G in parts], 2)
    c0 = entries[0][0]
    if rule == "projection":
        weight, bias = c0.weight, c0.bias
    else:
        weight = (_join(prefix, "weight"), 0)
        has_bias = getattr(module, "bias", None) is not None
        bias = (_join(prefix, "bias"), 0) if has_bias else None
    if rule == "embedding":
        piece = Piece(prefix, None, G, weight, None, module.num_embeddings, joined(idx, 1))
    else:
        P = joined([P for P, _ in parts], 1)
        piece = Piece(prefix, P, G, weight, bias, P.shape[2])
    piece.unit = len(entries) == 1 and entries[0][2] and piece.T == 1
    inputs = sum(c.needs_input_cotangent for c, _, _ in entries) / len(entries)
    pieces = split_groups(piece, module.groups) if rule == "conv" else [piece]
    for p in pieces:
        p.backward_flops = int(m * p.forward_flops() * inputs)
    return pieces


# ------------------------------------------------------------------------------ fallbacks
def layer_jacobian(layer: nn.Module, a, G) -> torch.Tensor:
    """Per-sample Jacobians (B, m, P_l) of one layer's own parameters, by vjp of the layer
    alone at each sample's input with that sample's m output cotangents."""
    params = dict(layer.named_parameters())

    def one(x, g):  # x: one sample's input; g: (m, *out)
        _, pullback = vjp(lambda p: functional_call(layer, p, (x[None],)), params)
        grads = vmap(pullback)(g[:, None])[0]
        return torch.cat([t.flatten(1) for t in grads.values()], dim=1)

    try:
        return vmap(one, in_dims=(0, 1))(a, G)
    except Exception:  # a layer torch.func cannot vmap: the same vjps one at a time
        leaves = [p.detach().requires_grad_(True) for p in params.values()]
        rows = []
        with torch.enable_grad():
            for i in range(a.shape[0]):
                out = functional_call(layer, dict(zip(params, leaves)), (a[i:i + 1],))
                rows.append(torch.stack([torch.cat([t.flatten() for t in torch.autograd.grad(
                    out, leaves, g[None], retain_graph=True)]) for g in G[:, i]]))
        return torch.stack(rows)


def model_jacobian(model: nn.Module, names: list[str], X) -> torch.Tensor:
    """Per-sample Jacobians (B, m, P_S) of the whole model w.r.t. just the parameters `names`
    (flattened in that order), by vmap of jacrev; an autograd loop where vmap fails."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    sub = {n: params[n] for n in names}

    def one(s, x):
        return functional_call(model, ({**params, **s}, buffers), (x[None],)).reshape(-1)

    try:
        J = vmap(jacrev(one), in_dims=(None, 0))(sub, X)
        return torch.cat([J[n].flatten(2) for n in names], dim=2)
    except Exception:  # data-dependent control flow: one sample and one output at a time
        rows = []
        with torch.enable_grad():
            for i in range(X.shape[0]):
                leaves = {n: t.clone().requires_grad_(True) for n, t in sub.items()}
                out = one(leaves, X[i])
                rows.append(torch.stack([torch.cat([
                    (g if g is not None else torch.zeros_like(t)).flatten()
                    for g, t in zip(torch.autograd.grad(o, list(leaves.values()),
                                                        retain_graph=True, allow_unused=True),
                                    leaves.values())]) for o in out]))
        return torch.stack(rows)
