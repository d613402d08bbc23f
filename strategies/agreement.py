"""The one error rule and the one tolerance rule used everywhere results are checked.

Error: the max-norm relative error, max|x - y| / max(max|x|, max|y|).
    Why this rule: it is invariant to the scale of the quantity. ADBench's elementwise
    |x - y| / max(1, |x| + |y|) is an absolute error wherever values are below 1: on seed 001
    every entry of J(x1) J(x2)^T is about 3e-5, so that rule judged an all-zero or negated
    answer `ok`; and it is a relative error on each large entry, so a small entry of a vector
    whose largest entry is 6805 failed the most accurate route of seed 000. Normalising the
    whole difference by the largest magnitude asks the question float arithmetic answers:
    how many units of roundoff, at the scale of the result, is the answer off? Dividing by the
    larger of the two maxima keeps the rule symmetric, so a zero reference against a zero
    result is 0 and a zero reference against anything else is 1.

Tolerance: measured per problem, not fixed per dtype. The quantity's own reference route is run
in float32 and compared with float64: that error, the float32 noise floor of the problem, is
what rounding alone does to a dense computation of the quantity (long reductions included).
    float32: SAFETY x noise, at least FLOOR_ULPS units of float32 roundoff;
    float64: the same noise scaled by the ratio of the unit roundoffs (rounding error is
             proportional to it), x SAFETY, at least FLOOR_64.
Every tolerance is capped at CAP, a tenth of a 1% error, so no 1% error passes whatever the
noise; a problem whose float32 noise needs more than CAP is ill-conditioned in float32 and the
row says so. Problems with no float64 reference (a user model too big for one, a JAX function,
judged against the strategies' consensus) have no measured noise and get DEFAULT.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# Unit roundoff per dtype (numpy's machine epsilon).
EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}

# Measured (tests/test_agreement.py prints it; README "Agreement"): on every test problem and the
# seed problems of the quick ladder, the worst correct float32 strategy was within 6.8x of the
# reference route's own float32 error (the NTK trace by autograd.functional's vectorised
# Jacobian), and within 2.5x on all but two. 32x leaves a margin of about 5 over the worst.
SAFETY = 32.0
# Below the measured noise on tiny problems (one or two ulps), rounding in a different order
# still costs a few ulps: at least 16 ulps in float32 (1.9e-6). float64 is never measured
# directly (it is the reference), so its extrapolated tolerance gets a wider floor: 256 ulps
# (5.7e-14); correct float64 strategies measured at most 5 ulps on the test problems.
FLOOR_ULPS = {"float32": 16, "float64": 256}
# A tenth of a 1% error: no tolerance, however noisy the problem, lets a 1% error pass.
CAP = 1e-3
# Problems judged against a consensus have no measured noise.
DEFAULT = {"float32": 1e-4, "float64": 1e-10}


class ShapeMismatch(ValueError):
    pass


def to_numpy(result) -> np.ndarray:
    """A torch tensor, JAX array or numpy array as a float64 numpy array on the host."""
    if hasattr(result, "detach"):
        result = result.detach().cpu()
    return np.asarray(result, dtype=np.float64)


def max_error(result, ref: np.ndarray) -> float:
    """max|x - y| / max(max|x|, max|y|): the max-norm relative error (see the module's
    docstring for why); 0 when both are all zero, inf when the result holds NaN or inf."""
    x = to_numpy(result)
    ref = np.asarray(ref)
    if x.shape != ref.shape:
        raise ShapeMismatch(f"result has shape {x.shape}, the reference {ref.shape}")
    if x.size == 0:
        return 0.0
    if not np.all(np.isfinite(x)):
        return float("inf")
    scale = max(float(np.abs(x).max()), float(np.abs(ref).max()))
    if scale == 0.0:
        return 0.0
    return float(np.abs(x - ref).max() / scale)


def dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "").replace("jnp.", "")
    if name not in EPS:
        raise ValueError(f"no tolerance for dtype {dtype!r}; known: {', '.join(EPS)}")
    return name


def tolerance(dtype, noise: float | None = None) -> float:
    """The tolerance for a result in `dtype` on a problem whose float32 noise floor (the
    reference route's float32 error, `strategies.quantities.noise_floor`) is `noise`; None: not
    measured, the fixed DEFAULT."""
    name = dtype_name(dtype)
    if noise is None or not np.isfinite(noise):
        return DEFAULT[name]
    return float(min(CAP, max(FLOOR_ULPS[name] * EPS[name], _wanted(name, noise))))


def _wanted(name: str, noise: float) -> float:
    """SAFETY times the float32 noise scaled to dtype `name`: the tolerance before its floor
    and cap."""
    return SAFETY * noise * EPS[name] / EPS["float32"]


def tolerance_note(dtype, noise: float | None) -> str:
    """What a row says when its tolerance hit the cap: the problem, not the strategy, is
    too ill-conditioned in float32 for rounding alone to stay under a 1% error's tenth."""
    name = dtype_name(dtype)
    if noise is None or _wanted(name, noise) <= CAP:
        return ""
    return (f"the problem's float32 noise floor is {noise:.2g}: ill-conditioned in float32, "
            f"tolerance capped at {CAP:g}")


def agrees(result, ref: np.ndarray, dtype, noise: float | None = None) -> bool:
    return max_error(result, ref) <= tolerance(dtype, noise)


@dataclass(frozen=True)
class Convergence:
    """How an estimator's error falls with its sample count (see `convergence`)."""

    samples: tuple[int, ...]
    rms: tuple[float, ...]  # root mean square over seeds of the max-norm relative error
    slope: float  # of log rms against log samples: -0.5 for a Monte Carlo estimator
    bias: float  # max-norm relative error of the mean over seeds at the largest sample count
    bias_bound: float  # what the seeds' spread alone explains of `bias`

    @property
    def exact_here(self) -> bool:
        """The estimator is exact on this problem (Hutchinson on a diagonal Jacobian)."""
        return max(self.rms) <= 64 * EPS["float64"]

    def problems(self, rate: float = 0.5, slack: float = 0.2) -> list[str]:
        """What is wrong with the estimator: its error falls slower than samples^-rate (less
        `slack`), or its mean over seeds stays further from the truth than the spread explains
        (a bias). Empty when it converges as promised."""
        if self.exact_here:
            return []
        out = []
        if self.slope > -(rate - slack):
            out.append(f"error falls like samples^{self.slope:.2f}, promised samples^-{rate}")
        if self.bias > self.bias_bound:
            out.append(f"biased: the mean of the seeds is {self.bias:.3g} off, the spread "
                       f"explains {self.bias_bound:.3g}")
        return out


def convergence(estimate, ref: np.ndarray, samples=(64, 256, 1024, 4096, 16384), seeds: int = 8,
                spread: float = 3.0) -> Convergence:
    """Run `estimate(samples, seed)` for every sample count and `seeds` seeds against `ref`.
    An unbiased Monte Carlo estimator's rms error falls like samples^-1/2, and the mean of its
    seeds lies within about rms / sqrt(seeds) of the truth (measured on the suite's Hutchinson
    estimators: 0.4-0.85 times that); `spread` times the seeds' own spread over sqrt(seeds - 1)
    is the bias bound. At the default counts a bias of about 2% of the largest entry is
    caught."""
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(np.abs(ref).max()) or 1.0
    rms, mean = [], None
    for k in samples:
        runs = [to_numpy(estimate(k, seed)) for seed in range(seeds)]
        errs = [float(np.abs(r - ref).max()) / scale for r in runs]
        rms.append(float(np.sqrt(np.mean(np.square(errs)))))
        mean = np.mean(runs, axis=0)
    logs = np.log(np.maximum(rms, 1e-300))
    slope = float(np.polyfit(np.log(samples), logs, 1)[0])
    bias = float(np.abs(mean - ref).max()) / scale
    # The seeds' spread around their own mean, not around the truth: a bias must not widen
    # the bound that is meant to expose it.
    sd = float(np.sqrt(np.mean([np.abs(r - mean).max() ** 2 for r in runs]))) / scale
    return Convergence(tuple(samples), tuple(rms), slope, bias,
                       float(spread * sd / np.sqrt(seeds - 1)))


def consensus(arrays) -> np.ndarray:
    """The elementwise median of several strategies' results (float64): the reference when
    no float64 reference can be computed. NaNs are left out, so one strategy's NaN does not
    hide the others' agreement (it still disagrees: its error is infinite). Arrays may be
    memory-mapped; the median is taken in chunks to bound memory."""
    views = [np.asarray(a).reshape(-1) for a in arrays]
    shape = np.shape(arrays[0])
    out = np.empty(views[0].size, dtype=np.float64)
    step = max(1, 2 ** 24 // len(views))
    for i in range(0, out.size, step):
        stack = np.stack([v[i:i + step] for v in views]).astype(np.float64)
        with warnings.catch_warnings():  # an all-NaN element stays NaN, without a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            out[i:i + step] = np.nanmedian(stack, axis=0)
    return out.reshape(shape)
