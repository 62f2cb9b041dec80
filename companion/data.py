"""Framework-neutral data sets, made offline in NumPy.

Every loader returns a :class:`Dataset` of float32 inputs and int64 labels (float32 targets
for regression); nothing is downloaded. Random data comes from a seeded NumPy generator,
so both back ends see the same numbers.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import NamedTuple

import numpy as np

from .core.checks import check_positive_int

__all__ = ["Dataset", "TextDataset", "load_digits", "load_mnist1d", "adding_problem",
           "load_docstrings"]

# Standard-library modules whose docstrings make the character corpus (in this order).
DOCSTRING_MODULES = ("argparse", "collections", "functools", "itertools", "json", "pathlib",
                     "random", "re", "string", "textwrap", "typing", "unittest")


class Dataset(NamedTuple):
    """A train/test split: ``x_train, y_train, x_test, y_test``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _standardize(x_train, x_test):
    """Scale both splits with the training split's per-feature mean and std."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    n_train = 1437  # 80 % of the 1,797 images
    x_train, x_test = _standardize(x[:n_train], x[n_train:])
    return x_train, y[:n_train], x_test, y[n_train:]


def load_digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), flattened to 64.

    A fixed shuffle puts 1,437 images (80 %) in the training split and 360 in the test
    split; features are standardised with the training split's statistics.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    return Dataset(*(a.copy() for a in _digits_arrays()))


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays():
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset generates the data from its templates; get_dataset() would download.
    data = make_dataset(get_dataset_args())
    x_train, x_test = _standardize(data["x"], data["x_test"])
    return x_train, data["y"].astype(np.int64), x_test, data["y_test"].astype(np.int64)


def load_mnist1d() -> Dataset:
    """MNIST-1D (Greydanus 2020): 10 classes of 1-D signals of length 40.

    Generated offline with the paper's default arguments (seed 42): 4,000 training and
    1,000 test examples, standardised with the training split's statistics. The mnist1d
    README reports test accuracy of about 32 % (logistic), 68 % (MLP), 94 % (CNN).

    Raises:
        ImportError: the ``mnist1d`` package is not installed.
    """
    return Dataset(*(a.copy() for a in _mnist1d_arrays()))


def adding_problem(n_train: int = 2000, n_test: int = 500, seq_len: int = 50,
                   seed: int = 0) -> Dataset:
    """The adding problem (Hochreiter & Schmidhuber 1997), a long-memory regression task.

    Each input is a sequence of shape ``(seq_len, 2)``: channel 0 holds numbers drawn
    uniformly from [0, 1], channel 1 marks exactly two positions, one in each half of the
    sequence. The target is the sum of the two marked numbers, shape ``(1,)``. Always
    predicting 1 gives a mean squared error of 1/6; solving the task needs memory across
    the whole sequence.

    Args:
        n_train: the number of training sequences, an integer >= 1.
        n_test: the number of test sequences, an integer >= 1.
        seq_len: the sequence length ``T``, an integer >= 2.
        seed: seed of the NumPy generator, an integer >= 0.

    Raises:
        ValueError: ``n_train`` or ``n_test`` not an integer >= 1, ``seq_len`` not an integer
            >= 2, or a negative ``seed`` (from ``np.random.default_rng``).
    """
    n_train = check_positive_int("n_train", n_train)
    n_test = check_positive_int("n_test", n_test)
    seq_len = check_positive_int("seq_len", seq_len)
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one marker per half), got {seq_len}")
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    values = rng.uniform(0.0, 1.0, size=(n, seq_len))
    half = seq_len // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, seq_len, size=n)
    markers = np.zeros((n, seq_len))
    markers[np.arange(n), first] = 1.0
    markers[np.arange(n), second] = 1.0
    x = np.stack([values, markers], axis=-1).astype(np.float32)
    y = (values[np.arange(n), first] + values[np.arange(n), second])[:, None].astype(np.float32)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


class TextDataset(NamedTuple):
    """Next-character prediction windows: ``x_*[i]`` holds ``context`` character ids and
    ``y_*[i]`` the ids that follow each of them (``x`` shifted by one); ``vocabulary[k]``
    is the character of id ``k``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    vocabulary: str


@functools.lru_cache(maxsize=1)
def _docstring_text() -> str:
    docs = []
    for name in DOCSTRING_MODULES:
        module = importlib.import_module(name)
        docs.append(inspect.getdoc(module) or "")
        for attribute in sorted(dir(module)):
            value = getattr(module, attribute, None)
            if getattr(value, "__module__", None) == name:
                docs.append(inspect.getdoc(value) or "")
    text = "\n\n".join(doc for doc in dict.fromkeys(docs) if doc)  # first copy of each
    return "".join(c for c in text if c == "\n" or " " <= c <= "~")


def load_docstrings(context: int = 32, test_fraction: float = 0.1) -> TextDataset:
    """A character corpus every Python has offline: the docstrings of the standard-library
    modules in ``DOCSTRING_MODULES``, cut into next-character windows.

    The text is each module's docstring followed by those of the objects it defines (in
    sorted order of their names), each docstring once, joined by blank lines, keeping
    printable ASCII and newlines. With ids ``t`` (characters sorted), window ``i`` is
    ``x = t[iT : iT + T]``, ``y = t[iT + 1 : iT + T + 1]`` (``T = context``, windows not
    overlapping). The first ``1 - test_fraction`` of the windows train, the rest test: the
    test text is a later part of the corpus, never seen in training. Ids are int64.

    The docstrings belong to the running Python, so the corpus can differ slightly
    between Python versions.

    Args:
        context: the window length ``T``, an integer >= 1.
        test_fraction: the share of windows kept for testing, in (0, 1).

    Raises:
        ValueError, TypeError: ``context`` not an integer >= 1, or ``test_fraction`` not
            a number in (0, 1).
    """
    context = check_positive_int("context", context)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(f"test_fraction must be a number in (0, 1), got "
                        f"{type(test_fraction).__name__}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    text = _docstring_text()
    vocabulary = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(vocabulary)}
    tokens = np.array([lookup[c] for c in text], dtype=np.int64)
    windows = (len(tokens) - 1) // context
    starts = np.arange(windows) * context
    x = tokens[starts[:, None] + np.arange(context)]
    y = tokens[starts[:, None] + np.arange(1, context + 1)]
    split = int(round(windows * (1 - test_fraction)))
    if not 0 < split < windows:
        raise ValueError(f"context={context} leaves {windows} windows: too few to split "
                         f"with test_fraction={test_fraction}")
    return TextDataset(x[:split], y[:split], x[split:], y[split:], vocabulary)
