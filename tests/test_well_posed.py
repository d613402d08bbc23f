"""Built-in problems sit off the kinks of their ReLUs (bench.well_posed): a sample whose ReLU
input is within float32 rounding of zero is redrawn, and only that sample."""
import numpy as np
import pytest

from jacbench import strategies

from jacbench.bench.problems import problems
from jacbench.bench.well_posed import off_kinks, on_kink
from jacbench.strategies.problem import Layer, ModelSpec


def _relu_net():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 2)), rng.normal(size=3)
    return ModelSpec((Layer("linear", {"weight": w, "bias": b}), Layer("relu"),
                      Layer("linear", {"weight": rng.normal(size=(1, 3)), "bias": np.zeros(1)})),
                     (2,), 1)


def _on_the_kink(spec):
    """An input whose first hidden unit is exactly at zero: w0 . x + b0 = 0."""
    w, b = spec.layers[0].params["weight"], spec.layers[0].params["bias"]
    x = np.array([1.0, 0.0])
    x[1] = -(b[0] + w[0, 0] * x[0]) / w[0, 1]
    return x


def test_a_sample_on_a_kink_is_found_and_only_it_is_redrawn():
    spec = _relu_net()
    X = np.random.default_rng(1).normal(size=(4, 2))
    X[2] = _on_the_kink(spec)
    assert on_kink(spec, X).tolist() == [False, False, True, False]
    rng = np.random.default_rng(2)
    out = off_kinks(spec, "ggn_vp", {"X": X, "v": np.ones(3)},
                    lambda shape: rng.normal(size=shape), "t")
    assert not on_kink(spec, out["X"]).any()
    assert np.array_equal(np.delete(out["X"], 2, axis=0), np.delete(X, 2, axis=0))
    assert not np.array_equal(out["X"][2], X[2])
    assert out["v"] is not None and np.array_equal(out["v"], np.ones(3))  # not a model input


def test_a_one_input_problem_is_redrawn_whole_and_a_hopeless_one_rejected():
    spec = _relu_net()
    x = _on_the_kink(spec)
    rng = np.random.default_rng(3)
    out = off_kinks(spec, "jacobian", {"x": x}, lambda shape: rng.normal(size=shape), "t")
    assert out["x"].shape == x.shape and not on_kink(spec, out["x"][None]).any()
    with pytest.raises(ValueError, match="ReLU kink"):
        off_kinks(spec, "jacobian", {"x": x}, lambda shape: x.reshape(shape), "t")  # the same


@pytest.mark.parametrize("ladder", ["test", "quick", "full"])
def test_built_in_problems_are_off_their_kinks(ladder):
    checked = 0
    for p in problems(None, ladder):
        if not any(layer.kind == "relu" for layer in p.spec.layers):
            continue
        for key, x in p.data.items():
            if key in strategies.quantity(p.quantity).views:
                assert not on_kink(p.spec, x.reshape(-1, *p.spec.in_shape)).any(), (p, key)
                checked += 1
    assert checked > 0
