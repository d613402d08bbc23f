"""A problem's reference: the dense float64 result, cached on disk under a digest of the
problem's weights and data, with its float32 noise floor (what sets the tolerance); or, for a
user's model too large for it, the consensus of the exact strategies' results."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jacbench import strategies
from jacbench.strategies.problem import Problem
from jacbench.strategies.quantities import reference_fits
from jacbench.strategies.user_model import is_user

from . import harness
from .cases import Case

# A reference is not a timed case: the float64 dense route may take minutes where a good
# strategy takes milliseconds, and without it no case of the problem can be judged.
REFERENCE_TIMEOUT_S = 300.0


def problem_digest(problem: Problem) -> str:
    """Changes whenever the weights, data or definition of the problem change."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((problem.quantity, problem.family, problem.size, problem.mode, problem.seed,
                   sorted(problem.flags), problem.spec.in_shape, problem.spec.out_dim)).encode())
    if is_user(problem):  # the user's weights, hashed once when the model was checked
        h.update(repr((problem.spec.name, problem.spec.framework, problem.spec.digest)).encode())
    for layer in getattr(problem.spec, "layers", ()):
        h.update(repr((layer.kind, sorted(layer.options.items()))).encode())
        for group in (layer.params, layer.buffers):
            for k in sorted(group):
                a = np.ascontiguousarray(group[k])
                h.update(f"{k}{a.shape}{a.dtype}".encode())
                h.update(a.tobytes())
    for k in sorted(problem.data):
        a = np.ascontiguousarray(problem.data[k])
        h.update(f"{k}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def reference_path(refs_dir: Path, problem: Problem) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.=," else "_" for c in problem.id)
    return refs_dir / f"{problem.quantity}-{safe}-{problem_digest(problem)}.npy"


@dataclass
class ProblemInfo:
    ref_path: Path
    forward_s: float | None = None
    error: str | None = None
    # "float64": checked against the dense float64 reference; "consensus": a user problem
    # whose reference would not fit (or a JAX function, which has no float64 torch copy):
    # its cases save their results, and the median of the exact ones becomes the reference.
    reference: str = "float64"
    why: str = ""
    noise: float | None = None  # the float32 noise floor (strategies.quantities.noise_floor)

    def tolerance(self, dtype: str) -> float:
        return strategies.tolerance(dtype, self.noise)

    @property
    def noise_path(self) -> Path:
        return self.ref_path.with_name(self.ref_path.stem + ".noise32.json")


def reference_kind(problem: Problem, cap_bytes: int) -> tuple[str, str]:
    """("float64" | "consensus", why) for a problem, decided before anything runs."""
    if not is_user(problem):
        return "float64", ""
    if problem.spec.framework == "jax":
        return "consensus", "a JAX function has no float64 PyTorch copy to compute it on"
    fits, why = reference_fits(problem, cap_bytes)
    return ("float64", "") if fits else ("consensus", why)


def judge_by_consensus(held: list, info: ProblemInfo, outputs: dict) -> list:
    """Rows of one consensus problem, judged against the median of its exact strategies'
    saved results (strategies.agreement.consensus) by the one error rule; the saved results
    are removed afterwards."""
    exact = [c for c, _ in held if c.strategy.exact]
    out = []
    try:
        arrays = [np.load(outputs[c.case_id], mmap_mode="r") for c in exact]
        ref = strategies.agreement.consensus(arrays) if arrays else None
        del arrays
        for case, row in held:
            row = dict(row, reference="consensus")
            if ref is None:
                row["message"] = ("unchecked: no exact strategy finished, so there is no "
                                  f"consensus to check against ({info.why})")
            else:
                err = strategies.max_error(np.load(outputs[case.case_id]), ref)
                status, note = harness.judge(case.strategy.exact, err, row["tolerance"],
                                             row.get("message") or "")
                whose = f"{len(exact)} exact strateg{'y' if len(exact) == 1 else 'ies'}"
                lead = f"reference: median of {whose} ({info.why})"
                if len(exact) == 1:
                    lead += "; a single exact strategy: its own result is unchecked"
                row.update(max_error=err, status=status,
                           message="; ".join(t for t in (note, lead) if t))
            out.append((case, row))
    finally:
        for case, _ in held:
            drop_output(outputs, case)
    return out


def drop_output(outputs: dict, case: Case) -> None:
    path = outputs.pop(case.case_id, None)
    if path is not None:
        path.unlink(missing_ok=True)
