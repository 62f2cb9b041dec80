"""Framework-neutral model building: the initial weights in the canonical layout.

Both back ends build their models from these NumPy arrays, so ``ct.mlp(sizes, seed=s)`` and
``ctf.mlp(sizes, seed=s)`` hold the same weights.
"""

from __future__ import annotations

import math

import numpy as np

from .checks import check_choice, check_positive_int


ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear")
INITS = ("he", "glorot", "lecun")
DTYPES = ("float32", "float64")
RNN_NONLINEARITIES = ("tanh", "relu")


def check_sizes(sizes) -> list:
    """Validate MLP layer sizes: at least two integers >= 1 (input and output)."""
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output size, got {sizes}")
    for size in sizes:
        check_positive_int("every layer size", size)
    return [int(s) for s in sizes]


def init_std(init: str, fan_in: int, fan_out: int, gain: float) -> float:
    """Standard deviation of a zero-mean normal initialisation.

    * ``"he"`` (He et al. 2015): ``gain * sqrt(2 / fan_in)``, variance-preserving for ReLU;
    * ``"glorot"`` (Glorot & Bengio 2010): ``gain * sqrt(2 / (fan_in + fan_out))``;
    * ``"lecun"``: ``gain * sqrt(1 / fan_in)``, variance-preserving for linear layers.
    """
    check_choice("init", init, INITS)
    if init == "he":
        return gain * math.sqrt(2.0 / fan_in)
    if init == "glorot":
        return gain * math.sqrt(2.0 / (fan_in + fan_out))
    return gain * math.sqrt(1.0 / fan_in)


def mlp_initial_weights(sizes, init: str, gain: float, seed: int) -> list:
    """Canonical initial weights of an MLP: ``[W0 (out, in), b0, W1, b1, ...]``, biases zero."""
    rng = np.random.default_rng(seed)
    arrays = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        std = init_std(init, fan_in, fan_out, gain)
        arrays.append((std * rng.standard_normal((fan_out, fan_in))).astype(np.float32))
        arrays.append(np.zeros(fan_out, dtype=np.float32))
    return arrays


def rnn_initial_weights(input_size: int, hidden_size: int, output_size: int, gain: float,
                        seed: int) -> list:
    """Canonical initial weights of :func:`rnn`.

    ``[W_ih (H, I), W_hh (H, H), b (H), W_out (O, H), b_out (O)]`` with ``W_hh = gain * Q``
    for a random orthogonal ``Q``, so the recurrent matrix's spectral norm is exactly
    ``gain``; ``W_ih`` is LeCun-normal, ``W_out`` Glorot-normal, biases zero.
    """
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((hidden_size, hidden_size)))
    q *= np.sign(np.diag(r))  # makes Q uniformly (Haar) distributed
    w_ih = init_std("lecun", input_size, hidden_size, 1.0) * rng.standard_normal(
        (hidden_size, input_size))
    w_out = init_std("glorot", hidden_size, output_size, 1.0) * rng.standard_normal(
        (output_size, hidden_size))
    arrays = [w_ih, gain * q, np.zeros(hidden_size), w_out, np.zeros(output_size)]
    return [a.astype(np.float32) for a in arrays]
