"""jacbench strategies: a registry of interchangeable ways to compute Jacobian-family quantities.

    >>> from jacbench import strategies
    >>> s = strategies.get("jacobian", "torch.jacrev")
    >>> s.idea, s.exact, s.framework
"""

if __name__ != "jacbench.strategies":
    raise ImportError("jacbench's packages are imported as jacbench.strategies, jacbench.bench "
                      "and jacbench.reports (`from jacbench import strategies`); the command line "
                      "is `jacbench` or `python -m jacbench`")
import importlib

from .agreement import max_error, tolerance
from .problem import Layer, ModelSpec, Problem
from .quantities import NTK_MODES, QUANTITIES, noise_floor, quantity, reference
from .names import UnknownName
from .registry import Strategy, get, register, strategies

# One module per family of strategies and framework; importing one registers its strategies.
# JAX and peer-library modules register their strategies even when the library is missing,
# and the strategies then report themselves not applicable with the reason.
IMPLEMENTATIONS = (
    "torch_jacobians", "torch_diagonals", "torch_hessians", "torch_products", "torch_ntk",
    "jax_jacobians", "jax_diagonals", "jax_hessians", "jax_products", "jax_ntk",
    "torch_structured", "torch_per_sample", "jax_structured", "torch_forward_tangent",
    "torch_hessian_backprop",
    "peer_backpack", "peer_curvlinops", "peer_neural_tangents",
    "torch_compiled",  # after the eager strategies it compiles
    "torch_auto",  # last: it picks among the strategies registered before it
)
for _name in IMPLEMENTATIONS:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["Layer", "ModelSpec", "NTK_MODES", "Problem", "QUANTITIES", "Strategy",
           "UnknownName", "get", "max_error", "noise_floor", "quantity", "reference", "register",
           "strategies", "tolerance"]
