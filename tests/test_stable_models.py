"""What Chapter 6 builds on: `mlp(norm=..., residual=...)`, orthogonal initialisation and
`rnn(cell=...)`, in both back ends, against NumPy and the frameworks' own layers, and
across back ends (same weights from the same seed, same outputs)."""

import numpy as np
import pytest
import torch

from companion import tensorflow as ctf
from companion import torch as ct
from companion.core.models import orthogonal
from numpy_reference import activation, assert_arrays_close, forward, is_torch

EPS = 1e-5


def numpy_mlp(weights, x, act, norm, blocks, training=True):
    """float64 forward of ``mlp(norm, residual)`` from canonical weights; BatchNorm with
    batch statistics (training) or the initial running ones (mean 0, variance 1)."""
    step = 2 if norm is None else 4
    layers = [weights[i:i + step] for i in range(0, len(weights), step)]
    h = np.asarray(x, np.float64)
    for i, layer in enumerate(layers[:-1]):
        z = h @ np.asarray(layer[0], np.float64).T + layer[1]
        if norm is not None:
            axis = 0 if norm == "batch" else 1
            mean, var = (z.mean(axis, keepdims=True), z.var(axis, keepdims=True)) if (
                training or norm == "layer") else (0.0, 1.0)
            z = layer[2] * (z - mean) / np.sqrt(var + EPS) + layer[3]
        out = activation(act, z)
        h = h + out if i in blocks else out
    return h @ np.asarray(layers[-1][0], np.float64).T + layers[-1][1]


def _output(backend, model, x, training):
    if is_torch(backend):
        model.train(training)
        out = model(torch.as_tensor(x)).detach().numpy()
        model.eval()
        return out
    return np.asarray(model(x, training=training))


def _randomised(backend, model, rng):
    """Non-trivial gamma, beta and biases, so a misplaced one shows."""
    weights = [w if w.ndim == 2 else (1 + 0.5 * rng.standard_normal(w.shape)).astype(
        np.float32) for w in backend.get_weights(model)]
    backend.set_weights(model, weights)
    return weights


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_normalised_residual_mlp_matches_numpy(backend, rng, norm, residual, training):
    model = backend.mlp([5, 6, 6, 6, 3], activation="tanh", norm=norm, residual=residual,
                        seed=2)
    weights = _randomised(backend, model, rng)
    x = rng.standard_normal((12, 5)).astype(np.float32)
    blocks = [1, 2] if residual else []
    expected = numpy_mlp(weights, x, "tanh", norm, blocks, training)
    assert_arrays_close([_output(backend, model, x, training)], [expected], rtol=1e-4,
                        atol_factor=1e-5, what=f"{norm} {residual}")


def test_normalised_mlp_names_and_residual_blocks(backend):
    model = backend.mlp([4, 4, 4, 2], norm="layer", residual=True, seed=0)
    assert backend.parameter_names(model) == [
        f"{layer}{i}.{kind}" for i in range(2) for layer in ("dense", "norm")
        for kind in ("weight", "bias")] + ["dense2.weight", "dense2.bias"]
    # sizes[0] == hidden width: the first block is residual too (checked against NumPy).
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    expected = numpy_mlp(backend.get_weights(model), x, "relu", "layer", [0, 1])
    assert_arrays_close([forward(backend, model, x)], [expected], rtol=1e-4,
                        atol_factor=1e-5)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_normalised_mlp_parity_outputs_gradients_and_training(norm, rng):
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    models = [b.mlp([5, 8, 8, 8, 3], norm=norm, residual=True, seed=7) for b in (ct, ctf)]
    for a, b in zip(ct.get_weights(models[0]), ctf.get_weights(models[1])):
        np.testing.assert_array_equal(a, b)
    # Inference mode first: a training-mode batch moves the running variances apart
    # (see the next test).
    assert_arrays_close([_output(ct, models[0], x, False)], [_output(ctf, models[1], x, False)])
    grads = [b.to_canonical(m, b.gradients(m, x, y)) for b, m in zip((ct, ctf), models)]
    assert_arrays_close(grads[0], grads[1], rtol=1e-4, what="gradients")
    norms = [b.layer_norms(m, b.gradients(m, x, y)) for b, m in zip((ct, ctf), models)]
    assert list(norms[0]) == list(norms[1]) == [
        "dense0", "norm0", "dense1", "norm1", "dense2", "norm2", "dense3"]
    np.testing.assert_allclose(list(norms[0].values()), list(norms[1].values()), rtol=1e-4)
    assert_arrays_close([_output(ct, models[0], x, True)], [_output(ctf, models[1], x, True)])
    histories = [b.train(m, x, y, epochs=2, lr=0.1, batch_size=8, progress=False)
                 for b, m in zip((ct, ctf), models)]
    np.testing.assert_allclose(histories[0].loss, histories[1].loss, rtol=1e-4)
    assert_arrays_close(ct.get_weights(models[0]), ctf.get_weights(models[1]), rtol=1e-4,
                        atol_factor=1e-5, what="trained weights")


def test_batch_norm_running_statistics_conventions(rng):
    """torch's momentum 0.1 is Keras' 0.9; torch averages the unbiased batch variance,
    Keras the biased one: after one training-mode batch the running variances are
    ``0.9 + 0.1 var * n / (n - 1)`` and ``0.9 + 0.1 var``; with torch's statistics copied
    into Keras the inference outputs agree."""
    n = 10
    x = rng.standard_normal((n, 4)).astype(np.float32)
    tm, km = ct.mlp([4, 6, 2], norm="batch", seed=3), ctf.mlp([4, 6, 2], norm="batch", seed=3)
    _output(ct, tm, x, True)
    _output(ctf, km, x, True)
    w, b = (np.asarray(a, np.float64) for a in ct.get_weights(tm)[:2])
    z = x @ w.T + b
    torch_norm, keras_norm = tm.norm0, km.get_layer("norm0")
    np.testing.assert_allclose(torch_norm.running_mean.numpy(), 0.1 * z.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(keras_norm.moving_mean), 0.1 * z.mean(0), rtol=1e-5)
    np.testing.assert_allclose(torch_norm.running_var.numpy(),
                               0.9 + 0.1 * z.var(0) * n / (n - 1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(keras_norm.moving_variance), 0.9 + 0.1 * z.var(0),
                               rtol=1e-5)
    assert not np.allclose(_output(ct, tm, x, False), _output(ctf, km, x, False), rtol=1e-4)
    keras_norm.moving_variance.assign(torch_norm.running_var.numpy())
    assert_arrays_close([_output(ct, tm, x, False)], [_output(ctf, km, x, False)])


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "group"}, "norm"),
    ({"residual": True, "sizes": [4, 6, 5, 2]}, "equal hidden widths"),
    ({"residual": True, "sizes": [4, 6, 2]}, "widths match"),
    ({"residual": 1}, None),
    ({"init": "uniform"}, "init"),
])
def test_mlp_rejects_bad_structure(backend, kwargs, match):
    kwargs = {"sizes": [4, 6, 6, 2], **kwargs}
    error = TypeError if match is None else ValueError
    with pytest.raises(error, match=match):
        backend.mlp(**kwargs)


# ---------------------------------------------------------------- orthogonal initialisation


@pytest.mark.parametrize("rows, cols", [(7, 7), (4, 9), (9, 4)])
def test_orthogonal_is_orthogonal(rows, cols):
    q = orthogonal(rows, cols, np.random.default_rng(0))
    gram = q @ q.T if rows <= cols else q.T @ q
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=1e-12)


def test_orthogonal_sign_fix_makes_it_haar():
    """Without the sign fix LAPACK's ``Q[0, 0]`` is never positive; Haar's has mean 0 and
    variance ``1/n``: over 400 draws the mean is within 4 standard errors of 0."""
    rng, n, draws = np.random.default_rng(1), 5, 400
    corner = np.array([orthogonal(n, n, rng)[0, 0] for _ in range(draws)])
    assert abs(corner.mean()) < 4 * np.sqrt(1 / n / draws)
    assert 0.3 < (corner > 0).mean() < 0.7


def test_orthogonal_mlp_weights_and_parity(backend):
    weights = backend.get_weights(backend.mlp([6, 10, 10, 3], init="orthogonal", gain=1.5,
                                              seed=4))
    for w in weights[0::2]:
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        np.testing.assert_allclose(gram, 2.25 * np.eye(min(w.shape)), atol=1e-5)
    twin = (ctf if is_torch(backend) else ct).mlp([6, 10, 10, 3], init="orthogonal", gain=1.5,
                                                  seed=4)
    for a, b in zip(weights, (ctf if is_torch(backend) else ct).get_weights(twin)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- gated recurrent cells


def _framework_rnn(cell, weights):
    """``torch.nn.LSTM``/``GRU`` holding canonical weights: the independent oracle."""
    w_ih, w_hh, bias = (torch.as_tensor(w) for w in weights[:3])
    layer = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(
        w_ih.shape[1], w_hh.shape[1], batch_first=True)
    with torch.no_grad():
        layer.weight_ih_l0.copy_(w_ih)
        layer.weight_hh_l0.copy_(w_hh)
        layer.bias_ih_l0.copy_(bias if cell == "lstm" else bias[0])
        layer.bias_hh_l0.copy_(torch.zeros_like(bias) if cell == "lstm" else bias[1])
    return layer


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_rnn_matches_torch_layers(backend, rng, cell):
    model = backend.rnn(3, 5, 2, cell=cell, seed=6)
    weights = backend.get_weights(model)
    weights[2] = (0.5 * rng.standard_normal(weights[2].shape)).astype(np.float32)
    backend.set_weights(model, weights)
    x = rng.standard_normal((4, 9, 3)).astype(np.float32)
    out, _ = _framework_rnn(cell, weights)(torch.as_tensor(x))
    expected = out[:, -1].detach().numpy() @ weights[3].T + weights[4]
    assert_arrays_close([forward(backend, model, x)], [expected], rtol=1e-4, atol_factor=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_rnn_cells_parity(rng, cell):
    models = [b.rnn(3, 6, 2, cell=cell, seed=8) for b in (ct, ctf)]
    assert ct.parameter_names(models[0]) == ctf.parameter_names(models[1])
    weights = ct.get_weights(models[0])
    for a, b in zip(weights, ctf.get_weights(models[1])):
        np.testing.assert_array_equal(a, b)
    weights = [w + 0.1 * rng.standard_normal(w.shape).astype(np.float32) for w in weights]
    for backend, model in zip((ct, ctf), models):
        backend.set_weights(model, weights)
    for a, b in zip(weights, ctf.get_weights(models[1])):  # the gate swap round-trips
        np.testing.assert_array_equal(a, b)
    x = rng.standard_normal((5, 11, 3)).astype(np.float32)
    y = rng.integers(0, 2, 5)
    assert_arrays_close([forward(ct, models[0], x)], [forward(ctf, models[1], x)])
    grads = [b.to_canonical(m, b.gradients(m, x, y)) for b, m in zip((ct, ctf), models)]
    assert_arrays_close(grads[0], grads[1], rtol=1e-4, what=cell)


@pytest.mark.parametrize("cell, gates", [("lstm", 4), ("gru", 3)])
def test_gated_rnn_initialisation(backend, cell, gates):
    w_ih, w_hh, bias, _, _ = backend.get_weights(backend.rnn(2, 8, 1, cell=cell, gain=0.7,
                                                             seed=3))
    assert w_ih.shape == (gates * 8, 2) and w_hh.shape == (gates * 8, 8)
    for block in np.split(w_hh, gates):
        np.testing.assert_allclose(block @ block.T, 0.49 * np.eye(8), atol=1e-5)
    expected = np.zeros((2, 24)) if cell == "gru" else np.r_[np.zeros(8), np.ones(8),
                                                            np.zeros(16)]
    np.testing.assert_array_equal(bias, expected)


def test_rnn_normal_init_statistics(backend):
    w_hh = backend.get_weights(backend.rnn(2, 400, 1, init="normal", gain=1.2, seed=0))[1]
    assert w_hh.std() == pytest.approx(1.2 / np.sqrt(400), rel=0.01)
    assert abs(w_hh.mean()) < 4 * w_hh.std() / np.sqrt(w_hh.size)


@pytest.mark.parametrize("kwargs", [{"cell": "transformer"}, {"init": "he"},
                                    {"cell": "lstm", "nonlinearity": "relu"}])
def test_rnn_rejects_bad_cell_arguments(backend, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        backend.rnn(2, 3, 1, **kwargs)


def test_gru_hessian_parity(rng):
    """The Hessian flattens parameters in the canonical order: Keras' GRU gates must be
    swapped there too (a wrong order permutes rows and columns, far beyond float32 noise)."""
    models = [b.rnn(2, 3, 1, cell="gru", seed=5) for b in (ct, ctf)]
    x = rng.standard_normal((6, 4, 2)).astype(np.float32)
    y = rng.standard_normal((6, 1)).astype(np.float32)
    hessians = [b.hessian(m, x, y, loss="mse") for b, m in zip((ct, ctf), models)]
    assert hessians[0].shape == (67, 67)  # 18 + 27 + 18 + 3 + 1
    assert_arrays_close([hessians[1]], [hessians[0]], rtol=1e-3, atol_factor=1e-4)
