"""Curvature of the loss (Hessian-vector products and what is built on them) and OBD
scores, TensorFlow (Keras 3) back end; Optimal Brain Surgeon is in :mod:`companion.tensorflow.obs`.

Every quantity is about the mean loss ``L(θ)`` of :func:`loss_value` on ``(x, y)``, in the
model's dtype: a model built while ``keras.config.set_dtype_policy("float64")`` is in force
gives float64 results (``set_floatx`` alone is not enough once Keras has cached its default
policy, which it does when the first layer is built). Hessian-vector products ``H v`` come
from nested ``tf.GradientTape``\\ s (reverse-over-reverse), so the Hessian
``H = d²L/dθ²`` is never formed unless asked for (:func:`hessian`). Per-sample gradients,
for the empirical Fisher, are the rows of the Jacobian of the per-example losses
(``GradientTape.jacobian``, vectorised by ``pfor``): one call per chunk of examples, no loop
over examples. The compiled functions are made once per model.

Vectors in the canonical flattening order (parameters in order, each flattened row-major in
the canonical layout, i.e. Keras kernels transposed to ``(out, in, ...)``) connect the two
back ends: :mod:`companion.core.curvature` draws the random probes in that order and does the
framework-neutral NumPy work, so ``companion.torch`` gives the same numbers.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..core.checks import check_matching_shapes, check_positive, check_positive_int
from ..core.curvature import (check_hessian_size, check_method, check_seed,
                              fisher_diagonal, hutchinson_diagonal, power_iteration)
from .batches import _batch_mean, _data, _mean_loss
from .diagonals import closed_form_diagonal, exact_diagonal_from_rows
from .layout import (_canonical_order, _flatten, _unflatten, parameter_names,
                     trainable_parameters)
from .obs import _per_sample_gradients
from .runtime import compiled_for

__all__ = ["hvp", "hessian", "hessian_diagonal", "hutchinson_trace", "top_eigenvalue",
           "obd_scores"]

# Rows of the Hessian computed per Jacobian call: at most this many bytes at once.
_ROW_CHUNK_BYTES = 2**25
_ZERO = tf.UnconnectedGradients.ZERO


def _dense(gradients) -> list:
    """``gradients`` with every ``tf.IndexedSlices`` (an ``Embedding``'s) made a dense tensor.

    A tape cannot differentiate through ``IndexedSlices``, and curvature needs every entry.
    """
    return [tf.convert_to_tensor(g) for g in gradients]


def _hvp_function(model, loss: str):
    """A ``tf.function`` ``(x, y, vectors) -> H v`` (nested tapes), made once per model."""
    variables = trainable_parameters(model)

    def make():
        @tf.function(reduce_retracing=True)
        def hessian_vector_product(x, y, vectors):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    value = _mean_loss(model(x, training=False), y, loss)
                grads = _dense(inner.gradient(value, variables, unconnected_gradients=_ZERO))
            return _dense(outer.gradient(grads, variables, output_gradients=vectors,
                                         unconnected_gradients=_ZERO))

        return hessian_vector_product

    return compiled_for(model, ("hvp", loss), make)


def _vectors(model, vectors) -> list:
    """``vectors`` checked against the variables and converted to their dtype."""
    variables = trainable_parameters(model)
    vectors = [v if v is None or hasattr(v, "shape") else np.asarray(v) for v in vectors]
    vectors = check_matching_shapes(parameter_names(model), variables, vectors, "vector")
    if any(v is None for v in vectors):
        raise ValueError("hvp needs a vector entry for every parameter, got None")
    return [tf.cast(tf.convert_to_tensor(vector), variable.dtype)
            for vector, variable in zip(vectors, variables)]


def hvp(model, x, y, vectors, loss: str = "cross_entropy") -> list:
    """The Hessian-vector product ``H v`` of the mean loss, without forming ``H``.

    ``H v = d/dθ (g(θ) . v)`` with ``g = dL/dθ``: an inner ``tf.GradientTape`` computes the
    gradient, an outer one differentiates ``g . v`` again (reverse-over-reverse), at about
    twice the cost of a gradient.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (``y`` is then ``None``): every
            Hessian-vector product reads it once, one batch in memory at a time.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        vectors: ``v``, one tensor or array per trainable variable, in order, each of its
            variable's shape (Keras' layout, like the gradients).
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).

    Returns:
        ``H v`` as tensors aligned with the variables.

    Raises:
        ValueError: an unknown loss, bad ``(x, y)`` (see :func:`loss_value`), or vectors
            not aligned with the variables, of the wrong shape or ``None``.
    """
    vectors = _vectors(model, vectors)
    x, y = _data(model, x, y, loss)
    if y is None:  # a data source: one batch at a time
        return _batch_mean(lambda xb, yb: hvp(model, xb, yb, vectors, loss), x, loss)
    return list(_hvp_function(model, loss)(x, y, vectors))


def _hvp_operator(model, x, y, loss: str):
    """``v -> H v`` on float64 vectors in the canonical flattening order (for a data source,
    ``(1/N) sum_b n_b H_b v``, one batch at a time)."""
    if y is None:
        return lambda v: np.asarray(_batch_mean(
            lambda xb, yb: _hvp_operator(model, *_data(model, xb, yb, loss), loss)(v), x, loss))
    function = _hvp_function(model, loss)
    order = _canonical_order(model)
    return lambda v: _flatten(function(x, y, _unflatten(model, v, order)), order)


def _rows_function(model, loss: str):
    """A ``tf.function`` ``(x, y, rows) -> H[rows, :]`` in Keras' flattening (both axes)."""
    variables = trainable_parameters(model)

    def make():
        @tf.function(reduce_retracing=True)
        def hessian_rows(x, y, rows):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    value = _mean_loss(model(x, training=False), y, loss)
                grads = _dense(inner.gradient(value, variables, unconnected_gradients=_ZERO))
                flat = tf.gather(tf.concat([tf.reshape(g, [-1]) for g in grads], 0), rows)
            # A while loop over the rows, not pfor: pfor cannot vectorise the second
            # derivative of a recurrent layer's while loop (SimpleRNN), and for the small
            # models a dense Hessian is for, the loop costs little.
            jacobian = outer.jacobian(flat, variables, unconnected_gradients=_ZERO,
                                      experimental_use_pfor=False)
            return tf.concat([tf.reshape(j, [tf.shape(rows)[0], -1]) for j in jacobian], 1)

        return hessian_rows

    return compiled_for(model, ("rows", loss), make)


def _hessian_rows(model, x, y, loss: str, rows):
    """Yield ``(rows_chunk, H[rows_chunk, :])`` (NumPy, canonical order) chunk by chunk.

    Each chunk is one Jacobian of the gradient, a compiled loop of ``H e_q`` for every ``q``
    of the chunk: one Hessian-vector product per row.
    """
    order = _canonical_order(model)
    n = len(order)
    itemsize = np.dtype(trainable_parameters(model)[0].dtype).itemsize
    chunk = max(1, _ROW_CHUNK_BYTES // (n * itemsize))
    function = _rows_function(model, loss)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        block = function(x, y, tf.constant(order[part], tf.int64)).numpy()
        yield part, block[:, order]


def _parameter_count(model) -> int:
    return sum(int(np.prod(v.shape, dtype=np.int64)) for v in trainable_parameters(model))


def hessian(model, x, y=None, loss: str = "cross_entropy",
            max_bytes: float = 2**28) -> np.ndarray:
    """The dense Hessian ``H_jk = d²L / dθ_j dθ_k`` of the mean loss, for small models.

    Rows and columns follow the canonical flattening order: the variables in order, each
    flattened row-major in the canonical layout (kernels as ``(out, in, ...)``), so both
    back ends return the same matrix. Row ``q`` is the Hessian-vector product ``H e_q``;
    rows are computed as Jacobians of the gradient, at most 32 MiB at a time.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (``y`` is then ``None``): every
            Hessian-vector product reads it once, one batch in memory at a time.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        max_bytes: the most memory the matrix may take (default 256 MiB, about 8,000
            float32 parameters); a larger Hessian is refused before any work.

    Returns:
        an ``(n, n)`` NumPy array in the variables' dtype, ``n`` the number of parameters.

    Raises:
        ValueError: the Hessian would take more than ``max_bytes`` (the message gives its
            size), ``max_bytes`` not a number > 0, an unknown loss or bad ``(x, y)``.
    """
    n = _parameter_count(model)
    check_hessian_size(n, np.dtype(trainable_parameters(model)[0].dtype).itemsize, max_bytes)
    x, y = _data(model, x, y, loss)
    if y is None:  # a data source: the batches' Hessians, weighted by batch size
        return np.asarray(_batch_mean(lambda xb, yb: hessian(model, xb, yb, loss, max_bytes),
                                      x, loss))
    return np.concatenate([block for _, block in _hessian_rows(model, x, y, loss,
                                                                np.arange(n))])


def hessian_diagonal(model, x, y=None, method: str = "exact", samples: int = 100,
                     seed: int = 0, loss="cross_entropy", batch_size: int = 256) -> list:
    """The diagonal ``H_qq`` of the Hessian of the mean loss, exactly or estimated.

    * ``"exact"``: by the closed form, one backward pass, on a chain of dense (and conv)
      layers and elementwise activations (:mod:`companion.tensorflow.diagonals`; for ReLU it is
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
      per-sample gradients (a batch Jacobian), ``batch_size`` examples at a time.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (``y`` is then ``None``), read one
            batch at a time: the diagonal is the batch-size-weighted mean of the batches'.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        method: ``"exact"``, ``"hutchinson"`` or ``"fisher"``.
        samples: the number of probes for ``"hutchinson"``, an integer >= 1.
        seed: seed of the probes, an integer >= 0.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        batch_size: examples per chunk for ``"fisher"`` and closed forms (memory only).

    Returns:
        tensors aligned with the variables, each of its variable's shape.

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
                                                             selected), n, int(x.shape[0]))
    return _unflatten(model, diagonal, _canonical_order(model))


def hutchinson_trace(model, x, y=None, samples: int = 100, seed: int = 0,
                     loss: str = "cross_entropy") -> float:
    """Hutchinson's estimate of ``tr(H) ~ (1/S) sum_s v_s^T H v_s`` (Hutchinson 1989).

    Rademacher probes ``v_s`` drawn in NumPy from ``seed`` (the same in both back ends);
    unbiased, with variance ``(2/S) sum_{j != k} H_jk^2``. It is the sum of
    ``hessian_diagonal(..., method="hutchinson")`` with the same probes.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (``y`` is then ``None``): every
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
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (``y`` is then ``None``): every
            Hessian-vector product reads it once, one batch in memory at a time.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        iterations: the most Hessian-vector products, an integer >= 1.
        tol: relative change of ``lambda`` at which to stop, a finite number > 0.
        seed: seed of the starting vector, an integer >= 0.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        return_vector: also return the unit eigenvector, as tensors aligned with the
            variables.

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
    if return_vector:
        return eigenvalue, _unflatten(model, vector, _canonical_order(model))
    return eigenvalue


def obd_scores(model, x, y=None, method: str = "exact", samples: int = 100,
               seed: int = 0, loss="cross_entropy", batch_size: int = 256) -> list:
    """Optimal Brain Damage saliency ``s_q = 1/2 H_qq w_q^2`` (LeCun et al. 1990).

    The loss increase, to second order at a minimum and ignoring the Hessian's off-diagonal
    terms, of setting ``w_q`` to zero alone. ``H_qq`` is :func:`hessian_diagonal` with
    ``method`` (and ``samples``, ``seed``, ``batch_size``). The scores go to
    :func:`masks_from_scores` or :func:`prune` like any other.

    Args:
        model: a Keras model, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (``y`` is then ``None``), read one
            batch at a time: the diagonal is the batch-size-weighted mean of the batches'.
        y: class labels (``"cross_entropy"``) or targets (``"mse"``), as in :func:`loss_value`.
        method: ``"exact"``, ``"hutchinson"`` or ``"fisher"`` (see :func:`hessian_diagonal`).
        samples: the number of probes for ``"hutchinson"``, an integer >= 1.
        seed: seed of the probes, an integer >= 0.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        batch_size: examples per vectorised chunk for ``"fisher"`` (bounds memory only).

    Returns:
        score tensors aligned with the variables; higher means keep.

    Raises:
        ValueError: as in :func:`hessian_diagonal`.
    """
    diagonal = hessian_diagonal(model, x, y, method, samples, seed, loss, batch_size)
    return [0.5 * d * tf.square(tf.convert_to_tensor(v))
            for d, v in zip(diagonal, trainable_parameters(model))]


