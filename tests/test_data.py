"""The framework-neutral data sets: shapes, dtypes, determinism, no downloads."""

import os
import socket

import numpy as np
import pytest

from companion import data


def _assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------- digits


def test_load_digits_shapes_and_dtypes():
    d = data.load_digits()
    assert isinstance(d, data.Dataset)
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert d.y_train.shape == (1437,) and d.y_test.shape == (360,)
    assert d.x_train.dtype == d.x_test.dtype == np.float32
    assert d.y_train.dtype == d.y_test.dtype == np.int64
    assert set(np.unique(d.y_train)) == set(range(10)) == set(np.unique(d.y_test))


def test_load_digits_is_standardised_on_the_training_split():
    d = data.load_digits()
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)
    std = d.x_train.std(axis=0)
    constant = std < 1e-6   # always-blank pixels stay at 0 (std replaced by 1)
    assert 0 < constant.sum() < 64
    np.testing.assert_allclose(std[~constant], 1.0, rtol=1e-4)
    np.testing.assert_array_equal(d.x_train[:, constant], 0.0)
    # The test split uses the training statistics, so it is not exactly standardised.
    assert np.abs(d.x_test.mean(axis=0)).max() > 1e-3


def test_load_digits_is_scikit_learns_data():
    """Each feature is an increasing affine image of scikit-learn's pixel (same map for both
    splits), and the labels are scikit-learn's, split 1437 / 360."""
    from sklearn.datasets import load_digits as sklearn_digits

    d = data.load_digits()
    bunch = sklearn_digits()
    y = np.concatenate([d.y_train, d.y_test])
    np.testing.assert_array_equal(np.bincount(y), np.bincount(bunch.target))
    x = np.concatenate([d.x_train, d.x_test]).astype(np.float64)
    varying = 0
    for pixel in range(64):
        raw = np.sort(bunch.data[:, pixel])
        ours = np.sort(x[:, pixel])
        if raw[0] == raw[-1]:
            continue
        varying += 1
        slope, intercept = np.polyfit(raw, ours, 1)
        assert slope > 0
        np.testing.assert_allclose(ours, slope * raw + intercept, atol=1e-5)
    assert varying > 50


def test_load_digits_deterministic_and_copies():
    first = data.load_digits()
    saved = [a.copy() for a in first]
    for array in first:
        array[...] = 0
    _assert_same(saved, data.load_digits())


# ---------------------------------------------------------------- MNIST-1D


@pytest.fixture(scope="module")
def fresh_mnist1d(tmp_path_factory):
    """MNIST-1D generated here (not taken from the cache), with the network cut off, in an
    empty working directory; returns the data set and what was written there."""
    folder = tmp_path_factory.mktemp("cwd")

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket.socket, "connect_ex", no_network)
        mp.setattr(socket, "create_connection", no_network)
        data._mnist1d_arrays.cache_clear()
        dataset = data.load_mnist1d()
        written = sorted(os.listdir(folder))
    return dataset, written


def test_load_mnist1d_offline_writes_nothing(fresh_mnist1d):
    _, written = fresh_mnist1d
    assert written == []


def test_load_mnist1d_shapes_and_dtypes(fresh_mnist1d):
    d, _ = fresh_mnist1d
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.y_train.shape == (4000,) and d.y_test.shape == (1000,)
    assert d.x_train.dtype == d.x_test.dtype == np.float32
    assert d.y_train.dtype == d.y_test.dtype == np.int64
    assert set(np.unique(d.y_train)) == set(range(10)) == set(np.unique(d.y_test))
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=0), 1.0, rtol=1e-4)


def test_load_mnist1d_deterministic_and_copies(fresh_mnist1d):
    d, _ = fresh_mnist1d
    saved = [a.copy() for a in d]
    again = data.load_mnist1d()   # cached or regenerated: the same numbers
    _assert_same(saved, again)
    for array in again:
        array[...] = 0
    _assert_same(saved, data.load_mnist1d())


# ---------------------------------------------------------------- adding problem


def test_adding_problem_shapes():
    d = data.adding_problem(n_train=30, n_test=10, seq_len=12, seed=1)
    assert d.x_train.shape == (30, 12, 2) and d.x_test.shape == (10, 12, 2)
    assert d.y_train.shape == (30, 1) and d.y_test.shape == (10, 1)
    assert all(a.dtype == np.float32 for a in d)


@pytest.mark.parametrize("seq_len", [2, 3, 11, 50])
def test_adding_problem_markers_and_targets(seq_len):
    d = data.adding_problem(n_train=200, n_test=50, seq_len=seq_len, seed=3)
    half = seq_len // 2
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        values, markers = x[..., 0], x[..., 1]
        assert set(np.unique(markers)) <= {0.0, 1.0}
        np.testing.assert_array_equal(markers[:, :half].sum(axis=1), 1.0)
        np.testing.assert_array_equal(markers[:, half:].sum(axis=1), 1.0)
        assert values.min() >= 0.0 and values.max() <= 1.0
        target = (values * markers).sum(axis=1, dtype=np.float64)
        np.testing.assert_allclose(y[:, 0], target, rtol=1e-6)


def test_adding_problem_marker_positions_cover_each_half():
    d = data.adding_problem(n_train=2000, n_test=1, seq_len=10, seed=0)
    positions = np.argwhere(d.x_train[..., 1] == 1.0)[:, 1]
    assert set(positions) == set(range(10))


def test_adding_problem_baseline_mse_is_one_sixth():
    """y - 1 = U1 + U2 - 1 is triangular on [-1, 1]: E[(y - 1)^2] = 1/6.

    The variance of (y - 1)^2 is 1/15 - 1/36, so over 100,000 sequences the standard
    error of the mean is 6.2e-4; 0.003 is about five standard errors.
    """
    d = data.adding_problem(n_train=100_000, n_test=1, seq_len=10, seed=5)
    assert np.mean((d.y_train.astype(np.float64) - 1.0) ** 2) == pytest.approx(1 / 6, abs=0.003)


def test_adding_problem_seeded():
    a = data.adding_problem(n_train=20, n_test=5, seq_len=8, seed=7)
    _assert_same(a, data.adding_problem(n_train=20, n_test=5, seq_len=8, seed=7))
    b = data.adding_problem(n_train=20, n_test=5, seq_len=8, seed=8)
    assert not np.array_equal(a.x_train, b.x_train)
    # Train and test are different sequences.
    assert not np.array_equal(a.x_train[:5], a.x_test)


@pytest.mark.parametrize("kwargs", [
    dict(n_train=0), dict(n_test=0), dict(n_train=-5), dict(seq_len=1), dict(seq_len=0),
    dict(n_train=2.5), dict(seq_len=True),
])
def test_adding_problem_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        data.adding_problem(**kwargs)
