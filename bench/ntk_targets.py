"""Issue 18's target table: the full NTK of the ntk_targets MLPs (32->W->W->10, float32) by
neural-tangents' STRUCTURED_DERIVATIVES (when .venv-nt exists), jax.structured (jitted) and
torch.structured, timed side by side on one pinned CPU thread, against the bound that the
method's matrix products set at the machine's measured single-core sgemm rate.

    python -m jacbench.bench.ntk_targets [--cpu 1] [--budget 10] [--sizes 64x256,128x512]

Per size, every callable (the three strategies, and 1024x1024 float32 matrix products in torch
and in jitted JAX for the rate) runs in the same shuffled rounds (bench.paired), timed in CPU
time, the neural-tangents worker's included (bench.paired.cpu_clock). The rate is the faster
of the two matrix products, measured in the same rounds as the strategies. Before timing, the
float32 results are checked against jax.structured in float64 (which the tests check against
the float64 reference; the reference itself needs the dense Jacobian, 5.8 GB at N=128, W=512).
neural-tangents' time as its worker measures it alone (wall time, no pipe) is printed apart.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

SIZES = ((64, 256), (128, 512), (64, 1024))
GEMM_N = 1024


def structured_flops(spec, b1: int, b2: int) -> dict:
    """Matrix-product FLOPs of the structured full NTK of an MLP (linear layers d_in -> d_out,
    m outputs), both batches: the forward, the backward of the m cotangents per sample (the
    first layer's input cotangents are not needed; the last layer's output cotangents are the
    identity, so its input cotangents are its weight rows, no product), and per layer the
    Grams X1 X2^T (B1 B2 d_in) and G1 G2^T (B1 B2 m^2 d_out; none for the last layer, whose
    G1 G2^T is the identity). Elementwise work (activations, the Hadamard products) is left
    out: it is O(B1 B2 m^2) per layer, under 1% here."""
    dims = [(layer.params["weight"].shape[1], layer.params["weight"].shape[0])
            for layer in spec.layers if layer.kind == "linear"]
    m, b = spec.out_dim, b1 + b2
    forward = sum(2 * b * i * o for i, o in dims)
    backward = sum(2 * b * m * i * o for i, o in dims[1:-1])
    gram = sum(2 * b1 * b2 * i for i, _ in dims) + sum(2 * b1 * b2 * m * m * o
                                                       for _, o in dims[:-1])
    return {"forward": forward, "backward": backward, "gram": gram,
            "total": forward + backward + gram}


def _gemms():
    """name -> (callable, FLOPs): GEMM_N^2 float32 matrix products, torch and jitted JAX."""
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((GEMM_N, GEMM_N)).astype(np.float32) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    jmm = jax.jit(jnp.matmul)
    flops = 2 * GEMM_N ** 3
    return {"sgemm torch": (lambda: torch.mm(ta, tb), flops),
            "sgemm jax": (lambda: jmm(ja, jb), flops)}


def _check(fns: dict, problem) -> dict:
    """name -> max-norm relative error of its float32 NTK against jax.structured in float64."""
    from jacbench.strategies import get
    from jacbench.strategies.agreement import max_error, to_numpy

    truth = to_numpy(get("ntk", "jax.structured_jit").prepare(problem, "cpu", "float64")())
    return {name: max_error(to_numpy(fn()), truth) for name, fn in fns.items()}


def one_size(problem, budget_s: float, worker_calls: int = 10) -> dict:
    from jacbench.strategies import get

    from .harness import force
    from .paired import Rounds, cpu_clock, ratio_ci, run_rounds, summarize

    names = ["neural_tangents.structured", "jax.structured_jit", "torch.structured"]
    fns, skipped = {}, {}
    for name in names:
        s = get("ntk", name)
        why = s.not_applicable(problem)
        if why:
            skipped[name] = why
            continue
        fns[name] = s.prepare(problem, "cpu", "float32")
        force(fns[name]())  # compile and warm up outside the rounds
    errors = _check(fns, problem)
    gemms = _gemms()
    for fn, _ in gemms.values():
        force(fn())
    # Every callable in every round (no fair-share periods): a speed-up is a ratio over the
    # rounds two strategies share, and with periods of 2 and 3 they would share a third.
    timed = run_rounds({**fns, **{k: fn for k, (fn, _) in gemms.items()}},
                       Rounds(budget_s=budget_s, fair_share=1e9), clock=cpu_clock(fns))
    stats = summarize(timed, list(fns))
    rate = max(flops / stats[k]["median_s"] for k, (_, flops) in gemms.items())
    flops = structured_flops(problem.spec, problem.data["X1"].shape[0],
                             problem.data["X2"].shape[0])
    bound_s = flops["total"] / rate
    row = {"flops": flops, "rate": rate, "bound_s": bound_s, "skipped": skipped,
           "errors": errors, "rounds": min(s["rounds"] for s in stats.values()),
           "gemm_s": {k: stats[k]["median_s"] for k in gemms}, "strategies": {}}
    nt = names[0]
    for name in fns:
        entry = {"median_s": stats[name]["median_s"], "to_bound": stats[name]["median_s"] / bound_s}
        if nt in fns and name != nt:
            entry["speedup_vs_nt"] = ratio_ci(timed[nt]["times"], timed[name]["times"])[:3]
        row["strategies"][name] = entry
    if nt in fns:  # neural-tangents alone in its process: the pipe and result copy left out
        row["nt_in_worker_s"] = float(np.median([float(t) for t in
                                                 fns[nt].worker.call(f"time {worker_calls}")]))
        row["nt_noop_s"] = fns[nt].noop_s
    return row


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def table(rows: list) -> str:
    """The rows as a Markdown table, then one line per size on the checks."""
    head = ("| N, W | neural-tangents ms | jax.structured ms | jax speed-up | torch.structured ms "
            "| torch speed-up | GFLOP | sgemm GFLOP/s | bound ms | nt / bound | jax / bound "
            "| torch / bound |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    notes = []
    for (n, w), r in rows:
        s = r["strategies"]

        def col(name, key="median_s", fmt=_ms):
            return fmt(s[name][key]) if name in s else "-"

        def speedup(name):
            if name not in s or "speedup_vs_nt" not in s[name]:
                return "-"
            x, lo, hi = s[name]["speedup_vs_nt"]
            return f"{x:.2f}x [{lo:.2f}, {hi:.2f}]"
        ratio = lambda x: f"{x:.2f}"  # noqa: E731
        nt, jx, tc = "neural_tangents.structured", "jax.structured_jit", "torch.structured"
        lines.append(f"| {n}, {w} | {col(nt)} | {col(jx)} | {speedup(jx)} | {col(tc)} | "
                     f"{speedup(tc)} | {r['flops']['total'] / 1e9:.2f} | {r['rate'] / 1e9:.1f} | "
                     f"{_ms(r['bound_s'])} | {col(nt, 'to_bound', ratio)} | "
                     f"{col(jx, 'to_bound', ratio)} | {col(tc, 'to_bound', ratio)} |")
        f = r["flops"]
        note = (f"N={n}, W={w}: {r['rounds']}+ rounds; GFLOP forward {f['forward'] / 1e9:.3f}, "
                f"backward {f['backward'] / 1e9:.3f}, Gram {f['gram'] / 1e9:.3f}; sgemm ms "
                + ", ".join(f"{k.split()[1]} {_ms(v)}" for k, v in r["gemm_s"].items())
                + "; max error vs jax.structured float64: "
                + ", ".join(f"{k} {v:.1e}" for k, v in r["errors"].items()))
        if "nt_in_worker_s" in r:
            note += (f"; neural-tangents alone in its worker (wall) {_ms(r['nt_in_worker_s'])} ms,"
                     f" pipe round trip {r['nt_noop_s'] * 1e6:.0f} us")
        note += "".join(f"; {k} not run: {v}" for k, v in r["skipped"].items())
        notes.append(note)
    return "\n".join(lines + [""] + notes)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", type=int, default=None,
                   help="the CPU to pin to (default: the last this process may use)")
    p.add_argument("--budget", type=float, default=10.0, help="seconds of rounds per size")
    p.add_argument("--sizes", default=",".join(f"{n}x{w}" for n, w in SIZES),
                   help="N x W pairs, e.g. 64x256,128x512")
    args = p.parse_args(argv)
    from .harness import pin_threads  # before JAX starts: XLA reads its flags then

    cpu = args.cpu if args.cpu is not None else sorted(os.sched_getaffinity(0))[-1]
    pin_threads(1, "cpu", cpus=[cpu])
    from .problems import problems

    by_size = {(p.sizes["B1"], p.sizes["width"]): p
               for p in problems("ntk", "full", family="ntk_targets") if p.mode == "full"}
    wanted = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = []
    for size in wanted:
        if size not in by_size:
            raise SystemExit(f"no ntk_targets size N={size[0]}, W={size[1]}; sizes: "
                             f"{', '.join(f'{n}x{w}' for n, w in by_size)}")
        rows.append((size, one_size(by_size[size], args.budget)))
        print(f"N={size[0]}, W={size[1]} done", flush=True)
    print(f"pinned to CPU {cpu}, one thread; CPU time per call, median over rounds; speed-up = "
          "neural-tangents / strategy, 95% bootstrap interval over rounds")
    print(table(rows))


if __name__ == "__main__":
    main()
