"""The canonical weight layout, PyTorch back end: parameters by name, as NumPy arrays.

The canonical layout is PyTorch's own (linear ``(out, in)``, convolution
``(out, in, k...)``), so here :func:`to_canonical` only moves tensors to NumPy and
:func:`set_weights` copies arrays in; :func:`trainable_parameters` fixes the order in
which every function of the back end sees the parameters.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["trainable_parameters", "parameter_names", "get_weights", "set_weights",
           "to_canonical", "from_canonical"]


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
