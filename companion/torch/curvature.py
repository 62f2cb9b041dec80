"""Curvature of the loss (Hessian-vector products and what is built on them) and OBD
scores, PyTorch back end; Optimal Brain Surgeon is in :mod:`companion.torch.obs`.

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

from ..core.checks import check_matching_shapes, check_positive, check_positive_int
from ..core.curvature import (check_hessian_size, check_method, check_seed,
                              fisher_diagonal, hutchinson_diagonal, power_iteration)
from .batches import _batch_mean, _data, _mean_loss
from .diagonals import closed_form_diagonal, exact_diagonal_from_rows
from .layout import _flatten, _unflatten, parameter_names, trainable_parameters
from .obs import _per_sample_gradients
from .runtime import measured_in_inference_mode

__all__ = ["hvp", "hessian", "hessian_diagonal", "hutchinson_trace", "top_eigenvalue",
           "obd_scores"]

# Rows of the Hessian computed per batched backward pass: at most this many bytes at once.
_ROW_CHUNK_BYTES = 2**25


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
def hessian_diagonal(model, x, y=None, method: str = "exact", samples: int = 100,
                     seed: int = 0, loss="cross_entropy", batch_size: int = 256) -> list:
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
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (``y`` is then ``None``), read one
            batch at a time: the diagonal is the batch-size-weighted mean of the batches'.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        method: ``"exact"``, ``"hutchinson"`` or ``"fisher"``.
        samples: the number of probes for ``"hutchinson"``, an integer >= 1.
        seed: seed of the probes, an integer >= 0.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
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
    if y is None:  # a data source: the batches' diagonals (same probes), weighted by size
        return _batch_mean(lambda xb, yb: hessian_diagonal(
            model, xb, yb, method, samples, seed, loss, batch_size), x, loss)
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
def obd_scores(model, x, y=None, method: str = "exact", samples: int = 100,
               seed: int = 0, loss="cross_entropy", batch_size: int = 256) -> list:
    """Optimal Brain Damage saliency ``s_q = 1/2 H_qq w_q^2`` (LeCun et al. 1990).

    The loss increase, to second order at a minimum and ignoring the Hessian's off-diagonal
    terms, of setting ``w_q`` to zero alone. ``H_qq`` is :func:`hessian_diagonal` with
    ``method`` (and ``samples``, ``seed``, ``batch_size``). The scores go to
    :func:`masks_from_scores` or :func:`prune` like any other.

    Args:
        model: a ``torch.nn.Module``, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (``y`` is then ``None``), read one
            batch at a time: the diagonal is the batch-size-weighted mean of the batches'.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        method: ``"exact"``, ``"hutchinson"`` or ``"fisher"`` (see :func:`hessian_diagonal`).
        samples: the number of probes for ``"hutchinson"``, an integer >= 1.
        seed: seed of the probes, an integer >= 0.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        batch_size: examples per vectorised chunk for ``"fisher"`` (bounds memory only).

    Returns:
        score tensors aligned with the parameters; higher means keep.

    Raises:
        ValueError: as in :func:`hessian_diagonal`.
    """
    diagonal = hessian_diagonal(model, x, y, method, samples, seed, loss, batch_size)
    return [0.5 * d * p.detach() ** 2 for d, p in zip(diagonal, trainable_parameters(model))]


