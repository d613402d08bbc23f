"""torch.structured against its matrix-product bound on the ntk_targets MLPs (32->W->W->10, full
NTK, float32), on one thread: the time of one NTK, the bound (the method's FLOP count at this
machine's single-thread sgemm rate, strategies.flops) and their ratio. Pin it to one core:

    taskset -c 1 .venv/bin/python examples/structured_bound.py [repeats]

Times are process CPU time, median of `repeats` (default 7) after one untimed call.
"""
from __future__ import annotations

import sys
import time

import torch

from jacbench import strategies
from jacbench.bench.problems import problems
from jacbench.strategies.flops import matmul_rate


def main(repeats: int = 7) -> None:
    torch.set_num_threads(1)
    rate = matmul_rate(torch.float32)
    print(f"sgemm 1024 x 1024, one thread: {rate / 1e9:.1f} GFLOP/s")
    structured = strategies.get("ntk", "torch.structured")
    for problem in problems("ntk", "full", "ntk_targets"):
        if problem.mode != "full":
            continue
        run = structured.prepare(problem, "cpu", "float32")
        run()
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            run()
            times.append(time.process_time() - t0)
        t, bound = sorted(times)[len(times) // 2], run.bound.bound_s()
        s = problem.sizes
        print(f"N={s['B1']} W={s['width']}: {t * 1e3:.1f} ms, bound {bound * 1e3:.1f} ms "
              f"({run.bound.flops / 1e9:.2f} GFLOP), ratio {t / bound:.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
