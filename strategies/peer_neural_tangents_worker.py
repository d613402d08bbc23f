"""The neural-tangents side of `strategies.peer_neural_tangents`, run by the Python of the
separate environment (.venv-nt, made by `make peers`): neural-tangents 0.6.5 runs only on
JAX 0.4.23, so this script imports nothing of jacbench and rebuilds the MLP from its weights.

    .venv-nt/bin/python peer_neural_tangents_worker.py PROBLEM.npz RESULT_BUFFER

PROBLEM.npz: `layers` (the layer kinds, e.g. "linear tanh linear"), `mode` (full, trace,
diagonal), `dtype`, X1, X2 and per linear layer i the arrays `weight_i` (out, in) and
`bias_i` (absent without bias). The NTK is written into RESULT_BUFFER, a file the parent maps
(np.memmap of the result's shape and dtype), so results do not travel through the pipe.

Protocol, one line per command on stdin, one reply line on stdout:
    run       -> "ok CPU_S": one NTK computed and copied into the buffer; CPU_S is this process's
                 CPU time so far (time.process_time), so a parent timing CPU time counts ours
    noop      -> "ok CPU_S": nothing computed (the pipe round trip alone)
    time N    -> "ok CPU_S T1 T2 ...": N calls timed here, wall seconds each (block_until_ready)
    quit or end of input -> exit
An error replies "error MESSAGE" and the process goes on.
"""
import os
import sys
import time

# The layer kinds this worker rebuilds. It cannot import jacbench (its own environment), so this
# is the one per-kind table outside strategies.layer_kinds: the kinds there that support
# "neural_tangents" are exactly these (tests/test_layer_kinds.py checks it).
KINDS = ("linear", "tanh", "relu")


def _flags_for_one_thread() -> None:
    # XLA reads its flags when the backend starts; a parent pinned to one CPU gets one thread.
    if len(os.sched_getaffinity(0)) == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1").strip()


def _apply_fn(kinds: list, jnp):
    """f(params, x) of the MLP: params[i] = (weight (in, out), bias or None) of the i-th
    linear layer, y = x W + b: torch.nn.Linear with its weight transposed, the layout of
    neural-tangents' own stax.Dense. Written x @ W.T, with torch's layout, neural-tangents'
    structured rules do not see through the transpose: 1.27 s instead of 12.6 ms at N=64,
    W=256."""
    acts = {"tanh": jnp.tanh, "relu": lambda x: jnp.maximum(x, 0)}

    def apply(params, x):
        i = 0
        for kind in kinds:
            if kind == "linear":
                w, b = params[i]
                x = x @ w if b is None else x @ w + b
                i += 1
            else:
                x = acts[kind](x)
        return x
    return apply


def _build(problem_path: str):
    import numpy as np
    data = np.load(problem_path)
    dtype = str(data["dtype"])
    import jax
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import neural_tangents as nt

    kinds = str(data["layers"]).split()
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"layer kinds {unknown}: the worker builds {'/'.join(KINDS)} MLPs only")
    n_linear = kinds.count("linear")
    params = [(jnp.asarray(data[f"weight_{i}"].T, dtype),
               jnp.asarray(data[f"bias_{i}"], dtype) if f"bias_{i}" in data else None)
              for i in range(n_linear)]
    x1, x2 = jnp.asarray(data["X1"], dtype), jnp.asarray(data["X2"], dtype)
    axes = {"full": dict(trace_axes=()), "trace": dict(trace_axes=(-1,)),
            "diagonal": dict(trace_axes=(), diagonal_axes=(-1,))}
    mode = str(data["mode"])
    ntk_fn = nt.empirical_ntk_fn(_apply_fn(kinds, jnp), vmap_axes=0,
                                 implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES,
                                 **axes[mode])
    # neural-tangents averages over trace_axes; the suite's trace is the sum over outputs.
    scale = params[-1][0].shape[1] if mode == "trace" else 1
    fn = jax.jit(lambda a, b, p: ntk_fn(a, b, p) * scale)

    def ntk():
        return fn(x1, x2, params).block_until_ready()
    return ntk


def main(problem_path: str, buffer_path: str) -> None:
    import numpy as np
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter on stdout would corrupt the protocol
    _flags_for_one_thread()
    ntk = _build(problem_path)
    first = np.asarray(ntk())  # compiles here, before the parent times anything
    buffer = np.memmap(buffer_path, dtype=first.dtype, mode="r+", shape=first.shape)
    buffer[...] = first
    out.write(f"ready {' '.join(map(str, first.shape))} {first.dtype}\n")
    for line in sys.stdin:
        cmd = line.split()
        try:
            if not cmd or cmd[0] == "quit":
                break
            if cmd[0] == "run":
                buffer[...] = ntk()
                reply = ""
            elif cmd[0] == "noop":
                reply = ""
            elif cmd[0] == "time":
                times = []
                for _ in range(int(cmd[1])):
                    t0 = time.perf_counter()
                    ntk()
                    times.append(time.perf_counter() - t0)
                reply = " " + " ".join(f"{t:.9g}" for t in times)
            else:
                raise ValueError(f"unknown command {cmd[0]!r}")
            out.write(f"ok {time.process_time():.9f}{reply}\n")
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            out.write(f"error {type(exc).__name__}: {' '.join(str(exc).split())}\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
