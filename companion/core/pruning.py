"""Framework-neutral pruning: masks from scores in the canonical layout, random scores,
the sparsity report, and the storage cost of the pruned weights (dense vs. CSR).

Masks are chosen here, in NumPy, so both back ends prune exactly the same entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import check_choice, resolve_seed


SCOPES = ("global", "layer")  # what gradual pruning ranks over
MASK_SCOPES = SCOPES + ("row",)  # one-shot masks may also rank within each output row


def is_weight(name: str, ndim: int) -> bool:
    """Whether a parameter is a weight, which pruning removes by default, or a bias.

    A weight has two or more dimensions and a canonical name whose last part does not
    start with ``bias``: so Keras GRU's 2-D ``bias`` (shape ``(2, 3 * units)``) and
    PyTorch's recurrent ``bias_ih_l0`` / ``bias_hh_l0`` are biases, as are every 1-D
    parameter (biases, normalisation scales and shifts).

    Args:
        name: the canonical parameter name, e.g. ``"gru.bias"`` or ``"lstm.bias_ih_l0"``.
        ndim: the parameter's number of dimensions.
    """
    return ndim >= 2 and not name.rsplit(".", 1)[-1].startswith("bias")


def keep_all_but_lowest(flat, count: int):
    """A boolean array: ``False`` at the ``count`` lowest entries of ``flat``, ties by position.

    The same entries as ``np.argsort(flat, kind="stable")[:count]`` (lower value first,
    then lower index), found in linear time: ``v``, the ``count``-th smallest value
    (``np.partition``), is the cut; every entry below ``v`` goes, and of the entries equal
    to ``v`` the first ``count - #{flat < v}`` by position. No copy in a wider dtype: the
    comparisons are exact in ``flat``'s own.

    Args:
        flat: a 1-D array of finite numbers.
        count: how many entries to drop, ``0 <= count <= flat.size``.
    """
    keep = np.ones(flat.size, dtype=bool)
    if count <= 0:
        return keep
    cut = np.partition(flat, count - 1)[count - 1]
    below = flat < cut
    keep[below] = False
    keep[np.flatnonzero(flat == cut)[:count - int(np.count_nonzero(below))]] = False
    return keep


def keep_all_but_lowest_per_row(rows, count: int):
    """A boolean array of ``rows``' shape: ``False`` at the ``count`` lowest of each row.

    Ties are broken by position within the row (a stable sort), as in
    :func:`keep_all_but_lowest`.

    Args:
        rows: a 2-D array of finite numbers.
        count: how many entries to drop from every row, ``0 <= count <= rows.shape[1]``.
    """
    keep = np.ones(rows.shape, dtype=bool)
    lowest = np.argsort(rows, axis=1, kind="stable")[:, :count]
    np.put_along_axis(keep, lowest, False, axis=1)
    return keep


def as_rows(array):
    """``array`` as an ``(out, K)`` matrix: one row per output unit (a 1-D array is one row).

    In the canonical layout the output axis comes first (``(out, in)`` for a dense
    weight, ``(out, in, kh, kw)`` for a convolution), so a row holds every weight that
    feeds one output.
    """
    array = np.asarray(array)
    return array.reshape(1, -1) if array.ndim < 2 else array.reshape(len(array), -1)


def lowest_score_masks(scores, eligible, sparsity: float, scope: str) -> list:
    """0/1 masks that prune the ``round(sparsity * n)`` lowest-scoring eligible entries.

    ``scores`` are canonical-layout arrays; ``eligible[i]`` says whether tensor ``i`` may be
    pruned (its mask is ``None`` otherwise). With ``scope="global"`` the ``n`` eligible
    entries compete together; with ``"layer"`` each tensor loses ``round(sparsity * n_i)``
    of its own; with ``"row"`` each output row of each tensor (:func:`as_rows`) loses
    ``round(sparsity * K)`` of its ``K`` entries, the comparison Wanda (Sun et al. 2024)
    and layer-wise OBS make. Ties are broken by position (tensor order, then row-major
    canonical index), so the masks are the same in every back end. ``round`` is Python's,
    as in ``torch.nn.utils.prune``.
    """
    check_choice("scope", scope, MASK_SCOPES)
    chosen = [i for i, ok in enumerate(eligible) if ok]
    for i in chosen:
        if not np.all(np.isfinite(scores[i])):
            raise ValueError(f"scores of parameter {i} contain nan or inf")
    if scope == "row":
        masks = [None] * len(scores)
        for i in chosen:
            rows = as_rows(scores[i])
            keep = keep_all_but_lowest_per_row(rows, round(sparsity * rows.shape[1]))
            masks[i] = keep.reshape(np.shape(scores[i])).astype(np.float32)
        return masks
    groups = [chosen] if scope == "global" else [[i] for i in chosen]
    masks = [None] * len(scores)
    for group in groups:
        flat = np.concatenate([np.ravel(scores[i]) for i in group]) if group else np.zeros(0)
        keep = keep_all_but_lowest(flat, round(sparsity * flat.size))
        offsets = np.cumsum([0] + [np.size(scores[i]) for i in group])
        for i, start, stop in zip(group, offsets[:-1], offsets[1:]):
            masks[i] = keep[start:stop].reshape(np.shape(scores[i])).astype(np.float32)
    return masks


def random_canonical_scores(shapes, seed: int) -> list:
    """Uniform ``[0, 1)`` scores for parameters of canonical ``shapes``, from ``seed``.

    Drawn in NumPy in the canonical layout, so a seed prunes the same entries in both back
    ends. As a pruning criterion this is the baseline every saliency must beat.
    """
    rng = np.random.default_rng(resolve_seed(seed))
    return [rng.random(shape) for shape in shapes]


@dataclass(frozen=True)
class SparsityRow:
    """One line of a :class:`SparsityReport`: a parameter and how many of its entries are 0."""

    name: str
    shape: tuple
    zeros: int
    size: int

    @property
    def sparsity(self) -> float:
        """The fraction of entries that are exactly zero."""
        return self.zeros / self.size if self.size else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Per-parameter and total sparsity (fraction of exact zeros) of a model.

    ``weights`` totals the weights (what pruning removes; see :func:`is_weight`), ``total``
    every parameter. ``str(report)`` is a table a notebook can print.
    """

    rows: tuple

    @classmethod
    def from_arrays(cls, names, arrays) -> "SparsityReport":
        """The report of canonical-layout ``arrays`` named ``names``."""
        return cls(tuple(SparsityRow(name, tuple(np.shape(a)), int(np.sum(np.asarray(a) == 0)),
                                     int(np.size(a))) for name, a in zip(names, arrays)))

    @staticmethod
    def _sum(label: str, rows) -> SparsityRow:
        return SparsityRow(label, (), sum(r.zeros for r in rows), sum(r.size for r in rows))

    def _totals(self) -> list:
        weights = [r for r in self.rows if is_weight(r.name, len(r.shape))]
        return [self._sum("weights", weights), self._sum("total", self.rows)]

    @property
    def weights(self) -> float:
        """Sparsity over the weights (:func:`is_weight`), the entries pruning removes."""
        return self._totals()[0].sparsity

    @property
    def total(self) -> float:
        """Sparsity over every parameter, biases included."""
        return self._totals()[1].sparsity

    def __str__(self) -> str:
        lines = [f"{'parameter':<16}{'shape':>10}{'zeros':>8}{'size':>8}{'sparsity':>10}"]
        for r in (*self.rows, *self._totals()):
            shape = "x".join(map(str, r.shape))
            lines.append(f"{r.name:<16}{shape:>10}{r.zeros:>8}{r.size:>8}{r.sparsity:>10.2%}")
        return "\n".join(lines)


INDEX_BITS = (8, 16, 32, 64)


def _index_width(value: int, at_least: int) -> int:
    """The narrowest unsigned width of :data:`INDEX_BITS`, ``>= at_least``, holding ``value``."""
    return next(bits for bits in INDEX_BITS if bits >= at_least and value < 2**bits)


@dataclass(frozen=True)
class CompressedRow:
    """One parameter in :class:`CompressedSize`: its bytes stored dense and sparse.

    Attributes:
        name: the parameter's name.
        shape: its canonical shape.
        nonzeros: its number of non-zero entries.
        dense_bytes: ``size * itemsize``.
        value_bytes: ``nonzeros * itemsize`` (CSR), or ``dense_bytes`` for a tensor of
            fewer than two dimensions, which is stored dense.
        index_bytes: the CSR column indices, ``nonzeros * index_bits / 8`` (0 if dense).
        pointer_bytes: the CSR row pointers, ``(rows + 1) * pointer_bits / 8`` (0 if dense).
        pointer_bits: the width of the row pointers (0 if dense).
    """

    name: str
    shape: tuple
    nonzeros: int
    dense_bytes: int
    value_bytes: int
    index_bytes: int
    pointer_bytes: int
    pointer_bits: int

    @property
    def sparse_bytes(self) -> int:
        """``value_bytes + index_bytes + pointer_bytes``."""
        return self.value_bytes + self.index_bytes + self.pointer_bytes


def csr_bytes(name: str, array, index_bits: int) -> CompressedRow:
    """The bytes of ``array`` stored dense and in compressed sparse row (CSR) form.

    A tensor of two or more dimensions, canonical shape ``(out, in, k...)``, is the matrix
    of ``rows = out`` rows and ``cols = in * k...`` columns. CSR stores its ``nnz`` non-zero
    values (the array's own dtype), one column index per value (``index_bits`` wide,
    unsigned) and ``rows + 1`` row pointers, the offsets ``0 .. nnz`` of each row's first
    value. Row pointers are ``index_bits`` wide too unless ``nnz`` needs more; then they
    take the narrowest of 8/16/32/64 bits that holds ``nnz``. So::

        sparse = (nnz * itemsize                   # the values
                  + nnz * index_bits / 8          # their column indices
                  + (rows + 1) * pointer_bits / 8)  # the row pointers

    the ``data``, ``indices`` and ``indptr`` of ``scipy.sparse.csr_matrix`` with those
    dtypes. Biases and other tensors of fewer than two dimensions are stored dense (they
    are small, and a sparse vector would need an index per value as well).

    Args:
        name: the parameter's name, for the record and error messages.
        array: the canonical-layout array.
        index_bits: the width of a column index: 8, 16, 32 or 64.

    Raises:
        ValueError: ``index_bits`` not one of 8, 16, 32, 64, or too narrow to address the
            matrix's columns (``cols > 2**index_bits``); the message names the width
            needed.
    """
    check_choice("index_bits", index_bits, INDEX_BITS)
    array = np.asarray(array)
    itemsize = array.dtype.itemsize
    dense = array.size * itemsize
    nonzeros = int(np.count_nonzero(array))
    if array.ndim < 2:
        return CompressedRow(name, array.shape, nonzeros, dense, dense, 0, 0, 0)
    rows = array.shape[0]
    cols = array.size // rows if rows else 0
    if cols > 2**index_bits:
        raise ValueError(f"{name} has {cols} columns: {index_bits}-bit column indices "
                         f"address at most {2**index_bits}; use index_bits="
                         f"{_index_width(cols - 1, 8)} or more")
    pointer_bits = _index_width(nonzeros, int(index_bits))
    return CompressedRow(name, array.shape, nonzeros, dense, nonzeros * itemsize,
                         nonzeros * index_bits // 8, (rows + 1) * pointer_bits // 8,
                         pointer_bits)


@dataclass(frozen=True)
class CompressedSize:
    """The bytes of a model's weights stored dense and sparse (CSR), from ``compressed_size``.

    ``str(record)`` is a table a notebook can print; ``ratio`` is ``dense / sparse``, how
    many times smaller the sparse form is (below 1 it is larger: CSR pays an index per
    value and only wins above some sparsity, e.g. 50 % for float32 values with 32-bit
    indices).

    Attributes:
        rows: one :class:`CompressedRow` per trainable parameter.
        index_bits: the width of a column index.
    """

    rows: tuple
    index_bits: int

    @classmethod
    def from_arrays(cls, names, arrays, index_bits: int = 32) -> "CompressedSize":
        """The record of canonical-layout ``arrays`` named ``names`` (see :func:`csr_bytes`)."""
        check_choice("index_bits", index_bits, INDEX_BITS)
        return cls(tuple(csr_bytes(name, array, index_bits)
                         for name, array in zip(names, arrays)), int(index_bits))

    @property
    def dense_bytes(self) -> int:
        """Bytes of every parameter stored dense."""
        return sum(r.dense_bytes for r in self.rows)

    @property
    def sparse_bytes(self) -> int:
        """Bytes with every tensor of two or more dimensions in CSR, the others dense."""
        return sum(r.sparse_bytes for r in self.rows)

    @property
    def ratio(self) -> float:
        """``dense_bytes / sparse_bytes`` (``inf`` for a model with no bytes to store)."""
        return self.dense_bytes / self.sparse_bytes if self.sparse_bytes else math.inf

    def __str__(self) -> str:
        lines = [f"{'parameter':<16}{'shape':>10}{'nonzeros':>10}{'dense':>10}{'sparse':>10}"]
        for r in self.rows:
            shape = "x".join(map(str, r.shape))
            lines.append(f"{r.name:<16}{shape:>10}{r.nonzeros:>10}{r.dense_bytes:>10}"
                         f"{r.sparse_bytes:>10}")
        lines.append(f"{'total':<16}{'':>10}{sum(r.nonzeros for r in self.rows):>10}"
                     f"{self.dense_bytes:>10}{self.sparse_bytes:>10}")
        lines.append(f"dense / sparse = {self.ratio:.2f} (CSR, {self.index_bits}-bit column "
                     "indices)")
        return "\n".join(lines)


class MovementScoreRecorder:
    """Movement pruning's scores (Sanh et al. 2020), accumulated during training.

    ``S = -sum_t g_t * w_t`` entry by entry, over the steps recorded, with ``g_t`` the
    minibatch gradient and ``w_t`` the weights before step ``t``: a weight scores high
    when training moves it away from zero, whatever its size, which is what matters when
    fine-tuning a pre-trained model to a new task. Pass it as ``train``'s ``monitor``
    (it has ``record(step, grads)``) or call :meth:`record` in a loop of one's own, then
    :meth:`scores` gives one tensor per trainable parameter (higher means keep) for
    ``masks_from_scores``. Each back end's ``MovementScores`` supplies ``_terms(grads)``
    (checked ``-g * w``, one tensor per parameter) and ``_copy(tensor)``.

    Args:
        model: the model being trained.
    """

    def __init__(self, model):
        self.model = model
        self.steps = 0
        self._totals = None

    def record(self, step: int, grads) -> None:
        """Add ``-g * w`` of one step (``grads`` aligned with the parameters, taken
        before the update)."""
        terms = self._terms(list(grads))
        self._totals = terms if self._totals is None else [
            t + u for t, u in zip(self._totals, terms)]
        self.steps += 1

    def scores(self) -> list:
        """The accumulated ``S``, one tensor per trainable parameter.

        Raises:
            ValueError: no step was recorded.
        """
        if self._totals is None:
            raise ValueError("no training step was recorded: pass this object as train's "
                             "monitor, or call record(step, grads) after each gradient")
        return [self._copy(t) for t in self._totals]
