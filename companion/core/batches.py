"""Data given as arrays or as a source of batches: the rules both back ends share.

Every function that takes data takes either arrays ``x, y`` (one example per row) or, as
``x`` with ``y=None``, a *data source*: a re-iterable object that yields ``(x, y)``
batches, such as a ``torch.utils.data.DataLoader`` or a ``tf.data.Dataset``. A source is
read one batch at a time, so memory is bounded by the batch; a mean over the data set is
the batch means weighted by batch size. The back ends' ``batches`` modules convert their
tensors to NumPy and call these functions.
"""

from __future__ import annotations

import math

import numpy as np

from .checks import check_data, check_inputs, check_loss, check_positive_int

__all__ = ["minibatches", "is_data_source", "check_data_source", "checked_batches",
           "input_batches", "numpy_batches", "epoch_batches", "step_count", "example_count"]


def minibatches(n: int, batch_size: int, epochs: int, seed: int):
    """Yield index arrays of shuffled minibatches, epoch after epoch.

    The order depends on ``seed`` only, so both back ends see the same batches. The last
    batch of an epoch may be smaller.
    """
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


def is_data_source(x) -> bool:
    """Whether ``x`` is a source of batches rather than an array.

    A source is any re-iterable object that is not array-like (no ``__array__``, not a
    list or tuple): a ``torch.utils.data.DataLoader``, a ``tf.data.Dataset``, or an object
    of one's own whose ``iter()`` starts a new pass.

    Raises:
        TypeError: a one-pass iterator (a generator): the functions that read the data
            more than once would find it empty the second time.
    """
    source = (hasattr(x, "__iter__") and not hasattr(x, "__array__")
              and not isinstance(x, (list, tuple, str, bytes, dict)))
    if source and hasattr(x, "__next__"):  # an iterator: iter(x) is x, read once
        raise TypeError("x is a one-pass iterator (e.g. a generator); pass something that "
                        "can be iterated again (a DataLoader, a tf.data.Dataset, an object "
                        "whose __iter__ starts a new pass) or arrays")
    return source


def check_data_source(x, y) -> bool:
    """Whether ``x`` is a data source of ``(inputs, targets)`` batches (see
    :func:`is_data_source`) rather than an array that comes with its targets ``y``.

    Raises:
        TypeError: a source with ``y`` given (its batches hold the targets), arrays without
            ``y``, or a one-pass iterator.
    """
    source = is_data_source(x)
    if source and y is not None:
        raise TypeError("y must be None when x is a data source: its batches hold the targets")
    if not source and y is None:
        raise TypeError("y is missing: pass arrays x and y, or a data source of (x, y) batches "
                        "(a torch DataLoader, a tf.data.Dataset) as x")
    return source


def input_batches(source, to_numpy):
    """Yield the inputs of a data source's batches as NumPy arrays: the first entry of each
    pair ``(x, y)``, or the batch itself where it is not a pair.

    Raises:
        ValueError: a source that yields no batch.
    """
    count = 0
    for batch in source:
        inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
        count += 1
        yield check_inputs(to_numpy(inputs))
    if count == 0:
        raise ValueError("the data source yielded no batch")


def input_chunks(x, batch_size: int, to_numpy):
    """The inputs of ``x`` as NumPy batches: ``batch_size`` consecutive rows of an array,
    or the inputs of a data source's batches as they come (see :func:`input_batches`).

    Raises:
        ValueError: ``x`` empty or without an example axis, or a ``batch_size`` that is
            not an integer >= 1.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    if is_data_source(x):
        return input_batches(x, to_numpy)
    x = check_inputs(x)
    return (x[start:start + batch_size] for start in range(0, len(x), batch_size))


def checked_batches(source, loss, to_numpy):
    """Yield the ``(x, y)`` batches of a data source as checked NumPy arrays.

    Each batch must be a pair ``(inputs, targets)``; ``to_numpy`` converts one of the
    framework's tensors (the back end passes its own), and each pair goes through
    :func:`check_data` for ``loss``.

    Raises:
        ValueError: a batch that is not a pair, a batch :func:`check_data` refuses, or a
            source that yields no batch.
    """
    count = 0
    for index, batch in enumerate(source):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"batch {index} of the data source is not a pair (x, y), got "
                             f"{type(batch).__name__}")
        try:
            xb, yb = check_data(to_numpy(batch[0]), to_numpy(batch[1]), loss)
        except ValueError as error:
            raise ValueError(f"batch {index} of the data source: {error}") from None
        count += 1
        yield xb, yb
    if count == 0:
        raise ValueError("the data source yielded no batch")


def numpy_batches(x, y, batch_size: int, loss, to_numpy):
    """``(x_b, y_b)`` NumPy batches, checked: ``batch_size`` consecutive rows of arrays
    ``x, y``, or the batches of a data source ``x`` as they come (``batch_size`` unused);
    ``to_numpy`` converts the back end's tensors.

    Raises:
        TypeError, ValueError: as :func:`check_data_source`,
            :func:`companion.core.checks.check_data` and ``check_loss``; a ``batch_size``
            that is not an integer >= 1.
    """
    loss = check_loss(loss)
    batch_size = check_positive_int("batch_size", batch_size)
    if check_data_source(x, y):
        return checked_batches(x, loss, to_numpy)
    x, y = check_data(x, y, loss)
    return ((x[start:start + batch_size], y[start:start + batch_size])
            for start in range(0, len(x), batch_size))


def epoch_batches(x, y, batch_size, epochs: int, seed, loss, to_numpy):
    """The minibatches of every epoch of ``train``, as NumPy arrays: from arrays, shuffled
    by ``seed`` (:func:`minibatches`); from a data source (``y`` is ``None``), its own
    batches, one pass per epoch."""
    if y is None:
        for _ in range(epochs):
            yield from checked_batches(x, loss, to_numpy)
    else:
        for batch in minibatches(len(x), batch_size, epochs, seed):
            yield x[batch], y[batch]


def step_count(x, y, batch_size, epochs: int):
    """The number of steps of ``train``, or ``None`` for a source of unknown length."""
    if y is not None:
        return epochs * math.ceil(len(x) / batch_size)
    return epochs * len(x) if hasattr(x, "__len__") else None


def example_count(source, loss, to_numpy) -> int:
    """The number of examples of a data source (one pass over it)."""
    return sum(len(xb) for xb, _ in checked_batches(source, loss, to_numpy))
