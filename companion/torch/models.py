"""The book's models, PyTorch back end: :func:`mlp`, :func:`rnn` and their layers.

Both back ends build them from the same NumPy initial weights
(:mod:`companion.core.models`), copied in through the canonical layout
(:mod:`companion.torch.layout`), so after :func:`seed_everything` with the same seed they
hold the same numbers.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..core.checks import check_choice, check_positive, check_positive_int, resolve_seed
from ..core.models import (ACTIVATIONS, BATCH_NORM_MOMENTUM, DTYPES, GATES, MLP_INITS,
                           NORM_EPSILON, check_cell, check_mlp_structure, check_sizes,
                           interleave_norms, mlp_initial_weights, norm_initial_weights,
                           rnn_initial_weights)
from .layout import set_weights
from .runtime import device

__all__ = ["mlp", "rnn", "RecurrentLayer", "ResidualMLP"]

_ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                       "linear": nn.Identity}


def mlp(sizes, activation: str = "relu", init: str = "he", gain: float = 1.0,
        seed: int | None = None, dtype: str = "float32", norm: str | None = None,
        residual: bool = False) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Layer ``i`` computes ``h_{i+1} = phi(W_i h_i + b_i)`` with ``W_i`` of shape
    ``(sizes[i+1], sizes[i])``; the last layer has no activation (it returns logits).
    Weights are drawn from ``N(0, std^2)`` with ``std`` given by ``init`` (see
    :func:`companion.core.models.init_std`) times ``gain``, or are ``gain`` times a random
    orthogonal matrix (``init="orthogonal"``, Saxe et al. 2014); biases start at zero.
    Layers are named ``dense0, dense1, ...``.

    With ``norm``, each hidden layer normalises its pre-activation, before ``phi`` as
    Ioffe & Szegedy (2015) and He et al. (2016) place it:
    ``h_{i+1} = phi(N_i(W_i h_i + b_i))`` with ``N_i(z) = gamma (z - mu) / sqrt(var + eps)
    + beta``, ``eps = 1e-5``; ``mu, var`` over the batch (``"batch"``, running averages
    with momentum 0.1 in inference mode) or over the features of each example
    (``"layer"``, Ba et al. 2016). Layers ``norm0, norm1, ...``; ``gamma = 1``,
    ``beta = 0``. With ``residual``, hidden blocks whose widths match add their input:
    ``h_{i+1} = h_i + phi(N_i(W_i h_i + b_i))`` (He et al. 2016), so the block's Jacobian
    is ``I +`` the plain one.

    Args:
        sizes: layer widths, input first, e.g. ``[40, 300, 100, 10]``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``.
        init: ``"he"``, ``"glorot"``, ``"lecun"`` or ``"orthogonal"``.
        gain: multiplies every initial weight; ``> 1`` makes gradients grow with depth.
        seed: seed of the initial weights; ``None`` draws one from NumPy's global generator.
        dtype: ``"float32"`` or ``"float64"`` (for exact curvature on small models); the
            initial weights are the same numbers either way.
        norm: ``None``, ``"batch"`` (``nn.BatchNorm1d``) or ``"layer"`` (``nn.LayerNorm``).
        residual: add skip connections (needs equal hidden widths).

    Raises:
        ValueError: fewer than two sizes, a size < 1, an unknown activation, init, dtype or
            norm, a gain that is not a finite number > 0, or ``residual`` with unequal
            hidden widths or no block whose widths match.
        TypeError: ``residual`` is not a bool.
    """
    sizes = check_sizes(sizes)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("init", init, MLP_INITS)
    check_choice("dtype", dtype, DTYPES)
    gain = check_positive("gain", gain)
    blocks = check_mlp_structure(sizes, norm, residual)
    weights = mlp_initial_weights(sizes, init, gain, resolve_seed(seed))
    if norm is not None:
        weights = interleave_norms(weights, norm_initial_weights(sizes))
    layers = OrderedDict()
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers[f"dense{i}"] = nn.Linear(fan_in, fan_out)
        if i < len(sizes) - 2:
            if norm is not None:
                layers[f"norm{i}"] = _norm_layer(norm, fan_out)
            layers[f"act{i}"] = _ACTIVATION_MODULES[activation]()
    model = (ResidualMLP(layers, blocks) if residual else nn.Sequential(layers)).to(
        device=device(), dtype=getattr(torch, dtype))
    set_weights(model, weights)
    return model


def _norm_layer(norm: str, width: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm1d(width, eps=NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM)
    return nn.LayerNorm(width, eps=NORM_EPSILON)


class ResidualMLP(nn.Sequential):
    """:func:`mlp`'s layers with skip connections: ``h_{i+1} = h_i + block_i(h_i)`` for the
    hidden blocks ``i`` in ``blocks`` (a block: ``dense{i}``, ``norm{i}`` if any, ``act{i}``).
    """

    def __init__(self, layers: OrderedDict, blocks):
        super().__init__(layers)
        self.blocks = tuple(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = len([name for name in self._modules if name.startswith("act")])
        for i in range(hidden):
            out = self._modules[f"dense{i}"](x)
            if f"norm{i}" in self._modules:
                out = self._modules[f"norm{i}"](out)
            out = self._modules[f"act{i}"](out)
            x = x + out if i in self.blocks else out
        return self._modules[f"dense{hidden}"](x)


class RecurrentLayer(nn.Module):
    """A recurrent layer (vanilla, LSTM or GRU) that returns its last hidden state.

    For inputs of shape ``(batch, time, features)``, with ``h_0 = c_0 = 0``:

    * ``"rnn"`` (Elman): ``h_t = phi(W_ih x_t + W_hh h_{t-1} + b)``;
    * ``"lstm"`` (Hochreiter & Schmidhuber 1997), gates ``i, f, g, o`` stacked in
      ``W_ih, W_hh, b`` in that order: ``c_t = sigma(f) c_{t-1} + sigma(i) tanh(g)``,
      ``h_t = sigma(o) tanh(c_t)``;
    * ``"gru"`` (Cho et al. 2014), gates ``r, z, n``, ``b`` of shape ``(2, 3H)`` (input
      and recurrent biases): ``r, z = sigma(W_i x + b_i + W_h h + b_h)`` blocks,
      ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``, ``h_t = (1 - z) n + z h_{t-1}``.

    One bias for ``rnn`` and ``lstm``, as in Keras (``torch.nn.RNN``/``LSTM`` carry two
    that only ever appear as a sum); the GRU's two differ in effect and are kept.
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh",
                 cell: str = "rnn"):
        super().__init__()
        check_cell(cell, nonlinearity, "orthogonal")
        gates = GATES[cell]
        self.cell = cell
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros((2, 3 * hidden_size) if cell == "gru" else
                                             gates * hidden_size))
        self.activation = torch.tanh if nonlinearity == "tanh" else torch.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_bias = self.bias[0] if self.cell == "gru" else self.bias
        inputs = x @ self.weight_ih.T + input_bias  # every step's input term at once
        hidden = x.new_zeros(x.shape[0], self.weight_hh.shape[1])
        memory = hidden
        for step in range(x.shape[1]):
            if self.cell == "rnn":
                hidden = self.activation(inputs[:, step] + hidden @ self.weight_hh.T)
            elif self.cell == "lstm":
                i, f, g, o = (inputs[:, step] + hidden @ self.weight_hh.T).chunk(4, dim=1)
                memory = torch.sigmoid(f) * memory + torch.sigmoid(i) * torch.tanh(g)
                hidden = torch.sigmoid(o) * torch.tanh(memory)
            else:
                x_r, x_z, x_n = inputs[:, step].chunk(3, dim=1)
                h_r, h_z, h_n = (hidden @ self.weight_hh.T + self.bias[1]).chunk(3, dim=1)
                r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
                hidden = (1 - z) * torch.tanh(x_n + r * h_n) + z * hidden
        return hidden


def rnn(input_size: int, hidden_size: int, output_size: int, nonlinearity: str = "tanh",
        gain: float = 1.0, seed: int | None = None, cell: str = "rnn",
        init: str = "orthogonal") -> nn.Sequential:
    """A recurrent network (vanilla, LSTM or GRU) with a linear read-out of its last state.

    ``y = W_out h_T + b_out`` with ``h_T`` from :class:`RecurrentLayer` (``cell``), for
    inputs of shape ``(batch, time, input_size)``. Each ``H x H`` gate block of ``W_hh``
    starts as ``gain`` times a random orthogonal matrix (spectral norm exactly ``gain``:
    above 1, with a non-saturating ``phi``, vanilla gradients grow geometrically with the
    sequence length), or Gaussian with ``init="normal"`` (see
    :func:`companion.core.models.rnn_initial_weights`). The LSTM's forget bias starts at 1.
    Parameters: ``rnn.weight_ih, rnn.weight_hh, rnn.bias, readout.weight, readout.bias``.

    Args:
        input_size: features per time step ``I``, an integer >= 1.
        hidden_size: width ``H`` of the hidden state, an integer >= 1.
        output_size: width ``O`` of the read-out, an integer >= 1.
        nonlinearity: ``phi`` of the vanilla cell, ``"tanh"`` or ``"relu"``.
        gain: scale of the initial ``W_hh`` blocks, a finite number > 0.
        seed: seed of the initial weights; ``None`` draws one from NumPy's global generator.
        cell: ``"rnn"``, ``"lstm"`` or ``"gru"``.
        init: ``"orthogonal"`` or ``"normal"`` (of ``W_hh``).

    Raises:
        ValueError: a size < 1, an unknown nonlinearity, cell or init, a nonlinearity
            other than tanh for a gated cell, or a gain that is not a finite number > 0.
    """
    for what, size in (("input_size", input_size), ("hidden_size", hidden_size),
                       ("output_size", output_size)):
        check_positive_int(what, size)
    check_cell(cell, nonlinearity, init)
    gain = check_positive("gain", gain)
    weights = rnn_initial_weights(input_size, hidden_size, output_size, gain,
                                  resolve_seed(seed), cell, init)
    model = nn.Sequential(OrderedDict(
        rnn=RecurrentLayer(input_size, hidden_size, nonlinearity, cell),
        readout=nn.Linear(hidden_size, output_size),
    )).to(device())
    set_weights(model, weights)
    return model
