"""The registry: coverage, look-ups, error messages, and a planted wrong strategy being caught."""
import pytest
from torch.func import jacrev

from jacbench import strategies
from jacbench.bench.problems import problems
from conftest import assert_agrees, cases
from jacbench.strategies.names import UnknownName
from jacbench.strategies.registry import Strategy, add, always, remove
from jacbench.strategies.torch_model import torch_view

MATRIX_FREE = ("jvp", "vjp")


@pytest.mark.parametrize("quantity", sorted(strategies.QUANTITIES))
def test_each_quantity_has_enough_exact_torch_strategies(quantity):
    exact = strategies.strategies(quantity, framework="torch", exact=True)
    assert len(exact) >= (1 if quantity in MATRIX_FREE else 3), [s.name for s in exact]


def test_every_strategy_is_documented_and_checked_somewhere():
    checked = {(c.values[0].quantity, c.values[0].name) for c in cases(exact=None)}
    # the compiled twins: each on one test problem in test_compiled.py
    checked |= {(s.quantity, s.name) for s in strategies.strategies(compiled=True)}
    for s in strategies.strategies():
        assert 10 < len(s.idea) < 400, f"{s.name}: the docstring states idea and cost briefly"
        if s.framework == "torch":
            assert (s.quantity, s.name) in checked, f"{s.quantity}/{s.name} applies to no test problem"


def test_lookups_by_quantity_framework_and_name():
    s = strategies.get("jacobian", "torch.jacrev")
    assert (s.quantity, s.name, s.framework, s.exact) == ("jacobian", "torch.jacrev", "torch", True)
    assert all(s.framework == "torch" for s in strategies.strategies(framework="torch"))
    assert [s.quantity for s in strategies.strategies(name="torch.jacrev")] == ["jacobian"]


@pytest.mark.parametrize("call,expected", [
    (lambda: strategies.get("jacobain", "torch.jacrev"), "did you mean: jacobian"),
    (lambda: strategies.get("jacobian", "torch.jacrevv"), "did you mean: torch.jacrev"),
    (lambda: strategies.strategies(framework="pytorch"), "did you mean: torch"),
    (lambda: strategies.quantity("hesian"), "did you mean: hessian"),
    (lambda: problems("ntk", "fast"), "ladder 'fast'"),
])
def test_unknown_names_list_close_matches(call, expected):
    with pytest.raises(UnknownName, match=expected):
        call()


def test_strategy_refuses_a_problem_of_another_quantity():
    s = strategies.get("jacobian", "torch.jacrev")
    assert "computes jacobian" in s.not_applicable(problems("hessian", "test")[0])


def _first_sample_everywhere(problem, device, dtype):
    """Planted bug: every sample gets the first sample's Jacobian. Cost: as jacrev."""
    v = torch_view(problem, device, dtype)
    # A plausible indexing bug that keeps the shape right, so only the values can catch it.
    return lambda: jacrev(lambda x: v.fb(x[None])[0])(v.data["X"][0])[None].expand(
        v.data["X"].shape[0], -1, -1)


def test_a_planted_wrong_strategy_fails_the_agreement_check():
    bad = Strategy("batch_jacobian", "torch.planted_wrong", "torch", True,
                   _first_sample_everywhere, always)
    add(bad)
    try:
        planted = [c.values for c in cases(framework="torch")
                   if c.values[0].name == "torch.planted_wrong"]
        assert planted, "the planted strategy is picked up by the same case list as the real ones"
        for strategy, problem in planted:
            with pytest.raises(AssertionError, match="torch.planted_wrong"):
                assert_agrees(strategy, problem, "float64")
    finally:
        remove("batch_jacobian", "torch.planted_wrong")
    assert "torch.planted_wrong" not in [s.name for s in strategies.strategies("batch_jacobian")]
