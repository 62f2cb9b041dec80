"""Models in both back ends: canonical names and shapes, forward pass against NumPy,
initialisation statistics, seeding, get/set_weights and to_canonical, argument checks."""

import math
import re

import numpy as np
import pytest

from companion import tensorflow as ctf
from companion import torch as ct
from numpy_reference import (assert_arrays_close, assert_weights_equal, forward,
                             mlp_forward, rnn_forward)

# ---------------------------------------------------------------- names and shapes


def test_mlp_parameter_names_and_canonical_shapes(backend):
    model = backend.mlp([4, 5, 3])
    assert backend.parameter_names(model) == [
        "dense0.weight", "dense0.bias", "dense1.weight", "dense1.bias"]
    weights = backend.get_weights(model)
    assert [w.shape for w in weights] == [(5, 4), (5,), (3, 5), (3,)]
    assert all(isinstance(w, np.ndarray) and w.dtype == np.float32 for w in weights)
    assert len(backend.trainable_parameters(model)) == 4


def test_deeper_mlp_names(backend):
    model = backend.mlp([6, 5, 4, 3, 2])
    names = backend.parameter_names(model)
    assert names == [f"dense{i}.{kind}" for i in range(4) for kind in ("weight", "bias")]
    assert [w.shape for w in backend.get_weights(model)] == [
        (5, 6), (5,), (4, 5), (4,), (3, 4), (3,), (2, 3), (2,)]


def test_second_model_gets_the_same_names(backend):
    """Keras uniquifies auto-generated layer names; ours must stay dense0, dense1, ..."""
    backend.mlp([4, 5, 3])
    assert backend.parameter_names(backend.mlp([4, 5, 3]))[0] == "dense0.weight"
    backend.rnn(2, 3, 1)
    assert backend.parameter_names(backend.rnn(2, 3, 1))[0] == "rnn.weight_ih"


def test_rnn_parameter_names_and_canonical_shapes(backend):
    model = backend.rnn(2, 6, 1)
    assert backend.parameter_names(model) == [
        "rnn.weight_ih", "rnn.weight_hh", "rnn.bias", "readout.weight", "readout.bias"]
    assert [w.shape for w in backend.get_weights(model)] == [(6, 2), (6, 6), (6,), (1, 6), (1,)]


# ---------------------------------------------------------------- forward pass vs NumPy


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "linear"])
def test_mlp_forward_matches_numpy(backend, rng, activation):
    model = backend.mlp([7, 9, 8, 3], activation=activation, seed=11)
    # Non-zero biases, so a wrong bias or a missing/misplaced activation shows.
    weights = [w if w.ndim == 2 else rng.standard_normal(w.shape).astype(np.float32)
               for w in backend.get_weights(model)]
    backend.set_weights(model, weights)
    x = rng.standard_normal((20, 7)).astype(np.float32)
    expected = mlp_forward(weights, x, activation)
    assert_arrays_close([forward(backend, model, x)], [expected], what=activation)


def test_mlp_activations_differ(backend, rng):
    """Guards the reference test above: the activation actually changes the output."""
    x = rng.standard_normal((10, 5)).astype(np.float32)
    outputs = [forward(backend, backend.mlp([5, 6, 2], activation=a, seed=1), x)
               for a in ("relu", "tanh", "sigmoid", "linear")]
    for i in range(4):
        for j in range(i):
            assert not np.allclose(outputs[i], outputs[j])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_forward_matches_numpy_loop(backend, rng, nonlinearity):
    model = backend.rnn(2, 6, 3, nonlinearity=nonlinearity, gain=1.2, seed=4)
    weights = backend.get_weights(model)
    weights[2] = 0.3 * rng.standard_normal(6).astype(np.float32)   # rnn.bias
    weights[4] = rng.standard_normal(3).astype(np.float32)         # readout.bias
    backend.set_weights(model, weights)
    x = rng.standard_normal((8, 15, 2)).astype(np.float32)
    expected = rnn_forward(weights, x, nonlinearity)
    assert_arrays_close([forward(backend, model, x)], [expected], what=nonlinearity)


# ---------------------------------------------------------------- initialisation


@pytest.mark.parametrize("init, formula", [
    ("he", lambda fan_in, fan_out: math.sqrt(2 / fan_in)),
    ("glorot", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
    ("lecun", lambda fan_in, fan_out: math.sqrt(1 / fan_in)),
])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_init_std_matches_formula(backend, init, formula, gain):
    # fan_in != fan_out, so glorot (0.0535) and lecun (0.05) are told apart.
    fan_in, fan_out = 400, 300
    weight, bias = backend.get_weights(backend.mlp([fan_in, fan_out], init=init, gain=gain,
                                                   seed=7))
    expected = gain * formula(fan_in, fan_out)
    # 120,000 normal samples: the sample std has a relative standard error of
    # 1/sqrt(2n) ~ 0.2 %, so 1 % is five standard errors.
    assert weight.std() == pytest.approx(expected, rel=0.01)
    assert abs(weight.mean()) < 5 * expected / math.sqrt(weight.size)
    # Normal, not uniform: ~68.3 % of the mass within one std (uniform: 57.7 %).
    assert np.mean(np.abs(weight) < expected) == pytest.approx(0.6827, abs=0.01)
    np.testing.assert_array_equal(bias, 0.0)


@pytest.mark.parametrize("gain", [0.5, 1.0, 3.0])
def test_rnn_recurrent_matrix_is_gain_times_orthogonal(backend, gain):
    weights = backend.get_weights(backend.rnn(3, 32, 2, gain=gain, seed=5))
    singular_values = np.linalg.svd(weights[1].astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(singular_values, gain, rtol=1e-5)
    np.testing.assert_array_equal(weights[2], 0.0)
    np.testing.assert_array_equal(weights[4], 0.0)


def test_rnn_input_and_readout_init(backend):
    w_ih, _, _, w_out, _ = backend.get_weights(backend.rnn(300, 400, 200, seed=2))
    assert w_ih.std() == pytest.approx(math.sqrt(1 / 300), rel=0.01)          # LeCun
    assert w_out.std() == pytest.approx(math.sqrt(2 / (400 + 200)), rel=0.01)  # Glorot


# ---------------------------------------------------------------- seeding


def test_same_seed_gives_identical_weights_in_both_back_ends():
    torch_weights = ct.get_weights(ct.mlp([10, 8, 3], activation="tanh", seed=3))
    tf_weights = ctf.get_weights(ctf.mlp([10, 8, 3], activation="tanh", seed=3))
    assert_weights_equal(torch_weights, tf_weights)
    assert_weights_equal(ct.get_weights(ct.rnn(2, 5, 1, seed=3)),
                         ctf.get_weights(ctf.rnn(2, 5, 1, seed=3)))
    other = ct.get_weights(ct.mlp([10, 8, 3], seed=4))
    assert not np.array_equal(other[0], torch_weights[0])


def test_seed_none_follows_seed_everything():
    runs = []
    for backend in (ct, ctf, ct):
        backend.seed_everything(17)
        first = backend.get_weights(backend.mlp([6, 4, 2]))
        second = backend.get_weights(backend.mlp([6, 4, 2]))
        assert not np.array_equal(first[0], second[0])  # a fresh seed each call
        runs.append(first + second)
    assert_weights_equal(runs[0], runs[1])
    assert_weights_equal(runs[0], runs[2])


# ---------------------------------------------------------------- set_weights / to_canonical


def test_set_weights_round_trip(backend, rng):
    model = backend.mlp([4, 5, 3])
    arrays = [rng.standard_normal(w.shape) for w in backend.get_weights(model)]  # float64
    backend.set_weights(model, arrays)
    got = backend.get_weights(model)
    assert all(g.dtype == np.float32 for g in got)
    assert_weights_equal([a.astype(np.float32) for a in arrays], got)
    # The canonical layout really is (out, in): the model computes x @ W.T + b.
    x = rng.standard_normal((3, 4)).astype(np.float32)
    assert_arrays_close([forward(backend, model, x)], [mlp_forward(got, x, "relu")])

    rnn_model = backend.rnn(2, 4, 1)
    arrays = [rng.standard_normal(w.shape).astype(np.float32)
              for w in backend.get_weights(rnn_model)]
    backend.set_weights(rnn_model, arrays)
    assert_weights_equal(arrays, backend.get_weights(rnn_model))


def test_get_weights_returns_copies(backend):
    model = backend.mlp([4, 5, 3])
    weights = backend.get_weights(model)
    original = [w.copy() for w in weights]
    for w in weights:
        w += 1.0
    assert_weights_equal(original, backend.get_weights(model))


def test_set_weights_wrong_count(backend):
    model = backend.mlp([4, 5, 3])
    before = backend.get_weights(model)
    with pytest.raises(ValueError, match=r"4: dense0\.weight, dense0\.bias, dense1\.weight"):
        backend.set_weights(model, [np.ones_like(w) for w in before[:3]])
    with pytest.raises(ValueError, match="got 5"):
        backend.set_weights(model, [np.ones_like(w) for w in before] + [np.ones(3)])
    assert_weights_equal(before, backend.get_weights(model))


def test_set_weights_wrong_shape_names_parameter_and_changes_nothing(backend):
    model = backend.mlp([4, 5, 3])
    before = backend.get_weights(model)
    arrays = [np.full_like(w, 7.0) for w in before]
    arrays[2] = np.ones((5, 3), np.float32)  # dense1.weight transposed: (in, out)
    with pytest.raises(ValueError, match=re.escape("dense1.weight needs shape (3, 5)")):
        backend.set_weights(model, arrays)
    # Nothing half-applied: dense0 (checked before dense1) is untouched too.
    assert_weights_equal(before, backend.get_weights(model))

    rnn_model = backend.rnn(2, 6, 1)
    before = backend.get_weights(rnn_model)
    arrays = [np.zeros_like(w) for w in before]
    arrays[0] = np.zeros((2, 6), np.float32)
    with pytest.raises(ValueError, match=re.escape("rnn.weight_ih needs shape (6, 2)")):
        backend.set_weights(rnn_model, arrays)
    assert_weights_equal(before, backend.get_weights(rnn_model))


def test_tensorflow_to_canonical_transposes_kernels():
    model = ctf.mlp([4, 5, 3], seed=0)
    kernel, bias = model.trainable_variables[:2]
    assert tuple(kernel.shape) == (4, 5)  # Keras stores (in, out)
    canonical = ctf.to_canonical(model, model.trainable_variables)
    assert canonical[0].shape == (5, 4)
    np.testing.assert_array_equal(canonical[0], np.asarray(kernel).T)
    np.testing.assert_array_equal(canonical[1], np.asarray(bias))
    # None passes through, other entries are still converted.
    mixed = ctf.to_canonical(model, [None, bias, model.trainable_variables[2], None])
    assert mixed[0] is None and mixed[3] is None
    np.testing.assert_array_equal(mixed[2], np.asarray(model.trainable_variables[2]).T)
    with pytest.raises(ValueError, match="got 2"):
        ctf.to_canonical(model, [kernel, bias])

    rnn_model = ctf.rnn(2, 6, 1, seed=0)
    native = [np.asarray(v) for v in rnn_model.trainable_variables]
    assert [v.shape for v in native] == [(2, 6), (6, 6), (6,), (6, 1), (1,)]
    canonical = ctf.to_canonical(rnn_model, rnn_model.trainable_variables)
    for c, n in zip(canonical, native):
        np.testing.assert_array_equal(c, n.T)  # .T is the identity on 1-D biases


def test_torch_to_canonical_copies_and_passes_none():
    import torch

    model = ct.mlp([4, 5, 3], seed=0)
    params = list(model.parameters())
    canonical = ct.to_canonical(model, [params[0], None, params[2], None])
    assert canonical[1] is None and canonical[3] is None
    np.testing.assert_array_equal(canonical[0], params[0].detach().numpy())
    canonical[0][:] = 99.0
    assert not torch.any(params[0] == 99.0)
    with pytest.raises(ValueError, match="got 1"):
        ct.to_canonical(model, [params[0]])


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize("sizes", [[], [4], [4, 0, 3], [4, -2], [4, 2.5], [4, True]])
def test_mlp_bad_sizes(backend, sizes):
    with pytest.raises(ValueError, match="size"):
        backend.mlp(sizes)


def test_mlp_unknown_activation_lists_allowed(backend):
    with pytest.raises(ValueError, match="'relu', 'tanh', 'sigmoid', 'linear'") as info:
        backend.mlp([3, 2], activation="gelu")
    assert "gelu" in str(info.value)


def test_mlp_float64_holds_the_same_initial_weights_in_float64(backend, rng):
    single = backend.mlp([5, 7, 3], seed=4)
    double = backend.mlp([5, 7, 3], seed=4, dtype="float64")
    for a, b in zip(backend.get_weights(single), backend.get_weights(double)):
        assert b.dtype == np.float64
        np.testing.assert_array_equal(a.astype(np.float64), b)
    x = rng.standard_normal((6, 5))
    outputs = backend.predict(double, x)
    assert outputs.dtype == np.float64
    # A float64 forward pass matches NumPy's to float64 rounding, not float32's.
    np.testing.assert_allclose(outputs, mlp_forward(backend.get_weights(double), x, "relu"),
                               rtol=1e-12, atol=1e-12)


def test_mlp_unknown_dtype_lists_allowed(backend):
    with pytest.raises(ValueError, match="'float32', 'float64'"):
        backend.mlp([3, 2], dtype="float16")


def test_mlp_unknown_init_lists_allowed(backend):
    with pytest.raises(ValueError, match="'he', 'glorot', 'lecun'") as info:
        backend.mlp([3, 2], init="xavier")
    assert "xavier" in str(info.value)


@pytest.mark.parametrize("gain", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_gain(backend, gain):
    with pytest.raises(ValueError, match="gain must be a finite number > 0"):
        backend.mlp([3, 2], gain=gain)
    with pytest.raises(ValueError, match="gain must be a finite number > 0"):
        backend.rnn(2, 3, 1, gain=gain)


def test_gain_of_wrong_type(backend):
    with pytest.raises(TypeError, match="gain"):
        backend.mlp([3, 2], gain="1")


def test_rnn_unknown_nonlinearity_lists_allowed(backend):
    with pytest.raises(ValueError, match="allowed: 'tanh', 'relu'"):
        backend.rnn(2, 3, 1, nonlinearity="sigmoid")


@pytest.mark.parametrize("sizes", [(0, 3, 1), (2, 0, 1), (2, 3, 0), (2, -3, 1), (2, 3.0, 1)])
def test_rnn_bad_sizes(backend, sizes):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        backend.rnn(*sizes)


def test_torch_recurrent_layer_checks_nonlinearity():
    with pytest.raises(ValueError, match="allowed: 'tanh', 'relu'"):
        ct.RecurrentLayer(2, 3, nonlinearity="sigmoid")


def test_set_weights_rejects_none(backend):
    model = backend.mlp([4, 5, 3])
    before = backend.get_weights(model)
    with pytest.raises(ValueError, match="None"):
        backend.set_weights(model, [np.zeros_like(before[0]), None] + before[2:])
    assert_weights_equal(before, backend.get_weights(model))


def test_from_canonical_inverts_to_canonical(backend, rng):
    model = backend.rnn(3, 4, 2, seed=0)
    arrays = [rng.standard_normal(w.shape) for w in backend.get_weights(model)]
    arrays[2] = None
    native = backend.from_canonical(model, arrays)
    assert native[2] is None
    # Native layout: the framework's own parameter shapes (Keras: kernels (in, out)).
    for tensor, param in zip(native, backend.trainable_parameters(model)):
        if tensor is not None:
            assert tuple(tensor.shape) == tuple(param.shape)
    back = backend.to_canonical(model, native)
    assert back[2] is None
    for b, a in zip(back, arrays):
        if a is not None:
            np.testing.assert_array_equal(b, a.astype(np.float32))
    with pytest.raises(ValueError, match=re.escape("readout.weight needs shape (2, 4)")):
        backend.from_canonical(model, arrays[:3] + [np.zeros((4, 2)), None])
