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
MLP_INITS = INITS + ("orthogonal",)
DTYPES = ("float32", "float64")
RNN_NONLINEARITIES = ("tanh", "relu")
NORMS = (None, "batch", "layer")
CELLS = ("rnn", "lstm", "gru")
RNN_INITS = ("orthogonal", "normal")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# The frameworks' defaults differ (torch 1e-5, Keras 1e-3); both back ends use torch's.
NORM_EPSILON = 1e-5
# torch's BatchNorm momentum 0.1 weighs the new batch; Keras' 0.9 weighs the old average.
BATCH_NORM_MOMENTUM = 0.1


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


def orthogonal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A random (semi-)orthogonal ``(rows, cols)`` matrix (Saxe et al. 2014).

    ``A = QR`` of a standard normal ``(max, min)`` matrix; ``Q diag(sign(diag R))`` is
    uniformly (Haar) distributed (Mezzadri 2007: without the sign fix LAPACK's ``Q[0, 0]``
    is never positive). Transposed when ``rows < cols``, so ``Q Q^T = I`` if ``rows <= cols``
    and ``Q^T Q = I`` if ``rows >= cols``: every singular value is exactly 1.
    """
    q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q = q * np.sign(np.diag(r))
    return q if rows >= cols else q.T


def check_mlp_structure(sizes, norm, residual) -> list:
    """Validate ``norm`` and ``residual`` of an MLP; the indices of its residual blocks.

    Hidden block ``i`` maps width ``sizes[i]`` to ``sizes[i+1]`` (``i < len(sizes) - 2``);
    with ``residual`` every hidden width must be equal, and the blocks whose input and
    output widths match get a skip connection (all but the first, unless ``sizes[0]``
    equals the hidden width too).

    Raises:
        ValueError: an unknown ``norm``; ``residual`` with unequal hidden widths, or with no
            hidden block whose widths match.
        TypeError: ``residual`` is not a bool.
    """
    check_choice("norm", norm, NORMS)
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be True or False, got {type(residual).__name__}")
    if not residual:
        return []
    hidden = sizes[1:-1]
    if len(set(hidden)) > 1:
        raise ValueError("residual=True needs equal hidden widths (sizes[1:-1]), so that "
                         f"x + f(x) is defined; got {hidden}")
    blocks = [i for i in range(len(hidden)) if sizes[i] == sizes[i + 1]]
    if not blocks:
        raise ValueError(f"residual=True needs a hidden block whose input and output widths "
                         f"match (sizes[i] == sizes[i+1] for some i < {len(hidden)}); "
                         f"got sizes {sizes}")
    return blocks


def mlp_initial_weights(sizes, init: str, gain: float, seed: int) -> list:
    """Canonical initial weights of an MLP: ``[W0 (out, in), b0, W1, b1, ...]``, biases zero.

    ``init="orthogonal"``: ``W_i = gain * Q`` with :func:`orthogonal`'s ``Q``; otherwise
    normal with :func:`init_std`'s standard deviation.
    """
    check_choice("init", init, MLP_INITS)
    rng = np.random.default_rng(seed)
    arrays = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if init == "orthogonal":
            weight = gain * orthogonal(fan_out, fan_in, rng)
        else:
            weight = init_std(init, fan_in, fan_out, gain) * rng.standard_normal(
                (fan_out, fan_in))
        arrays.append(weight.astype(np.float32))
        arrays.append(np.zeros(fan_out, dtype=np.float32))
    return arrays


def norm_initial_weights(sizes) -> list:
    """Canonical initial scale and shift of each hidden normalisation: ones and zeros."""
    return [np.full(w, v, np.float32) for w in sizes[1:-1] for v in (1.0, 0.0)]


def interleave_norms(dense: list, norms: list) -> list:
    """``[W0, b0, gamma0, beta0, W1, ...]``: the parameter order of a normalised MLP."""
    arrays = []
    for i in range(0, len(dense), 2):
        arrays += dense[i:i + 2] + norms[i:i + 2]
    return arrays


def check_cell(cell: str, nonlinearity: str, init: str) -> None:
    """Validate :func:`rnn`'s ``cell``, ``nonlinearity`` and ``init``.

    Raises:
        ValueError: an unknown cell, nonlinearity or init, or a nonlinearity other than
            ``"tanh"`` for a gated cell (LSTM and GRU fix theirs).
    """
    check_choice("cell", cell, CELLS)
    check_choice("nonlinearity", nonlinearity, RNN_NONLINEARITIES)
    check_choice("init", init, RNN_INITS)
    if cell != "rnn" and nonlinearity != "tanh":
        raise ValueError(f"nonlinearity {nonlinearity!r} applies to cell='rnn' only; "
                         f"{cell} uses tanh and sigmoid gates")


def rnn_initial_weights(input_size: int, hidden_size: int, output_size: int, gain: float,
                        seed: int, cell: str = "rnn", init: str = "orthogonal") -> list:
    """Canonical initial weights of :func:`rnn`.

    ``[W_ih (G H, I), W_hh (G H, H), b, W_out (O, H), b_out (O)]`` with ``G`` gate blocks
    in PyTorch's order (``rnn``: 1; ``lstm``: 4, ``i, f, g, o``; ``gru``: 3, ``r, z, n``).
    Each ``H x H`` block of ``W_hh`` is ``gain * Q`` for a random orthogonal ``Q``
    (spectral norm exactly ``gain``), or with ``init="normal"`` has entries
    ``N(0, gain^2 / H)`` (spectral radius about ``gain``, norm about ``2 gain``).
    ``W_ih`` is LeCun-normal, ``W_out`` Glorot-normal. ``b`` is zero, of shape ``(G H,)``
    (``(2, 3H)`` for ``gru``: input and recurrent biases), except the LSTM's forget gate
    bias, 1 (Jozefowicz et al. 2015; Keras' ``unit_forget_bias``).
    """
    rng = np.random.default_rng(seed)
    gates = GATES[cell]
    blocks = [gain * orthogonal(hidden_size, hidden_size, rng) if init == "orthogonal" else
              gain / math.sqrt(hidden_size) * rng.standard_normal((hidden_size, hidden_size))
              for _ in range(gates)]
    w_ih = init_std("lecun", input_size, hidden_size, 1.0) * rng.standard_normal(
        (gates * hidden_size, input_size))
    w_out = init_std("glorot", hidden_size, output_size, 1.0) * rng.standard_normal(
        (output_size, hidden_size))
    bias = np.zeros((2, 3 * hidden_size) if cell == "gru" else gates * hidden_size)
    if cell == "lstm":
        bias[hidden_size:2 * hidden_size] = 1.0
    arrays = [w_ih, np.concatenate(blocks), bias, w_out, np.zeros(output_size)]
    return [a.astype(np.float32) for a in arrays]
