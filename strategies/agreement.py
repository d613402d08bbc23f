"""The one error rule and the one tolerance table used everywhere results are checked."""
from __future__ import annotations

import warnings

import numpy as np

# Largest allowed error per dtype under `max_error`. float32 gets ~1000 ulps of headroom
# because long reductions (NTK over 10^5 parameters, J^T J v over 4096 samples) add rounding.
TOLERANCE = {"float64": 1e-8, "float32": 1e-4}


class ShapeMismatch(ValueError):
    pass


def to_numpy(result) -> np.ndarray:
    """A torch tensor, JAX array or numpy array as a float64 numpy array on the host."""
    if hasattr(result, "detach"):
        result = result.detach().cpu()
    return np.asarray(result, dtype=np.float64)


def max_error(result, ref: np.ndarray) -> float:
    """max over elements of |x - y| / max(1, |x| + |y|) (ADBench, GradBench); inf on NaN."""
    x = to_numpy(result)
    if x.shape != ref.shape:
        raise ShapeMismatch(f"result has shape {x.shape}, the reference {ref.shape}")
    if x.size == 0:
        return 0.0
    err = np.abs(x - ref) / np.maximum(1.0, np.abs(x) + np.abs(ref))
    return float("inf") if not np.all(np.isfinite(err)) else float(err.max())


def tolerance(dtype) -> float:
    name = str(dtype).replace("torch.", "").replace("jnp.", "")
    if name not in TOLERANCE:
        raise ValueError(f"no tolerance for dtype {dtype!r}; known: {', '.join(TOLERANCE)}")
    return TOLERANCE[name]


def agrees(result, ref: np.ndarray, dtype) -> bool:
    return max_error(result, ref) <= tolerance(dtype)


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
