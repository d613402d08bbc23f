"""The cost model behind `torch.auto`: predicted time of each (quantity, strategy) from shapes.

For each key (the quantity, and for the NTK its mode: "ntk[full]") and each strategy,

    time ~= exp(c0) * n^c_n * m^c_m * B^c_B * P^c_P * W^c_W

over the problem's features (`features`): n inputs and m outputs per sample, B samples, P
parameters and W multiply-adds of one sample's forward pass. The coefficients are fitted by
least squares on log-times to the suite's own measurements, all strategies of a key at once
(`fit_pooled`: each strategy's exponents are the key's shared ones plus a ridge-penalised
deviation); `bench.calibrate` does that and writes them to `auto_calibration.json` in the user's
cache (`user_calibration`; the copy shipped beside this module is the read-only default).

`rank` orders candidate strategies for a problem:
1. strategies with a fitted model, by predicted time, except that one which timed out or ran
   out of memory at a problem no larger in any feature (a "failure point") goes after those
   that did not: growing the problem does not make it fit;
2. then strategies without a model, in the rule order: most wins (fastest exact strategy on
   a calibrated problem) for this key, then for the quantity in any NTK mode, then for the
   same method name in any quantity; ties by name.
When no candidate has a model (no calibration file, or a quantity never calibrated), the
rule order alone decides, and the pick's note says so.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .layer_kinds import KINDS
from .problem import ModelSpec, Problem
from .quantities import quantity

FEATURES = ("n", "m", "B", "P", "W")
# A light penalty on the shared exponents too: P and W are nearly equal on MLPs, and without
# it a held-out conv net got wild shared P and W exponents of opposite signs.
SHARED_RIDGE = 0.3
# The calibration shipped with the source: read-only, the default. A refit goes to the user's
# cache (`user_calibration`), which torch.auto reads first when it exists.
CALIBRATION = Path(__file__).with_name("auto_calibration.json")
CACHE_ENV = "JACBENCH_CACHE"


# ------------------------------------------------------------------------------ features
def key(quantity: str, mode: str | None = None) -> str:
    """The model key: NTK modes differ in output size and cost, so each gets its own models."""
    return f"{quantity}[{mode}]" if mode else quantity


def problem_key(problem: Problem) -> str:
    return key(problem.quantity, problem.mode)


def forward_macs(spec: ModelSpec) -> int:
    """Multiply-adds of one sample's forward pass (elementwise layers count one per element),
    by propagating the sample's shape through the layer list."""
    shape, macs = tuple(spec.in_shape), 0
    for layer in spec.layers:
        layer_macs, shape = KINDS[layer.kind].forward_macs(layer, shape)
        macs += layer_macs
    return max(1, macs)


def features(problem: Problem) -> dict[str, float]:
    """n, m, B, P, W of a problem (each at least 1, so that its log is defined)."""
    spec = problem.spec
    n, m, P = spec.in_dim, spec.out_dim, spec.param_count
    B = 0
    for name, view in quantity(problem.quantity).views.items():  # the model's inputs
        a = problem.data[name]
        if view == "fb":  # a batch
            B += a.shape[0]
        elif a.size != n:  # jac_diag on N independent scalars
            B += a.size // max(n, 1)
    # A user model has no layer list: its forward's multiply-adds were counted when it was
    # inspected (matrix products and convolutions, plus one per activation element as for
    # the built-in layers). Not P: a conv net does far more work than it has parameters.
    if isinstance(spec, ModelSpec):
        W = forward_macs(spec)
    else:
        macs = getattr(spec, "forward_macs", 0)
        W = macs + getattr(spec, "act_per_sample", 0) if macs else P
    return {"n": max(n, 1), "m": max(m, 1), "B": max(B, 1), "P": max(P, 1), "W": max(W, 1)}


def log_features(feats: dict[str, float]) -> np.ndarray:
    return np.log([float(feats[f]) for f in FEATURES])


# ------------------------------------------------------------------------------ fitting
def fit_loglinear(X: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> tuple[float, np.ndarray]:
    """(c0, c) minimising ||y - c0 - X c||^2 + ridge ||c||^2 on log-features X (rows x
    features) and log-times y. Columns are centred first, so the intercept is not penalised;
    a column that does not vary gets coefficient 0 (lstsq's minimum-norm solution)."""
    X, y = np.atleast_2d(np.asarray(X, float)), np.asarray(y, float)
    mu_x, mu_y = X.mean(axis=0), y.mean()
    k = X.shape[1]
    A = np.vstack([X - mu_x, math.sqrt(ridge) * np.eye(k)])
    b = np.concatenate([y - mu_y, np.zeros(k)])
    c = np.linalg.lstsq(A, b, rcond=None)[0]
    return float(mu_y - mu_x @ c), c


def fit_pooled(Xs: list[np.ndarray], ys: list[np.ndarray], ridge: float
               ) -> list[tuple[float, np.ndarray]]:
    """(c0_s, c_s) for several strategies of one key at once: c_s = shared + d_s.

    Least squares over all their rows, with an intercept per strategy, exponents `shared` by
    all, and per-strategy deviations d_s penalised by ridge ||d_s||^2: a strategy's exponents
    are pulled towards the key's common scaling (every way to compute a quantity grows with
    the problem), not towards zero, and a strategy measured at few sizes borrows the
    scaling of the others. Features are centred on the key's mean, so that shrinking a
    deviation pivots around the middle of the data.
    """
    S, k = len(Xs), Xs[0].shape[1]
    mu = np.concatenate(Xs).mean(axis=0)
    blocks, rhs = [], []
    for s, (X, y) in enumerate(zip(Xs, ys)):
        Xc = X - mu
        row = np.zeros((len(X), S + k + S * k))
        row[:, s] = 1.0
        row[:, S:S + k] = Xc
        row[:, S + k + s * k:S + k + (s + 1) * k] = Xc
        blocks.append(row)
        rhs.append(y)
    penalty = np.zeros((k + S * k, S + k + S * k))
    penalty[:k, S:S + k] = math.sqrt(SHARED_RIDGE) * np.eye(k)
    penalty[k:, S + k:] = math.sqrt(ridge) * np.eye(S * k)
    A = np.vstack([*blocks, penalty])
    b = np.concatenate([*rhs, np.zeros(k + S * k)])
    sol = np.linalg.lstsq(A, b, rcond=None)[0]
    shared = sol[S:S + k]
    out = []
    for s in range(S):
        c = shared + sol[S + k + s * k:S + k + (s + 1) * k]
        out.append((float(sol[s] - mu @ c), c))
    return out


@dataclass(frozen=True)
class Observation:
    """One measured case: `log_s` the log median time, or None for a failure (`status`)."""
    key: str
    strategy: str
    problem: str  # the problem id: leave-one-problem-out holds these out together
    family: str
    feats: dict
    log_s: float | None
    status: str = "ok"


def fit(observations: list[Observation], ridge: float) -> dict:
    """The "models" and "wins" sections of a calibration from measured observations.

    models[key][strategy] = {"const", "exponents", "rows", "rms_log_residual", "failed"}:
    fitted on the strategy's ok rows (a timeout also counts as a row at its time limit, a
    lower bound on its time); `failed` lists the features where it timed out or ran out of
    memory. wins[key][strategy] = problems on which it was the fastest ok strategy.
    """
    models: dict[str, dict] = {}
    groups: dict[str, dict[str, list[Observation]]] = {}
    for o in observations:
        groups.setdefault(o.key, {}).setdefault(o.strategy, []).append(o)
    for k, by_strategy in sorted(groups.items()):
        names = sorted(by_strategy)
        timed = {s: [o for o in by_strategy[s] if o.log_s is not None] for s in names}
        fitted = [s for s in names if timed[s]]
        Xs = [np.array([log_features(o.feats) for o in timed[s]]) for s in fitted]
        ys = [np.array([o.log_s for o in timed[s]]) for s in fitted]
        coefs = dict(zip(fitted, fit_pooled(Xs, ys, ridge))) if fitted else {}
        for s in names:
            failed = [{"features": o.feats, "status": o.status} for o in by_strategy[s]
                      if o.status in ("timeout", "oom")]
            entry: dict = {"rows": len(timed[s]), "failed": failed}
            if s in coefs:
                c0, c = coefs[s]
                X, y = Xs[fitted.index(s)], ys[fitted.index(s)]
                resid = y - c0 - X @ c
                entry.update(const=round(c0, 6),
                             exponents={f: round(float(v), 6) for f, v in zip(FEATURES, c)},
                             rms_log_residual=round(float(np.sqrt(np.mean(resid ** 2))), 4))
            models.setdefault(k, {})[s] = entry
    wins: dict[str, dict] = {}
    best: dict[tuple, Observation] = {}
    for o in observations:
        if o.status == "ok" and o.log_s is not None:
            cur = best.get((o.key, o.problem))
            if cur is None or (o.log_s, o.strategy) < (cur.log_s, cur.strategy):
                best[(o.key, o.problem)] = o
    for (k, _), o in sorted(best.items()):
        wins.setdefault(k, {})
        wins[k][o.strategy] = wins[k].get(o.strategy, 0) + 1
    return {"models": models, "wins": wins}


# ------------------------------------------------------------------------------ prediction
def predict(model: dict, feats: dict) -> float | None:
    """Predicted seconds, or None for a model with no timed rows."""
    if "const" not in model:
        return None
    logt = model["const"] + sum(model["exponents"][f] * math.log(feats[f]) for f in FEATURES)
    return math.exp(logt)


def fails_here(model: dict, feats: dict) -> str | None:
    """The status of a failure point no larger than `feats` in every feature, or None."""
    for point in model.get("failed", ()):
        if all(feats[f] >= point["features"][f] for f in FEATURES):
            return point["status"]
    return None


@dataclass(frozen=True)
class Choice:
    name: str
    predicted_s: float | None  # None: ranked by the rule order
    fails: str | None = None  # "timeout"/"oom" at a smaller problem


def _method(name: str) -> str:
    return name.split(".", 1)[-1]


def rule_order(names, k: str, calibration: dict) -> list[str]:
    """The fallback order (module docstring, point 2)."""
    wins = calibration.get("wins", {})
    quantity = k.split("[", 1)[0]

    def score(name):
        here = wins.get(k, {}).get(name, 0)
        same_q = sum(w.get(name, 0) for kk, w in wins.items() if kk.split("[", 1)[0] == quantity)
        same_method = sum(c for w in wins.values() for s, c in w.items()
                          if _method(s) == _method(name))
        return (-here, -same_q, -same_method, name)

    return sorted(names, key=score)


def rank(problem: Problem, names, calibration: dict | None = None) -> list[Choice]:
    """Candidate strategy names for `problem`, best first (module docstring)."""
    return rank_at(problem_key(problem), features(problem), names, calibration)


def rank_at(k: str, feats: dict, names, calibration: dict | None = None) -> list[Choice]:
    """`rank` at a model key and features (a row's, when its problem cannot be rebuilt)."""
    calibration = load() if calibration is None else calibration
    models = calibration.get("models", {}).get(k, {})
    modelled, rest = [], []
    for name in names:
        model = models.get(name)
        t = predict(model, feats) if model else None
        if t is None:
            rest.append(name)
        else:
            modelled.append(Choice(name, t, fails_here(model, feats)))
    modelled.sort(key=lambda c: (c.fails is not None, c.predicted_s, c.name))
    return modelled + [Choice(n, None) for n in rule_order(rest, k, calibration)]


def explain(choices: list[Choice], k: str) -> str:
    """The pick's note: which strategy, predicted how fast, against what."""
    top = choices[0]
    if top.predicted_s is None:
        return (f"picked {top.name} by the rule order (no cost model for {k}: most wins in "
                f"calibrated cases, then name) among {len(choices)} candidates")
    text = f"picked {top.name}: cost model predicts {seconds_text(top.predicted_s)}"
    runner = next((c for c in choices[1:] if c.predicted_s is not None), None)
    if runner is not None:
        text += f"; next {runner.name} {seconds_text(runner.predicted_s)}"
    unmodelled = sum(c.predicted_s is None for c in choices)
    text += f"; {len(choices)} candidates"
    if unmodelled:
        text += f", {unmodelled} without calibration ranked after by the rule order"
    if top.fails:
        text += f"; every candidate had a {top.fails} at a smaller problem"
    return text


def seconds_text(s: float) -> str:
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= f:
            return f"{s / f:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


# ------------------------------------------------------------------------------ the file
@lru_cache(maxsize=4)
def _read(path: str, mtime: float) -> dict:
    return json.loads(Path(path).read_text())


def user_calibration() -> Path:
    """Where `jacbench calibrate` writes and torch.auto looks first: $JACBENCH_CACHE, else
    $XDG_CACHE_HOME/jacbench, else ~/.cache/jacbench; the file auto_calibration.json there."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "jacbench")
    return Path(root) / CALIBRATION.name


def calibration_path() -> Path:
    """The calibration torch.auto reads: the user's refit if there is one, else the shipped."""
    user = user_calibration()
    return user if user.is_file() else CALIBRATION


def load(path: Path | str | None = None) -> dict:
    """The calibration (see bench.calibrate) at `path`, by default `calibration_path()`; {}
    when the file does not exist."""
    path = Path(path or calibration_path())
    if not path.is_file():
        return {}
    return _read(str(path), path.stat().st_mtime)
