"""The tiny transformer: a float64 NumPy forward pass from the canonical weights, PyTorch's
own scaled_dot_product_attention for the attention, causality, and parity across back
ends (same weights from the same seed, same logits)."""

import numpy as np
import pytest
import torch

from companion import tensorflow as ctf
from companion import torch as ct
from numpy_reference import assert_arrays_close, assert_weights_equal, is_torch, scalar

SIZES = dict(vocab=11, d_model=8, heads=2, layers=2, context=7)


def _layer_norm(x, scale, shift):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return scale * (x - mean) / np.sqrt(var + 1e-5) + shift


def _gelu(x):
    from math import erf
    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def numpy_transformer(weights, tokens, heads, norm_position):
    """float64 forward pass from canonical weights, taken in parameter order."""
    remaining = [np.asarray(a, np.float64) for a in weights][::-1]
    take = remaining.pop

    def dense(x):
        weight = take()
        return x @ weight.T + take()

    def layer_norm():
        scale, shift = take(), take()
        return lambda x: _layer_norm(x, scale, shift)

    pre = norm_position == "pre"
    token, position = take(), take()
    x = token[tokens] + position[:tokens.shape[1]]
    batch, steps, d = x.shape
    while len(remaining) > (4 if pre else 2):  # blocks until the final norm and the head
        ln1 = layer_norm()
        h = ln1(x) if pre else x
        q, k, v = (dense(h).reshape(batch, steps, heads, d // heads).transpose(0, 2, 1, 3)
                   for _ in range(3))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
        scores[..., np.triu(np.ones((steps, steps), bool), 1)] = -np.inf
        attn = np.exp(scores - scores.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        mixed = dense((attn @ v).transpose(0, 2, 1, 3).reshape(batch, steps, d))
        x = x + mixed if pre else ln1(x + mixed)
        ln2 = layer_norm()
        out = dense(_gelu(dense(ln2(x) if pre else x)))
        x = x + out if pre else ln2(x + out)
    if pre:
        x = layer_norm()(x)
    logits = dense(x)
    assert not remaining
    return logits


def _logits(backend, model, tokens):
    if is_torch(backend):
        return model(torch.as_tensor(tokens)).detach().numpy()
    return np.asarray(model(tokens))


def _perturbed(backend, model, rng):
    """Larger, non-trivial weights (and LayerNorm shifts, biases) so every term shows."""
    weights = [w + 0.3 * rng.standard_normal(w.shape).astype(np.float32)
               for w in backend.get_weights(model)]
    backend.set_weights(model, weights)
    return weights


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_transformer_matches_numpy(backend, rng, norm_position):
    model = backend.transformer(**SIZES, norm_position=norm_position, seed=1)
    weights = _perturbed(backend, model, rng)
    tokens = rng.integers(0, SIZES["vocab"], (3, 7))
    expected = numpy_transformer(weights, tokens, SIZES["heads"], norm_position)
    assert expected.shape == (3, 7, SIZES["vocab"])
    assert_arrays_close([_logits(backend, model, tokens)], [expected], rtol=1e-4,
                        atol_factor=1e-5, what=norm_position)
    assert_arrays_close([_logits(backend, model, tokens[:, :4])], [expected[:, :4]],
                        rtol=1e-4, atol_factor=1e-5, what="shorter sequence")


def test_causal_attention_matches_torch_sdpa(backend, rng):
    q, k, v = (rng.standard_normal((2, 5, 6)).astype(np.float32) for _ in range(3))
    split = lambda t: torch.as_tensor(t).reshape(2, 5, 3, 2).transpose(1, 2)  # noqa: E731
    expected = torch.nn.functional.scaled_dot_product_attention(
        split(q), split(k), split(v), is_causal=True).transpose(1, 2).reshape(2, 5, 6)
    if is_torch(backend):
        got = backend.causal_attention(*(torch.as_tensor(t) for t in (q, k, v)), 3).numpy()
    else:
        got = np.asarray(backend.causal_attention(q, k, v, 3))
    assert_arrays_close([got], [expected.numpy()])


def test_no_position_sees_the_future(backend, rng):
    model = backend.transformer(**SIZES, seed=2)
    _perturbed(backend, model, rng)
    tokens = rng.integers(0, SIZES["vocab"], (2, 7))
    changed = tokens.copy()
    changed[:, 4:] = (changed[:, 4:] + 1) % SIZES["vocab"]
    before, after = _logits(backend, model, tokens), _logits(backend, model, changed)
    np.testing.assert_array_equal(before[:, :4], after[:, :4])
    assert not np.allclose(before[:, 4:], after[:, 4:])


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_transformer_parity(rng, norm_position):
    models = [b.transformer(**SIZES, norm_position=norm_position, seed=3) for b in (ct, ctf)]
    names = ct.parameter_names(models[0])
    assert names == ctf.parameter_names(models[1])
    assert names[:4] == ["token.weight", "position.weight", "block0_norm1.weight",
                         "block0_norm1.bias"]
    assert ("final_norm.weight" in names) == (norm_position == "pre")
    for a, b in zip(ct.get_weights(models[0]), ctf.get_weights(models[1])):
        np.testing.assert_array_equal(a, b)
    weights = _perturbed(ct, models[0], rng)
    ctf.set_weights(models[1], weights)
    tokens = rng.integers(0, SIZES["vocab"], (4, 6))
    assert_arrays_close([_logits(ct, models[0], tokens)], [_logits(ctf, models[1], tokens)])


def test_initial_weights(backend):
    model = backend.transformer(vocab=50, d_model=64, heads=4, layers=1, context=32, seed=0)
    named = dict(zip(backend.parameter_names(model), backend.get_weights(model)))
    assert named["block0_up.weight"].shape == (256, 64)
    assert named["block0_up.weight"].std() == pytest.approx(0.02, rel=0.02)
    np.testing.assert_array_equal(named["block0_norm2.weight"], np.ones(64))
    np.testing.assert_array_equal(named["head.bias"], np.zeros(50))


@pytest.mark.parametrize("kwargs, match", [
    ({"heads": 3}, "divisible"), ({"layers": 0}, "layers"), ({"vocab": 1.5}, "vocab"),
    ({"norm_position": "sandwich"}, "norm_position"),
])
def test_transformer_rejects_bad_arguments(backend, kwargs, match):
    with pytest.raises(ValueError, match=match):
        backend.transformer(**{**SIZES, **kwargs})


def test_too_long_sequence_is_refused(backend):
    model = backend.transformer(**SIZES, seed=0)
    with pytest.raises(ValueError, match="context=7"):
        _logits(backend, model, np.zeros((1, 8), np.int64))


# ------------------------------------------------ cross-entropy over a sequence's positions


def _sequence_problem(rng, n=6, steps=7):
    tokens = rng.integers(0, SIZES["vocab"], (n, steps))
    labels = rng.integers(0, SIZES["vocab"], (n, steps))
    return tokens, labels


def _direct_loss_and_grads(backend, model, tokens, labels):
    """The framework's own sequence loss: torch's cross_entropy on flattened positions,
    Keras' sparse_categorical_crossentropy (mean over every position)."""
    params = backend.trainable_parameters(model)
    if is_torch(backend):
        logits = model(torch.as_tensor(tokens))
        value = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), torch.as_tensor(labels).reshape(-1))
        grads = torch.autograd.grad(value, params)
        return value.item(), list(grads)
    import keras
    import tensorflow as tf
    with tf.GradientTape() as tape:
        value = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
            labels, model(tokens, training=False), from_logits=True))
    return float(value), [tf.convert_to_tensor(g) for g in tape.gradient(value, params)]


def test_sequence_cross_entropy_matches_the_framework(backend, rng):
    model = backend.transformer(**SIZES, norm_position="post", seed=4)
    _perturbed(backend, model, rng)
    tokens, labels = _sequence_problem(rng)
    value, grads = _direct_loss_and_grads(backend, model, tokens, labels)
    assert scalar(backend.loss_value(model, tokens, labels)) == pytest.approx(value, rel=1e-5)
    got = backend.to_canonical(model, backend.gradients(model, tokens, labels))
    assert_arrays_close(got, backend.to_canonical(model, grads))
    logits = _logits(backend, model, tokens)
    result = backend.evaluate(model, tokens, labels, batch_size=4)  # batches of 4 and 2
    assert result["loss"] == pytest.approx(value, rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))


def test_sequence_cross_entropy_parity_and_training(rng):
    models = [b.transformer(**SIZES, norm_position="pre", seed=5) for b in (ct, ctf)]
    ctf.set_weights(models[1], _perturbed(ct, models[0], rng))
    tokens, labels = _sequence_problem(rng, n=8)
    values = [scalar(b.loss_value(m, tokens, labels)) for b, m in zip((ct, ctf), models)]
    assert values[0] == pytest.approx(values[1], rel=1e-5)
    grads = [b.to_canonical(m, b.gradients(m, tokens, labels))
             for b, m in zip((ct, ctf), models)]
    assert_arrays_close(grads[0], grads[1])
    histories = [b.train(m, tokens, labels, epochs=2, lr=0.05, batch_size=4,
                         clip=b.Clip("global_norm", 1.0), progress=False, seed=1)
                 for b, m in zip((ct, ctf), models)]
    np.testing.assert_allclose(histories[0].loss, histories[1].loss, rtol=1e-4)
    np.testing.assert_allclose(histories[0].accuracy, histories[1].accuracy)
    assert len(histories[0].accuracy) == 4
    assert_arrays_close(ct.get_weights(models[0]), ctf.get_weights(models[1]), rtol=1e-4)


def test_sequence_labels_must_match_the_outputs(backend, rng):
    model = backend.transformer(**SIZES, seed=6)
    tokens, labels = _sequence_problem(rng)
    weights = backend.get_weights(model)
    for bad in (labels[:, :1], labels[:, 0], labels[:, :, None]):
        for function in (backend.loss_value, backend.gradients, backend.evaluate):
            with pytest.raises(ValueError, match="one per row of logits"):
                function(model, tokens, bad)
        with pytest.raises(ValueError, match="one per row of logits"):
            backend.train(model, tokens, bad, epochs=1, lr=0.1, batch_size=3,
                          progress=False)
    bad = labels.copy()
    bad[2, 3] = SIZES["vocab"]
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 11\)"):
        backend.train(model, tokens, bad, epochs=1, lr=0.1, batch_size=3, progress=False)
    assert_weights_equal(weights, backend.get_weights(model))
