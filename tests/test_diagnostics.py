"""Gradient norms and the gradient monitor, against NumPy and the frameworks' own norms."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from companion.core.diagnostics import GradientNormRecorder  # noqa: E402
from numpy_reference import is_torch, tensors  # noqa: E402

NORM_TYPES = [0.5, 1.0, 2.0, 4.0, math.inf]


def _random_grads(rng):
    shapes = [(5, 4), (5,), (0,), (3, 5), (3,), (2, 3, 4)]
    return [rng.standard_normal(s).astype(np.float32) * rng.uniform(0.1, 10) for s in shapes]


def _numpy_norm(arrays, p):
    flat = np.concatenate([np.ravel(a).astype(np.float64) for a in arrays if a is not None])
    return float(np.linalg.norm(flat, ord=p))


# ---------------------------------------------------------------- global_norm


@pytest.mark.parametrize("p", NORM_TYPES)
def test_global_norm_matches_numpy(backend, rng, p):
    arrays = _random_grads(rng)
    # Per-tensor norms are float32: relative error ~1e-7 per accumulated term.
    assert backend.global_norm(tensors(backend, arrays), p) == pytest.approx(
        _numpy_norm(arrays, p), rel=1e-5)


@pytest.mark.parametrize("p", NORM_TYPES)
def test_global_norm_skips_none(backend, rng, p):
    arrays = _random_grads(rng)
    with_none = [None, arrays[0], None, arrays[3], None]
    assert backend.global_norm(tensors(backend, with_none), p) == pytest.approx(
        _numpy_norm(with_none, p), rel=1e-5)


def test_global_norm_default_is_two_norm_hand_worked(backend):
    grads = tensors(backend, [np.array([3.0], np.float32), np.array([[4.0, 0.0]], np.float32)])
    assert backend.global_norm(grads) == pytest.approx(5.0, rel=1e-7)
    assert backend.global_norm(grads, 1) == pytest.approx(7.0, rel=1e-7)
    assert backend.global_norm(grads, math.inf) == 4.0


def test_global_norm_empty(backend):
    assert backend.global_norm([]) == 0.0
    assert backend.global_norm([None, None], math.inf) == 0.0
    assert backend.global_norm(tensors(backend, [np.zeros(0, np.float32)]), math.inf) == 0.0


@pytest.mark.parametrize("p", NORM_TYPES)
def test_global_norm_nonfinite_is_reported_not_raised(backend, rng, p):
    arrays = _random_grads(rng)
    with_inf = [a.copy() for a in arrays]
    with_inf[3][1, 2] = np.inf
    assert backend.global_norm(tensors(backend, with_inf), p) == math.inf
    with_nan = [a.copy() for a in arrays]
    with_nan[0][0, 0] = np.nan
    assert math.isnan(backend.global_norm(tensors(backend, with_nan), p))
    with_nan[4][0] = -np.inf  # nan and inf together: nan
    assert math.isnan(backend.global_norm(tensors(backend, with_nan), p))


@pytest.mark.parametrize("norm_type, error", [
    (0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), (-math.inf, ValueError),
    ("2", TypeError), (None, TypeError), (True, TypeError),
])
def test_global_norm_bad_norm_type(backend, rng, norm_type, error):
    grads = tensors(backend, _random_grads(rng))
    with pytest.raises(error, match="norm_type"):
        backend.global_norm(grads, norm_type)
    model = backend.mlp([3, 2], seed=0)
    with pytest.raises(error, match="norm_type"):
        backend.layer_norms(model, [None, None], norm_type)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_global_norm_matches_torch(rng, p):
    import torch

    from companion import torch as ct

    # No empty tensor here: torch's foreach norm refuses the inf-norm of one (ours is 0).
    grads = [torch.as_tensor(a) for a in _random_grads(rng) if a.size]
    expected = torch.nn.utils.get_total_norm(grads, norm_type=p).item()
    assert ct.global_norm(grads, p) == pytest.approx(expected, rel=1e-6)
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for param, grad in zip(params, grads):
        param.grad = grad.clone()
    returned = torch.nn.utils.clip_grad_norm_(params, max_norm=1e9, norm_type=p).item()
    assert ct.global_norm(grads, p) == pytest.approx(returned, rel=1e-6)


def test_global_norm_matches_tensorflow(rng):
    import tensorflow as tf

    from companion import tensorflow as ctf

    grads = [tf.constant(a) for a in _random_grads(rng)]
    assert ctf.global_norm(grads) == pytest.approx(float(tf.linalg.global_norm(grads)),
                                                   rel=1e-6)
    _, returned = tf.clip_by_global_norm(grads, 1e9)
    assert ctf.global_norm(grads) == pytest.approx(float(returned), rel=1e-6)


# ---------------------------------------------------------------- layer_norms


def _model_grads(backend, model, rng):
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    return backend.gradients(model, x, y)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_layer_norms_in_model_order(backend, rng, p):
    model = backend.mlp([5, 8, 6, 4, 3], activation="tanh", seed=1)
    grads = _model_grads(backend, model, rng)
    canonical = backend.to_canonical(model, grads)
    norms = backend.layer_norms(model, grads, p)
    assert list(norms) == ["dense0", "dense1", "dense2", "dense3"]
    for i, (name, value) in enumerate(norms.items()):
        assert value == pytest.approx(_numpy_norm(canonical[2 * i:2 * i + 2], p), rel=1e-5)
    # The layer norms combine to the global norm.
    assert np.linalg.norm(list(norms.values()), p) == pytest.approx(
        backend.global_norm(grads, p), rel=1e-6)


def test_layer_norms_of_rnn(backend, rng):
    model = backend.rnn(2, 4, 1, seed=0)
    arrays = [rng.standard_normal(np.shape(v)).astype(np.float32)
              for v in backend.trainable_parameters(model)]
    norms = backend.layer_norms(model, tensors(backend, arrays))
    assert list(norms) == ["rnn", "readout"]
    assert norms["rnn"] == pytest.approx(_numpy_norm(arrays[:3], 2), rel=1e-5)
    assert norms["readout"] == pytest.approx(_numpy_norm(arrays[3:], 2), rel=1e-5)


def test_layer_norms_skip_none(backend, rng):
    model = backend.mlp([5, 8, 6, 3], seed=1)
    grads = list(_model_grads(backend, model, rng))
    canonical = backend.to_canonical(model, grads)
    grads[1] = None      # dense0.bias
    grads[2] = grads[3] = None  # all of dense1
    norms = backend.layer_norms(model, grads)
    assert list(norms) == ["dense0", "dense2"]
    assert norms["dense0"] == pytest.approx(_numpy_norm(canonical[:1], 2), rel=1e-5)
    assert norms["dense2"] == pytest.approx(_numpy_norm(canonical[4:], 2), rel=1e-5)


def test_layer_norms_misaligned(backend, rng):
    model = backend.mlp([5, 8, 3], seed=1)
    grads = list(_model_grads(backend, model, rng))
    with pytest.raises(ValueError, match="one gradient per trainable parameter"):
        backend.layer_norms(model, grads[:3])


# ---------------------------------------------------------------- GradientMonitor


def test_monitor_records_totals_and_layers(backend, rng):
    model = backend.mlp([5, 8, 3], seed=1)
    monitor = backend.GradientMonitor(model)
    expected_total, expected_layers = [], {"dense0": [], "dense1": []}
    for step in range(3):
        grads = _model_grads(backend, model, rng)
        canonical = backend.to_canonical(model, grads)
        monitor.record(step, grads)
        expected_total.append(_numpy_norm(canonical, 2))
        expected_layers["dense0"].append(_numpy_norm(canonical[:2], 2))
        expected_layers["dense1"].append(_numpy_norm(canonical[2:], 2))
    assert monitor.steps == [0, 1, 2]
    np.testing.assert_allclose(monitor.total, expected_total, rtol=1e-5)
    assert list(monitor.layers) == ["dense0", "dense1"]
    for name in expected_layers:
        np.testing.assert_allclose(monitor.layers[name], expected_layers[name], rtol=1e-5)
    assert monitor.spike_steps == [] and monitor.nonfinite_steps == []


def _scaled(grads, factor):
    return [g * factor for g in grads]


def test_monitor_flags_spikes_and_nonfinite_steps(backend, rng):
    model = backend.mlp([5, 8, 3], seed=1)
    grads = _model_grads(backend, model, rng)
    monitor = backend.GradientMonitor(model)  # spike_factor 10, min_history 5
    factors = [1.0] * 8 + [100.0] + [1.0] * 3 + [2.0] + [1.0] * 2 + [math.inf] + [1.0] * 2
    for step, factor in enumerate(factors):
        monitor.record(step, _scaled(grads, factor))
    assert monitor.spike_steps == [8]          # 100x flagged, 2x (step 12) not
    assert monitor.nonfinite_steps == [15]
    nan_grads = list(grads)
    nan_grads[0] = grads[0] * math.nan
    monitor.record(18, nan_grads)
    assert monitor.nonfinite_steps == [15, 18]
    assert math.isnan(monitor.layers["dense0"][-1])
    summary = monitor.summary()
    base = _numpy_norm(backend.to_canonical(model, grads), 2)
    assert summary["steps"] == 19
    assert summary["median_norm"] == pytest.approx(base, rel=1e-5)
    assert summary["max_norm"] == pytest.approx(100 * base, rel=1e-5)
    assert summary["nonfinite_steps"] == [15, 18]
    assert summary["spike_steps"] == [8]


def test_monitor_spike_factor_and_min_history(backend, rng):
    model = backend.mlp([5, 8, 3], seed=1)
    grads = _model_grads(backend, model, rng)
    monitor = backend.GradientMonitor(model, spike_factor=1.5, min_history=3)
    for step, factor in enumerate([1.0, 50.0, 1.0, 1.0, 2.0, 1.4]):
        monitor.record(step, _scaled(grads, factor))
    # Step 1 has too little history; step 4 (2x > 1.5x) is a spike; step 5 (1.4x) is not.
    assert monitor.spike_steps == [4]


def test_monitor_summary_when_empty(backend):
    summary = backend.GradientMonitor(backend.mlp([3, 2], seed=0)).summary()
    assert summary["steps"] == 0 and summary["spike_steps"] == []
    assert math.isnan(summary["median_norm"]) and math.isnan(summary["max_norm"])


def test_monitor_plot(backend, rng):
    model = backend.mlp([5, 8, 3], seed=1)
    grads = _model_grads(backend, model, rng)
    monitor = backend.GradientMonitor(model)
    for step, factor in enumerate([1.0] * 6 + [100.0, 1.0]):
        monitor.record(step, _scaled(grads, factor))
    ax = monitor.plot()
    try:
        assert isinstance(ax, matplotlib.axes.Axes)
        assert ax.get_yscale() == "log"
        assert len(ax.get_lines()) == 3  # dense0, dense1, total
        np.testing.assert_allclose(ax.get_lines()[-1].get_ydata(), monitor.total)
        spikes = ax.collections[0].get_offsets()
        np.testing.assert_allclose(np.asarray(spikes), [[6, monitor.total[6]]])
    finally:
        plt.close(ax.figure)
    fig, own = plt.subplots()
    try:
        assert monitor.plot(ax=own, layers=False) is own
        assert len(own.get_lines()) == 1
    finally:
        plt.close(fig)


def test_monitor_inside_train(backend, rng):
    model = backend.mlp([5, 8, 3], seed=1)
    x = rng.standard_normal((20, 5)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    monitor = backend.GradientMonitor(model)
    history = backend.train(model, x, y, epochs=2, lr=0.1, batch_size=5, monitor=monitor,
                            progress=False)
    assert monitor.steps == list(range(8))
    np.testing.assert_allclose(monitor.total, history.grad_norm, rtol=1e-5)


# ---------------------------------------------------------------- GradientNormRecorder


class _NoModel:
    pass


def _recorder(**kwargs):
    return GradientNormRecorder(_NoModel(), **kwargs)


def _feed(recorder, totals):
    for step, total in enumerate(totals):
        recorder.record_norms(step, total, {"layer": total})


def test_recorder_median_window():
    # window 3: at step 5 the previous three totals are (1, 1000, 1000), median 1000.
    short = _recorder(window=3, min_history=3)
    _feed(short, [1, 1, 1, 1000, 1000, 1000])
    assert short.spike_steps == [3, 4]
    # window 50: the median of (1, 1, 1, 1000, 1000) is still 1, so step 5 is a spike too.
    long = _recorder(window=50, min_history=3)
    _feed(long, [1, 1, 1, 1000, 1000, 1000])
    assert long.spike_steps == [3, 4, 5]


def test_recorder_median_is_robust_to_an_earlier_spike():
    recorder = _recorder(min_history=5)
    _feed(recorder, [1.0] * 5 + [500.0] + [1.0] * 3 + [400.0])
    assert recorder.spike_steps == [5, 9]


def test_recorder_threshold_is_strict_and_needs_min_history():
    recorder = _recorder(spike_factor=10.0, min_history=4)
    _feed(recorder, [1.0, 1.0, 1.0, 99.0, 10.0, 10.0001])
    # Step 3 has only three earlier norms; step 4 equals 10 x median (not above it).
    assert recorder.spike_steps == [5]


def test_recorder_ignores_nonfinite_history():
    recorder = _recorder(min_history=3)
    _feed(recorder, [1.0, math.nan, 1.0, math.inf, 1.0, 50.0])
    assert recorder.nonfinite_steps == [1, 3]
    assert recorder.spike_steps == [5]   # the nan did not poison the median
    summary = recorder.summary()
    assert summary["max_norm"] == 50.0 and summary["median_norm"] == 1.0


def test_recorder_nonfinite_layer_flags_step():
    recorder = _recorder()
    recorder.record_norms(0, 1.0, {"a": 1.0, "b": math.nan})
    assert recorder.nonfinite_steps == [0]


@pytest.mark.parametrize("kwargs, error", [
    (dict(spike_factor=0), ValueError), (dict(spike_factor=math.inf), ValueError),
    (dict(spike_factor="10"), TypeError), (dict(window=0), ValueError),
    (dict(min_history=0), ValueError), (dict(window=2.5), ValueError),
])
def test_recorder_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        _recorder(**kwargs)


def test_monitor_is_a_recorder(backend):
    monitor = backend.GradientMonitor(backend.mlp([3, 2], seed=0))
    assert isinstance(monitor, GradientNormRecorder)
    if is_torch(backend):
        from companion.torch import layer_norms
    else:
        from companion.tensorflow import layer_norms
    assert monitor.layer_norms is layer_norms


# ---------------------------------------------------------------- parameter_norms


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_parameter_norms(backend, rng, p):
    model = backend.mlp([5, 8, 3], seed=1)
    grads = list(_model_grads(backend, model, rng))
    canonical = backend.to_canonical(model, grads)
    grads[1] = None
    norms = backend.parameter_norms(model, grads, p)
    assert list(norms) == ["dense0.weight", "dense1.weight", "dense1.bias"]
    for name, index in (("dense0.weight", 0), ("dense1.weight", 2), ("dense1.bias", 3)):
        assert norms[name] == pytest.approx(_numpy_norm([canonical[index]], p), rel=1e-5)
    with pytest.raises(ValueError, match="one gradient per trainable parameter"):
        backend.parameter_norms(model, grads[:2], p)
