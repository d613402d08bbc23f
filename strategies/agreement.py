"""The one error rule and the one tolerance table used everywhere results are checked."""
from __future__ import annotations

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
