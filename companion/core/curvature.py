"""Framework-neutral second-order pieces that both back ends share (NumPy, float64).

Both ``companion.torch.curvature`` and ``companion.tensorflow.curvature`` reduce curvature
questions to NumPy vectors in the *canonical flattening order*: the trainable parameters in
order, each flattened row-major in the canonical (PyTorch) layout. What depends on the
framework (Hessian-vector products, per-sample gradients) is computed there; what does not
lives here, once:

* random probes and the estimators built on them: Hutchinson's diagonal and trace
  (:func:`rademacher_probes`, :func:`hutchinson_diagonal`) and power iteration
  (:func:`power_iteration`). Probes are drawn here from ``seed``, in the canonical order, so
  both back ends use exactly the same probes;
* the empirical Fisher diagonal from per-sample gradients (:func:`fisher_diagonal`);
* a size check that refuses a dense Hessian that would not fit in memory
  (:func:`check_hessian_size`).

Optimal Brain Surgeon, built on the block-diagonal empirical Fisher, is in
:mod:`companion.core.obs`.
"""

from __future__ import annotations

import numbers

import numpy as np

from .checks import check_choice, check_positive, check_positive_int

__all__ = ["CURVATURE_METHODS", "check_method", "check_seed", "check_hessian_size",
           "rademacher_probes", "hutchinson_diagonal", "power_iteration", "fisher_diagonal"]

CURVATURE_METHODS = ("exact", "hutchinson", "fisher")



def check_method(method: str) -> str:
    """Return ``method`` if it is one of :data:`CURVATURE_METHODS`; raise ``ValueError`` if not."""
    return check_choice("method", method, CURVATURE_METHODS)


def check_seed(seed) -> int:
    """Return ``seed`` if it is an integer >= 0 (NumPy's ``default_rng`` accepts it).

    Raises:
        ValueError: ``seed`` is not an integer >= 0.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _size(count: float) -> str:
    """A byte count for people: ``"7.6 GB"``."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def check_hessian_size(n: int, itemsize: int, max_bytes: float) -> None:
    """Refuse a dense ``n x n`` Hessian that would take more than ``max_bytes`` bytes.

    The matrix alone holds ``n^2 * itemsize`` bytes (4 for float32, 8 for float64).

    Args:
        n: the number of parameters.
        itemsize: bytes per entry.
        max_bytes: the most memory the matrix may take.

    Raises:
        ValueError: ``n^2 * itemsize > max_bytes``; the message names the sizes and what
            to use instead.
    """
    max_bytes = check_positive("max_bytes", max_bytes, allow_inf=True)
    need = float(n) * n * itemsize
    if need > max_bytes:
        raise ValueError(
            f"the dense Hessian of a model with {n:,} parameters has {n:,} x {n:,} entries "
            f"({_size(need)} at {itemsize} bytes each), more than max_bytes = "
            f"{_size(max_bytes)}; use hvp, hessian_diagonal or top_eigenvalue, which never "
            "form it, or raise max_bytes")


def rademacher_probes(n: int, samples: int, seed: int):
    """Yield ``samples`` Rademacher vectors of length ``n`` (entries ``+1``/``-1``, float64).

    Drawn one after another from ``numpy.random.default_rng(seed)``, so the first ``k``
    probes of a longer run are the probes of a run with ``samples=k``, and both back ends,
    which flatten in the same canonical order, use exactly the same probes.
    """
    rng = np.random.default_rng(check_seed(seed))
    for _ in range(check_positive_int("samples", samples)):
        yield rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0


def hutchinson_diagonal(matvec, n: int, samples: int, seed: int) -> np.ndarray:
    """Hutchinson's estimate of ``diag(H)`` from Hessian-vector products (Bekas et al. 2007).

    ``diag(H) ~ (1/S) sum_s v_s * (H v_s)`` for Rademacher probes ``v_s``
    (:func:`rademacher_probes`): unbiased, since ``E[v v^T] = I``, with variance
    ``(1/S) sum_{j != q} H_qj^2`` for entry ``q``. Its sum is Hutchinson's estimate of the
    trace, ``(1/S) sum_s v_s^T H v_s``, from the same probes.

    Args:
        matvec: a function ``v -> H v`` on float64 vectors of length ``n``.
        n: the dimension.
        samples: the number of probes ``S``, an integer >= 1.
        seed: seed of the probes, an integer >= 0.

    Raises:
        ValueError: ``samples`` is not an integer >= 1, or ``seed`` not an integer >= 0.
    """
    samples = check_positive_int("samples", samples)
    total = np.zeros(n)
    for probe in rademacher_probes(n, samples, seed):
        total += probe * np.asarray(matvec(probe), np.float64)
    return total / samples


def power_iteration(matvec, n: int, iterations: int, tol: float, seed: int):
    """The dominant eigenvalue of a symmetric ``H`` (largest ``|lambda|``) and its eigenvector.

    Starting from a standard normal vector drawn from ``default_rng(seed)``, repeat
    ``w = H v``, ``lambda = v^T w``, ``v = w / ||w||`` until the relative change of
    ``lambda`` is at most ``tol`` or ``iterations`` products have been taken. The error of
    ``lambda`` shrinks like ``(lambda_2 / lambda_1)^(2k)``. Returns ``(lambda, v)`` with
    ``||v|| = 1``; a zero ``H`` gives ``(0.0, v0)``.

    Args:
        matvec: a function ``v -> H v`` on float64 vectors of length ``n``.
        n: the dimension.
        iterations: the most Hessian-vector products, an integer >= 1.
        tol: the relative change of ``lambda`` at which to stop, a finite number > 0.
        seed: seed of the starting vector, an integer >= 0.

    Raises:
        ValueError: ``iterations`` not an integer >= 1, ``tol`` not a finite number > 0, or
            ``seed`` not an integer >= 0.
    """
    iterations = check_positive_int("iterations", iterations)
    tol = check_positive("tol", tol)
    v = np.random.default_rng(check_seed(seed)).standard_normal(n)
    v /= np.linalg.norm(v)
    eigenvalue = None
    for _ in range(iterations):
        w = np.asarray(matvec(v), np.float64)
        new = float(v @ w)
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            return 0.0, v
        v = w / norm
        if eigenvalue is not None and abs(new - eigenvalue) <= tol * abs(new):
            return new, v
        eigenvalue = new
    return eigenvalue, v


def fisher_diagonal(gradient_chunks, n: int, num_samples: int) -> np.ndarray:
    """The empirical Fisher diagonal ``(1/N) sum_i g_i^2`` from per-sample gradients.

    Args:
        gradient_chunks: arrays of shape ``(k, n)``, row ``i`` the gradient ``g_i`` of
            example ``i``'s loss, in the canonical flattening order; ``N`` rows in all.
        n: the number of parameters.
        num_samples: ``N``, the number of examples (rows over all chunks).
    """
    total = np.zeros(n)
    for chunk in gradient_chunks:
        chunk = np.asarray(chunk, np.float64)
        total += np.einsum("ij,ij->j", chunk, chunk)
    return total / num_samples
