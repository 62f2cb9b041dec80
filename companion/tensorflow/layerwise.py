"""Pruning one layer at a time from the inputs it sees, TensorFlow back end.

See :mod:`companion.core.layerwise`. The inputs of every ``Dense`` layer (nested and
subclassed models included) are read during one pass over the data, one batch at a time,
by wrapping each layer's ``call`` for the pass: Keras' counterpart of a PyTorch forward
hook.
"""

from __future__ import annotations

import keras

from ..core.checks import check_positive, check_sparsity
from ..core.layerwise import (feature_square_sums, input_gram, obc_prune_layers,
                               wanda_score)
from .batches import input_arrays
from .layout import from_canonical, get_weights, set_weights, trainable_parameters
from .runtime import as_tensor

__all__ = ["wanda_scores", "layerwise_obs_prune"]


def _dense_layers(model) -> list:
    """The model's ``Dense`` layers whose kernel trains, in the order Keras tracks them."""
    trainable = {id(v) for v in trainable_parameters(model)}
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.Dense) and id(layer.kernel) in trainable]


def _recording_call(layer, statistic, sums: dict):
    original = layer.call

    def call(inputs, *args, **kwargs):
        batch = statistic(keras.ops.convert_to_numpy(inputs))
        sums[id(layer.kernel)] = sums.get(id(layer.kernel), 0) + batch
        return original(inputs, *args, **kwargs)
    return call


def _input_statistics(model, x, batch_size: int, statistic, dense) -> dict:
    """``{id(kernel): sum over the batches of statistic(layer inputs)}`` for the ``Dense``
    layers in ``dense``."""
    like = trainable_parameters(model)[0]
    sums = {}
    for layer in dense:
        layer.call = _recording_call(layer, statistic, sums)  # for this pass only
    try:
        for xb in input_arrays(x, batch_size):
            model(as_tensor(xb, like), training=False)
    finally:
        for layer in dense:
            del layer.call  # back to the class's own
    return sums


def wanda_scores(model, x, batch_size: int = 1024) -> list:
    """Wanda's scores ``|W_ij| * ||X_j||_2`` (Sun et al. 2023) of every ``Dense`` kernel,
    from the inputs ``X`` the layer receives on ``x``.

    ``||X_j||_2`` is the 2-norm of input feature ``j`` over every example (and every
    position, for inputs ``(batch, T, d)``), accumulated batch by batch. Other variables
    (biases, convolutions, recurrent kernels) get ``None``, so pruning leaves them alone.
    Wanda compares the scores within each output row; :func:`nm_masks` and
    :func:`masks_from_scores` (``scope="layer"``) compare them within a group or a layer.
    Runs in inference mode (``training=False``).

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`transformer`.
        x: inputs (one example per row), or a data source whose batches are inputs or
            ``(x, y)`` pairs (``y`` is ignored).
        batch_size: examples per forward pass with arrays, an integer >= 1.

    Returns:
        One score tensor (or ``None``) per trainable variable; higher means keep.

    Raises:
        ValueError: bad ``x`` or ``batch_size``, or a model without ``Dense`` layers.
    """
    sums = _input_statistics(model, x, batch_size, feature_square_sums,
                             _dense_layers(model))
    if not sums:
        raise ValueError("wanda_scores scores the kernels of Dense layers; the model has "
                         "none")
    variables = trainable_parameters(model)
    scores = [wanda_score(w, sums[id(v)]) if id(v) in sums else None
              for v, w in zip(variables, get_weights(model))]
    return from_canonical(model, scores)


def layerwise_obs_prune(model, x, sparsity: float, damping: float = 0.01,
                        batch_size: int = 1024) -> list:
    """Prune every ``Dense`` kernel row by row with exact OBS on the layer's output.

    Layer by layer, in the order Keras tracks them: one pass over ``x`` collects
    ``X^T X`` of the layer's inputs (through the layers pruned before it, as SparseGPT
    does), then :func:`companion.core.layerwise.obc_prune_rows` removes
    ``round(sparsity * in)`` weights of every output (a row of the canonical ``(out, in)``
    kernel) and moves the others to keep ``X w`` (Optimal Brain Compression, Frantar &
    Alistarh 2022). Biases, convolutions and recurrent kernels are untouched. The model is
    updated in place; on any error it is given back unchanged. Runs in inference mode.

    Args:
        model: a Keras model with ``Dense`` layers, e.g. from :func:`mlp`.
        x: inputs (one example per row), or a data source whose batches are inputs or
            ``(x, y)`` pairs (``y`` is ignored); read once per layer.
        sparsity: the fraction of each row to prune, a number in ``[0, 1)``.
        damping: added to ``X^T X`` as ``damping * mean(diag(X^T X)) I``, a number > 0.
        batch_size: examples per forward pass with arrays, an integer >= 1.

    Returns:
        One 0/1 mask (or ``None``) per trainable variable, as :func:`masks_from_scores`.

    Raises:
        ValueError, TypeError: bad ``sparsity``, ``damping``, ``x`` or ``batch_size``, or
            a model without ``Dense`` layers.
    """
    sparsity = check_sparsity(sparsity)
    damping = check_positive("damping", damping)
    dense = _dense_layers(model)
    if not dense:
        raise ValueError("layerwise_obs_prune prunes Dense layers; the model has none")
    index = {id(v): i for i, v in enumerate(trainable_parameters(model))}

    def gram_of(layer):
        statistics = _input_statistics(model, x, batch_size, input_gram, [layer])
        return statistics.get(id(layer.kernel))

    masks = obc_prune_layers(get_weights(model),
                             [(index[id(layer.kernel)], layer) for layer in dense],
                             gram_of, lambda arrays: set_weights(model, arrays), sparsity,
                             damping)
    return from_canonical(model, masks)
