"""Curvature in both back ends: Hessian-vector products, the dense Hessian, its diagonal
(exact, Hutchinson, empirical Fisher), Hutchinson's trace and power iteration.

Oracles: the dense Hessian of ``torch.autograd.functional.hessian`` (PyTorch) and of nested
``tf.GradientTape``\\ s entry by entry (TensorFlow), both put in the canonical order by the
test itself; per-sample gradients from a Python loop over single examples; ``numpy.linalg.
eigh``; the exact variance of Hutchinson's estimators. The exact cases run in float64
(``model.double()``; Keras models built under the float64 dtype policy), on a 4-6-3 MLP
with 51 parameters.

Tolerances. In float64 (unit roundoff 1.1e-16) the back ends and the oracles sum in different
orders; the measured differences are below 1e-15 x the largest entry for these models, so
rtol 1e-10 with atol 1e-12 x the largest entry leaves four orders of magnitude for other
BLAS builds and still catches any wrong term (an error of one term is ~1e-2 here). The
float32 parity check uses the house tolerance of tests/test_parity.py (rtol 1e-5, atol
1e-6 x scale): entries of H are sums over 64 examples whose float32 rounding (6e-8 each)
the two frameworks order differently.
"""

import numpy as np
import pytest
import tensorflow as tf
import torch
from torch.func import functional_call

from companion.core import curvature as core_curvature
from companion import tensorflow as ctf
from companion import torch as ct
from numpy_reference import (assert_arrays_close, assert_weights_equal, float64_mlp,
                             is_torch)

SIZES = [4, 6, 3]  # 4*6 + 6 + 6*3 + 3 = 51 parameters
N_PARAMS = 51
RTOL64, ATOL64 = 1e-10, 1e-12


def make_data(rng, n=20, loss="cross_entropy", sizes=SIZES):
    x = rng.standard_normal((n, sizes[0]))
    if loss == "cross_entropy":
        return x, rng.integers(0, sizes[-1], n)
    return x, rng.standard_normal((n, sizes[-1]))


def flat(backend, model, tensors) -> np.ndarray:
    """Tensors aligned with the parameters as one vector in the canonical order."""
    return np.concatenate([a.ravel() for a in backend.to_canonical(model, tensors)])


def canonical_positions(backend, model) -> np.ndarray:
    """For the test's own mapping: position in the framework's flattening of each canonical
    entry (Dense kernels are stored (in, out) by Keras, (out, in) canonically)."""
    order, offset = [], 0
    for param in backend.trainable_parameters(model):
        shape = tuple(param.shape)
        index = np.arange(offset, offset + int(np.prod(shape))).reshape(shape)
        offset += index.size
        order.append((index if is_torch(backend) or index.ndim == 1 else index.T).ravel())
    return np.concatenate(order)


def dense_hessian_oracle(backend, model, x, y, loss="cross_entropy") -> np.ndarray:
    """H in the canonical order, computed independently of companion's curvature code."""
    if is_torch(backend):
        params = tuple(p.detach() for p in backend.trainable_parameters(model))
        names = backend.parameter_names(model)
        xt, yt = torch.as_tensor(x).to(params[0].device), torch.as_tensor(y).to(params[0].device)

        def mean_loss(*weights):
            out = functional_call(model, dict(zip(names, weights)), (xt,))
            if loss == "cross_entropy":
                return torch.nn.functional.cross_entropy(out, yt)
            return torch.mean((out - yt) ** 2)

        blocks = torch.autograd.functional.hessian(mean_loss, params)
        sizes = [p.numel() for p in params]
        native = np.block([[blocks[i][j].reshape(sizes[i], sizes[j]).cpu().numpy()
                            for j in range(len(sizes))] for i in range(len(sizes))])
    else:
        variables = backend.trainable_parameters(model)
        xt = tf.constant(x)
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                out = model(xt)
                if loss == "cross_entropy":
                    value = tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(tf.constant(y), out))
                else:
                    value = tf.reduce_mean((out - tf.constant(y)) ** 2)
            grads = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(value, variables)],
                              0)
            entries = [grads[i] for i in range(int(grads.shape[0]))]
        native = np.stack([np.concatenate([np.ravel(h) for h in outer.gradient(e, variables)])
                           for e in entries])
        del outer
    order = canonical_positions(backend, model)
    return native[np.ix_(order, order)]


@pytest.fixture
def small(backend, rng):
    """A float64 4-6-3 tanh MLP, 20 examples and the oracle Hessian (cross-entropy)."""
    model = float64_mlp(backend, SIZES)
    x, y = make_data(rng)
    return model, x, y, dense_hessian_oracle(backend, model, x, y)


def close(actual, desired):
    np.testing.assert_allclose(actual, desired, rtol=RTOL64,
                               atol=ATOL64 * float(np.max(np.abs(desired))))


# --------------------------------------------------------------------------- exact quantities


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_hessian_matches_the_dense_oracle(backend, rng, loss):
    model = float64_mlp(backend, SIZES)
    x, y = make_data(rng, loss=loss)
    oracle = dense_hessian_oracle(backend, model, x, y, loss)
    hessian = backend.hessian(model, x, y, loss=loss)
    assert hessian.shape == (N_PARAMS, N_PARAMS) and hessian.dtype == np.float64
    close(hessian, oracle)
    close(hessian, hessian.T)


def test_hvp_matches_the_dense_hessian(backend, small, rng):
    model, x, y, oracle = small
    v = [rng.standard_normal(w.shape) for w in backend.get_weights(model)]
    product = backend.hvp(model, x, y, backend.from_canonical(model, v))
    assert [tuple(p.shape) for p in product] == [
        tuple(p.shape) for p in backend.trainable_parameters(model)]
    close(flat(backend, model, product), oracle @ np.concatenate([a.ravel() for a in v]))


def test_exact_diagonal_and_obd_scores_match_the_dense_hessian(backend, small):
    model, x, y, oracle = small
    diagonal = backend.hessian_diagonal(model, x, y, method="exact")
    close(flat(backend, model, diagonal), np.diag(oracle))
    weights = np.concatenate([w.ravel() for w in backend.get_weights(model)])
    scores = backend.obd_scores(model, x, y, method="exact")
    close(flat(backend, model, scores), 0.5 * np.diag(oracle) * weights ** 2)
    masks = backend.to_canonical(model, backend.masks_from_scores(model, scores, 0.5))
    assert masks[1] is None and masks[0].shape == (6, 4)  # usable as any score list


def test_power_iteration_agrees_with_eigh(backend, small):
    model, x, y, oracle = small
    eigenvalues, eigenvectors = np.linalg.eigh(oracle)
    top = np.argmax(np.abs(eigenvalues))
    value, vector = backend.top_eigenvalue(model, x, y, iterations=3000, tol=1e-13,
                                           return_vector=True)
    assert isinstance(value, float)
    assert value == pytest.approx(eigenvalues[top], rel=1e-9)
    v = flat(backend, model, vector)
    assert np.linalg.norm(v) == pytest.approx(1.0)
    # the eigenvector converges as the square root of the eigenvalue's error
    assert min(np.linalg.norm(v - eigenvectors[:, top]),
               np.linalg.norm(v + eigenvectors[:, top])) < 1e-4
    assert backend.top_eigenvalue(model, x, y, iterations=3000, tol=1e-13) == value


def test_fisher_diagonal_matches_a_loop_over_examples(backend, rng):
    """(1/N) sum_i g_i^2 with g_i from `gradients` on one example at a time; chunks of 7
    examples (the last one partial) give the same as one chunk."""
    model = float64_mlp(backend, SIZES)
    for loss in ("cross_entropy", "mse"):
        x, y = make_data(rng, n=23, loss=loss)
        per_sample = np.stack([flat(backend, model, backend.gradients(
            model, x[i:i + 1], y[i:i + 1], loss)) for i in range(len(x))])
        expected = np.mean(per_sample ** 2, axis=0)
        for batch_size in (7, 256):
            diagonal = backend.hessian_diagonal(model, x, y, method="fisher", loss=loss,
                                                batch_size=batch_size)
            close(flat(backend, model, diagonal), expected)


# --------------------------------------------------------------------------- estimators


def test_hutchinson_error_shrinks_as_the_probes_grow(backend, small):
    """Over seeds 0..9, the mean squared error of Hutchinson's diagonal and trace is close to
    its exact value, (1/S) sum_q sum_{j != q} H_qj^2 and (2/S) sum_{j != k} H_jk^2, for
    S = 4 and S = 64 probes: 16x more probes, 16x less squared error.

    Fixed seeds make the check deterministic; the bands are statistical. The diagonal's
    error sums 51 coordinates and concentrates: within a factor 2 (measured 0.89-0.90 of
    the exact value). The trace's is a mean of only 10 squared scalars, whose spread is
    about +-45 %: within a factor 4 (measured 1.5-1.75)."""
    model, x, y, oracle = small
    off = oracle - np.diag(np.diag(oracle))
    exact_diagonal, exact_trace = np.diag(oracle), np.trace(oracle)
    diagonal_errors, trace_errors = {}, {}
    for samples in (4, 64):
        diagonal_error, trace_error = [], []
        for seed in range(10):
            estimate = flat(backend, model, backend.hessian_diagonal(
                model, x, y, method="hutchinson", samples=samples, seed=seed))
            trace = backend.hutchinson_trace(model, x, y, samples=samples, seed=seed)
            assert trace == pytest.approx(estimate.sum(), rel=1e-12)  # the same probes
            diagonal_error.append(np.sum((estimate - exact_diagonal) ** 2))
            trace_error.append((trace - exact_trace) ** 2)
        diagonal_errors[samples] = np.mean(diagonal_error)
        trace_errors[samples] = np.mean(trace_error)
        assert 0.5 < diagonal_errors[samples] / (np.sum(off ** 2) / samples) < 2
        assert 0.25 < trace_errors[samples] / (2 * np.sum(off ** 2) / samples) < 4
    assert diagonal_errors[64] < diagonal_errors[4] / 4
    assert trace_errors[64] < trace_errors[4] / 4


def test_probes_are_drawn_in_numpy_in_the_canonical_order(backend, small):
    """Hutchinson with S probes is exactly (1/S) sum_s v_s * (H v_s) for the NumPy probes
    of core_curvature.rademacher_probes, whatever the framework's own layout."""
    model, x, y, oracle = small
    probes = list(core_curvature.rademacher_probes(N_PARAMS, 3, seed=5))
    expected = np.mean([v * (oracle @ v) for v in probes], axis=0)
    estimate = backend.hessian_diagonal(model, x, y, method="hutchinson", samples=3, seed=5)
    close(flat(backend, model, estimate), expected)


# --------------------------------------------------------------------------- parity


def test_curvature_agrees_across_back_ends_in_float64(rng):
    """Same weights, same data, same probes: every quantity agrees to float64 rounding."""
    torch_model, tf_model = float64_mlp(ct, SIZES, seed=1), float64_mlp(ctf, SIZES, seed=2)
    ctf.set_weights(tf_model, ct.get_weights(torch_model))
    x, y = make_data(rng)
    close(ctf.hessian(tf_model, x, y), ct.hessian(torch_model, x, y))
    v = [rng.standard_normal(w.shape) for w in ct.get_weights(torch_model)]
    close(flat(ctf, tf_model, ctf.hvp(tf_model, x, y, ctf.from_canonical(tf_model, v))),
          flat(ct, torch_model, ct.hvp(torch_model, x, y, ct.from_canonical(torch_model, v))))
    for method in ("exact", "hutchinson", "fisher"):
        close(flat(ctf, tf_model, ctf.hessian_diagonal(tf_model, x, y, method, samples=20)),
              flat(ct, torch_model, ct.hessian_diagonal(torch_model, x, y, method,
                                                        samples=20)))
        close(flat(ctf, tf_model, ctf.obd_scores(tf_model, x, y, method, samples=20)),
              flat(ct, torch_model, ct.obd_scores(torch_model, x, y, method, samples=20)))
    assert ctf.hutchinson_trace(tf_model, x, y, samples=20) == pytest.approx(
        ct.hutchinson_trace(torch_model, x, y, samples=20), rel=RTOL64)
    assert ctf.top_eigenvalue(tf_model, x, y) == pytest.approx(
        ct.top_eigenvalue(torch_model, x, y), rel=RTOL64)


def test_curvature_agrees_across_back_ends_in_float32(rng):
    """The default float32 ReLU MLP: the house tolerance of the parity tests."""
    sizes = [10, 8, 4]
    torch_model, tf_model = ct.mlp(sizes, seed=1), ctf.mlp(sizes, seed=2)
    ctf.set_weights(tf_model, ct.get_weights(torch_model))
    x, y = make_data(rng, n=64, sizes=sizes)
    x = x.astype(np.float32)
    assert_arrays_close([ctf.hessian(tf_model, x, y)], [ct.hessian(torch_model, x, y)],
                        what="hessian")
    for method in ("hutchinson", "fisher"):
        assert_arrays_close(
            ctf.to_canonical(tf_model, ctf.hessian_diagonal(tf_model, x, y, method)),
            ct.to_canonical(torch_model, ct.hessian_diagonal(torch_model, x, y, method)),
            what=method)


def test_recurrent_models_work_and_agree_across_back_ends(rng):
    """The RNN (PyTorch's loop, Keras' SimpleRNN while loop): the Hessian, the Fisher
    diagonal and OBS agree in float32 to the house tolerance. (TensorFlow cannot vectorise
    the second derivative of the while loop with pfor; the Hessian's rows use a loop.)"""
    torch_model, tf_model = ct.rnn(2, 4, 1, seed=0), ctf.rnn(2, 4, 1, seed=0)
    x = rng.standard_normal((16, 5, 2)).astype(np.float32)
    y = rng.standard_normal((16, 1)).astype(np.float32)
    assert_arrays_close([ctf.hessian(tf_model, x, y, loss="mse")],
                        [ct.hessian(torch_model, x, y, loss="mse")], what="hessian")
    assert_arrays_close(
        ctf.to_canonical(tf_model, ctf.hessian_diagonal(tf_model, x, y, "fisher", loss="mse")),
        ct.to_canonical(torch_model, ct.hessian_diagonal(torch_model, x, y, "fisher",
                                                         loss="mse")), what="fisher")
    torch_masks = ct.obs_prune(torch_model, x, y, 0.5, loss="mse", block_size=8)
    tf_masks = ctf.obs_prune(tf_model, x, y, 0.5, loss="mse", block_size=8)
    for a, b in zip(ct.to_canonical(torch_model, torch_masks),
                    ctf.to_canonical(tf_model, tf_masks)):
        assert (a is None and b is None) or np.array_equal(a, b)
    assert_arrays_close(ctf.get_weights(tf_model), ct.get_weights(torch_model), what="OBS")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, error", [
    (lambda b, m, x, y: b.hessian_diagonal(m, x, y, method="gauss"),
     "unknown method 'gauss'; allowed: 'exact', 'hutchinson', 'fisher'"),
    (lambda b, m, x, y: b.hessian_diagonal(m, x, y, method="hutchinson", samples=0),
     "samples must be an integer >= 1, got 0"),
    (lambda b, m, x, y: b.hutchinson_trace(m, x, y, samples=2.5),
     "samples must be an integer >= 1, got 2.5"),
    (lambda b, m, x, y: b.hutchinson_trace(m, x, y, seed=-1),
     "seed must be an integer >= 0, got -1"),
    (lambda b, m, x, y: b.top_eigenvalue(m, x, y, iterations=0),
     "iterations must be an integer >= 1"),
    (lambda b, m, x, y: b.top_eigenvalue(m, x, y, tol=0.0), "tol must be a finite number > 0"),
    (lambda b, m, x, y: b.obd_scores(m, x, y, method="diagonal"), "unknown method"),
    (lambda b, m, x, y: b.hessian(m, x, y, loss="hinge"), "unknown loss 'hinge'"),
    (lambda b, m, x, y: b.hessian(m, x, y[:-1]), "same number of examples"),
    (lambda b, m, x, y: b.hessian(m, x, y, max_bytes=1000),
     "model with 51 parameters has 51 x 51 entries .* more than max_bytes"),
    (lambda b, m, x, y: b.hvp(m, x, y, b.get_weights(m)[:-1]),
     "one vector entry per trainable parameter"),
    (lambda b, m, x, y: b.hvp(m, x, y, [None] * 4), "every parameter, got None"),
])
def test_bad_arguments_raise_before_anything_changes(backend, rng, call, error):
    model = float64_mlp(backend, SIZES)
    x, y = make_data(rng)
    before = backend.get_weights(model)
    with pytest.raises(ValueError, match=error):
        call(backend, model, x, y)
    assert_weights_equal(before, backend.get_weights(model))


def test_a_hessian_too_large_is_refused_before_any_work(backend, rng):
    """The book's 40-300-100-10 MLP: 43,410 parameters, a 7.5 GB float32 Hessian."""
    model = backend.mlp([40, 300, 100, 10], seed=0)
    x, y = rng.standard_normal((2, 40)).astype(np.float32), np.array([0, 1])
    with pytest.raises(ValueError, match=r"43,410 parameters .* \(7\.5 GB at 4 bytes each\), "
                                         r"more than max_bytes = 268\.4 MB"):
        backend.hessian(model, x, y)
