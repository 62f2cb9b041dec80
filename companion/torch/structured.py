"""Structured pruning of dense units, PyTorch back end (see :mod:`companion.core.structured`)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from ..core.checks import check_choice
from ..core.structured import (UNIT_CRITERIA, check_unit_scores, l1_unit_scores,
                               shrink_dense_chain, taylor_unit_terms, units_to_keep)
from .layout import parameter_names
from .pruning import _batch_gradients
from .runtime import measured_in_inference_mode

__all__ = ["structured_scores", "prune_units"]

_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU,
                nn.Identity, nn.Dropout)


def _dense_chain(model) -> list:
    """The names of the ``nn.Linear`` children of a plain ``nn.Sequential`` of linear
    layers and elementwise modules, in order."""
    if type(model) is not nn.Sequential:
        raise ValueError("structured pruning here takes a plain nn.Sequential of nn.Linear "
                         f"layers and elementwise activations, got {type(model).__name__}")
    names = []
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            names.append(name)
        elif not isinstance(module, _ELEMENTWISE):
            raise ValueError(f"structured pruning removes units of nn.Linear layers joined "
                             f"by elementwise modules; {name} is a {type(module).__name__}")
    if len(names) < 2:
        raise ValueError("structured pruning needs at least two nn.Linear layers (hidden "
                         "units to remove)")
    return names


def _numpy(tensor):
    return None if tensor is None else tensor.detach().cpu().double().numpy()


@measured_in_inference_mode
def structured_scores(model, x=None, y=None, criterion: str = "l1", *,
                      batch_size: int = 64, loss="cross_entropy") -> dict:
    """A score per hidden unit of each ``nn.Linear`` layer but the last; higher means keep.

    ``"l1"``: ``||W[j, :]||_1`` (Li et al. 2017), no data. ``"taylor"``: the mean over
    minibatches of ``(sum_k g_jk w_jk + g_j b_j)^2`` (Molchanov et al. 2019; see
    :mod:`companion.core.structured`), from ``(x, y)`` in batches of ``batch_size``. Runs in
    inference mode and changes no buffer.

    Args:
        model: a plain ``nn.Sequential`` of ``nn.Linear`` layers and elementwise modules,
            e.g. from :func:`mlp` without ``norm`` or ``residual``.
        x, y: the data for ``"taylor"`` (arrays, or a data source as ``x``).
        criterion: ``"l1"`` or ``"taylor"``.
        batch_size: examples per minibatch for ``"taylor"``, an integer >= 1.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).

    Returns:
        ``{layer name: NumPy array of its units' scores}`` for the hidden layers.

    Raises:
        ValueError, TypeError: an unknown criterion, data with ``"l1"`` or none with
            ``"taylor"``, a model that is not such a chain, or bad data.
    """
    check_choice("criterion", criterion, UNIT_CRITERIA)
    hidden = _dense_chain(model)[:-1]
    layers = dict(model.named_children())
    if criterion == "l1":
        if x is not None or y is not None:
            raise ValueError("criterion='l1' reads no data: leave x and y unset")
        return {name: l1_unit_scores(_numpy(layers[name].weight)) for name in hidden}
    if x is None:
        raise ValueError("criterion='taylor' needs the data x (and y)")
    index = {name: i for i, name in enumerate(parameter_names(model))}
    totals, count = dict.fromkeys(hidden, 0.0), 0
    for _, grads in _batch_gradients(model, x, y, batch_size, loss):
        for name in hidden:
            bias = layers[name].bias
            terms = taylor_unit_terms(
                _numpy(layers[name].weight), _numpy(bias),
                _numpy(grads[index[f"{name}.weight"]]),
                None if bias is None else _numpy(grads[index[f"{name}.bias"]]))
            totals[name] = totals[name] + terms ** 2
        count += 1
    return {name: totals[name] / count for name in hidden}


def prune_units(model, scores: dict, fraction: float) -> nn.Sequential:
    """A new, smaller model without the lowest-scoring ``fraction`` of each hidden layer's
    units (:func:`companion.core.structured.units_to_keep`).

    Removing unit ``j`` of layer ``i`` removes row ``j`` of its weight and bias and
    column ``j`` of the next layer's weight; the other modules are copied. The result is
    a dense ``nn.Sequential`` with the same names, device, dtype and mode; ``model`` is
    not changed. On the kept units it computes what ``model`` computes with the removed
    units' pre-activations set to zero, which is the same function when the activation
    maps 0 to 0 (ReLU, tanh, GELU).

    Args:
        model: a plain ``nn.Sequential`` of ``nn.Linear`` layers and elementwise modules.
        scores: ``{hidden layer name: unit scores}``, e.g. from :func:`structured_scores`.
        fraction: the fraction of each hidden layer's units to remove, in ``[0, 1)``.

    Raises:
        ValueError: a model that is not such a chain, scores that do not name its hidden
            layers or have the wrong size, or a fraction outside ``[0, 1)`` or removing
            every unit of a layer.
    """
    chain = _dense_chain(model)
    layers = dict(model.named_children())
    hidden = chain[:-1]
    scores = check_unit_scores(scores, {n: layers[n].out_features for n in hidden})
    keep = units_to_keep(scores, fraction)
    pairs = shrink_dense_chain([(_numpy(layers[n].weight), _numpy(layers[n].bias))
                                for n in chain], [keep[n] for n in hidden] + [None])
    like = layers[chain[0]].weight
    smaller, shrunk = OrderedDict(), dict(zip(chain, pairs))
    for name, module in model.named_children():
        if name not in shrunk:
            smaller[name] = copy.deepcopy(module)
            continue
        weight, bias = shrunk[name]
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(weight))
            if bias is not None:
                layer.bias.copy_(torch.as_tensor(bias))
        smaller[name] = layer
    result = nn.Sequential(smaller).to(device=like.device, dtype=like.dtype)
    return result.train(model.training)
