"""Random, gradient, SNIP and Taylor scores and the sparsity report, in both back ends.

Oracles: central differences of a float64 NumPy forward pass (the gradient), a
multiplicative gate on every weight differentiated by autograd (SNIP), per-batch NumPy sums
(Taylor), and the other back end (parity).
"""

import numpy as np
import pytest
import torch

from companion import tensorflow as ctf
from companion import torch as ct
from numpy_reference import (assert_arrays_close, assert_weights_equal, central_differences,
                             cross_entropy, mlp_forward)

SIZES = [5, 7, 3]


def small_problem(seed: int = 0, n: int = 23):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, SIZES[0])).astype(np.float32), rng.integers(0, 3, n)


def canonical(backend, model, tensors):
    return backend.to_canonical(model, tensors)


def numpy_gradient(weights, x, y, act="tanh"):
    return central_differences(
        lambda w: cross_entropy(mlp_forward(w, x, act), y),
        [w.astype(np.float64) for w in weights])


def test_gradient_scores_are_the_absolute_full_data_gradient(backend):
    x, y = small_problem()
    model = backend.mlp(SIZES, activation="tanh", seed=1)
    expected = [np.abs(g) for g in numpy_gradient(backend.get_weights(model), x, y)]
    scores = canonical(backend, model, backend.gradient_scores(model, x, y, batch_size=5))
    for actual, desired in zip(scores, expected):
        assert_arrays_close(actual, desired, rtol=1e-4, atol_factor=1e-4)


def test_gradient_scores_do_not_depend_on_batch_size(backend):
    x, y = small_problem()
    model = backend.mlp(SIZES, seed=2)
    whole = canonical(backend, model, backend.gradient_scores(model, x, y, batch_size=len(x)))
    batched = canonical(backend, model, backend.gradient_scores(model, x, y, batch_size=4))
    for a, b in zip(whole, batched):
        assert_arrays_close(a, b)


def test_snip_scores_equal_gate_derivatives_at_one():
    """Lee et al.'s definition: |dL/dc| at c = 1 for w -> c * w, by autograd on the gate."""
    x, y = small_problem(3)
    model = ct.mlp(SIZES, activation="tanh", seed=3)
    params = dict(model.named_parameters())
    gates = {name: torch.ones_like(p, requires_grad=True) for name, p in params.items()}
    gated = {name: p.detach() * gates[name] for name, p in params.items()}
    output = torch.func.functional_call(model, gated, (torch.as_tensor(x),))
    loss = torch.nn.functional.cross_entropy(output, torch.as_tensor(y))
    expected = torch.autograd.grad(loss, list(gates.values()))
    for actual, desired in zip(ct.snip_scores(model, x, y, batch_size=6), expected):
        assert_arrays_close(actual.numpy(), desired.abs().numpy())


def test_taylor_scores_average_squared_batch_estimates(backend):
    x, y = small_problem(4)
    model = backend.mlp(SIZES, activation="tanh", seed=4)
    weights = backend.get_weights(model)
    batches = [slice(0, 10), slice(10, 20), slice(20, 23)]
    expected = [np.zeros_like(w, dtype=np.float64) for w in weights]
    for batch in batches:
        grads = numpy_gradient(weights, x[batch], y[batch])
        expected = [e + (g * w) ** 2 / len(batches) for e, g, w in zip(expected, grads, weights)]
    scores = canonical(backend, model, backend.taylor_scores(model, x, y, batch_size=10))
    for actual, desired in zip(scores, expected):
        assert_arrays_close(actual, desired, rtol=1e-3, atol_factor=1e-3)


def test_random_scores_are_uniform_and_seeded(backend):
    model = backend.mlp([40, 300, 10], seed=5)
    first = canonical(backend, model, backend.random_scores(model, seed=7))
    again = canonical(backend, model, backend.random_scores(model, seed=7))
    other = canonical(backend, model, backend.random_scores(model, seed=8))
    flat = np.concatenate([s.ravel() for s in first])
    assert flat.min() >= 0.0 and flat.max() < 1.0
    assert abs(flat.mean() - 0.5) < 0.01  # 15k uniform draws: standard error 0.0024
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("name", ["random", "magnitude", "gradient", "snip", "taylor"])
def test_scores_and_masks_agree_across_back_ends(name):
    x, y = small_problem(6, n=40)
    torch_model, tf_model = ct.mlp(SIZES, seed=6), ctf.mlp(SIZES, seed=6)
    results = []
    for backend, model in ((ct, torch_model), (ctf, tf_model)):
        score_function = getattr(backend, f"{name}_scores")
        if name == "random":
            scores = score_function(model, seed=3)
        elif name == "magnitude":
            scores = score_function(model)
        else:
            scores = score_function(model, x, y, batch_size=16)
        masks = backend.masks_from_scores(model, scores, 0.6)
        results.append((canonical(backend, model, scores), canonical(backend, model, masks)))
    (torch_scores, torch_masks), (tf_scores, tf_masks) = results
    for a, b in zip(torch_scores, tf_scores):
        assert_arrays_close(a, b, rtol=1e-4, atol_factor=1e-5)
    for a, b in zip(torch_masks, tf_masks):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_scores_reject_bad_input_and_change_nothing(backend):
    x, y = small_problem()
    model = backend.mlp(SIZES, seed=8)
    before = backend.get_weights(model)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        backend.gradient_scores(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match="unknown loss"):
        backend.snip_scores(model, x, y, loss="hinge")
    with pytest.raises(ValueError, match="same number of examples"):
        backend.taylor_scores(model, x, y[:-1])
    assert_weights_equal(before, backend.get_weights(model))


def test_sparsity_report_counts_exact_zeros(backend):
    model = backend.mlp([4, 2], activation="linear")
    weight = np.array([[0.5, 0.0, 0.1, 2.0], [0.0, 4.0, 0.0, 0.3]], np.float32)
    backend.set_weights(model, [weight, np.array([0.0, 1.0], np.float32)])
    report = backend.sparsity_report(model)
    assert [(r.name, r.zeros, r.size) for r in report.rows] == [
        ("dense0.weight", 3, 8), ("dense0.bias", 1, 2)]
    assert report.weights == 3 / 8 and report.total == 4 / 10
    assert str(report).splitlines() == [
        "parameter            shape   zeros    size  sparsity",
        "dense0.weight          2x4       3       8    37.50%",
        "dense0.bias              2       1       2    50.00%",
        "weights                          3       8    37.50%",
        "total                            4      10    40.00%",
    ]


def test_sparsity_report_after_global_pruning(backend):
    model = backend.mlp([40, 300, 100, 10], seed=9)
    backend.prune(model, backend.magnitude_scores(model), 0.9)
    report = backend.sparsity_report(model)
    weights = sum(r.size for r in report.rows if len(r.shape) == 2)
    assert report.weights == round(0.9 * weights) / weights
