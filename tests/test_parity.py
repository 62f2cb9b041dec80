"""Cross-framework parity: a PyTorch model and its TensorFlow twin (weights copied through
the canonical layout) give the same outputs, losses, gradients, norms and training runs.

Tolerances. Both frameworks compute in float32 (unit roundoff 6e-8) but order their sums
differently, so they agree to rounding, not bit for bit. Every comparison uses rtol 1e-5
plus atol = 1e-6 x the largest magnitude of the compared quantity (numpy_reference.
ATOL_FACTOR): entries that are sums cancelling to ~0 (a bias gradient summing residuals of
both signs) carry the absolute rounding error of their largest terms, i.e. some ulps of the
largest entry, and cannot meet a relative tolerance. Measured differences are below
5e-7 x that scale for these models (seeds 0-9).
"""

import numpy as np
import pytest

from companion import data
from companion import tensorflow as ctf
from companion import torch as ct
from numpy_reference import assert_arrays_close, forward, scalar

MLP_SIZES = [40, 64, 32, 10]


def _twins(build, **kwargs):
    """A PyTorch model (seed 1) and a TensorFlow model built from a *different* seed, then
    given the PyTorch weights through get_weights / set_weights."""
    torch_model = getattr(ct, build)(seed=1, **kwargs)
    tf_model = getattr(ctf, build)(seed=2, **kwargs)
    weights = ct.get_weights(torch_model)
    assert not np.array_equal(ctf.get_weights(tf_model)[0], weights[0])
    ctf.set_weights(tf_model, weights)
    return torch_model, tf_model


def _mlp_data(rng, n=64):
    return (rng.standard_normal((n, MLP_SIZES[0])).astype(np.float32),
            rng.integers(0, MLP_SIZES[-1], n))


def _rnn_data(rng, n=32, steps=20):
    return (rng.standard_normal((n, steps, 2)).astype(np.float32),
            rng.standard_normal((n, 1)).astype(np.float32))


CASES = [
    pytest.param("mlp", dict(sizes=MLP_SIZES, activation="relu"), "cross_entropy", id="mlp-relu"),
    pytest.param("mlp", dict(sizes=MLP_SIZES, activation="tanh"), "cross_entropy", id="mlp-tanh"),
    pytest.param("rnn", dict(input_size=2, hidden_size=16, output_size=1, nonlinearity="tanh",
                             gain=1.2), "mse", id="rnn-tanh"),
    pytest.param("rnn", dict(input_size=2, hidden_size=16, output_size=1, nonlinearity="relu",
                             gain=1.2), "mse", id="rnn-relu"),
]


@pytest.mark.parametrize("build, kwargs, loss", CASES)
def test_outputs_losses_gradients_and_norms_agree(rng, build, kwargs, loss):
    torch_model, tf_model = _twins(build, **kwargs)
    x, y = _mlp_data(rng) if build == "mlp" else _rnn_data(rng)

    assert_arrays_close([forward(ctf, tf_model, x)], [forward(ct, torch_model, x)],
                        what="outputs")
    assert scalar(ctf.loss_value(tf_model, x, y, loss)) == pytest.approx(
        scalar(ct.loss_value(torch_model, x, y, loss)), rel=1e-5)
    torch_eval = ct.evaluate(torch_model, x, y, loss, batch_size=10)
    tf_eval = ctf.evaluate(tf_model, x, y, loss, batch_size=10)
    assert tf_eval["loss"] == pytest.approx(torch_eval["loss"], rel=1e-5)
    assert tf_eval.get("accuracy") == torch_eval.get("accuracy")

    torch_grads = ct.gradients(torch_model, x, y, loss)
    tf_grads = ctf.gradients(tf_model, x, y, loss)
    assert_arrays_close(ctf.to_canonical(tf_model, tf_grads),
                        ct.to_canonical(torch_model, torch_grads), what="gradients")

    for p in (1.0, 2.0, np.inf):
        assert ctf.global_norm(tf_grads, p) == pytest.approx(ct.global_norm(torch_grads, p),
                                                             rel=1e-5)
        torch_layers = ct.layer_norms(torch_model, torch_grads, p)
        tf_layers = ctf.layer_norms(tf_model, tf_grads, p)
        assert list(tf_layers) == list(torch_layers)
        for name in torch_layers:
            assert tf_layers[name] == pytest.approx(torch_layers[name], rel=1e-5)


def test_canonical_round_trip_between_frameworks(rng):
    """TensorFlow -> canonical -> PyTorch -> canonical is the identity, bit for bit."""
    tf_model = ctf.rnn(3, 5, 2, seed=4)
    weights = [rng.standard_normal(w.shape).astype(np.float32)
               for w in ctf.get_weights(tf_model)]
    ctf.set_weights(tf_model, weights)
    torch_model = ct.rnn(3, 5, 2, seed=9)
    ct.set_weights(torch_model, ctf.get_weights(tf_model))
    for a, b in zip(ct.get_weights(torch_model), weights):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def digits_subset():
    d = data.load_digits()
    return d.x_train[:320], d.y_train[:320]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_training_runs_agree(digits_subset, activation):
    """Two epochs of momentum SGD: same minibatches, same updates, to float32 rounding.

    Differences enter at ~1e-7 relative per step and are carried along (not amplified
    much on this well-conditioned problem: 20 steps, lr 0.05); measured, the histories
    agree to ~2e-7 and the weights to ~3e-7 x their scale, so the common rtol 1e-5 /
    atol 1e-6 x scale applies.
    """
    x, y = digits_subset
    torch_model, tf_model = _twins("mlp", sizes=[64, 32, 10], activation=activation)
    kwargs = dict(epochs=2, lr=0.05, batch_size=32, momentum=0.9, seed=11, progress=False)
    torch_history = ct.train(torch_model, x, y, **kwargs)
    tf_history = ctf.train(tf_model, x, y, **kwargs)
    assert len(torch_history) == len(tf_history) == 20
    np.testing.assert_allclose(tf_history.loss, torch_history.loss, rtol=1e-5)
    np.testing.assert_allclose(tf_history.grad_norm, torch_history.grad_norm, rtol=1e-5)
    assert tf_history.accuracy == torch_history.accuracy
    assert torch_history.loss[-1] < 0.5 * torch_history.loss[0]  # it did train
    assert_arrays_close(ctf.get_weights(tf_model), ct.get_weights(torch_model),
                        what="weights after training")


def test_rnn_training_runs_agree():
    d = data.adding_problem(n_train=64, n_test=1, seq_len=10, seed=0)
    torch_model, tf_model = _twins("rnn", input_size=2, hidden_size=8, output_size=1)
    kwargs = dict(epochs=2, lr=0.05, batch_size=16, momentum=0.5, loss="mse", seed=3,
                  progress=False)
    torch_history = ct.train(torch_model, d.x_train, d.y_train, **kwargs)
    tf_history = ctf.train(tf_model, d.x_train, d.y_train, **kwargs)
    np.testing.assert_allclose(tf_history.loss, torch_history.loss, rtol=1e-5)
    np.testing.assert_allclose(tf_history.grad_norm, torch_history.grad_norm, rtol=1e-5)
    assert_arrays_close(ctf.get_weights(tf_model), ct.get_weights(torch_model),
                        what="weights after training")


@pytest.mark.xfail(strict=True, reason=(
    "Adam differs between the back ends: torch.optim.Adam divides by "
    "sqrt(v_hat) + 1e-8, Keras' Adam by sqrt(v_hat) + 1e-7 / sqrt(1 - beta2^t) (epsilon "
    "1e-7, bias correction folded into the step size), i.e. 3e-6 at step 1. Gradient "
    "entries of ~1e-4 then move by a different amount; weights differ by ~6e-4 relative "
    "after 20 steps. Remove this marker when companion's Adam agrees."))
def test_adam_training_runs_agree(digits_subset):
    x, y = digits_subset
    torch_model, tf_model = _twins("mlp", sizes=[64, 32, 10], activation="tanh")
    kwargs = dict(epochs=2, lr=1e-3, batch_size=32, optimizer="adam", seed=11,
                  progress=False)
    ct.train(torch_model, x, y, **kwargs)
    ctf.train(tf_model, x, y, **kwargs)
    assert_arrays_close(ctf.get_weights(tf_model), ct.get_weights(torch_model),
                        what="weights after Adam")
