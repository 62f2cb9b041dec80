"""Losses, gradients, evaluation and the training loop, against NumPy float64 oracles."""

import math

import numpy as np
import pytest

from companion import data
from companion import tensorflow as companion_tf
from companion import torch as companion_torch
from companion.core.batches import minibatches
from numpy_reference import (assert_arrays_close, assert_weights_equal, central_differences,
                             cross_entropy, is_torch, loss as reference_loss, mlp_forward, mse,
                             rnn_forward, scalar)


def _small_problem(backend, rng, loss, activation="tanh", sizes=(3, 4, 2), n=16, seed=2):
    """An MLP with non-zero biases and a batch of data for it."""
    model = backend.mlp(list(sizes), activation=activation, seed=seed)
    weights = [w if w.ndim == 2 else 0.5 * rng.standard_normal(w.shape).astype(np.float32)
               for w in backend.get_weights(model)]
    backend.set_weights(model, weights)
    x = rng.standard_normal((n, sizes[0])).astype(np.float32)
    if loss == "cross_entropy":
        y = rng.integers(0, sizes[-1], n)
    else:
        y = rng.standard_normal((n, sizes[-1])).astype(np.float32)
    return model, weights, x, y


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


# ---------------------------------------------------------------- loss_value


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_loss_value_matches_numpy(backend, rng, loss):
    model, weights, x, y = _small_problem(backend, rng, loss, sizes=(5, 6, 3), n=20)
    expected = reference_loss(loss, mlp_forward(weights, x, "tanh"), y)
    # A float32 mean of 20 terms: a relative error of a few 1e-7.
    assert scalar(backend.loss_value(model, x, y, loss)) == pytest.approx(expected, rel=2e-6)


def test_cross_entropy_hand_worked(backend):
    """Logits (0, log 3) for class 1: p = 3/4, loss = -log(3/4); for class 0: -log(1/4)."""
    model = backend.mlp([1, 2], activation="linear")
    backend.set_weights(model, [np.zeros((2, 1)), np.array([0.0, math.log(3.0)])])
    x = np.zeros((2, 1), np.float32)
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert scalar(backend.loss_value(model, x, np.array([1, 0]))) == pytest.approx(expected,
                                                                                   rel=1e-6)


def test_mse_is_mean_over_every_entry(backend):
    """Output (1, 2) against targets (0, 0) and (3, 2): squared errors 1, 4, 4, 0 -> 9/4."""
    model = backend.mlp([1, 2], activation="linear")
    backend.set_weights(model, [np.zeros((2, 1)), np.array([1.0, 2.0])])
    x = np.zeros((2, 1), np.float32)
    y = np.array([[0.0, 0.0], [3.0, 2.0]], np.float32)
    assert scalar(backend.loss_value(model, x, y, "mse")) == pytest.approx(9 / 4, rel=1e-7)


def test_mse_accepts_flat_targets_for_one_output(backend, rng):
    model, weights, x, y = _small_problem(backend, rng, "mse", sizes=(3, 4, 1))
    flat, column = (scalar(backend.loss_value(model, x, t, "mse")) for t in (y[:, 0], y))
    assert flat == column == pytest.approx(mse(mlp_forward(weights, x, "tanh"), y), rel=2e-6)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int16, np.int64])
def test_cross_entropy_accepts_any_integer_label_dtype(backend, rng, dtype):
    model, weights, x, y = _small_problem(backend, rng, "cross_entropy", sizes=(3, 4, 3))
    expected = cross_entropy(mlp_forward(weights, x, "tanh"), y)
    labels = y.astype(dtype)
    assert scalar(backend.loss_value(model, x, labels)) == pytest.approx(expected, rel=2e-6)
    assert_arrays_close(backend.to_canonical(model, backend.gradients(model, x, labels)),
                        backend.to_canonical(model, backend.gradients(model, x, y)))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_gradients_match_central_differences(backend, rng, loss, activation):
    model, weights, x, y = _small_problem(backend, rng, loss, activation=activation)
    grads = backend.to_canonical(model, backend.gradients(model, x, y, loss))
    # Float64 central differences of the float64 NumPy loss at the model's (float32)
    # weights: truncation O(h^2) ~ 1e-12 and rounding ~ 1e-16 / h ~ 1e-10, i.e. exact
    # for our purpose. The companion's float32 gradient may differ by float32 rounding
    # only: rtol 1e-5 plus atol 1e-6 x the largest gradient entry (see numpy_reference).
    # (relu: with h = 1e-6 no pre-activation of this data set crosses 0.)
    numeric = central_differences(
        lambda w: reference_loss(loss, mlp_forward(w, x, activation), y), weights)
    assert_arrays_close(grads, numeric, what=f"{loss}/{activation}")


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_gradients_match_manual_backprop(backend, rng, loss):
    model, (w0, b0, w1, b1), x, y = _small_problem(backend, rng, loss, sizes=(5, 7, 3), n=24)
    w0, b0, w1, b1, x = (a.astype(np.float64) for a in (w0, b0, w1, b1, x))
    n = len(x)
    h = np.tanh(x @ w0.T + b0)
    out = h @ w1.T + b1
    if loss == "cross_entropy":
        p = np.exp(out - out.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d_out = (p - np.eye(3)[y]) / n
    else:
        d_out = 2.0 * (out - y) / out.size
    d_pre = (d_out @ w1) * (1.0 - h ** 2)
    expected = [d_pre.T @ x, d_pre.sum(0), d_out.T @ h, d_out.sum(0)]
    grads = backend.to_canonical(model, backend.gradients(model, x.astype(np.float32), y, loss))
    assert_arrays_close(grads, expected, what=loss)


def test_gradients_do_not_change_the_model(backend, rng):
    model, weights, x, y = _small_problem(backend, rng, "cross_entropy")
    grads = backend.gradients(model, x, y)
    assert len(grads) == len(weights)
    assert_weights_equal(weights, backend.get_weights(model))
    if is_torch(backend):
        assert all(p.grad is None for p in model.parameters())
    # Calling twice gives the same numbers (nothing accumulated).
    assert_weights_equal(backend.to_canonical(model, grads),
                         backend.to_canonical(model, backend.gradients(model, x, y)))


def test_rnn_gradients_match_central_differences(backend, rng):
    model = backend.rnn(2, 3, 1, nonlinearity="tanh", gain=1.1, seed=3)
    weights = backend.get_weights(model)
    x = rng.standard_normal((6, 5, 2)).astype(np.float32)
    y = rng.standard_normal((6, 1)).astype(np.float32)
    grads = backend.to_canonical(model, backend.gradients(model, x, y, "mse"))
    numeric = central_differences(lambda w: mse(rnn_forward(w, x, "tanh"), y), weights)
    assert_arrays_close(grads, numeric)


# ---------------------------------------------------------------- evaluate


def test_evaluate_is_mean_over_examples_for_any_batch_size(backend, rng):
    model, weights, x, y = _small_problem(backend, rng, "cross_entropy", sizes=(6, 8, 4), n=100)
    logits = mlp_forward(weights, x, "tanh")
    results = [backend.evaluate(model, x, y, batch_size=b) for b in (1, 7, 100, 1000)]
    for result in results:
        assert set(result) == {"loss", "accuracy"}
        # The last batch of 7 holds 2 examples: a per-batch mean would be off by ~10 %.
        assert result["loss"] == pytest.approx(cross_entropy(logits, y), rel=2e-6)
        assert result["accuracy"] == np.mean(np.argmax(logits, axis=1) == y)
    assert 0.0 < results[0]["accuracy"] < 1.0


def test_evaluate_mse_has_no_accuracy(backend, rng):
    model, weights, x, y = _small_problem(backend, rng, "mse", n=30)
    for batch_size in (7, 1000):
        result = backend.evaluate(model, x, y, loss="mse", batch_size=batch_size)
        assert set(result) == {"loss"}
        assert result["loss"] == pytest.approx(mse(mlp_forward(weights, x, "tanh"), y), rel=2e-6)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_evaluate_bad_batch_size(backend, rng, batch_size):
    model, _, x, y = _small_problem(backend, rng, "cross_entropy")
    with pytest.raises(ValueError, match="batch_size"):
        backend.evaluate(model, x, y, batch_size=batch_size)


# ---------------------------------------------------------------- train


def test_train_learns_digits(backend, digits):
    x, y = digits.x_train[:320], digits.y_train[:320]
    model = backend.mlp([64, 32, 10], activation="tanh", seed=0)
    before = backend.evaluate(model, digits.x_test, digits.y_test)
    history = backend.train(model, x, y, epochs=4, lr=0.05, batch_size=32, momentum=0.9,
                            progress=False)
    after = backend.evaluate(model, digits.x_test, digits.y_test)
    assert np.mean(history.loss[-10:]) < 0.3 * history.loss[0]
    assert after["loss"] < 0.3 * before["loss"]
    assert after["accuracy"] > 0.85 > 0.3 > before["accuracy"]


@pytest.mark.parametrize("n, batch_size, epochs", [(50, 16, 3), (48, 16, 2), (5, 10, 2)])
def test_history_has_one_entry_per_step(backend, rng, n, batch_size, epochs):
    model, _, x, y = _small_problem(backend, rng, "cross_entropy", n=n)
    steps = epochs * math.ceil(n / batch_size)
    history = backend.train(model, x, y, epochs=epochs, lr=0.01, batch_size=batch_size,
                            progress=False)
    assert len(history) == len(history.loss) == len(history.grad_norm) == steps
    assert len(history.accuracy) == steps
    assert all(0.0 <= a <= 1.0 for a in history.accuracy)

    model, _, x, y = _small_problem(backend, rng, "mse", n=n)
    history = backend.train(model, x, y, epochs=epochs, lr=0.01, batch_size=batch_size,
                            loss="mse", progress=False)
    assert len(history.loss) == len(history.grad_norm) == steps
    assert history.accuracy == []


def test_first_step_matches_gradients_on_first_minibatch(backend, rng):
    model, weights, x, y = _small_problem(backend, rng, "cross_entropy", n=40)
    first = next(minibatches(len(x), 16, 2, 7))
    grads = backend.gradients(model, x[first], y[first])
    canonical = backend.to_canonical(model, grads)
    logits = mlp_forward(weights, x[first], "tanh")
    history = backend.train(model, x, y, epochs=2, lr=0.1, batch_size=16, seed=7,
                            progress=False)
    assert history.grad_norm[0] == pytest.approx(backend.global_norm(grads), rel=1e-6)
    flat = np.concatenate([g.astype(np.float64).ravel() for g in canonical])
    assert history.grad_norm[0] == pytest.approx(np.linalg.norm(flat), rel=1e-5)
    assert history.loss[0] == pytest.approx(cross_entropy(logits, y[first]), rel=2e-6)
    assert history.accuracy[0] == np.mean(np.argmax(logits, axis=1) == y[first])


class SpyMonitor:
    """Records the steps it sees and the 2-norm (NumPy, float64) of their gradients."""

    def __init__(self, backend, model):
        self.backend, self.model = backend, model
        self.steps, self.norms = [], []

    def record(self, step, grads):
        self.steps.append(step)
        canonical = self.backend.to_canonical(self.model, grads)
        self.norms.append(math.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in canonical)))


def test_monitor_sees_every_step_and_grad_norm_matches(backend, rng):
    model, _, x, y = _small_problem(backend, rng, "cross_entropy", n=45)
    monitor = SpyMonitor(backend, model)
    history = backend.train(model, x, y, epochs=3, lr=0.2, batch_size=10, momentum=0.5,
                            monitor=monitor, progress=False)
    assert monitor.steps == list(range(15))
    np.testing.assert_allclose(history.grad_norm, monitor.norms, rtol=1e-5)


def _linear_mse_gradients(w, b, x, y):
    """Gradients of mean((x W^T + b - y)^2) over every entry."""
    residual = x @ w.T + b - y
    scale = 2.0 / residual.size
    return scale * residual.T @ x, scale * residual.sum(axis=0)


@pytest.mark.parametrize("epochs", [1, 2])
def test_momentum_sgd_matches_hand_computed_updates(backend, rng, epochs):
    lr, momentum, batch_size, seed = 0.3, 0.9, 6, 4
    model = backend.mlp([3, 2], activation="linear", seed=1)
    w, b = (a.astype(np.float64) for a in backend.get_weights(model))
    b = np.array([0.5, -1.0])
    backend.set_weights(model, [w, b])
    x = rng.standard_normal((12, 3)).astype(np.float32)
    y = rng.standard_normal((12, 2)).astype(np.float32)

    # torch.optim.SGD's documented form: v <- momentum v + g; theta <- theta - lr v.
    v_w, v_b = np.zeros_like(w), np.zeros_like(b)
    for batch in minibatches(len(x), batch_size, epochs, seed):
        g_w, g_b = _linear_mse_gradients(w, b, x[batch].astype(np.float64),
                                         y[batch].astype(np.float64))
        v_w, v_b = momentum * v_w + g_w, momentum * v_b + g_b
        w, b = w - lr * v_w, b - lr * v_b

    history = backend.train(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size,
                            momentum=momentum, loss="mse", seed=seed, progress=False)
    assert len(history) == 2 * epochs
    assert_arrays_close(backend.get_weights(model), [w, b])


def test_adam_first_step_matches_hand_computed_update(backend, rng):
    """First Adam step: m_hat = g, v_hat = g^2, so theta <- theta - lr g / (|g| + eps)."""
    lr = 0.01
    model = backend.mlp([3, 2], activation="linear", seed=1)
    w, b = (a.astype(np.float64) for a in backend.get_weights(model))
    x = rng.standard_normal((12, 3)).astype(np.float32)
    y = rng.standard_normal((12, 2)).astype(np.float32)
    g_w, g_b = _linear_mse_gradients(w, b, x.astype(np.float64), y.astype(np.float64))
    # Gradient entries here are O(0.1-1): any eps <= 1e-6 changes the step by < 1e-5
    # relative, so this checks the update rule, not the choice of eps.
    backend.train(model, x, y, epochs=1, lr=lr, batch_size=12, optimizer="adam", loss="mse",
                  progress=False)
    expected = [w - lr * g_w / (np.abs(g_w) + 1e-8), b - lr * g_b / (np.abs(g_b) + 1e-8)]
    assert_arrays_close(backend.get_weights(model), expected)


def test_clip_is_applied(backend, rng):
    model, weights, x, y = _small_problem(backend, rng, "cross_entropy", n=30)
    seen = []

    def zero(grads):
        grads = list(grads)
        seen.append(len(grads))
        return [g * 0.0 for g in grads]

    monitor = SpyMonitor(backend, model)
    history = backend.train(model, x, y, epochs=2, lr=0.5, batch_size=10, clip=zero,
                            monitor=monitor, progress=False)
    assert seen == [len(weights)] * 6
    assert_weights_equal(weights, backend.get_weights(model))
    # The history and the monitor see the raw (unclipped) gradients.
    assert all(n > 0 for n in history.grad_norm)
    np.testing.assert_allclose(monitor.norms, history.grad_norm, rtol=1e-5)


def test_clip_scaling_equals_scaled_learning_rate(backend, rng):
    """Halving every gradient with lr 0.2 takes the same steps as lr 0.1 without clip."""
    model, weights, x, y = _small_problem(backend, rng, "cross_entropy", n=30)
    clipped = backend.train(model, x, y, epochs=2, lr=0.2, batch_size=10, seed=3,
                            clip=lambda grads: [0.5 * g for g in grads], progress=False)
    after_clip = backend.get_weights(model)
    backend.set_weights(model, weights)
    plain = backend.train(model, x, y, epochs=2, lr=0.1, batch_size=10, seed=3, progress=False)
    assert not np.allclose(after_clip[0], weights[0])
    # Same arithmetic up to exact powers of two: equal to float32 rounding.
    assert_arrays_close(after_clip, backend.get_weights(model))
    np.testing.assert_allclose(clipped.grad_norm, plain.grad_norm, rtol=1e-5)


# ---------------------------------------------------------------- non-finite steps


def test_nonfinite_at_step_zero_changes_nothing(backend):
    """Weights of 1e20 on inputs of 1e20 overflow float32: the loss is inf at step 0."""
    model = backend.mlp([2, 1], activation="linear")
    backend.set_weights(model, [np.full((1, 2), 1e20), np.zeros(1)])
    before = backend.get_weights(model)
    x = np.full((4, 2), 1e20, np.float32)
    y = np.zeros((4, 1), np.float32)
    monitor = SpyMonitor(backend, model)
    with pytest.raises(backend.NonFiniteError, match=r"^step 0: loss = inf") as info:
        backend.train(model, x, y, epochs=3, lr=0.1, batch_size=2, loss="mse",
                      monitor=monitor, progress=False)
    assert isinstance(info.value, FloatingPointError)
    assert info.value.step == 0 and len(info.value.history) == 0
    assert monitor.steps == [0]  # the monitor sees the step that stopped training
    assert_weights_equal(before, backend.get_weights(model))


def test_gradient_monitor_flags_the_step_that_stops_training(backend):
    model = backend.mlp([2, 1], activation="linear")
    backend.set_weights(model, [np.full((1, 2), 1e20), np.zeros(1)])
    x = np.full((4, 2), 1e20, np.float32)
    monitor = backend.GradientMonitor(model)
    with pytest.raises(backend.NonFiniteError):
        backend.train(model, x, np.zeros((4, 1), np.float32), epochs=1, lr=0.1,
                      batch_size=2, loss="mse", monitor=monitor, progress=False)
    assert monitor.nonfinite_steps == [0]
    assert monitor.summary()["steps"] == 1


def test_blow_up_raises_and_keeps_weights_finite(backend, digits):
    """A huge learning rate on a high-gain MLP diverges after a few steps."""
    lr = 100.0
    model = backend.mlp([64, 64, 64, 10], gain=3.0, seed=0)
    snapshots = []

    def spy(grads):  # called before each applied update, with the gradient it applies
        snapshots.append((backend.get_weights(model), backend.to_canonical(model, grads)))
        return grads

    with pytest.raises(backend.NonFiniteError) as info:
        backend.train(model, digits.x_train, digits.y_train, epochs=2, lr=lr, batch_size=64,
                      clip=spy, progress=False)
    error = info.value
    assert error.step >= 1
    assert str(error).startswith(f"step {error.step}: ")
    assert "nan" in str(error) or "inf" in str(error)
    history = error.history
    assert len(history.loss) == len(history.grad_norm) == len(history.accuracy) == error.step
    assert len(snapshots) == error.step
    assert all(map(math.isfinite, history.loss + history.grad_norm))
    weights = backend.get_weights(model)
    assert all(np.all(np.isfinite(w)) for w in weights)
    # The last update applied is step (error.step - 1)'s: theta_prev - lr g_prev.
    previous, grads = snapshots[-1]
    expected = [p.astype(np.float64) - lr * g.astype(np.float64)
                for p, g in zip(previous, grads)]
    assert_arrays_close(weights, expected)


# ---------------------------------------------------------------- bad arguments


def _train_kwargs(**overrides):
    kwargs = dict(epochs=1, lr=0.1, batch_size=4, progress=False)
    kwargs.update(overrides)
    return kwargs


@pytest.mark.parametrize("overrides, error, match", [
    (dict(epochs=0), ValueError, "epochs"),
    (dict(epochs=1.5), ValueError, "epochs"),
    (dict(lr=-1.0), ValueError, "lr must be a finite number > 0"),
    (dict(lr=0.0), ValueError, "lr"),
    (dict(lr=float("nan")), ValueError, "lr"),
    (dict(lr="0.1"), TypeError, "lr"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(optimizer="rmsprop"), ValueError, "allowed: 'sgd', 'adam'"),
    (dict(loss="hinge"), ValueError, "allowed: 'cross_entropy', 'mse'"),
    (dict(momentum=1.0), ValueError, r"momentum must be in \[0, 1\)"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(momentum=0.9, optimizer="adam"), ValueError, "momentum"),
    (dict(clip="norm"), TypeError, "clip"),
    (dict(monitor=object()), TypeError, "monitor"),
])
def test_train_bad_arguments_change_nothing(backend, rng, overrides, error, match):
    model, weights, x, y = _small_problem(backend, rng, "cross_entropy", n=12)
    with pytest.raises(error, match=match):
        backend.train(model, x, y, **_train_kwargs(**overrides))
    assert_weights_equal(weights, backend.get_weights(model))


def test_train_bad_data_changes_nothing(backend, rng):
    model, weights, x, y = _small_problem(backend, rng, "cross_entropy", n=12)
    with pytest.raises(ValueError, match="same number of examples"):
        backend.train(model, x, y[:-1], **_train_kwargs())
    with pytest.raises(ValueError, match="integer class labels"):
        backend.train(model, x, y.astype(np.float32), **_train_kwargs())
    with pytest.raises(ValueError, match="integer class labels"):
        backend.train(model, x, np.eye(2)[y].astype(np.int64), **_train_kwargs())
    with pytest.raises(ValueError, match="empty"):
        backend.train(model, x[:0], y[:0], **_train_kwargs())
    with pytest.raises(ValueError, match=r"must be in \[0, 2\) for a model with 2 outputs"):
        backend.train(model, x, np.full_like(y, 2), **_train_kwargs())
    with pytest.raises(ValueError, match="got labels from -1 to"):
        backend.train(model, x, y - 1, **_train_kwargs())
    assert_weights_equal(weights, backend.get_weights(model))


def test_labels_out_of_range_are_named(backend, rng):
    """Without the check PyTorch raises IndexError, TensorFlow InvalidArgumentError on the
    CPU and returns nan on a GPU; every entry point gives one clear ValueError instead."""
    model, weights, x, y = _small_problem(backend, rng, "cross_entropy")  # 2 outputs
    bad = y.copy()
    bad[0] = 2
    for function in (backend.loss_value, backend.gradients, backend.input_gradients,
                     backend.evaluate, backend.hessian_diagonal, backend.snip_scores):
        with pytest.raises(ValueError, match=r"class labels must be in \[0, 2\)"):
            function(model, x, bad)
    assert_weights_equal(weights, backend.get_weights(model))


def test_loss_functions_reject_bad_arguments(backend, rng):
    model, _, x, y = _small_problem(backend, rng, "cross_entropy")
    for function in (backend.loss_value, backend.gradients, backend.evaluate):
        with pytest.raises(ValueError, match="allowed: 'cross_entropy', 'mse'"):
            function(model, x, y, loss="l1")
        with pytest.raises(ValueError, match="same number of examples"):
            function(model, x, y[:3])
        with pytest.raises(ValueError, match="integer class labels"):
            function(model, x, y + 0.5)


# ---------------------------------------------------------------- input_gradients


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_input_gradients_match_central_differences(backend, rng, loss):
    model, weights, x, y = _small_problem(backend, rng, loss, n=8)
    before = backend.get_weights(model)
    grad_x = backend.input_gradients(model, x, y, loss)
    assert isinstance(grad_x, np.ndarray) and grad_x.shape == x.shape
    [numeric] = central_differences(
        lambda xs: reference_loss(loss, mlp_forward(weights, xs[0], "tanh"), y), [x])
    assert_arrays_close([grad_x], [numeric])
    assert_weights_equal(before, backend.get_weights(model))


def test_rnn_input_gradients_match_central_differences(backend, rng):
    model = backend.rnn(2, 3, 1, nonlinearity="tanh", gain=1.1, seed=3)
    weights = backend.get_weights(model)
    x = rng.standard_normal((4, 6, 2)).astype(np.float32)
    y = rng.standard_normal((4, 1)).astype(np.float32)
    grad_x = backend.input_gradients(model, x, y, "mse")
    [numeric] = central_differences(lambda xs: mse(rnn_forward(weights, xs[0], "tanh"), y), [x])
    assert_arrays_close([grad_x], [numeric])


# ---------------------------------------------------------------- predict


def test_predict_matches_numpy_forward_in_any_batch_size(backend, rng):
    model, weights, x, _ = _small_problem(backend, rng, "cross_entropy", n=23)
    expected = mlp_forward(weights, x, "tanh")
    for batch_size in (1, 5, 1024):
        outputs = backend.predict(model, x, batch_size=batch_size)
        assert isinstance(outputs, np.ndarray) and outputs.shape == (23, 2)
        assert_arrays_close(outputs, expected)


def test_predict_agrees_across_back_ends(rng):
    x = rng.standard_normal((30, 6)).astype(np.float32)
    torch_model = companion_torch.mlp([6, 9, 4], seed=3)
    tf_model = companion_tf.mlp([6, 9, 4], seed=3)
    assert_arrays_close(companion_torch.predict(torch_model, x),
                        companion_tf.predict(tf_model, x))


def test_predict_rejects_bad_input(backend, rng):
    model, _, x, _ = _small_problem(backend, rng, "cross_entropy")
    with pytest.raises(ValueError, match="at least one example"):
        backend.predict(model, x[:0])
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        backend.predict(model, x, batch_size=0)
