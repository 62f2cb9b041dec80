"""Pruning core, PyTorch back end: scores, masks and applying them.

Scores and masks are lists aligned with :func:`trainable_parameters`, in each
parameter's own layout; masks are 0/1 tensors (``None`` for a parameter left whole).
The data-dependent scores measure: they run the model in inference mode and give every
module back its mode (``companion.torch.runtime``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.checks import (check_choice, check_flag, check_masks, check_matching_shapes,
                           check_sparsity, check_tensor_list)
from ..core.pruning import (MASK_SCOPES, CompressedSize, MovementScoreRecorder, SparsityReport,
                            is_weight, lowest_score_masks, random_canonical_scores)
from .batches import _example_count, numpy_batches
from .layout import (from_canonical, get_weights, parameter_names, to_canonical,
                     trainable_parameters)
from .runtime import measured_in_inference_mode
from .training import gradients

__all__ = ["magnitude_scores", "random_scores", "gradient_scores", "snip_scores",
           "taylor_scores", "masks_from_scores", "apply_masks", "prune",
           "keep_masks_after_step", "sparsity_report", "compressed_size", "MovementScores"]


def magnitude_scores(model) -> list:
    """Magnitude saliency ``s_q = |w_q|`` of every parameter entry (Han et al. 2015).

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
    """
    return [p.detach().abs() for p in trainable_parameters(model)]


def random_scores(model, seed: int = 0) -> list:
    """Uniform random scores in ``[0, 1)``: pruning by them is random pruning, the baseline.

    Drawn in NumPy in the canonical layout from ``seed``, so both back ends prune the same
    entries.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        seed: the seed of the draw.
    """
    shapes = [tuple(a.shape) for a in get_weights(model)]
    return from_canonical(model, random_canonical_scores(shapes, seed))


def _batch_gradients(model, x, y, batch_size: int, loss):
    """Yield ``(n_b / n, [dL_b/dθ])`` for the batches ``b`` of arrays or of a data source
    (counted first: one more pass over it)."""
    batches = numpy_batches(x, y, batch_size, loss)
    count = len(x) if y is not None else _example_count(x, loss)
    for xb, yb in batches:
        yield len(xb) / count, gradients(model, xb, yb, loss)


@measured_in_inference_mode
def gradient_scores(model, x, y=None, *, batch_size: int = 1000,
                    loss: str = "cross_entropy") -> list:
    """Gradient magnitude ``s_q = |dL/dw_q|`` of the mean loss over all of ``(x, y)``.

    ``dL/dw = sum_b (n_b / n) dL_b/dw`` is accumulated over consecutive batches ``b`` (of
    ``batch_size`` rows, or a data source's batches), so the result does not depend on
    how the data are batched. Near a minimum every gradient is small,
    the important weights' too: this is the criterion Chapter 3 shows failing.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (then ``y`` is ``None``).
        y: integer class labels (``"cross_entropy"``) or targets (``"mse"``).
        batch_size: examples per gradient evaluation, an integer >= 1 (bounds memory only).
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (as in :func:`gradients`).

    Raises:
        ValueError, TypeError: bad data, loss or batch size (as in :func:`gradients`).
    """
    total = None
    for share, grads in _batch_gradients(model, x, y, batch_size, loss):
        scaled = [share * g for g in grads]
        total = scaled if total is None else [t + g for t, g in zip(total, scaled)]
    return [t.abs() for t in total]


@measured_in_inference_mode
def snip_scores(model, x, y=None, *, batch_size: int = 1000, loss: str = "cross_entropy") -> list:
    """SNIP connection sensitivity ``s_q = |dL/dw_q * w_q|`` (Lee et al. 2019).

    Equal to ``|dL/dc_q|`` at ``c = 1`` for a multiplicative gate ``c_q`` on each weight
    (``w_q -> c_q w_q``): how much the loss changes when the connection is scaled. The
    gradient is that of the mean loss over all of ``(x, y)``, as in
    :func:`gradient_scores`.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (then ``y`` is ``None``).
        y: integer class labels (``"cross_entropy"``) or targets (``"mse"``).
        batch_size: examples per gradient evaluation, an integer >= 1 (bounds memory only).
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (as in :func:`gradients`).

    Raises:
        ValueError, TypeError: bad data, loss or batch size (as in :func:`gradients`).
    """
    grads = gradient_scores(model, x, y, batch_size=batch_size, loss=loss)
    return [g * p.detach().abs() for g, p in zip(grads, trainable_parameters(model))]


@measured_in_inference_mode
def taylor_scores(model, x, y=None, *, batch_size: int = 64, loss: str = "cross_entropy") -> list:
    """First-order Taylor importance ``s_q = mean_b (dL_b/dw_q * w_q)^2`` (Molchanov et al. 2019).

    ``(g_q w_q)^2`` estimates the squared loss change of removing ``w_q``; squaring each
    minibatch's estimate before averaging keeps weights whose gradient changes sign from
    batch to batch (their mean gradient, which :func:`snip_scores` uses, cancels). So
    here ``batch_size`` matters: it is the minibatch of the estimate (the last one may be
    smaller).

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (then ``y`` is ``None``).
        y: integer class labels (``"cross_entropy"``) or targets (``"mse"``).
        batch_size: examples per minibatch estimate, an integer >= 1.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (as in :func:`gradients`).

    Raises:
        ValueError, TypeError: bad data, loss or batch size (as in :func:`gradients`).
    """
    params = [p.detach() for p in trainable_parameters(model)]
    total, count = None, 0
    for _, grads in _batch_gradients(model, x, y, batch_size, loss):
        squares = [(g * p) ** 2 for g, p in zip(grads, params)]
        total = squares if total is None else [t + q for t, q in zip(total, squares)]
        count += 1
    return [t / count for t in total]


def _check_shapes(model, tensors, what: str) -> list:
    return check_matching_shapes(parameter_names(model), trainable_parameters(model),
                                 tensors, what)


def _as_tensors(scores) -> list:
    """NumPy arrays (e.g. scores computed by hand) as tensors; tensors and None as they are."""
    return [t if t is None or torch.is_tensor(t) else torch.as_tensor(np.asarray(t))
            for t in check_tensor_list("scores", scores)]


def _prunable(model, prune_biases: bool = False) -> list:
    """One flag per trainable parameter: may pruning remove its entries?

    Weights may (see :func:`companion.core.pruning.is_weight`: two or more dimensions and
    not named ``bias*``, so recurrent biases such as Keras GRU's 2-D ``bias`` are not
    weights); biases and other parameters only if ``prune_biases``.

    Args:
        model: the model whose trainable parameters are flagged.
        prune_biases: flag every parameter, biases too.
    """
    return [prune_biases or is_weight(name, len(param.shape)) for name, param in
            zip(parameter_names(model), trainable_parameters(model))]


def masks_from_scores(model, scores, sparsity: float, scope: str = "global",
                      prune_biases: bool = False) -> list:
    """Masks that prune the lowest-scoring weights: exactly ``round(sparsity * n)`` of them.

    Weights are the parameters with two or more dimensions, except recurrent biases
    (:func:`companion.core.pruning.is_weight`; biases too if ``prune_biases``) whose score
    is not ``None``; the others get mask ``None``. With
    ``scope="global"`` all eligible weights compete in one ranking (the count is over all of
    them, as ``torch.nn.utils.prune.global_unstructured``); with ``"layer"`` each tensor
    loses ``round(sparsity * n_i)`` of its own entries (as ``l1_unstructured``); with
    ``"row"`` each output row (every weight feeding one output unit) loses
    ``round(sparsity * K)`` of its ``K`` entries, as Wanda prunes. Ties are broken by
    position in the canonical layout, so both back ends give the same masks.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        scores: one score tensor (or ``None``) per trainable parameter, in order, each of
            its parameter's shape; higher means keep.
        sparsity: the fraction of eligible weights to prune, a number in ``[0, 1)``.
        scope: ``"global"`` (one ranking over all eligible weights), ``"layer"`` or
            ``"row"`` (see :func:`masks_from_scores`).
        prune_biases: also prune biases (see :func:`companion.core.pruning.is_weight`).

    Raises:
        ValueError: sparsity outside [0, 1), an unknown scope, scores not aligned with the
            parameters or of the wrong shape, or non-finite scores. Nothing is changed.
        TypeError: ``prune_biases`` not a bool, or ``scores`` a single tensor.
    """
    sparsity = check_sparsity(sparsity)
    check_choice("scope", scope, MASK_SCOPES)
    prune_biases = check_flag("prune_biases", prune_biases)
    scores = _check_shapes(model, _as_tensors(scores), "score")
    eligible = [s is not None and ok for s, ok in zip(scores, _prunable(model, prune_biases))]
    canonical = to_canonical(model, scores)
    return from_canonical(model, lowest_score_masks(canonical, eligible, sparsity, scope))


def apply_masks(model, masks) -> None:
    """Zero the pruned entries in place: ``w <- w * m`` for every mask that is not ``None``.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        masks: one 0/1 tensor (or ``None``, left whole) per trainable parameter, in order,
            each of its parameter's shape, e.g. from :func:`masks_from_scores`.

    Raises:
        ValueError: masks not aligned with the parameters, of the wrong shape, or holding
            values other than 0 and 1; nothing is changed.
    """
    masks = check_masks(parameter_names(model), trainable_parameters(model), masks)
    with torch.no_grad():
        for param, mask in zip(trainable_parameters(model), masks):
            if mask is not None:
                param.mul_(torch.as_tensor(mask, dtype=param.dtype, device=param.device))


def prune(model, scores, sparsity: float, scope: str = "global",
          prune_biases: bool = False) -> list:
    """One-shot pruning: :func:`masks_from_scores`, then :func:`apply_masks`; returns the masks.

    For example ``prune(model, magnitude_scores(model), 0.9)`` zeroes the 90 % of weights
    with the smallest magnitude, ranked across all layers.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        scores: one score tensor (or ``None``) per trainable parameter, in order, each of
            its parameter's shape; higher means keep.
        sparsity: the fraction of eligible weights to prune, a number in ``[0, 1)``.
        scope: ``"global"`` (one ranking over all eligible weights), ``"layer"`` or
            ``"row"`` (see :func:`masks_from_scores`).
        prune_biases: also prune biases (see :func:`companion.core.pruning.is_weight`).

    Raises:
        ValueError: as in :func:`masks_from_scores`; nothing is changed.
    """
    masks = masks_from_scores(model, scores, sparsity, scope, prune_biases)
    apply_masks(model, masks)
    return masks


def keep_masks_after_step(optimizer, model, masks):
    """Keep pruned weights at zero in a plain PyTorch loop: hooks on ``optimizer``.

    Before each ``optimizer.step()`` the gradients of pruned entries are zeroed (so momentum
    and Adam's moments stay zero there); after it the weights are multiplied by their masks
    again, which also undoes weight decay and any update that does not come from the
    gradient. So the pruned weights stay exactly zero::

        masks = ct.prune(model, ct.magnitude_scores(model), 0.9)
        handle = ct.keep_masks_after_step(optimizer, model, masks)
        ...  # train as usual: zero_grad, backward, step
        handle.remove()  # the masks no longer apply

    Args:
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        model: a ``torch.nn.Module`` whose :func:`trainable_parameters` the masks follow.
        masks: one 0/1 tensor (or ``None``) per trainable parameter, e.g. from :func:`prune`.

    Returns:
        A handle whose ``remove()`` takes both hooks off.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``.
        ValueError: masks not aligned with the parameters, of the wrong shape, or not 0/1;
            or an optimizer that does not update a masked parameter (another model's).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, "
                        f"got {type(optimizer).__name__}")
    params = trainable_parameters(model)
    masks = check_masks(parameter_names(model), params, masks)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p, m in zip(parameter_names(model), params, masks)
               if m is not None and id(p) not in held]
    if missing:
        raise ValueError(f"the optimizer does not update the model's masked parameters "
                         f"{missing}: pass the optimizer built over this model's parameters")
    pairs = [(p, torch.as_tensor(m, dtype=p.dtype, device=p.device))
             for p, m in zip(params, masks) if m is not None]

    def mask_gradients(*_):
        for param, mask in pairs:
            if param.grad is not None:
                param.grad.mul_(mask)

    def mask_weights(*_):
        with torch.no_grad():
            for param, mask in pairs:
                param.mul_(mask)

    return _Handles(optimizer.register_step_pre_hook(mask_gradients),
                    optimizer.register_step_post_hook(mask_weights))


class _Handles:
    """Removes several hooks at once."""

    def __init__(self, *handles):
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def sparsity_report(model) -> SparsityReport:
    """How many entries of each parameter are exactly zero, and the totals.

    ``print(sparsity_report(model))`` shows a table; ``.weights`` is the sparsity over the
    weight matrices (what pruning removes), ``.total`` over every parameter. A model
    pruned with ``torch.nn.utils.prune`` is reported by its effective weights: a
    ``<name>_orig`` parameter with a ``<name>_mask`` buffer counts as ``<name>`` =
    ``<name>_orig * <name>_mask``.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
    """
    names, arrays = [], []
    for name, array in zip(parameter_names(model), get_weights(model)):
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        base = leaf[:-len("_orig")]
        if leaf.endswith("_orig") and hasattr(module, base + "_mask"):
            mask = getattr(module, base + "_mask").detach().cpu().float().numpy()
            name, array = f"{module_name}.{base}".lstrip("."), array * mask
        names.append(name)
        arrays.append(array)
    return SparsityReport.from_arrays(names, arrays)


def compressed_size(model, index_bits: int = 32) -> CompressedSize:
    """Bytes of the model's weights stored dense and in compressed sparse row (CSR) form.

    Each parameter of two or more dimensions, canonical shape ``(out, in, k...)``, is a
    matrix of ``out`` rows and ``in * k...`` columns; CSR stores its ``nnz`` non-zero
    values, one ``index_bits``-wide column index per value and ``out + 1`` row pointers::

        sparse = (nnz * itemsize                   # the values
                  + nnz * index_bits / 8          # their column indices
                  + (out + 1) * pointer_bits / 8)  # the row pointers

    (row pointers are ``index_bits`` wide unless ``nnz`` needs more). Biases are stored
    dense. ``print(compressed_size(model))`` shows a table; ``.dense_bytes``,
    ``.sparse_bytes`` and ``.ratio`` (dense / sparse) are the totals. See
    :func:`companion.core.pruning.csr_bytes`.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        index_bits: the width of a column index: 8, 16, 32 or 64 bits (unsigned).

    Raises:
        ValueError: ``index_bits`` not one of 8, 16, 32, 64, or too narrow to address the
            columns of some weight matrix (``2**index_bits`` of them at most).
    """
    return CompressedSize.from_arrays(parameter_names(model), get_weights(model), index_bits)


class MovementScores(MovementScoreRecorder):
    """Movement pruning's scores ``S = -sum_t g_t * w_t`` (Sanh et al. 2020), accumulated
    as ``train``'s ``monitor``; see :class:`companion.core.pruning.MovementScoreRecorder`.
    """

    def _terms(self, grads) -> list:
        params = trainable_parameters(self.model)
        grads = _check_shapes(self.model, grads, "gradient")
        with torch.no_grad():
            return [-g.detach() * p.detach() for g, p in zip(grads, params)]

    @staticmethod
    def _copy(t):
        return t.clone()
