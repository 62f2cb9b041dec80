"""Structured pruning of dense units, TensorFlow back end (see
:mod:`companion.core.structured`)."""

from __future__ import annotations

import keras
import numpy as np

from ..core.checks import check_choice
from ..core.structured import (UNIT_CRITERIA, check_unit_scores, l1_unit_scores,
                               shrink_dense_chain, taylor_unit_terms, units_to_keep)
from .layout import parameter_names
from .pruning import _batch_gradients

__all__ = ["structured_scores", "prune_units"]

_ELEMENTWISE = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                keras.layers.ELU, keras.layers.Identity, keras.layers.Dropout)


def _dense_chain(model) -> list:
    """The ``Dense`` layers of a built ``keras.Sequential`` of dense layers and
    elementwise layers, in order."""
    if type(model) is not keras.Sequential or not model.built:
        raise ValueError("structured pruning here takes a built keras.Sequential of Dense "
                         f"and elementwise layers, got {type(model).__name__}")
    dense = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            dense.append(layer)
        elif not isinstance(layer, _ELEMENTWISE):
            raise ValueError(f"structured pruning removes units of Dense layers joined by "
                             f"elementwise layers; {layer.name} is a "
                             f"{type(layer).__name__}")
    if len(dense) < 2:
        raise ValueError("structured pruning needs at least two Dense layers (hidden units "
                         "to remove)")
    return dense


def _canonical(layer) -> tuple:
    """``(W, b)`` of a Dense layer in the canonical ``(out, in)`` layout, float64."""
    bias = None if layer.bias is None else np.asarray(layer.bias, dtype=np.float64)
    return np.asarray(layer.kernel, dtype=np.float64).T, bias


def structured_scores(model, x=None, y=None, criterion: str = "l1", *,
                      batch_size: int = 64, loss="cross_entropy") -> dict:
    """A score per hidden unit of each ``Dense`` layer but the last; higher means keep.

    ``"l1"``: ``||W[j, :]||_1`` (Li et al. 2017), no data. ``"taylor"``: the mean over
    minibatches of ``(sum_k g_jk w_jk + g_j b_j)^2`` (Molchanov et al. 2019; see
    :mod:`companion.core.structured`), from ``(x, y)`` in batches of ``batch_size``. Runs in
    inference mode.

    Args:
        model: a built ``keras.Sequential`` of ``Dense`` and elementwise layers, e.g. from
            :func:`mlp` without ``norm`` or ``residual``.
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
    if criterion == "l1":
        if x is not None or y is not None:
            raise ValueError("criterion='l1' reads no data: leave x and y unset")
        return {layer.name: l1_unit_scores(_canonical(layer)[0]) for layer in hidden}
    if x is None:
        raise ValueError("criterion='taylor' needs the data x (and y)")
    index = {name: i for i, name in enumerate(parameter_names(model))}
    totals, count = {layer.name: 0.0 for layer in hidden}, 0
    for _, grads in _batch_gradients(model, x, y, batch_size, loss):
        for layer in hidden:
            weight, bias = _canonical(layer)
            weight_grad = np.asarray(grads[index[f"{layer.name}.weight"]], np.float64).T
            bias_grad = (None if bias is None else
                         np.asarray(grads[index[f"{layer.name}.bias"]], np.float64))
            terms = taylor_unit_terms(weight, bias, weight_grad, bias_grad)
            totals[layer.name] = totals[layer.name] + terms ** 2
        count += 1
    return {name: total / count for name, total in totals.items()}


def prune_units(model, scores: dict, fraction: float):
    """A new, smaller model without the lowest-scoring ``fraction`` of each hidden layer's
    units (:func:`companion.core.structured.units_to_keep`).

    Removing unit ``j`` of layer ``i`` removes column ``j`` of its kernel (row ``j`` in
    the canonical layout) and bias and row ``j`` of the next layer's kernel; the other
    layers are rebuilt from their configurations. The result is a dense
    ``keras.Sequential`` with the same layer names and input shape; ``model`` is not
    changed. On the kept units it computes what ``model`` computes with the removed
    units' pre-activations set to zero, which is the same function when the activation
    maps 0 to 0 (ReLU, tanh, GELU).

    Args:
        model: a built ``keras.Sequential`` of ``Dense`` and elementwise layers.
        scores: ``{hidden layer name: unit scores}``, e.g. from :func:`structured_scores`.
        fraction: the fraction of each hidden layer's units to remove, in ``[0, 1)``.

    Raises:
        ValueError: a model that is not such a chain, scores that do not name its hidden
            layers or have the wrong size, or a fraction outside ``[0, 1)`` or removing
            every unit of a layer.
    """
    dense = _dense_chain(model)
    hidden = [layer.name for layer in dense[:-1]]
    scores = check_unit_scores(scores, {layer.name: layer.units for layer in dense[:-1]})
    keep = units_to_keep(scores, fraction)
    pairs = shrink_dense_chain([_canonical(layer) for layer in dense],
                               [keep[name] for name in hidden] + [None])
    shrunk = {layer.name: pair for layer, pair in zip(dense, pairs)}
    layers = []
    for layer in model.layers:
        config = layer.get_config()
        if layer.name in shrunk:
            config["units"] = shrunk[layer.name][0].shape[0]
        layers.append(type(layer).from_config(config))
    smaller = keras.Sequential([keras.Input(shape=model.inputs[0].shape[1:],
                                            dtype=model.inputs[0].dtype)] + layers)
    for layer in smaller.layers:
        if layer.name in shrunk:
            weight, bias = shrunk[layer.name]
            layer.set_weights([weight.T] + ([] if bias is None else [bias]))
    return smaller
