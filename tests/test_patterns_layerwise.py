"""N:M masks and Wanda's scores: against loops and a NumPy forward pass, across back ends,
with data sources, and with bad input refused."""

import numpy as np
import pytest

from companion import tensorflow as ctf
from companion import torch as ct
from companion.core.patterns import nm_mask

import tensorflow as tf  # noqa: E402 (after the companion)
import torch  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.standard_normal((50, 8)).astype(np.float32)
Y = RNG.integers(0, 4, 50)


def nm_mask_by_loops(scores, n, m):
    flat = scores.reshape(scores.shape[0], -1)
    mask = np.ones_like(flat)
    for row in range(flat.shape[0]):
        for start in range(0, flat.shape[1], m):
            group = [(flat[row, start + k], k) for k in range(m)]
            for _, k in sorted(group)[:m - n]:  # lowest first, then earlier position
                mask[row, start + k] = 0
    return mask.reshape(scores.shape)


@pytest.mark.parametrize("n, m, shape", [(2, 4, (6, 8)), (1, 4, (3, 12)), (2, 8, (4, 16)),
                                         (3, 4, (2, 3, 4, 2))])
def test_nm_mask_equals_the_loop(n, m, shape):
    scores = np.random.default_rng(n + m).standard_normal(shape).astype(np.float32)
    mask = nm_mask(scores, n, m)
    np.testing.assert_array_equal(mask, nm_mask_by_loops(scores, n, m))
    groups = mask.reshape(shape[0], -1, m)
    assert np.all(groups.sum(axis=-1) == n)


def test_nm_ties_drop_the_earlier_positions():
    mask = nm_mask(np.ones((1, 4)), 2, 4)
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1]])


def test_nm_masks_agree_across_back_ends_and_prune_exactly():
    models = [b.mlp([8, 12, 4], seed=0) for b in (ct, ctf)]
    masks = [b.to_canonical(model, b.nm_masks(model, b.magnitude_scores(model)))
             for b, model in zip((ct, ctf), models)]
    for a, b in zip(*masks):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    weights = ct.get_weights(models[0])
    for w, mask in zip(weights, masks[0]):
        if mask is not None:
            np.testing.assert_array_equal(mask, nm_mask_by_loops(np.abs(w), 2, 4))
    ct.apply_masks(models[0], ct.nm_masks(models[0], ct.magnitude_scores(models[0])))
    report = ct.sparsity_report(models[0])
    assert report.weights == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, error", [({"n": 4, "m": 4}, ValueError),
                                           ({"n": 0, "m": 4}, ValueError),
                                           ({"n": True, "m": 4}, TypeError),
                                           ({"n": 2, "m": 4.0}, TypeError),
                                           ({"n": 2, "m": 5}, ValueError)])
def test_nm_masks_refuse_bad_arguments(backend, kwargs, error):
    model = backend.mlp([8, 12, 4], seed=0)
    with pytest.raises(error):
        backend.nm_masks(model, backend.magnitude_scores(model), **kwargs)


def numpy_wanda(weights, x):
    """|W| * ||inputs_j|| of each dense layer, from a float64 forward pass."""
    scores, h = [], x.astype(np.float64)
    pairs = list(zip(weights[::2], weights[1::2]))
    for i, (w, b) in enumerate(pairs):
        scores += [np.abs(w) * np.linalg.norm(h, axis=0)[None, :], None]
        h = h @ w.T + b
        if i < len(pairs) - 1:
            h = np.maximum(h, 0)
    return scores


def test_wanda_scores_equal_a_numpy_forward_pass(backend):
    model = backend.mlp([8, 12, 6, 4], seed=1)
    weights = backend.get_weights(model)
    weights = [w + 0.1 * (w.ndim == 1) for w in weights]  # non-zero biases
    backend.set_weights(model, weights)
    ours = backend.to_canonical(model, backend.wanda_scores(model, X, batch_size=7))
    for a, b in zip(ours, numpy_wanda(weights, X)):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-5)


def test_wanda_scores_agree_across_back_ends_on_the_transformer():
    tokens = np.random.default_rng(1).integers(0, 10, (20, 6)).astype(np.float32)
    models = [b.transformer(10, 8, 2, 2, 6, seed=0) for b in (ct, ctf)]
    scores = [b.to_canonical(model, b.wanda_scores(model, tokens))
              for b, model in zip((ct, ctf), models)]
    scored = 0
    for a, b in zip(*scores):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * b.max())
            scored += 1
    assert scored == 13  # 6 projections per block, and the head


def test_wanda_scores_read_data_sources():
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(Y)),
        batch_size=16)
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(16)
    for backend, source in ((ct, loader), (ctf, dataset)):
        model = backend.mlp([8, 12, 4], seed=0)
        for a, b in zip(backend.wanda_scores(model, source),
                        backend.wanda_scores(model, X)):
            if a is not None:
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_wanda_scores_change_nothing_and_leave_no_hook():
    model = ct.mlp([8, 12, 4], seed=0, norm="batch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ct.wanda_scores(model, X)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(not m._forward_hooks for m in model.modules())
    keras_model = ctf.mlp([8, 12, 4], seed=0)
    with pytest.raises(ValueError):
        ctf.wanda_scores(keras_model, X[:, :5])  # wrong width: fails inside the pass
    assert all("call" not in vars(layer) for layer in keras_model.layers)


def test_wanda_scores_need_dense_layers(backend):
    model = backend.rnn(2, 4, 1, seed=0)
    sequence = np.zeros((3, 5, 2), dtype=np.float32)
    scores = backend.wanda_scores(model, sequence)  # the read-out is dense
    assert sum(s is not None for s in scores) == 1
    with pytest.raises(ValueError, match="batch_size"):
        backend.wanda_scores(model, sequence, batch_size=0)


def least_squares_rows(weight, inputs, mask, damping=0.01):
    """The optimum of ||X w - X w'||^2 + lambda ||w - w'||^2 over w' with the mask's
    zeros, row by row: w'_K = H_KK^-1 (H w)_K."""
    gram = inputs.T.astype(np.float64) @ inputs
    h = gram + damping * np.mean(np.diag(gram)) * np.eye(len(gram))
    out = np.zeros_like(weight, dtype=np.float64)
    for row in range(len(weight)):
        kept = mask[row].astype(bool)
        out[row, kept] = np.linalg.solve(h[np.ix_(kept, kept)], (h @ weight[row])[kept])
    return out


def test_layerwise_obs_ends_at_the_least_squares_optimum_of_its_masks(backend):
    model = backend.mlp([8, 12, 6, 4], seed=2)
    dense = backend.get_weights(model)
    masks = backend.to_canonical(model, backend.layerwise_obs_prune(model, X, 0.5,
                                                                    batch_size=16))
    pruned = backend.get_weights(model)
    inputs = X.astype(np.float64)
    for i in (0, 2, 4):
        assert np.all((masks[i] == 0).sum(axis=1) == round(0.5 * dense[i].shape[1]))
        np.testing.assert_array_equal(pruned[i][masks[i] == 0], 0)
        expected = least_squares_rows(dense[i], inputs, masks[i])
        np.testing.assert_allclose(pruned[i], expected, rtol=1e-3, atol=1e-5)
        np.testing.assert_array_equal(pruned[i + 1], dense[i + 1])  # biases untouched
        # the next layer sees the outputs of this one, pruned
        inputs = inputs @ pruned[i].T.astype(np.float64) + pruned[i + 1]
        inputs = np.maximum(inputs, 0)


def test_layerwise_obs_agrees_across_back_ends_and_beats_magnitude():
    models = [b.mlp([8, 12, 4], seed=3) for b in (ct, ctf)]
    dense = ct.get_weights(models[0])
    masks = [b.to_canonical(m, b.layerwise_obs_prune(m, X, 0.5))
             for b, m in zip((ct, ctf), models)]
    for a, b in zip(*masks):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    for a, b in zip(ct.get_weights(models[0]), ctf.get_weights(models[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # First layer: the output it reconstructs, against magnitude's rows at 50%.
    w, obs = dense[0], ct.get_weights(models[0])[0]
    magnitude = w * (np.abs(w) >= np.sort(np.abs(w), axis=1)[:, [4]])  # 4 of 8
    error = {name: np.sum((X @ (w - v).T) ** 2) for name, v in
             (("obs", obs), ("magnitude", magnitude))}
    assert error["obs"] < error["magnitude"]


def test_layerwise_obs_refuses_bad_input_and_changes_nothing(backend):
    model = backend.mlp([8, 12, 4], seed=0)
    before = backend.get_weights(model)
    for kwargs, error in (({"sparsity": 1.0}, ValueError),
                          ({"sparsity": 0.5, "damping": 0.0}, ValueError),
                          ({"sparsity": 0.5, "batch_size": 0}, ValueError)):
        with pytest.raises(error):
            backend.layerwise_obs_prune(model, X, **kwargs)
    with pytest.raises((ValueError, RuntimeError)):  # the framework's own shape error
        backend.layerwise_obs_prune(model, X[:, :5], 0.5)
    for a, b in zip(before, backend.get_weights(model)):
        np.testing.assert_array_equal(a, b)


def test_layerwise_obs_is_all_or_nothing_when_a_later_layer_fails():
    class Unused(torch.nn.Module):  # its second layer never sees the data
        def __init__(self):
            super().__init__()
            self.first, self.never = torch.nn.Linear(8, 4), torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.first(x)

    model = Unused()
    before = ct.get_weights(model)
    with pytest.raises(ValueError, match="not called"):
        ct.layerwise_obs_prune(model, X, 0.5)
    for a, b in zip(before, ct.get_weights(model)):
        np.testing.assert_array_equal(a, b)
