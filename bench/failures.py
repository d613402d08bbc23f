"""What a failure is: out of memory or an error, in one line; and, for a user's model, whether
it is out of reach of a function transform (then not applicable, not a bug). The harness and
the isolated children use these alike."""
from __future__ import annotations

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory",
                "resource_exhausted", "failed to allocate")


def classify(exc: BaseException) -> str:
    """'oom' for an exception that means memory ran out, else 'error'."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    text = str(exc).lower()
    return "oom" if any(m in text for m in _OOM_MARKERS) else "error"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The exception as 'Type: first line of its message', short enough for a table cell."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


# What torch.func / JAX transforms say when a model is out of their reach (not a bug of the
# strategy): data-dependent control flow, .item(), ops without forward-mode or batching rules.
_TRANSFORM_LIMITS = (
    ("data-dependent control flow", "data-dependent control flow under vmap"),
    ("calling .item()", ".item() under vmap"),
    ("dynamic shape", "an op with a data-dependent output shape under vmap"),
    ("trying to use forward ad with", "an op without a forward-mode (jvp) rule"),
    ("not implemented for forward ad", "an op without a forward-mode (jvp) rule"),
    ("batching rule not implemented", "an op without a vmap batching rule"),
    ("is not possible because there exists a tensor", "an in-place op on a non-batched "
                                                      "tensor under vmap"),
    ("doesn't match the broadcast shape", "an in-place write into a tensor vmap does not batch, "
                                          "e.g. an RNN's initial state"),
    ("is not implemented", "an op without the derivative rule this strategy needs (e.g. a "
                           "double backward)"),
    ("has no batchgrad rule", "a module that BackPACK's BatchGrad has no rule for"),
    ("is a view and is being modified inplace", "an in-place op on a module's output, which "
                                                "backward hooks (BackPACK's) cannot follow"),
    ("tracerboolconversionerror", "data-dependent control flow under jit/vmap"),
    ("concretizationtypeerror", "data-dependent control flow under jit/vmap"),
)


def transform_limit(exc: BaseException) -> str | None:
    """Why a model is out of reach of the strategy's function transform, or None. Asked for
    user models only: on the suite's own models every strategy is meant to work, and such a
    failure is a bug to be seen as an error."""
    text = f"{type(exc).__name__}: {exc}".lower()
    for marker, why in _TRANSFORM_LIMITS:
        if marker in text:
            return why
    return None
