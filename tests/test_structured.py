"""Structured pruning: unit scores against their definitions (Taylor against the
derivative of a gate on each unit), the smaller model against the masked original, and
the two back ends against each other."""

import numpy as np
import pytest

from companion import tensorflow as ctf
from companion import torch as ct

import torch  # noqa: E402 (after the companion)

RNG = np.random.default_rng(0)
X = RNG.standard_normal((48, 6)).astype(np.float32)
Y = RNG.integers(0, 3, 48)
SIZES = [6, 10, 8, 3]


def test_l1_scores_are_the_rows_l1_norms(backend):
    model = backend.mlp(SIZES, seed=0)
    scores = backend.structured_scores(model)
    weights = backend.get_weights(model)
    assert list(scores) == ["dense0", "dense1"]
    for name, w in zip(scores, weights[0:4:2]):
        np.testing.assert_allclose(scores[name], np.abs(w).sum(axis=1), rtol=1e-6)


def gate_derivatives(weights, x, y):
    """d loss / d gate_j at gate = 1, for gates multiplying each hidden pre-activation,
    by autograd on a hand-written forward pass (float64)."""
    params = [torch.tensor(w, dtype=torch.float64) for w in weights]
    gates = [torch.ones(len(params[i + 1]), dtype=torch.float64, requires_grad=True)
             for i in range(0, len(params) - 2, 2)]
    h = torch.tensor(x, dtype=torch.float64)
    for i in range(0, len(params), 2):
        h = h @ params[i].T + params[i + 1]
        if i < len(params) - 2:
            h = torch.relu(gates[i // 2] * h)
    loss = torch.nn.functional.cross_entropy(h, torch.as_tensor(y))
    return [g.numpy() for g in torch.autograd.grad(loss, gates)]


def test_taylor_scores_are_squared_gate_derivatives(backend):
    model = backend.mlp(SIZES, seed=1)
    weights = backend.get_weights(model)
    weights = [w + 0.05 * (w.ndim == 1) for w in weights]  # non-zero biases
    backend.set_weights(model, weights)
    scores = backend.structured_scores(model, X, Y, criterion="taylor", batch_size=16)
    expected = [np.zeros(10), np.zeros(8)]
    for start in range(0, 48, 16):
        batch = gate_derivatives(weights, X[start:start + 16], Y[start:start + 16])
        expected = [e + d ** 2 / 3 for e, d in zip(expected, batch)]
    for name, e in zip(scores, expected):
        np.testing.assert_allclose(scores[name], e, rtol=1e-4, atol=1e-12)


def test_the_smaller_model_computes_the_masked_original(backend):
    model = backend.mlp(SIZES, seed=2)
    scores = backend.structured_scores(model)
    smaller = backend.prune_units(model, scores, 0.5)
    weights = backend.get_weights(model)
    kept_rows = []
    for name, w_index in (("dense0", 0), ("dense1", 2)):
        drop = np.argsort(scores[name], kind="stable")[:len(scores[name]) // 2]
        weights[w_index][drop] = 0
        weights[w_index + 1][drop] = 0
        kept_rows.append(len(scores[name]) - len(drop))
    masked = backend.mlp(SIZES, seed=2)
    backend.set_weights(masked, weights)
    np.testing.assert_allclose(backend.predict(smaller, X), backend.predict(masked, X),
                               rtol=1e-5, atol=1e-6)
    shapes = [w.shape for w in backend.get_weights(smaller)]
    assert shapes == [(5, 6), (5,), (4, 5), (4,), (3, 4), (3,)]
    assert backend.get_weights(model)[0].shape == (10, 6)  # the original is unchanged


def test_structured_pruning_agrees_across_back_ends():
    models = [b.mlp(SIZES, seed=3) for b in (ct, ctf)]
    scores = [b.structured_scores(m, X, Y, criterion="taylor")
              for b, m in zip((ct, ctf), models)]
    for name in scores[0]:
        np.testing.assert_allclose(scores[0][name], scores[1][name], rtol=1e-3,
                                   atol=1e-9)
    smaller = [b.prune_units(m, scores[0], 0.3) for b, m in zip((ct, ctf), models)]
    for a, b in zip(ct.get_weights(smaller[0]), ctf.get_weights(smaller[1])):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    smaller_model = smaller[1]
    history = ctf.train(smaller_model, X, Y, epochs=1, lr=0.1, batch_size=16,
                        progress=False)  # a model like any other
    assert len(history) == 3


@pytest.mark.parametrize("build, match", [
    (lambda b: b.mlp(SIZES, seed=0, norm="batch"), "norm0|Sequential"),
    (lambda b: b.mlp([6, 8, 8, 3], seed=0, residual=True), "Sequential"),
    (lambda b: b.mlp([6, 3], seed=0), "at least two"),
])
def test_models_outside_the_chain_are_refused(backend, build, match):
    with pytest.raises(ValueError, match=match):
        backend.structured_scores(build(backend))


def test_bad_arguments_are_refused(backend):
    model = backend.mlp(SIZES, seed=0)
    scores = backend.structured_scores(model)
    for call, error in (
            (lambda: backend.structured_scores(model, criterion="l2"), ValueError),
            (lambda: backend.structured_scores(model, X, Y), ValueError),
            (lambda: backend.structured_scores(model, criterion="taylor"), ValueError),
            (lambda: backend.prune_units(model, scores, 1.0), ValueError),
            (lambda: backend.prune_units(model, {"dense0": scores["dense0"]}, 0.5),
             ValueError),
            (lambda: backend.prune_units(model, {**scores, "dense0": np.ones(3)}, 0.5),
             ValueError),
            (lambda: backend.prune_units(model, {**scores, "dense0": np.full(10, np.nan)},
                                         0.5), ValueError)):
        with pytest.raises(error):
            call()
