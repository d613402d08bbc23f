"""The CUDA path of every exact PyTorch strategy: same agreement rule, on the GPU.

Skipped with a reason on machines without CUDA (CI never has one)."""
import pytest
import torch

from conftest import assert_agrees, cases

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("strategy,problem", cases(framework="torch"))
def test_exact_torch_strategy_agrees_on_cuda(strategy, problem):
    assert_agrees(strategy, problem, "float32", device="cuda")
    assert_agrees(strategy, problem, "float64", device="cuda")


def test_results_live_on_the_gpu():
    from jacbench import strategies
    from jacbench.bench.problems import problems

    p = problems("jacobian", "test")[0]
    out = strategies.get("jacobian", "torch.jacrev").prepare(p, "cuda", "float32")()
    assert out.is_cuda
