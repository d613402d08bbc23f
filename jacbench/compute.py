"""Compute a quantity on your own model: tensors in, tensors out.

    import jacbench
    K = jacbench.ntk(model, x1, x2, mode="trace")        # strategy="auto": torch.auto's pick
    f = jacbench.prepare("ntk", model, x1, x2, mode="trace", threads=1)
    K = f()                                              # repeated calls: only the timed part

The model is wrapped into a problem exactly as `jacbench.compare` does (bench.user: one
forward and backward pass check it, `problems_for` builds the quantity's data from the given
inputs through the quantity's own rules), and a registered strategy is prepared on it. Every
quantity's arguments follow its data (strategies.quantities): its model inputs first, then its
directions (v, u). A model input is one sample for the quantities of one input vector
(jacobian, hessian, hvp, ...) and a batch with the batch first for the per-sample ones
(batch_jacobian, param_jacobian, ggn_vp, ntk); a tuple of them for a model of several inputs
(jacbench.models).
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from jacbench import strategies
from jacbench.strategies.quantities import QUANTITIES, Dims, quantity
from jacbench.strategies.user_model import UserModel, UserModelError, kind_of

from . import models

AUTO = "auto"


@contextlib.contextmanager
def threads_set(n: int | None):
    """torch's intra-op threads set to n for the block, then restored (None: unchanged).

    Measured on a shared 2-core machine under load (README, "Compute a quantity"): a small
    NTK took 64-142 ms with torch's default 2 threads and 12-17 ms with one thread.
    XLA (JAX) fixes its threads at start-up, so this changes nothing for a JAX function."""
    if n is None:
        yield
        return
    import torch

    if int(n) < 1:
        raise ValueError(f"threads={n!r}: give a positive number of threads, or None")
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class Prepared:
    """A strategy prepared on your model and inputs: call it (no arguments) to compute the
    quantity again. It holds a copy of the model as it was when prepared, and the inputs;
    prepare again for new weights or inputs. `strategy` is the strategy prepared; `picked`
    what `auto` chose (torch.auto's pick, with its reason in `notes`): the cost model's before
    the first call, and after it the fastest that call's trial timed."""

    quantity: str
    strategy: str
    mode: str | None
    problem: object = dataclasses.field(repr=False)
    threads: int | None = None
    picked: str | None = None
    notes: tuple = ()
    _fn: object = dataclasses.field(default=None, repr=False)
    _shape: tuple = dataclasses.field(default=(), repr=False)
    _framework: str = dataclasses.field(default="torch", repr=False)

    def __call__(self):
        with threads_set(self.threads):
            out = self._fn()
        self.picked = getattr(self._fn, "picked", self.picked)
        self.notes = tuple(getattr(self._fn, "notes", self.notes))
        if self._framework == "torch":
            import torch

            if not isinstance(out, torch.Tensor):
                out = torch.as_tensor(np.asarray(out))
        return out.reshape(self._shape)


# ------------------------------------------------------------------------------ inputs
def _arguments(Q) -> tuple[list[str], list[str]]:
    """(the quantity's model inputs, its directions), as data keys in their order."""
    ins = [k for k in Q.data if k in Q.views]
    return ins, [k for k in Q.data if k not in Q.views]


def _public(key: str) -> str:
    return key.lower()


def _is_batch(Q, sample_shape) -> bool:
    """Whether the quantity takes its model inputs as a batch of samples of `sample_shape`
    (its batch key given the flags that shape implies), rather than as one sample."""
    n = int(np.prod(sample_shape)) if sample_shape else 1
    flags, _ = Q.shaped(Dims(n, 0, 0, tuple(sample_shape)))
    return Q.batch_key(flags) is not None


def _dtype(xs, dtype):
    if dtype is not None:
        name = str(dtype).replace("torch.", "")
    else:
        name = str(getattr(xs[0], "dtype", "float32")).replace("torch.", "")
        name = name if name in ("float32", "float64") else "float32"
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype {dtype!r}: use float32 or float64")
    return name


def _device(xs, device):
    if device is not None:
        return str(device)
    dev = getattr(xs[0], "device", None)
    return "cuda" if dev is not None and getattr(dev, "type", None) == "cuda" else "cpu"


def problem(name: str, model, *args, mode: str | None = None, output=None,
            dtype: str = "float32"):
    """The suite's Problem for quantity `name` on `model` at the given inputs: what every
    strategy prepares. Raises UserModelError (one line) for what cannot be used."""
    from jacbench.bench.user import inspect_model, problems_for

    Q = quantity(name)
    keys, directions = _arguments(Q)
    wanted = [*keys, *directions]
    if len(args) > len(wanted):
        raise TypeError(f"{name} takes the model and {', '.join(map(_public, wanted))}; "
                        f"got {len(args)} arguments after the model")
    given = dict(zip(wanted, [*args, *[None] * (len(wanted) - len(args))]))
    first = given[keys[0]]
    if first is None:
        raise TypeError(f"{name} needs {_public(keys[0])}")
    if mode is None and Q.modes:
        mode = Q.modes[0]
    if mode is not None and mode not in Q.modes:
        raise ValueError(f"mode {mode!r}: {name} has "
                         + (f"modes {', '.join(Q.modes)}" if Q.modes else "no modes"))
    firsts = [models.as_numpy(a, _public(keys[0])) for a in models.parts(first)]
    packed = (sum(int(np.prod(a.shape[1:])) for a in firsts),)
    second = None
    if _is_batch(Q, firsts[0].shape[1:] if len(firsts) == 1 else packed):
        model, X, shapes = models.inputs(model, first, output, _public(keys[0]))
        for k in keys[1:]:
            if given[k] is not None:  # the NTK's x2; None: the first batch again
                second = models.check_second(given[k], shapes, _public(k), _public(keys[0]))
    else:  # one sample per model input: the batch is these samples, in order
        shapes = [tuple(a.shape) for a in firsts]
        model = models.adapt(model, shapes if len(shapes) > 1 else None, output)
        rows = []
        for k in keys:
            if given[k] is None:
                raise TypeError(f"{name} needs {_public(k)}")
            rows.append(_sample(given[k], shapes, _public(k), _public(keys[0])))
        X = np.stack(rows)
    framework, obj = kind_of(model, f"jacbench.{name}(model=...)")
    facts = inspect_model(obj, X, dtype, None, f"the inputs of shape {tuple(X.shape[1:])}")
    sample = tuple(X.shape[1:])
    spec = UserModel(models.name(obj), framework, sample, facts.out_dim,
                     facts.param_count, obj=obj, digest=facts.digest,
                     act_per_sample=facts.act_per_sample, forward_macs=facts.forward_macs)
    [p] = problems_for(spec, {X.shape[0]: X}, {X.shape[0]: facts}, [name],
                       [mode] if mode else None, second=second)
    if p.blocked:
        raise UserModelError(f"{name}: {p.blocked[1]}")
    data = dict(p.data)
    for k in directions:
        if given[k] is None:
            raise TypeError(f"{name} needs {_public(k)}, a vector of {data[k].size} numbers")
        vec = models.as_numpy(given[k], _public(k)).reshape(-1)
        if vec.size != data[k].size:
            raise UserModelError(f"{_public(k)} has {vec.size} numbers; {name} needs "
                                 f"{data[k].size} ({Q.meaning})")
        data[k] = vec
    return dataclasses.replace(p, data=data)


def _sample(x, shapes, what: str, first: str) -> np.ndarray:
    """One sample of each model input, as one row of the problem's batch: the input as it
    is, or several inputs flattened and concatenated."""
    xs = [models.as_numpy(a, what) for a in models.parts(x)]
    if [tuple(a.shape) for a in xs] != list(shapes):
        raise UserModelError(f"{what} has shape {', '.join(str(tuple(a.shape)) for a in xs)}"
                             f": it must be one sample shaped as {first}, "
                             f"{', '.join(map(str, shapes))}")
    return xs[0] if len(xs) == 1 else np.concatenate([a.reshape(-1) for a in xs])


# ------------------------------------------------------------------------------ strategies
def _auto(p) -> str:
    """torch.auto for a PyTorch model; for a JAX function, the first exact JAX strategy that
    applies, jitted ones first, in the cost model's order (strategies.cost_model.rank)."""
    from jacbench.strategies import cost_model
    from jacbench.strategies.torch_auto import AUTO as TORCH_AUTO

    if p.spec.framework == "torch":
        return TORCH_AUTO
    cands = {s.name: s for s in strategies.strategies(p.quantity, framework="jax", exact=True)
             if s.not_applicable(p) is None}
    if not cands:
        raise UserModelError(f"{p.quantity}: no exact JAX strategy applies to this function")
    ranked = [c.name for c in cost_model.rank(p, list(cands))]
    return sorted(ranked, key=lambda n: ("jit" not in cands[n].tags, ranked.index(n)))[0]


def prepare(name: str, model, *args, mode: str | None = None, strategy: str = AUTO,
            output=None, threads: int | None = None, device=None, dtype=None) -> Prepared:
    """Prepare quantity `name` on `model` at the inputs `args` (see the quantity's function,
    e.g. `jacbench.ntk`, for their order and shapes) with `strategy` ("auto", or a registered
    name: `python -m jacbench list`). Returns a `Prepared`: call it to compute.

    device, dtype: default the first input's device (cpu for numpy or JAX arrays) and dtype
    (float32 unless it is float64).
    threads: torch's threads while preparing and during each call, restored after (None:
    torch's own setting). On a busy machine threads=1 is often much faster."""
    xs = models.parts(args[0]) if args else [None]
    dtype, device = _dtype(xs, dtype), _device(xs, device)
    from jacbench.bench.cases import check_device

    check_device(device)
    p = problem(name, model, *args, mode=mode, output=output, dtype=dtype)
    chosen = _auto(p) if strategy == AUTO else strategy
    s = strategies.get(name, chosen)
    why = s.not_applicable(p)
    if why:
        raise UserModelError(f"{name}: {chosen} does not apply to this model: {why}")
    with threads_set(threads):
        fn = s.prepare(p, device, dtype, **s.options)
    return Prepared(name, chosen, p.mode, p, threads, getattr(fn, "picked", None),
                    tuple(getattr(fn, "notes", ())), fn, tuple(quantity(name).shape(p)),
                    p.spec.framework)


def compute(name: str, model, *args, **options):
    """Prepare and call once: quantity `name` on `model` at `args` (see `prepare`)."""
    return prepare(name, model, *args, **options)()


def signature(name: str) -> str:
    """The public arguments of a quantity's function, for messages and docs."""
    ins, dirs = _arguments(QUANTITIES[name])
    return ", ".join(["model", *map(_public, ins), *map(_public, dirs)])
