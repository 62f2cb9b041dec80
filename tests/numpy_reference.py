"""Independent NumPy (float64) oracles and small back-end-neutral helpers for the tests.

Nothing here calls the function under test: forward passes, losses and gradients are
recomputed from the canonical weights (``get_weights``) in float64 NumPy.
"""

from __future__ import annotations

import numpy as np
import torch

from companion import torch as companion_torch

# float32 unit roundoff is 2**-24 ~ 6e-8. The companion computes in float32; the oracles in
# float64. A float32 sum of many terms carries an absolute error of a few hundred ulps of
# the largest magnitude involved, so entries that cancel to ~0 (a bias gradient that is a
# sum of residuals, an output near zero) can only be compared absolutely. ATOL_FACTOR times
# the largest magnitude of the compared arrays is that absolute allowance (~17 ulps of it);
# every entry must in addition (or instead) meet RTOL.
RTOL = 1e-5
ATOL_FACTOR = 1e-6


def is_torch(backend) -> bool:
    return backend is companion_torch


def activation(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "linear":
        return z
    raise AssertionError(name)


def mlp_forward(weights, x, act: str) -> np.ndarray:
    """Logits of an MLP from canonical weights ``[W0 (out, in), b0, W1, b1, ...]``."""
    h = np.asarray(x, np.float64)
    pairs = list(zip(weights[0::2], weights[1::2]))
    for i, (w, b) in enumerate(pairs):
        h = h @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)
        if i < len(pairs) - 1:
            h = activation(act, h)
    return h


def rnn_forward(weights, x, nonlinearity: str) -> np.ndarray:
    """Read-out of a vanilla RNN, looping over time in NumPy."""
    w_ih, w_hh, b, w_out, b_out = (np.asarray(w, np.float64) for w in weights)
    x = np.asarray(x, np.float64)
    h = np.zeros((x.shape[0], w_hh.shape[0]))
    for t in range(x.shape[1]):
        h = activation(nonlinearity, x[:, t] @ w_ih.T + h @ w_hh.T + b)
    return h @ w_out.T + b_out


def cross_entropy(logits, y) -> float:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(log_softmax[np.arange(len(y)), np.asarray(y)]))


def mse(output, y) -> float:
    output = np.asarray(output, np.float64)
    return float(np.mean((output - np.asarray(y, np.float64).reshape(output.shape)) ** 2))


def loss(name: str, output, y) -> float:
    return cross_entropy(output, y) if name == "cross_entropy" else mse(output, y)


def central_differences(f, weights, h: float = 1e-6) -> list:
    """``[df/dw for w in weights]`` by central differences of ``f(list of float64 arrays)``."""
    weights = [np.array(w, np.float64) for w in weights]
    grads = []
    for w in weights:
        g = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            old = w[index]
            w[index] = old + h
            up = f(weights)
            w[index] = old - h
            down = f(weights)
            w[index] = old
            g[index] = (up - down) / (2 * h)
        grads.append(g)
    return grads


def forward(backend, model, x) -> np.ndarray:
    """The model's output on ``x`` as a NumPy array (whatever the back end)."""
    out = model(backend.as_tensor(np.asarray(x), backend.trainable_parameters(model)[0]))
    if is_torch(backend):
        return out.detach().cpu().numpy()
    return np.asarray(out)


def scalar(value) -> float:
    """A scalar tensor (torch, possibly requiring grad, or TensorFlow) as a float."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu())
    return float(np.asarray(value))


def tensors(backend, arrays) -> list:
    """NumPy arrays (or ``None``) as the back end's tensors."""
    if is_torch(backend):
        return [None if a is None else torch.as_tensor(np.asarray(a)) for a in arrays]
    import tensorflow as tf

    return [None if a is None else tf.constant(np.asarray(a)) for a in arrays]


def assert_arrays_close(actual, desired, rtol: float = RTOL, atol_factor: float = ATOL_FACTOR,
                        what: str = ""):
    """Compare two aligned lists of arrays: ``|a - d| <= atol + rtol |d|`` entrywise, with
    ``atol = atol_factor * max |d|`` over the whole list (see the note on ATOL_FACTOR)."""
    actual, desired = list(actual), list(desired)
    assert len(actual) == len(desired), what
    scale = max(float(np.max(np.abs(d))) for d in desired if np.size(d))
    for i, (a, d) in enumerate(zip(actual, desired)):
        assert np.shape(a) == np.shape(d), f"{what}[{i}]: shape {np.shape(a)} vs {np.shape(d)}"
        np.testing.assert_allclose(a, d, rtol=rtol, atol=atol_factor * scale,
                                   err_msg=f"{what}[{i}]")


def assert_weights_equal(before, after):
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def float64_mlp(backend, sizes, activation: str = "tanh", seed: int = 0):
    """``backend.mlp`` in float64, for the exact curvature tests (checked, not assumed)."""
    model = backend.mlp(sizes, activation=activation, seed=seed, dtype="float64")
    assert all(str(v.dtype).endswith("float64") for v in backend.trainable_parameters(model))
    return model
