"""Curvature of the loss and second-order pruning, PyTorch back end.

Every quantity is about the mean loss ``L(θ)`` of :func:`loss_value` on ``(x, y)``, in the
model's dtype (a float64 model, ``model.double()``, gives float64 results). Hessian-vector
products ``H v`` come from double backpropagation (the gradient's graph is kept and
differentiated again), so the Hessian ``H = d²L/dθ²`` is never formed unless asked for
(:func:`hessian`). Per-sample gradients, for the empirical Fisher, come from
``torch.func.vmap(torch.func.grad(...))`` over ``torch.func.functional_call``: one
vectorised call per chunk of examples, no loop over examples.

Every function measures: it runs the model in inference mode (``model.eval()``) and gives
every module back its mode, so Dropout is off, BatchNorm uses its running statistics and
no buffer changes (``companion.torch.runtime``).

Vectors in the canonical flattening order (parameters in order, each flattened row-major in
the canonical layout) connect the two back ends: :mod:`companion.core.curvature` draws the
random probes in that order and does the framework-neutral NumPy work, so
``companion.tensorflow`` gives the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.checks import (check_loss, check_matching_shapes, check_positive,
                           check_positive_int, check_sparsity)
from ..core.curvature import (check_hessian_size, check_method, check_obs_memory, check_seed,
                              fisher_diagonal, hutchinson_diagonal, obs_prune_arrays,
                              power_iteration)
from .batches import _batch_mean, check_data_source
from .diagonals import closed_form_diagonal, exact_diagonal_from_rows
from .layout import (_flatten, from_canonical, get_weights, parameter_names, set_weights,
                     trainable_parameters, _unflatten)
from .pruning import _prunable
from .runtime import as_tensor, measured_in_inference_mode
from .training import _mean_loss, _per_sample_gradients, check_model_data

__all__ = ["hvp", "hessian", "hessian_diagonal", "hutchinson_trace", "top_eigenvalue",
           "obd_scores", "obs_prune"]

# Rows of the Hessian computed per batched backward pass: at most this many bytes at once.
_ROW_CHUNK_BYTES = 2**25


def _data(model, x, y, loss):
    """Check ``loss`` and ``(x, y)``; return them as tensors like the parameters, or a data
    source as it is (with ``y = None``), to be read batch by batch."""
    loss = check_loss(loss)
    if check_data_source(x, y):
        return x, None
    x, y = check_model_data(model, x, y, loss)
    like = trainable_parameters(model)[0]
    return as_tensor(x, like), as_tensor(y, like)


def _gradient_graph(model, x, y, loss: str):
    """``(params, dL/dθ)`` with the gradient's own graph kept for a second derivative."""
    params = trainable_parameters(model)
    value = _mean_loss(model(x), y, loss)
    return params, torch.autograd.grad(value, params, create_graph=True)


def _differentiate(outputs, params, grad_outputs, batched: bool = False) -> list:
    """``sum_i grad_outputs_i . d outputs_i / dθ`` for every parameter (a vector-Jacobian
    product; with ``batched``, one per leading index of ``grad_outputs``). Zero where an
    output does not depend on a parameter (a loss linear in it)."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    if not pairs:
        lead = (grad_outputs[0].shape[0],) if batched else ()
        return [p.new_zeros(lead + tuple(p.shape)) for p in params]
    return list(torch.autograd.grad([o for o, _ in pairs], params, [g for _, g in pairs],
                                    retain_graph=True, allow_unused=True,
                                    materialize_grads=True, is_grads_batched=batched))


def _vectors(model, vectors) -> list:
    """``vectors`` checked against the parameters and converted to their dtype and device."""
    params = trainable_parameters(model)
    vectors = [v if v is None or hasattr(v, "shape") else np.asarray(v) for v in vectors]
    vectors = check_matching_shapes(parameter_names(model), params, vectors, "vector")
    if any(v is None for v in vectors):
        raise ValueError("hvp needs a vector entry for every parameter, got None")
    return [torch.as_tensor(v.detach() if torch.is_tensor(v) else np.asarray(v),
                            dtype=p.dtype, device=p.device) for v, p in zip(vectors, params)]


@measured_in_inference_mode
def hvp(model, x, y, vectors, loss: str = "cross_entropy") -> list:
    """The Hessian-vector product ``H v`` of the mean loss, without forming ``H``.

    ``H v = d/dθ (g(θ) . v)`` with ``g = dL/dθ``: the gradient is computed with its graph
    (``create_graph=True``) and differentiated once more (double backpropagation), at about
    twice the cost of a gradient.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (``y`` is then ``None``): every
            Hessian-vector product reads it once, one batch in memory at a time.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        vectors: ``v``, one tensor or array per trainable parameter, in order, each of its
            parameter's shape.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).

    Returns:
        ``H v`` as tensors aligned with the parameters.

    Raises:
        ValueError: an unknown loss, bad ``(x, y)`` (see :func:`loss_value`), or vectors
            not aligned with the parameters, of the wrong shape or ``None``.
    """
    vectors = _vectors(model, vectors)
    x, y = _data(model, x, y, loss)
    if y is None:  # a data source: one batch's graph at a time
        return _batch_mean(lambda xb, yb: hvp(model, xb, yb, vectors, loss), x, loss)
    params, grads = _gradient_graph(model, x, y, loss)
    return [h.detach() for h in _differentiate(grads, params, vectors)]


def _hvp_operator(model, x, y, loss: str):
    """``v -> H v`` on float64 vectors in the canonical flattening order (graph built once;
    for a data source, ``(1/N) sum_b n_b H_b v``, one batch's graph at a time)."""
    if y is None:
        return lambda v: _batch_mean(
            lambda xb, yb: _hvp_operator(model, *_data(model, xb, yb, loss), loss)(v), x, loss)
    params, grads = _gradient_graph(model, x, y, loss)
    return lambda v: _flatten(_differentiate(grads, params, _unflatten(model, v)))


def _hessian_rows(model, x, y, loss: str, rows):
    """Yield ``(rows_chunk, H[rows_chunk, :])`` (NumPy, canonical order) chunk by chunk.

    Each chunk is one batched backward pass (``is_grads_batched``): ``H e_q`` for every
    ``q`` of the chunk, i.e. one Hessian-vector product per row.
    """
    params, grads = _gradient_graph(model, x, y, loss)
    flat = torch.cat([g.reshape(-1) for g in grads])
    n = flat.numel()
    chunk = max(1, _ROW_CHUNK_BYTES // (n * flat.element_size()))
    for start in range(0, len(rows), chunk):
        index = torch.as_tensor(rows[start:start + chunk], device=flat.device)
        basis = torch.nn.functional.one_hot(index, n).to(flat.dtype)  # rows e_q
        parts = _differentiate([flat], params, [basis], batched=True)
        yield rows[start:start + chunk], torch.cat(
            [p.detach().reshape(len(index), -1) for p in parts], 1).cpu().numpy()


def _parameter_count(model) -> int:
    return sum(p.numel() for p in trainable_parameters(model))


@measured_in_inference_mode
def hessian(model, x, y=None, loss: str = "cross_entropy",
            max_bytes: float = 2**28) -> np.ndarray:
    """The dense Hessian ``H_jk = d²L / dθ_j dθ_k`` of the mean loss, for small models.

    Rows and columns follow the canonical flattening order: the parameters in order, each
    flattened row-major in the canonical layout, so both back ends return the same matrix.
    Row ``q`` is the Hessian-vector product ``H e_q``; rows are computed in batched
    backward passes of at most 32 MiB each.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (``y`` is then ``None``): every
            Hessian-vector product reads it once, one batch in memory at a time.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        max_bytes: the most memory the matrix may take (default 256 MiB, about 8,000
            float32 parameters); a larger Hessian is refused before any work.

    Returns:
        an ``(n, n)`` NumPy array in the parameters' dtype, ``n`` the number of parameters.

    Raises:
        ValueError: the Hessian would take more than ``max_bytes`` (the message gives its
            size), ``max_bytes`` not a number > 0, an unknown loss or bad ``(x, y)``.
    """
    n = _parameter_count(model)
    check_hessian_size(n, trainable_parameters(model)[0].element_size(), max_bytes)
    x, y = _data(model, x, y, loss)
    if y is None:  # a data source: the batches' Hessians, weighted by batch size
        return np.asarray(_batch_mean(lambda xb, yb: hessian(model, xb, yb, loss, max_bytes),
                                      x, loss))
    return np.concatenate([block for _, block in _hessian_rows(model, x, y, loss,
                                                                np.arange(n))])


@measured_in_inference_mode
def hessian_diagonal(model, x, y, method: str = "exact", samples: int = 100, seed: int = 0,
                     loss: str = "cross_entropy", batch_size: int = 256) -> list:
    """The diagonal ``H_qq`` of the Hessian of the mean loss, exactly or estimated.

    * ``"exact"``: by the closed form, one backward pass, on a chain of dense (and conv)
      layers and elementwise activations (:mod:`companion.torch.diagonals`; for ReLU it is
      :func:`ggn_diagonal`); else ``(H e_q)_q``, one Hessian-vector product per parameter,
      refused above ``EXACT_DIAGONAL_LIMIT`` (10,000) parameters.
    * ``"hutchinson"``: ``(1/S) sum_s v_s * (H v_s)`` over ``S = samples`` Rademacher probes
      (Bekas et al. 2007), unbiased with variance ``(1/S) sum_{j != q} H_qj^2``. The probes
      are drawn in NumPy from ``seed`` in the canonical order
      (:func:`companion.core.curvature.rademacher_probes`), the same in both back ends.
    * ``"fisher"``: the empirical Fisher diagonal ``(1/N) sum_i g_i^2`` over the ``N``
      examples, ``g_i`` the gradient of example ``i``'s loss: never negative, equal to the
      Hessian's Gauss-Newton part only where the model fits (for cross-entropy it
      approximates the Fisher, not ``H``). By the closed form on a chain, else from
      per-sample gradients (``vmap(grad)``), ``batch_size`` examples at a time.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0).
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        method: ``"exact"``, ``"hutchinson"`` or ``"fisher"``.
        samples: the number of probes for ``"hutchinson"``, an integer >= 1.
        seed: seed of the probes, an integer >= 0.
        loss: ``"cross_entropy"`` or ``"mse"``.
        batch_size: examples per chunk for ``"fisher"`` and closed forms (memory only).

    Returns:
        tensors aligned with the parameters, each of its parameter's shape.

    Raises:
        ValueError: an unknown method or loss, ``samples`` or ``batch_size`` not an integer
            >= 1, ``seed`` not an integer >= 0, bad ``(x, y)``, a non-finite closed form, or
            ``"exact"`` by HVPs above the limit (the message estimates the time).
    """
    check_method(method)
    samples = check_positive_int("samples", samples)
    seed = check_seed(seed)
    batch_size = check_positive_int("batch_size", batch_size)
    x, y = _data(model, x, y, loss)
    n = _parameter_count(model)
    if method == "exact":
        diagonal = closed_form_diagonal(model, x, y, loss, "hessian", batch_size)
        if diagonal is None:
            diagonal = exact_diagonal_from_rows(n, _hessian_rows(model, x, y, loss, np.arange(n)),
                                                lambda: _hvp_operator(model, x, y, loss))
    elif method == "hutchinson":
        diagonal = hutchinson_diagonal(_hvp_operator(model, x, y, loss), n, samples, seed)
    else:
        diagonal = closed_form_diagonal(model, x, y, loss, "fisher", batch_size)
        if diagonal is None:
            selected = range(len(trainable_parameters(model)))
            diagonal = fisher_diagonal(_per_sample_gradients(model, x, y, loss, batch_size,
                                                             selected), n, len(x))
    return _unflatten(model, diagonal)


@measured_in_inference_mode
def hutchinson_trace(model, x, y=None, samples: int = 100, seed: int = 0,
                     loss: str = "cross_entropy") -> float:
    """Hutchinson's estimate of ``tr(H) ~ (1/S) sum_s v_s^T H v_s`` (Hutchinson 1989).

    Rademacher probes ``v_s`` drawn in NumPy from ``seed`` (the same in both back ends);
    unbiased, with variance ``(2/S) sum_{j != k} H_jk^2``. It is the sum of
    ``hessian_diagonal(..., method="hutchinson")`` with the same probes.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (``y`` is then ``None``): every
            Hessian-vector product reads it once, one batch in memory at a time.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        samples: the number of probes ``S``, an integer >= 1.
        seed: seed of the probes, an integer >= 0.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).

    Raises:
        ValueError: ``samples`` not an integer >= 1, ``seed`` not an integer >= 0, an
            unknown loss or bad ``(x, y)``.
    """
    samples = check_positive_int("samples", samples)
    seed = check_seed(seed)
    x, y = _data(model, x, y, loss)
    operator = _hvp_operator(model, x, y, loss)
    return float(np.sum(hutchinson_diagonal(operator, _parameter_count(model), samples, seed)))


@measured_in_inference_mode
def top_eigenvalue(model, x, y=None, iterations: int = 100, tol: float = 1e-6, seed: int = 0,
                   loss: str = "cross_entropy", return_vector: bool = False):
    """The Hessian's dominant eigenvalue (largest ``|lambda|``) by power iteration.

    ``w = H v``, ``lambda = v^T w``, ``v = w / ||w||`` with Hessian-vector products, from a
    standard normal start drawn in NumPy from ``seed`` (the same in both back ends), until
    ``lambda`` changes by at most ``tol`` relatively, or ``iterations`` products
    (:func:`companion.core.curvature.power_iteration`). Near a minimum the dominant
    eigenvalue is the largest one, the sharpness ``lambda_max``; gradient descent with a
    learning rate above ``2 / lambda_max`` diverges along its eigenvector.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (``y`` is then ``None``): every
            Hessian-vector product reads it once, one batch in memory at a time.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        iterations: the most Hessian-vector products, an integer >= 1.
        tol: relative change of ``lambda`` at which to stop, a finite number > 0.
        seed: seed of the starting vector, an integer >= 0.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        return_vector: also return the unit eigenvector, as tensors aligned with the
            parameters.

    Returns:
        ``lambda`` as a float, or ``(lambda, vector)`` if ``return_vector``.

    Raises:
        ValueError: ``iterations`` not an integer >= 1, ``tol`` not a finite number > 0,
            ``seed`` not an integer >= 0, an unknown loss or bad ``(x, y)``.
    """
    iterations = check_positive_int("iterations", iterations)
    tol = check_positive("tol", tol)
    seed = check_seed(seed)
    x, y = _data(model, x, y, loss)
    eigenvalue, vector = power_iteration(_hvp_operator(model, x, y, loss),
                                         _parameter_count(model), iterations, tol, seed)
    return (eigenvalue, _unflatten(model, vector)) if return_vector else eigenvalue


@measured_in_inference_mode
def obd_scores(model, x, y, method: str = "exact", samples: int = 100, seed: int = 0,
               loss: str = "cross_entropy", batch_size: int = 256) -> list:
    """Optimal Brain Damage saliency ``s_q = 1/2 H_qq w_q^2`` (LeCun et al. 1990).

    The loss increase, to second order at a minimum and ignoring the Hessian's off-diagonal
    terms, of setting ``w_q`` to zero alone. ``H_qq`` is :func:`hessian_diagonal` with
    ``method`` (and ``samples``, ``seed``, ``batch_size``). The scores go to
    :func:`masks_from_scores` or :func:`prune` like any other.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0).
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        method: ``"exact"``, ``"hutchinson"`` or ``"fisher"`` (see :func:`hessian_diagonal`).
        samples: the number of probes for ``"hutchinson"``, an integer >= 1.
        seed: seed of the probes, an integer >= 0.
        loss: ``"cross_entropy"`` or ``"mse"``.
        batch_size: examples per vectorised chunk for ``"fisher"`` (bounds memory only).

    Returns:
        score tensors aligned with the parameters; higher means keep.

    Raises:
        ValueError: as in :func:`hessian_diagonal`.
    """
    diagonal = hessian_diagonal(model, x, y, method, samples, seed, loss, batch_size)
    return [0.5 * d * p.detach() ** 2 for d, p in zip(diagonal, trainable_parameters(model))]


@measured_in_inference_mode
def obs_prune(model, x, y, sparsity: float, damping: float = 1e-4, block_size: int = 128,
              loss: str = "cross_entropy", batch_size: int = 256,
              max_bytes: float = 2**30) -> list:
    """One-shot Optimal Brain Surgeon pruning with a block-diagonal empirical Fisher.

    OBS (Hassibi & Stork 1993) removes the weights whose removal costs least to second order
    and moves the remaining weights to compensate. The Hessian is replaced by the damped
    empirical Fisher ``F = damping I + (1/N) sum_i g_i g_i^T`` of the eligible weights
    (parameters that :func:`companion.core.pruning.is_weight` calls weights, as in
    :func:`masks_from_scores`, flattened in
    order), kept in diagonal blocks of ``block_size`` consecutive weights and inverted by
    Woodbury updates starting from ``I / damping`` (WoodFisher, Singh & Alistarh 2020; see
    :func:`companion.core.curvature.woodbury_block_inverse`). Then:

    1. every eligible weight gets the OBS saliency ``w_q^2 / (2 [F^-1]_qq)``, and the
       ``round(sparsity * n)`` lowest over all eligible weights are pruned (global ranking,
       ties broken by position, exactly as :func:`masks_from_scores`);
    2. within each block, the exact multi-weight OBS update for the set ``Q`` pruned in that
       block, ``dw = -F^-1[:, Q] (F^-1[Q, Q])^-1 w_Q``, is added to the block's weights
       (:func:`companion.core.curvature.obs_update`; weights do not compensate across
       blocks); pruned weights are then exactly zero.

    The ranking uses single-weight saliencies (WoodFisher's choice), while the update
    accounts for the correlations among the weights pruned together in a block. Biases are
    neither pruned nor updated. Per-sample gradients are vectorised (``vmap(grad)``),
    ``batch_size`` examples at a time. The model is updated in place; every argument is
    checked first, and on any error the model is unchanged.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0).
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        sparsity: the fraction of eligible weights to remove, a number in ``[0, 1)``.
        damping: ``lambda`` of ``F``, a finite number > 0; large values make the saliency
            ``~ lambda w^2 / 2`` and the update ``~ 0``, i.e. magnitude pruning.
        block_size: weights per diagonal block, an integer >= 1. Time grows about
            linearly with it, memory as ``n * block_size``.
        loss: ``"cross_entropy"`` or ``"mse"``.
        batch_size: examples per vectorised chunk of per-sample gradients (memory only).
        max_bytes: refuse (before any work) if the estimated working memory
            (:func:`companion.core.curvature.check_obs_memory`) exceeds it; default 1 GiB.

    Returns:
        the masks, as :func:`masks_from_scores` gives them (a 0/1 tensor per weight, ``None``
        for biases).

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)``, ``damping`` not a finite number > 0,
            ``block_size`` or ``batch_size`` not an integer >= 1, a model without weight
            matrices, too much memory needed, an unknown loss, bad ``(x, y)``, or non-finite
            gradients. Nothing is changed.
        TypeError: ``sparsity`` or ``damping`` not a number.
    """
    sparsity = check_sparsity(sparsity)
    damping = check_positive("damping", damping)
    block_size = check_positive_int("block_size", block_size)
    batch_size = check_positive_int("batch_size", batch_size)
    x, y = _data(model, x, y, loss)
    params = trainable_parameters(model)
    eligible = _prunable(model)
    if not any(eligible):
        raise ValueError("obs_prune needs weights (parameters with two or more dimensions, "
                         "not named bias); the model has none")
    n = sum(p.numel() for p, ok in zip(params, eligible) if ok)
    check_obs_memory(n, block_size, min(batch_size, len(x)), max_bytes)
    chunks = _per_sample_gradients(model, x, y, loss, batch_size,
                                   [i for i, ok in enumerate(eligible) if ok])
    weights, masks = obs_prune_arrays(get_weights(model), eligible, chunks, len(x), sparsity,
                                      damping, block_size)
    masks = from_canonical(model, masks)
    set_weights(model, weights)
    return masks
