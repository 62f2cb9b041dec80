"""Ordinary models through the public functions, in both back ends (issue 12).

A reader's own network is not the book's MLP: it has convolutions, BatchNorm and Dropout,
recurrent layers, embeddings, frozen layers, nested or subclassed models. Each model of
the zoo below runs through measurement, training, clipping, pruning and curvature, and
every number is checked against the framework itself: autograd / ``GradientTape`` in
inference mode for losses, gradients and Hessian-vector products,
``torch.nn.utils.clip_grad_norm_`` / ``tf.clip_by_global_norm`` for clipping.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from companion import tensorflow as ctf
from companion import torch as ct

RNG = np.random.default_rng(11)
N, CLASSES = 24, 3
IMAGES_NCHW = RNG.standard_normal((N, 1, 8, 8)).astype(np.float32)
SEQUENCES = RNG.standard_normal((N, 5, 3)).astype(np.float32)
TOKENS = RNG.integers(0, 11, (N, 6))
FEATURES = RNG.standard_normal((N, 6)).astype(np.float32)
LABELS = RNG.integers(0, CLASSES, N)


# --------------------------------------------------------------------------- the zoo


class _LastStep(torch.nn.Module):
    """A recurrent layer read at its last time step, then a linear head."""

    def __init__(self, recurrent):
        super().__init__()
        self.recurrent = recurrent
        self.head = torch.nn.Linear(recurrent.hidden_size, CLASSES)

    def forward(self, x):
        outputs, _ = self.recurrent(x)
        return self.head(outputs[:, -1])


class _MeanOverTime(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


def _torch_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Dropout(0.25), torch.nn.Flatten(),
        torch.nn.Linear(36, CLASSES))


def _torch_frozen():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, CLASSES))
    model[0].requires_grad_(False)
    return model


def _torch_nested():
    return torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh()),
        torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()),
        torch.nn.Linear(8, CLASSES))


TORCH_ZOO = {
    "cnn_batchnorm_dropout": (_torch_cnn, IMAGES_NCHW),
    "lstm": (lambda: _LastStep(torch.nn.LSTM(3, 6, batch_first=True)), SEQUENCES),
    "gru": (lambda: _LastStep(torch.nn.GRU(3, 6, batch_first=True)), SEQUENCES),
    "embedding": (lambda: torch.nn.Sequential(torch.nn.Embedding(11, 4), _MeanOverTime(),
                                              torch.nn.Linear(4, CLASSES)), TOKENS),
    "frozen_layer": (_torch_frozen, FEATURES),
    "nested": (_torch_nested, FEATURES),
}


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(CLASSES)

    def call(self, x):
        return self.out(self.hidden(x))


def _keras_cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.MaxPooling2D(2), keras.layers.Dropout(0.25),
        keras.layers.Flatten(), keras.layers.Dense(CLASSES)])


def _keras_recurrent(layer):
    return keras.Sequential([keras.Input((5, 3)), layer(6), keras.layers.Dense(CLASSES)])


def _keras_embedding():
    return keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(11, 4),
                             keras.layers.GlobalAveragePooling1D(),
                             keras.layers.Dense(CLASSES)])


def _keras_frozen():
    return keras.Sequential([keras.Input((6,)),
                             keras.layers.Dense(8, activation="relu", trainable=False),
                             keras.layers.Dense(CLASSES)])


def _keras_nested_functional():
    inputs = keras.Input((6,))
    block = keras.Sequential([keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(8, activation="relu")])
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(block(inputs)))


def _keras_subclassed():
    model = SubclassedNet()
    model(FEATURES[:1])  # builds the layers' weights
    return model


KERAS_ZOO = {
    "cnn_batchnorm_dropout": (_keras_cnn, IMAGES_NCHW.transpose(0, 2, 3, 1).copy()),
    "lstm": (lambda: _keras_recurrent(keras.layers.LSTM), SEQUENCES),
    "gru": (lambda: _keras_recurrent(keras.layers.GRU), SEQUENCES),
    "embedding": (_keras_embedding, TOKENS),
    "frozen_layer": (_keras_frozen, FEATURES),
    "nested_functional": (_keras_nested_functional, FEATURES),
    "subclassed": (_keras_subclassed, FEATURES),
}


def torch_model(name):
    torch.manual_seed(0)
    build, x = TORCH_ZOO[name]
    return build(), x


def keras_model(name):
    keras.utils.set_random_seed(0)
    build, x = KERAS_ZOO[name]
    return build(), x


# --------------------------------------------------------------------------- oracles


def torch_loss_and_gradients(model, x):
    """Mean cross-entropy and its gradient by autograd, in eval mode."""
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    loss = torch.nn.functional.cross_entropy(model(torch.as_tensor(x)),
                                             torch.as_tensor(LABELS))
    grads = torch.autograd.grad(loss, params)
    model.train(was_training)
    return loss.item(), [g.numpy() for g in grads]


def torch_hvp(model, x, vectors):
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    loss = torch.nn.functional.cross_entropy(model(torch.as_tensor(x)),
                                             torch.as_tensor(LABELS))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * torch.as_tensor(v)).sum() for g, v in zip(grads, vectors))
    return [h.numpy() for h in torch.autograd.grad(dot, params)]


def keras_loss(model, x):
    logits = model(tf.convert_to_tensor(x), training=False)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.convert_to_tensor(LABELS), logits))


def keras_loss_and_gradients(model, x):
    with tf.GradientTape() as tape:
        loss = keras_loss(model, x)
    grads = tape.gradient(loss, model.trainable_variables)
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]


def keras_hvp(model, x, vectors):
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = keras_loss(model, x)
        grads = [tf.convert_to_tensor(g)
                 for g in inner.gradient(loss, model.trainable_variables)]
        dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vectors)])
    return [tf.convert_to_tensor(h).numpy()
            for h in outer.gradient(dot, model.trainable_variables)]


def _close(actual, expected, rtol=1e-4, atol=1e-6):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=atol)


def _torch_state(model):
    return [t.detach().clone() for t in model.state_dict().values()]


def _keras_state(model):
    return [np.array(v) for v in model.variables]


# --------------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("name", TORCH_ZOO)
def test_torch_measurements_match_autograd_in_eval_mode(name):
    model, x = torch_model(name)
    model.train()
    state = _torch_state(model)
    loss, grads = torch_loss_and_gradients(model, x)
    assert ct.evaluate(model, x, LABELS)["loss"] == pytest.approx(loss, rel=1e-5)
    assert ct.loss_value(model, x, LABELS).item() == pytest.approx(loss, rel=1e-5)
    _close([g.detach().numpy() for g in ct.gradients(model, x, LABELS)], grads)
    np.testing.assert_array_equal(ct.predict(model, x), ct.predict(model, x))
    assert model.training, "the caller's mode is restored"
    for before, after in zip(state, _torch_state(model)):
        torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("name", TORCH_ZOO)
def test_torch_train_clips_and_keeps_frozen_layers(name):
    model, x = torch_model(name)
    model.eval()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if not p.requires_grad}
    history = ct.train(model, x, LABELS, epochs=2, lr=0.05, batch_size=8,
                       clip=ct.Clip("global_norm", 0.5), progress=False)
    assert np.all(np.isfinite(history.loss))
    assert not model.training, "train gives the model back in the caller's mode"
    for n, p in model.named_parameters():
        if n in frozen:
            torch.testing.assert_close(p.detach(), frozen[n], rtol=0, atol=0)


@pytest.mark.parametrize("name", TORCH_ZOO)
def test_torch_clip_grads_matches_clip_grad_norm(name):
    model, x = torch_model(name)
    twin, _ = torch_model(name)
    for m in (model, twin):
        m.eval()
        torch.nn.functional.cross_entropy(m(torch.as_tensor(x)),
                                          torch.as_tensor(LABELS)).backward()
    ct.clip_grads_(model, ct.Clip("global_norm", 0.1))
    torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
    for p, q in zip(model.parameters(), twin.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", TORCH_ZOO)
def test_torch_every_score_prunes_weights_not_biases(name):
    model, x = torch_model(name)
    weight_names = [n for n, p in model.named_parameters()
                    if p.requires_grad and "bias" not in n and p.ndim > 1]
    for scores in (ct.magnitude_scores(model), ct.random_scores(model, seed=1),
                   ct.gradient_scores(model, x, LABELS), ct.snip_scores(model, x, LABELS),
                   ct.taylor_scores(model, x, LABELS), ct.obd_scores(model, x, LABELS)):
        assert all(s is None or np.all(np.isfinite(np.asarray(s))) for s in scores)
    with torch.no_grad():  # tiny biases: magnitude pruning would take them if it could
        for n, p in model.named_parameters():
            if "bias" in n:
                p.copy_(1e-3 * torch.as_tensor(RNG.standard_normal(tuple(p.shape))))
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if "bias" in n}
    masks = ct.prune(model, ct.magnitude_scores(model), 0.5)
    assert ct.sparsity_report(model).weights == pytest.approx(0.5, abs=0.02)
    for n, p in model.named_parameters():
        if n in biases:
            torch.testing.assert_close(p.detach(), biases[n], rtol=0, atol=0)
    ct.train(model, x, LABELS, epochs=1, lr=0.05, batch_size=8, masks=masks,
             progress=False)
    assert ct.sparsity_report(model).weights == pytest.approx(0.5, abs=0.02)
    assert weight_names


@pytest.mark.parametrize("name", TORCH_ZOO)
def test_torch_curvature_matches_double_backward(name):
    model, x = torch_model(name)
    params = [p for p in model.parameters() if p.requires_grad]
    vectors = [RNG.standard_normal(tuple(p.shape)).astype(np.float32) for p in params]
    model.train()
    expected = torch_hvp(model, x, vectors)
    model.train()
    actual = ct.hvp(model, x, LABELS, vectors)
    _close([a.detach().numpy() for a in actual], expected, rtol=1e-3, atol=1e-5)
    assert model.training
    assert np.isfinite(ct.hutchinson_trace(model, x, LABELS, samples=4, seed=0))
    assert np.isfinite(ct.top_eigenvalue(model, x, LABELS, iterations=5, seed=0))
    ct.obs_prune(model, x, LABELS, sparsity=0.5)
    assert ct.sparsity_report(model).weights == pytest.approx(0.5, abs=0.02)


# --------------------------------------------------------------------------- Keras


@pytest.mark.parametrize("name", KERAS_ZOO)
def test_keras_measurements_match_the_tape_in_inference_mode(name):
    model, x = keras_model(name)
    state = _keras_state(model)
    loss, grads = keras_loss_and_gradients(model, x)
    assert ctf.evaluate(model, x, LABELS)["loss"] == pytest.approx(loss, rel=1e-5)
    assert float(ctf.loss_value(model, x, LABELS)) == pytest.approx(loss, rel=1e-5)
    _close([tf.convert_to_tensor(g).numpy() for g in ctf.gradients(model, x, LABELS)],
           grads)
    np.testing.assert_array_equal(ctf.predict(model, x), ctf.predict(model, x))
    for before, after in zip(state, _keras_state(model)):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("name", KERAS_ZOO)
def test_keras_train_clips_and_keeps_frozen_layers(name):
    model, x = keras_model(name)
    frozen = {v.path: np.array(v) for v in model.non_trainable_weights
              if "moving" not in v.path}  # BatchNorm's statistics move in training
    history = ctf.train(model, x, LABELS, epochs=2, lr=0.05, batch_size=8,
                        clip=ctf.Clip("global_norm", 0.5), progress=False)
    assert np.all(np.isfinite(history.loss))
    for v in model.non_trainable_weights:
        if v.path in frozen:
            np.testing.assert_array_equal(np.array(v), frozen[v.path])


@pytest.mark.parametrize("name", KERAS_ZOO)
def test_keras_clip_by_global_norm_matches_tf(name):
    model, x = keras_model(name)
    with tf.GradientTape() as tape:
        loss = keras_loss(model, x)
    grads = tape.gradient(loss, model.trainable_variables)
    clipped, norm = ctf.clip_by_global_norm(grads, 0.1)
    # An Embedding's gradient is tf.IndexedSlices: kept sparse, but its norm is the norm of
    # the gradient (repeated rows summed). tf.clip_by_global_norm takes the norm of the
    # slices' values instead, so the oracle gets the dense gradient.
    dense = [tf.convert_to_tensor(g) for g in grads]
    expected, expected_norm = tf.clip_by_global_norm(dense, 0.1)
    assert [type(c) for c in clipped] == [type(g) for g in grads]
    assert float(norm) == pytest.approx(float(expected_norm), rel=1e-5)
    _close([tf.convert_to_tensor(c).numpy() for c in clipped],
           [e.numpy() for e in expected], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", KERAS_ZOO)
def test_keras_every_score_prunes_weights_not_biases(name):
    model, x = keras_model(name)
    for scores in (ctf.magnitude_scores(model), ctf.random_scores(model, seed=1),
                   ctf.gradient_scores(model, x, LABELS), ctf.snip_scores(model, x, LABELS),
                   ctf.taylor_scores(model, x, LABELS), ctf.obd_scores(model, x, LABELS)):
        assert all(s is None or np.all(np.isfinite(np.asarray(s))) for s in scores)
    for v in model.trainable_variables:  # tiny biases, as in the PyTorch test
        if "bias" in v.path:
            v.assign(1e-3 * RNG.standard_normal(tuple(v.shape)).astype(np.float32))
    biases = {v.path: np.array(v) for v in model.trainable_variables if "bias" in v.path}
    masks = ctf.prune(model, ctf.magnitude_scores(model), 0.5)
    assert ctf.sparsity_report(model).weights == pytest.approx(0.5, abs=0.02)
    for v in model.trainable_variables:
        if v.path in biases:
            np.testing.assert_array_equal(np.array(v), biases[v.path])
    ctf.train(model, x, LABELS, epochs=1, lr=0.05, batch_size=8, masks=masks,
              progress=False)
    assert ctf.sparsity_report(model).weights == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("name", KERAS_ZOO)
def test_keras_curvature_matches_nested_tapes(name):
    model, x = keras_model(name)
    variables = model.trainable_variables
    vectors = [RNG.standard_normal(tuple(v.shape)).astype(np.float32) for v in variables]
    expected = keras_hvp(model, x, vectors)
    actual = ctf.hvp(model, x, LABELS, vectors)
    _close([np.asarray(a) for a in actual], expected, rtol=1e-3, atol=1e-5)
    assert np.isfinite(ctf.hutchinson_trace(model, x, LABELS, samples=4, seed=0))
    assert np.isfinite(ctf.top_eigenvalue(model, x, LABELS, iterations=5, seed=0))
    ctf.obs_prune(model, x, LABELS, sparsity=0.5)
    assert ctf.sparsity_report(model).weights == pytest.approx(0.5, abs=0.02)
