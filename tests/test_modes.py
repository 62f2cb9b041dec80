"""The mode rule on ordinary models with BatchNorm and Dropout, and Keras models whose
``trainable`` flags change between calls (freeze, train, unfreeze).

Training runs in training mode and gives the model back as it was; everything that
measures runs in inference mode and changes no buffer or moving statistic. Oracles: the
framework's own forward pass in inference mode (``model.eval()``, ``training=False``),
autograd on it, and a dense Hessian by nested tapes.
"""

import keras
import numpy as np
import pytest
import torch

from companion import tensorflow as ctf
from companion import torch as ct

RNG = np.random.default_rng(7)
X = RNG.standard_normal((32, 6)).astype(np.float32)
Y = RNG.integers(0, 3, 32)


def torch_bn_dropout_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))


def keras_bn_dropout_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(),
                              keras.layers.Dropout(0.5), keras.layers.Dense(3)])
    # Moving statistics away from their initial values, so using them is visible.
    bn = model.layers[1]
    bn.moving_mean.assign(RNG.standard_normal(8).astype(np.float32))
    bn.moving_variance.assign(RNG.uniform(0.5, 2.0, 8).astype(np.float32))
    return model


def _torch_buffers(model):
    return [b.detach().clone() for b in model.buffers()]


# --------------------------------------------------------------------------- PyTorch


def test_torch_measurements_run_in_eval_mode_and_change_no_buffer():
    model = torch_bn_dropout_model()
    model.train()
    buffers = _torch_buffers(model)
    with torch.no_grad():
        model.eval()
        expected = torch.nn.functional.cross_entropy(model(torch.as_tensor(X)),
                                                     torch.as_tensor(Y)).item()
        model.train()
    first = ct.evaluate(model, X, Y)["loss"]
    assert first == pytest.approx(expected, rel=1e-6)
    assert ct.evaluate(model, X, Y)["loss"] == first           # Dropout is off
    np.testing.assert_allclose(ct.predict(model, X), ct.predict(model, X))
    assert ct.loss_value(model, X, Y).item() == pytest.approx(expected, rel=1e-6)
    grads = ct.gradients(model, X, Y)
    ct.snip_scores(model, X, Y)
    ct.taylor_scores(model, X, Y, batch_size=16)
    ct.hutchinson_trace(model, X, Y, samples=2)
    ct.hessian_diagonal(model, X[:8], Y[:8], method="fisher")
    for before, after in zip(buffers, _torch_buffers(model)):
        assert torch.equal(before, after), "a measurement changed a BatchNorm buffer"
    assert model.training and all(m.training for m in model.modules())
    # The gradient is the gradient of loss_value, in eval mode.
    model.eval()
    value = torch.nn.functional.cross_entropy(model(torch.as_tensor(X)), torch.as_tensor(Y))
    expected_grads = torch.autograd.grad(value, list(model.parameters()))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_torch_train_uses_training_mode_and_restores_the_callers_modes():
    model = torch_bn_dropout_model()
    model.eval()
    model[1].train()  # a caller's odd mix survives
    ct.train(model, X, Y, epochs=1, lr=0.01, batch_size=16, progress=False)
    assert not model.training and model[1].training and not model[3].training
    assert model[1].num_batches_tracked.item() == 2            # trained on 2 batches
    model = torch_bn_dropout_model()
    model.train()
    ct.train(model, X, Y, epochs=1, lr=0.01, batch_size=16, progress=False)
    assert all(m.training for m in model.modules())


def test_torch_batchnorm_model_is_probed_without_a_one_example_training_pass():
    model = torch_bn_dropout_model().train()
    # The label check runs the model on one example; in training mode BatchNorm refuses.
    ct.gradients(model, X, Y)
    with pytest.raises(ValueError, match="class labels"):
        ct.gradients(model, X, np.full(32, 5))
    assert model[1].num_batches_tracked.item() == 0


# --------------------------------------------------------------------------- Keras


def test_keras_measurements_use_inference_and_change_no_moving_statistic():
    model = keras_bn_dropout_model()
    bn = model.layers[1]
    moving = [bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            Y, model(X, training=False)))
    expected = tape.gradient(value, model.trainable_variables)
    grads = ctf.gradients(model, X, Y)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-7)
    assert float(ctf.loss_value(model, X, Y)) == pytest.approx(float(value), rel=1e-6)
    assert ctf.evaluate(model, X, Y)["loss"] == ctf.evaluate(model, X, Y)["loss"]
    ctf.snip_scores(model, X, Y)
    ctf.hutchinson_trace(model, X, Y, samples=2)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), moving[0])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), moving[1])
    ctf.train(model, X, Y, epochs=1, lr=0.01, batch_size=16, progress=False)
    assert not np.array_equal(bn.moving_mean.numpy(), moving[0]), "train must update them"


def _dense_hessian(model, x, y):
    """The Hessian of the mean loss over the trainable variables, by nested tapes
    (Keras' flattening order: each variable row-major in its own layout)."""
    import tensorflow as tf

    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            value = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                y, model(x, training=False)))
        flat = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(value, variables)], 0)
    rows = outer.jacobian(flat, variables, experimental_use_pfor=False)
    return tf.concat([tf.reshape(r, [flat.shape[0], -1]) for r in rows], 1).numpy()


def test_keras_trainable_changes_between_calls_give_fresh_numbers():
    """Freeze -> measure -> unfreeze -> measure: each call sees the variables trainable
    at that moment (a compiled function traced before the change must not be reused)."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(3)])
    x, y = X[:16], Y[:16]
    full = ctf.hessian(model, x, y)
    assert len(ctf.gradients(model, x, y)) == 4
    model.layers[0].trainable = False
    assert len(ctf.gradients(model, x, y)) == 2
    # The companion's order is canonical: the (4, 3) kernel transposed to (3, 4).
    canonical = np.concatenate([np.arange(12).reshape(4, 3).T.ravel(), 12 + np.arange(3)])
    dense = _dense_hessian(model, x, y)[np.ix_(canonical, canonical)]
    np.testing.assert_allclose(ctf.hessian(model, x, y), dense, rtol=1e-4, atol=1e-6)
    v = [np.ones(tuple(w.shape), np.float32) for w in model.trainable_variables]
    assert [tuple(h.shape) for h in ctf.hvp(model, x, y, v)] == [(4, 3), (3,)]
    assert np.isfinite(ctf.hutchinson_trace(model, x, y, samples=2))
    ctf.train(model, x, y, epochs=1, lr=0.01, batch_size=8, progress=False)
    model.layers[0].trainable = True
    assert len(ctf.gradients(model, x, y)) == 4
    np.testing.assert_equal(ctf.hessian(model, x, y).shape, full.shape)
    ctf.train(model, x, y, epochs=1, lr=0.01, batch_size=8, progress=False)


# --------------------------------------------------------------------------- failure


def test_a_clip_function_that_makes_nan_stops_training_before_the_update(backend):
    """The finiteness check comes after clipping: a clip function of the user's that turns
    finite gradients into nan is caught at the step it happens, before any weight moves."""
    model = backend.mlp([6, 5, 3], seed=0)
    before = backend.get_weights(model)

    def broken_clip(grads):
        return [g * float("nan") for g in grads]

    with pytest.raises(backend.NonFiniteError, match="step 0: the clip function") as error:
        backend.train(model, X, Y, epochs=1, lr=0.1, batch_size=16, clip=broken_clip,
                      progress=False)
    assert error.value.step == 0
    for b, a in zip(before, backend.get_weights(model)):
        np.testing.assert_array_equal(a, b)


def test_models_without_trainable_parameters_get_a_clear_error():
    frozen = torch.nn.Linear(6, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        ct.gradients(frozen, X, Y)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ct.gradients("model", X, Y)
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="not built yet"):
        ctf.gradients(unbuilt, X, Y)
    with pytest.raises(TypeError, match="Keras model"):
        ctf.evaluate(object(), X, Y)
