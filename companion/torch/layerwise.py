"""Pruning one layer at a time from the inputs it sees, PyTorch back end.

See :mod:`companion.core.layerwise`. The inputs of the ``nn.Linear`` layers are read by
forward hooks during a pass over the data, one batch at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.checks import check_positive, check_sparsity
from ..core.layerwise import (feature_square_sums, input_gram, obc_prune_layers,
                               wanda_score)
from .batches import input_arrays
from .layout import from_canonical, get_weights, set_weights, trainable_parameters
from .runtime import as_tensor, measured_in_inference_mode

__all__ = ["wanda_scores", "layerwise_obs_prune"]


def _linear_weights(model) -> list:
    """The weights of the model's ``nn.Linear`` layers that train, in module order."""
    trainable = {id(p) for p in trainable_parameters(model)}
    return [m.weight for m in model.modules()
            if isinstance(m, nn.Linear) and id(m.weight) in trainable]


def _input_statistics(model, x, batch_size: int, statistic, weights) -> dict:
    """``{id(weight): sum over the batches of statistic(layer inputs)}`` for the
    ``nn.Linear`` layers whose weight is in ``weights``."""
    sums = {}
    wanted = {id(w) for w in weights}

    def recorder(weight):
        def record(module, inputs, output):
            batch = statistic(inputs[0].detach().cpu().numpy())
            sums[id(weight)] = sums.get(id(weight), 0) + batch
        return record

    handles = [module.register_forward_hook(recorder(module.weight))
               for module in model.modules()
               if isinstance(module, nn.Linear) and id(module.weight) in wanted]
    like = trainable_parameters(model)[0]
    try:
        with torch.no_grad():
            for xb in input_arrays(x, batch_size):
                model(as_tensor(xb, like))
    finally:
        for handle in handles:
            handle.remove()
    return sums


@measured_in_inference_mode
def wanda_scores(model, x, batch_size: int = 1024) -> list:
    """Wanda's scores ``|W_ij| * ||X_j||_2`` (Sun et al. 2023) of every ``nn.Linear``
    weight, from the inputs ``X`` the layer receives on ``x``.

    ``||X_j||_2`` is the 2-norm of input feature ``j`` over every example (and every
    position, for inputs ``(batch, T, d)``), accumulated batch by batch. Other parameters
    (biases, convolutions, recurrent weights) get ``None``, so pruning leaves them alone.
    Wanda compares the scores within each output row; :func:`nm_masks` and
    :func:`masks_from_scores` (``scope="layer"``) compare them within a group or a layer.
    Runs in inference mode and changes no buffer.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`transformer`.
        x: inputs (one example per row), or a data source whose batches are inputs or
            ``(x, y)`` pairs (``y`` is ignored).
        batch_size: examples per forward pass with arrays, an integer >= 1.

    Returns:
        One score tensor (or ``None``) per trainable parameter; higher means keep.

    Raises:
        ValueError: bad ``x`` or ``batch_size``, or a model without ``nn.Linear`` layers.
    """
    sums = _input_statistics(model, x, batch_size, feature_square_sums,
                             _linear_weights(model))
    if not sums:
        raise ValueError("wanda_scores scores the weights of nn.Linear layers; the model "
                         "has none")
    params = trainable_parameters(model)
    scores = [wanda_score(w, sums[id(p)]) if id(p) in sums else None
              for p, w in zip(params, get_weights(model))]
    return from_canonical(model, scores)


@measured_in_inference_mode
def layerwise_obs_prune(model, x, sparsity: float, damping: float = 0.01,
                        batch_size: int = 1024) -> list:
    """Prune every ``nn.Linear`` weight row by row with exact OBS on the layer's output.

    Layer by layer, in module order: one pass over ``x`` collects ``X^T X`` of the layer's
    inputs (through the layers pruned before it, as SparseGPT does), then
    :func:`companion.core.layerwise.obc_prune_rows` removes ``round(sparsity * in)``
    weights of every row and moves the others to keep ``X w`` (Optimal Brain Compression,
    Frantar & Alistarh 2022). Biases, convolutions and recurrent weights are untouched.
    The model is updated in place; on any error it is given back unchanged. Runs in
    inference mode and changes no buffer.

    Args:
        model: a ``torch.nn.Module`` with ``nn.Linear`` layers, e.g. from :func:`mlp`.
        x: inputs (one example per row), or a data source whose batches are inputs or
            ``(x, y)`` pairs (``y`` is ignored); read once per layer.
        sparsity: the fraction of each row to prune, a number in ``[0, 1)``.
        damping: added to ``X^T X`` as ``damping * mean(diag(X^T X)) I``, a number > 0.
        batch_size: examples per forward pass with arrays, an integer >= 1.

    Returns:
        One 0/1 mask (or ``None``) per trainable parameter, as :func:`masks_from_scores`.

    Raises:
        ValueError, TypeError: bad ``sparsity``, ``damping``, ``x`` or ``batch_size``, or
            a model without ``nn.Linear`` layers.
    """
    sparsity = check_sparsity(sparsity)
    damping = check_positive("damping", damping)
    linear = _linear_weights(model)
    if not linear:
        raise ValueError("layerwise_obs_prune prunes nn.Linear layers; the model has none")
    index = {id(p): i for i, p in enumerate(trainable_parameters(model))}

    def gram_of(weight):
        return _input_statistics(model, x, batch_size, input_gram, [weight]).get(id(weight))

    masks = obc_prune_layers(get_weights(model), [(index[id(w)], w) for w in linear],
                             gram_of, lambda arrays: set_weights(model, arrays), sparsity,
                             damping)
    return from_canonical(model, masks)
