"""Models and the canonical weight layout, PyTorch back end.

The canonical layout of a parameter is PyTorch's own (dense ``(out, in)``, convolution
``(out, in, k...)``), so here :func:`to_canonical` only moves tensors to NumPy. Both
back ends build :func:`mlp` and :func:`rnn` from the same NumPy initial weights, so
after :func:`seed_everything` with the same seed they hold the same numbers.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ..core.checks import check_choice, check_positive, check_positive_int, resolve_seed
from ..core.models import (ACTIVATIONS, DTYPES, RNN_NONLINEARITIES, check_sizes,
                           mlp_initial_weights, rnn_initial_weights)
from .runtime import device

__all__ = ["mlp", "rnn", "RecurrentLayer", "trainable_parameters", "parameter_names",
           "get_weights", "set_weights", "to_canonical", "from_canonical"]

_ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                       "linear": nn.Identity}


def mlp(sizes, activation: str = "relu", init: str = "he", gain: float = 1.0,
        seed: int | None = None, dtype: str = "float32") -> nn.Sequential:
    """A fully connected network ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Layer ``i`` computes ``h_{i+1} = phi(W_i h_i + b_i)`` with ``W_i`` of shape
    ``(sizes[i+1], sizes[i])``; the last layer has no activation (it returns logits).
    Weights are drawn from ``N(0, std^2)`` with ``std`` given by ``init`` (see
    :func:`companion.core.models.init_std`) times ``gain``; biases start at zero. Layers are
    named ``dense0, dense1, ...``.

    Args:
        sizes: layer widths, input first, e.g. ``[40, 300, 100, 10]``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``.
        init: ``"he"``, ``"glorot"`` or ``"lecun"``.
        gain: multiplies every initial weight; ``> 1`` makes gradients grow with depth.
        seed: seed of the initial weights; ``None`` draws one from NumPy's global generator.
        dtype: ``"float32"`` or ``"float64"`` (for exact curvature on small models); the
            initial weights are the same numbers either way.

    Raises:
        ValueError: fewer than two sizes, a size < 1, an unknown activation, init or
            dtype, or a gain that is not a finite number > 0.
    """
    sizes = check_sizes(sizes)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("dtype", dtype, DTYPES)
    gain = check_positive("gain", gain)
    weights = mlp_initial_weights(sizes, init, gain, resolve_seed(seed))
    layers = OrderedDict()
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers[f"dense{i}"] = nn.Linear(fan_in, fan_out)
        if i < len(sizes) - 2:
            layers[f"act{i}"] = _ACTIVATION_MODULES[activation]()
    model = nn.Sequential(layers).to(device=device(), dtype=getattr(torch, dtype))
    set_weights(model, weights)
    return model


class RecurrentLayer(nn.Module):
    """A vanilla (Elman) recurrent layer that returns its last hidden state.

    ``h_t = phi(W_ih x_t + W_hh h_{t-1} + b)`` with ``h_0 = 0``, for inputs of shape
    ``(batch, time, features)``. One bias, as in Keras' ``SimpleRNN`` (``torch.nn.RNN``
    carries two that only ever appear as a sum).
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh"):
        super().__init__()
        check_choice("nonlinearity", nonlinearity, RNN_NONLINEARITIES)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.activation = torch.tanh if nonlinearity == "tanh" else torch.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x @ self.weight_ih.T + self.bias  # every step's input term at once
        hidden = x.new_zeros(x.shape[0], self.weight_hh.shape[0])
        for step in range(x.shape[1]):
            hidden = self.activation(inputs[:, step] + hidden @ self.weight_hh.T)
        return hidden


def rnn(input_size: int, hidden_size: int, output_size: int, nonlinearity: str = "tanh",
        gain: float = 1.0, seed: int | None = None) -> nn.Sequential:
    """A vanilla RNN with a linear read-out of its last hidden state.

    ``h_t = phi(W_ih x_t + W_hh h_{t-1} + b)``, ``y = W_out h_T + b_out``, for inputs of
    shape ``(batch, time, input_size)``. ``W_hh`` starts as ``gain`` times a random
    orthogonal matrix, so its spectral norm is exactly ``gain``: above 1 (with a
    non-saturating ``phi``) gradients grow geometrically with the sequence length.
    Parameters: ``rnn.weight_ih, rnn.weight_hh, rnn.bias, readout.weight, readout.bias``.

    Args:
        input_size: features per time step ``I``, an integer >= 1.
        hidden_size: width ``H`` of the hidden state, an integer >= 1.
        output_size: width ``O`` of the read-out, an integer >= 1.
        nonlinearity: ``phi``, ``"tanh"`` or ``"relu"``.
        gain: spectral norm of the initial ``W_hh``, a finite number > 0.
        seed: seed of the initial weights; ``None`` draws one from NumPy's global generator.

    Raises:
        ValueError: a size < 1, an unknown nonlinearity (``"tanh"`` or ``"relu"``), or a
            gain that is not a finite number > 0.
    """
    for what, size in (("input_size", input_size), ("hidden_size", hidden_size),
                       ("output_size", output_size)):
        check_positive_int(what, size)
    check_choice("nonlinearity", nonlinearity, RNN_NONLINEARITIES)
    gain = check_positive("gain", gain)
    weights = rnn_initial_weights(input_size, hidden_size, output_size, gain,
                                  resolve_seed(seed))
    model = nn.Sequential(OrderedDict(
        rnn=RecurrentLayer(input_size, hidden_size, nonlinearity),
        readout=nn.Linear(hidden_size, output_size),
    )).to(device())
    set_weights(model, weights)
    return model


def trainable_parameters(model: nn.Module) -> list:
    """The parameters that gradients, scores and masks are aligned with, in order: those
    with ``requires_grad`` (frozen ones are left out).

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``model`` has no trainable parameter (none, or all frozen).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameter (none, or "
                         "all with requires_grad=False): there is nothing to differentiate")
    return params


def parameter_names(model: nn.Module) -> list:
    """Names of :func:`trainable_parameters`, e.g. ``["dense0.weight", "dense0.bias"]``.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
    """
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy copy; bfloat16, which NumPy lacks, becomes float32 (exactly)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy().copy()


def to_canonical(model: nn.Module, tensors) -> list:
    """Tensors aligned with the model's parameters, as NumPy arrays in canonical layout.

    PyTorch's layout is the canonical one, so this only copies to host memory. ``None``
    entries stay ``None``.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        tensors: one tensor (or ``None``) per trainable parameter, in order, in PyTorch's
            layout (the canonical one).

    Raises:
        ValueError: the number of tensors differs from the number of trainable parameters.
    """
    tensors = list(tensors)
    _check_aligned(model, tensors)
    return [None if t is None else _to_numpy(t) for t in tensors]


def get_weights(model: nn.Module) -> list:
    """The model's trainable parameters as NumPy arrays in canonical layout.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
    """
    return to_canonical(model, trainable_parameters(model))


def from_canonical(model: nn.Module, arrays) -> list:
    """Canonical-layout arrays aligned with the parameters, as tensors like the parameters.

    The inverse of :func:`to_canonical`: each array becomes a tensor with its parameter's
    dtype and device (the layout is already PyTorch's). ``None`` stays ``None``.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        arrays: one array-like (or ``None``) per trainable parameter, in order and in canonical
            layout ``(out, in, ...)``.

    Raises:
        ValueError: the number of arrays or any shape differs from the parameters'; the
            message names the parameter and the expected shape.
    """
    arrays = [None if a is None else np.asarray(a) for a in arrays]
    params = trainable_parameters(model)
    _check_aligned(model, arrays)
    tensors = []
    for name, param, array in zip(parameter_names(model), params, arrays):
        if array is None:
            tensors.append(None)
            continue
        if tuple(array.shape) != tuple(param.shape):
            raise ValueError(f"{name} needs shape {tuple(param.shape)} (canonical layout "
                             f"(out, in, ...)), got {array.shape}")
        tensors.append(torch.as_tensor(array, dtype=param.dtype, device=param.device))
    return tensors


def set_weights(model: nn.Module, arrays) -> None:
    """Copy canonical-layout arrays into the model's trainable parameters.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        arrays: one array-like per trainable parameter, in order and in canonical layout
            ``(out, in, ...)``; none may be ``None``.

    Raises:
        ValueError: an entry of ``arrays`` is ``None``, or the number of arrays or any
            shape differs from the canonical shapes of the parameters (see
            :func:`from_canonical`). The model is left unchanged.
    """
    arrays = list(arrays)
    if any(a is None for a in arrays):
        raise ValueError("set_weights needs an array for every parameter, got None")
    tensors = from_canonical(model, arrays)
    with torch.no_grad():
        for param, tensor in zip(trainable_parameters(model), tensors):
            param.copy_(tensor)


def _check_aligned(model: nn.Module, items: list) -> None:
    expected = len(trainable_parameters(model))
    if len(items) != expected:
        raise ValueError(f"expected one entry per trainable parameter ({expected}: "
                         f"{', '.join(parameter_names(model))}), got {len(items)}")


def _flatten(tensors) -> np.ndarray:
    """Tensors in PyTorch's (canonical) layout as one float64 vector, in order."""
    return torch.cat([t.detach().reshape(-1) for t in tensors]).cpu().numpy().astype(
        np.float64)


def _unflatten(model, flat) -> list:
    """A vector in the canonical flattening order as tensors aligned with the parameters."""
    params = trainable_parameters(model)
    sizes = np.cumsum([0] + [p.numel() for p in params])
    return from_canonical(model, [np.reshape(flat[a:b], tuple(p.shape))
                                  for p, a, b in zip(params, sizes[:-1], sizes[1:])])
