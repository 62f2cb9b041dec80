"""Second-order pruning: the blockwise Woodbury inverse, the OBS update, OBS and OBD on an
exactly quadratic loss, and ``obs_prune`` in both back ends.

Oracles: dense ``numpy.linalg.inv`` of ``lambda I + (1/N) sum_i g_i g_i^T`` per block; the
OBS formulas written out with explicit index sets; the real loss of a linear model under the
mean squared error, which is exactly quadratic in its weights, at its least-squares
minimum; and a NumPy re-implementation of one-shot OBS from per-sample gradients that a
Python loop over single examples computes with ``gradients``.

Tolerances. float64 cases agree to rounding amplified by the conditioning of the inverted
matrices: the Fisher blocks here have condition numbers up to ~1e3 (damping 1e-2 against
eigenvalues up to ~10), so differences of 1e-16 in the gradients become ~1e-13 in the
updated weights (measured); rtol 1e-9 with atol 1e-12 x scale leaves room for other BLAS
builds. The float32 parity check uses the house tolerance of tests/test_parity.py (rtol 1e-5,
atol 1e-6 x scale; measured differences 5e-8 to 1e-7 x scale for seeds 0-4), and requires
equal masks: saliencies that differ by float32 rounding could only swap two weights whose
saliencies tie to 1e-7 at the threshold, which these fixed seeds do not have.
"""

import numpy as np
import pytest

from companion.core import obs as core_obs
from companion import tensorflow as ctf
from companion import torch as ct
from numpy_reference import assert_arrays_close, assert_weights_equal, float64_mlp

RTOL64, ATOL64 = 1e-9, 1e-12


def close(actual, desired, rtol=RTOL64, atol=ATOL64):
    scale = max(float(np.max(np.abs(d))) for d in desired if np.size(d))
    for a, d in zip(actual, desired):
        np.testing.assert_allclose(a, d, rtol=rtol, atol=atol * scale)


# --------------------------------------------------------------------------- NumPy core


@pytest.mark.parametrize("rank", [1, 3, 32])
def test_woodbury_block_inverse_equals_the_dense_inverse_per_block(rng, rank):
    """37 examples in uneven chunks, 10 weights in blocks of 4 (the last one padded): each
    block is inv(lambda I + (1/N) G_b^T G_b), whatever the number of examples per update."""
    n, count, block, damping = 10, 37, 4, 0.1
    g = rng.standard_normal((count, n))
    inverse = core_obs.woodbury_block_inverse([g[:10], g[10:30], g[30:]], n, count, block,
                                                  damping, rank=rank)
    assert inverse.shape == (3, 4, 4)
    for b, start in enumerate(range(0, n, block)):
        cols = g[:, start:start + block]
        dense = np.linalg.inv(damping * np.eye(cols.shape[1]) + cols.T @ cols / count)
        k = cols.shape[1]
        np.testing.assert_allclose(inverse[b, :k, :k], dense, rtol=1e-10, atol=1e-12)
        # padding: its own I / damping, never mixed with the real weights
        np.testing.assert_allclose(inverse[b, k:, k:], np.eye(block - k) / damping)
        np.testing.assert_array_equal(inverse[b, :k, k:], 0.0)


def test_woodbury_rank_one_updates_are_the_textbook_formula(rng):
    """rank=1 is F^-1 <- F^-1 - (F^-1 g)(F^-1 g)^T / (N + g^T F^-1 g), from I / lambda."""
    g = rng.standard_normal((6, 5))
    expected = np.eye(5) / 0.5
    for row in g:
        u = expected @ row
        expected = expected - np.outer(u, u) / (6 + row @ u)
    np.testing.assert_allclose(core_obs.woodbury_block_inverse([g], 5, 6, 5, 0.5, 1)[0],
                               expected, rtol=1e-12)


def test_woodbury_checks_its_examples(rng):
    g = rng.standard_normal((5, 4))
    with pytest.raises(ValueError, match="hold 5 examples, num_samples is 6"):
        core_obs.woodbury_block_inverse([g], 4, 6, 2, 0.1)
    g[3, 1] = np.nan
    with pytest.raises(ValueError, match="examples 0..4 contain nan or inf"):
        core_obs.woodbury_block_inverse([g], 4, 5, 2, 0.1)


def _random_spd(rng, n):
    a = rng.standard_normal((n, n))
    return a @ a.T + n * np.eye(n)


def test_obs_update_is_the_multi_weight_formula(rng):
    """Dense: dw = -H^-1[:, Q] (H^-1[Q, Q])^-1 w_Q, dL = 1/2 w_Q^T (H^-1[Q, Q])^-1 w_Q, and
    Q exactly zero. Blocks: the same formula in each block with its own part of Q."""
    w, inverse = rng.standard_normal(9), _random_spd(rng, 9)
    q = [1, 4, 7]
    pruned = np.isin(np.arange(9), q)
    z = np.linalg.solve(inverse[np.ix_(q, q)], w[q])
    new, increase = core_obs.obs_update(w, inverse, pruned)
    np.testing.assert_array_equal(new[q], 0.0)
    keep = ~pruned
    np.testing.assert_allclose(new[keep], (w - inverse[:, q] @ z)[keep], rtol=1e-12)
    assert increase == pytest.approx(0.5 * w[q] @ z, rel=1e-12)
    assert core_obs.obs_saliency(w, inverse)[4] == pytest.approx(
        w[4] ** 2 / (2 * inverse[4, 4]))

    w = rng.standard_normal(10)
    blocks = np.stack([_random_spd(rng, 4) for _ in range(3)])
    pruned = np.zeros(10, bool)
    pruned[[0, 2, 3, 9]] = True  # two blocks touched, one (weights 4..7) not
    new, increase = core_obs.obs_update(w, blocks, pruned)
    expected, total = w.copy(), 0.0
    for b in range(3):
        index = np.arange(4 * b, min(4 * b + 4, 10))
        q = index[pruned[index]]
        if len(q):
            h = blocks[b][:len(index), :len(index)]
            local = q - 4 * b
            z = np.linalg.solve(h[np.ix_(local, local)], w[q])
            expected[index] -= h[:, local] @ z
            total += 0.5 * w[q] @ z
    expected[pruned] = 0.0
    np.testing.assert_allclose(new, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(new[4:8], w[4:8])
    assert increase == pytest.approx(total, rel=1e-12)


# --------------------------------------------------------------------------- quadratic loss


def quadratic_case(backend):
    """A linear model y ~ W x + b under the mean squared error at its least-squares minimum.

    The loss is exactly quadratic in (W, b), so its Hessian is constant and the second-order
    predictions are exact. Feature 1 has a large scale and a small weight (magnitude
    pruning picks it, wrongly); feature 2 is 0.9 x feature 0 plus a little noise, so
    removing w_0 can be compensated through w_2 (what OBS sees and OBD does not).
    """
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 5))
    x = z * np.array([1.0, 3.0, 1.0, 0.3, 1.0])
    x[:, 2] = 0.9 * x[:, 0] + 0.3 * x[:, 2]
    y = x @ np.array([0.5, 0.2, -0.6, 1.5, 2.0]) + 0.1 + 0.1 * rng.standard_normal(200)
    design = np.c_[x, np.ones(200)]
    theta = np.linalg.lstsq(design, y, rcond=None)[0]
    model = float64_mlp(backend, [5, 1], activation="linear")
    backend.set_weights(model, [theta[:5].reshape(1, 5), theta[5:]])
    y = y.reshape(-1, 1)
    return model, x, y


def loss_of(backend, model, x, y, flat_weights=None):
    if flat_weights is not None:
        backend.set_weights(model, [flat_weights[:5].reshape(1, 5), flat_weights[5:]])
    return float(np.asarray(backend.evaluate(model, x, y, loss="mse")["loss"]))


def test_obs_predicts_the_real_loss_increase_on_a_quadratic(backend):
    """w_q^2 / (2 [H^-1]_qq), with H from `hessian`, is the loss increase after the
    compensating update, for every weight; likewise 1/2 w_Q^T (H^-1[Q, Q])^-1 w_Q for two
    weights at once. The gradient is zero there (a minimum)."""
    model, x, y = quadratic_case(backend)
    gradient = np.concatenate([g.ravel() for g in backend.to_canonical(
        model, backend.gradients(model, x, y, loss="mse"))])
    assert np.max(np.abs(gradient)) < 1e-12
    theta = np.concatenate([w.ravel() for w in backend.get_weights(model)])
    minimum = loss_of(backend, model, x, y)
    inverse = np.linalg.inv(backend.hessian(model, x, y, loss="mse"))
    saliency = core_obs.obs_saliency(theta, inverse)
    for pruned in [np.arange(6) == q for q in range(5)] + [np.isin(np.arange(6), [0, 3])]:
        new, predicted = core_obs.obs_update(theta, inverse, pruned)
        assert np.all(new[pruned] == 0.0)
        real = loss_of(backend, model, x, y, new) - minimum
        assert real == pytest.approx(predicted, rel=1e-8)
        if pruned.sum() == 1:
            assert predicted == pytest.approx(saliency[pruned][0], rel=1e-12)


def test_loss_increase_orders_obs_below_obd_below_magnitude(backend):
    """Each method removes the one weight (of five) it ranks lowest; the real increases are
    OBS 0.0232 < OBD 0.2210 < magnitude 0.3148. OBD's own prediction 1/2 H_qq w_q^2 is exact
    for a weight removed without compensation on a quadratic."""
    model, x, y = quadratic_case(backend)
    theta = np.concatenate([w.ravel() for w in backend.get_weights(model)])
    minimum = loss_of(backend, model, x, y)
    hessian = backend.hessian(model, x, y, loss="mse")
    inverse = np.linalg.inv(hessian)

    def chosen(scores):  # the weight masks_from_scores removes at 1 of 5 (bias not eligible)
        mask = backend.to_canonical(model, backend.masks_from_scores(model, scores, 0.2))[0]
        (q,), = np.nonzero(mask.ravel() == 0)
        return q

    q_obd = chosen(backend.obd_scores(model, x, y, method="exact", loss="mse"))
    q_magnitude = chosen(backend.magnitude_scores(model))
    q_obs = int(np.argmin(core_obs.obs_saliency(theta, inverse)[:5]))
    assert (q_obs, q_obd, q_magnitude) == (0, 0, 1)  # the same weight, different updates

    new, _ = core_obs.obs_update(theta, inverse, np.arange(6) == q_obs)
    obs = loss_of(backend, model, x, y, new) - minimum
    increases = {}
    for name, q in (("obd", q_obd), ("magnitude", q_magnitude)):
        increases[name] = loss_of(backend, model, x, y, np.where(np.arange(6) == q, 0.0,
                                                                 theta)) - minimum
        assert increases[name] == pytest.approx(0.5 * hessian[q, q] * theta[q] ** 2, rel=1e-8)
    assert obs == pytest.approx(0.0232, abs=1e-4)
    assert increases["obd"] == pytest.approx(0.2210, abs=1e-4)
    assert increases["magnitude"] == pytest.approx(0.3148, abs=1e-4)
    assert obs < increases["obd"] < increases["magnitude"]


# --------------------------------------------------------------------------- obs_prune

SIZES = [5, 8, 3]  # weights 8*5 + 3*8 = 64, in blocks of 7: 10 blocks, the last one padded


def reference_obs(backend, model, x, y, sparsity, damping, block_size):
    """One-shot OBS in plain NumPy: per-sample gradients from a loop over single examples,
    dense per-block inverses, a stable global ranking, the update block by block."""
    weights = backend.get_weights(model)
    eligible = [i for i, w in enumerate(weights) if w.ndim >= 2]
    g = np.stack([np.concatenate([a.ravel() for i, a in enumerate(backend.to_canonical(
        model, backend.gradients(model, x[k:k + 1], y[k:k + 1]))) if i in eligible])
        for k in range(len(x))])
    w = np.concatenate([weights[i].ravel() for i in eligible])
    n = len(w)
    inverses = []
    for start in range(0, n, block_size):
        cols = g[:, start:start + block_size]
        inverses.append(np.linalg.inv(damping * np.eye(cols.shape[1]) +
                                      cols.T @ cols / len(x)))
    diagonal = np.concatenate([np.diag(h) for h in inverses])
    saliency = w ** 2 / (2 * diagonal)
    pruned = np.zeros(n, bool)
    pruned[np.argsort(saliency, kind="stable")[:round(sparsity * n)]] = True
    new = w.copy()
    for b, h in enumerate(inverses):
        index = np.arange(b * block_size, min(n, (b + 1) * block_size))
        local = np.flatnonzero(pruned[index])
        if len(local):
            new[index] -= h[:, local] @ np.linalg.solve(h[np.ix_(local, local)],
                                                        w[index][local])
    new[pruned] = 0.0
    expected, offset = list(weights), 0
    for i in eligible:
        expected[i] = new[offset:offset + weights[i].size].reshape(weights[i].shape)
        offset += weights[i].size
    return expected, pruned


def test_obs_prune_matches_a_numpy_reference(backend, rng):
    model = float64_mlp(backend, SIZES)
    x, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    expected, pruned = reference_obs(backend, model, x, y, 0.6, 1e-2, 7)
    masks = backend.obs_prune(model, x, y, 0.6, damping=1e-2, block_size=7, batch_size=9)
    after = backend.get_weights(model)
    close(after, expected)
    canonical = backend.to_canonical(model, masks)
    assert canonical[1] is None and canonical[3] is None  # biases: neither pruned nor moved
    np.testing.assert_array_equal(after[1], expected[1])
    np.testing.assert_array_equal(np.concatenate([canonical[0].ravel(), canonical[2].ravel()]),
                                  (~pruned).astype(np.float32))
    assert int(pruned.sum()) == round(0.6 * 64)
    for weight, mask in zip(after, canonical):
        if mask is not None:
            assert np.all(weight[mask == 0] == 0.0)  # exactly zero


def test_obs_prune_returns_masks_like_masks_from_scores(backend, rng):
    """Float32 model, default arguments: masks of the parameters' shapes and dtype, 0/1,
    None for biases, exactly round(sparsity * n) zeros; sparsity 0 changes nothing."""
    model = backend.mlp([6, 10, 4], seed=3)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    y = rng.integers(0, 4, 50)
    reference = backend.masks_from_scores(model, backend.magnitude_scores(model), 0.3)
    before = backend.get_weights(model)
    masks = backend.obs_prune(model, x, y, 0.0)
    assert_weights_equal(before, backend.get_weights(model))
    masks = backend.obs_prune(model, x, y, 0.3)
    for mask, like in zip(masks, reference):
        assert (mask is None) == (like is None)
        if mask is not None:
            assert tuple(mask.shape) == tuple(like.shape) and mask.dtype == like.dtype
            assert set(np.unique(np.asarray(mask))) <= {0.0, 1.0}
    zeros = sum(int((np.asarray(m) == 0).sum()) for m in masks if m is not None)
    assert zeros == round(0.3 * (6 * 10 + 10 * 4))


def assert_same_obs_masks(torch_model, tf_model, x, y, damping):
    """Prune both twins to 50% with OBS; their masks must be identical."""
    torch_masks = ct.to_canonical(torch_model, ct.obs_prune(torch_model, x, y, 0.5,
                                                            damping=damping, block_size=16))
    tf_masks = ctf.to_canonical(tf_model, ctf.obs_prune(tf_model, x, y, 0.5, damping=damping,
                                                        block_size=16))
    for a, b in zip(torch_masks, tf_masks):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_obs_prune_agrees_across_back_ends_in_float64(rng):
    torch_model, tf_model = float64_mlp(ct, SIZES, seed=1), float64_mlp(ctf, SIZES, seed=2)
    ctf.set_weights(tf_model, ct.get_weights(torch_model))
    x, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    assert_same_obs_masks(torch_model, tf_model, x, y, damping=1e-2)
    close(ctf.get_weights(tf_model), ct.get_weights(torch_model))


def test_obs_prune_agrees_across_back_ends_in_float32(rng):
    sizes = [10, 16, 4]
    torch_model, tf_model = ct.mlp(sizes, seed=4), ctf.mlp(sizes, seed=4)
    x = rng.standard_normal((64, 10)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    assert_same_obs_masks(torch_model, tf_model, x, y, damping=1e-3)
    assert_arrays_close(ctf.get_weights(tf_model), ct.get_weights(torch_model),
                        what="OBS weights")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, error, kind", [
    (dict(sparsity=1.0), r"sparsity must be in \[0, 1\), got 1.0", ValueError),
    (dict(sparsity=-0.1), r"sparsity must be in \[0, 1\)", ValueError),
    (dict(sparsity="0.5"), "sparsity must be a number in", TypeError),
    (dict(damping=0.0), "damping must be a finite number > 0, got 0.0", ValueError),
    (dict(damping=-1e-3), "damping must be a finite number > 0", ValueError),
    (dict(damping=float("nan")), "damping must be a finite number > 0", ValueError),
    (dict(damping="small"), "damping must be a real number", TypeError),
    (dict(block_size=0), "block_size must be an integer >= 1, got 0", ValueError),
    (dict(block_size=2.5), "block_size must be an integer >= 1, got 2.5", ValueError),
    (dict(batch_size=0), "batch_size must be an integer >= 1", ValueError),
    (dict(max_bytes=1000), "OBS with 64 weights in blocks of 128 .* needs about", ValueError),
    (dict(loss="hinge"), "unknown loss 'hinge'", ValueError),
    (dict(nan_inputs=True), "contain nan or inf", ValueError),
    (dict(short_labels=True), "same number of examples", ValueError),
])
def test_bad_arguments_raise_and_leave_the_model_unchanged(backend, rng, kwargs, error, kind):
    model = backend.mlp(SIZES, seed=7)
    x = rng.standard_normal((20, 5)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    kwargs = dict(kwargs)  # the parameter is shared by both back ends' runs
    if kwargs.pop("nan_inputs", False):
        x[4, 2] = np.nan  # found only once the gradients are computed
    if kwargs.pop("short_labels", False):
        y = y[:-1]
    before = backend.get_weights(model)
    with pytest.raises(kind, match=error):
        backend.obs_prune(model, x, y, **(dict(sparsity=0.5) | kwargs))
    assert_weights_equal(before, backend.get_weights(model))
