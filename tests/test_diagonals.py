"""The closed-form curvature diagonals (empirical Fisher, GGN, Hessian) in both back ends.

Oracles: BackPACK's ``SumGradSquared``, ``DiagGGNExact`` and ``DiagHessian`` (PyTorch); a
dense GGN ``(1/N) sum_i J_i^T Lambda_i J_i`` from ``torch.func.jacrev``; the diagonal of the
dense Hessian of :func:`hessian` (itself checked against ``torch.autograd.functional.hessian``
and nested tapes in tests/test_curvature.py); the general paths (one HVP per weight,
per-sample gradients) on the same function written as a model outside the closed form; and
the other back end. Models are float64 MLPs with two hidden layers, so the activations'
second-derivative terms travel back through a weight matrix and an activation; chunks of 7
of 23 examples (the last one partial). Tolerances as tests/test_curvature.py: rtol 1e-10,
atol 1e-12 x the largest entry in float64; the house float32 tolerance across back ends.
"""

import keras
import numpy as np
import pytest
import torch

from companion import tensorflow as ctf
from companion import torch as ct
from companion.core import diagonals as core_diagonals
from numpy_reference import assert_arrays_close, assert_weights_equal, float64_mlp, is_torch

SIZES = [5, 6, 4, 3]  # 5*6 + 6 + 6*4 + 4 + 4*3 + 3 = 79 parameters
ACTIVATIONS = ["relu", "tanh", "sigmoid"]
LOSSES = ["cross_entropy", "mse"]
RTOL64, ATOL64 = 1e-10, 1e-12


def make_data(rng, loss, n=23):
    x = rng.standard_normal((n, SIZES[0]))
    if loss == "cross_entropy":
        return x, rng.integers(0, SIZES[-1], n)
    return x, rng.standard_normal((n, SIZES[-1]))


def flat(backend, model, tensors) -> np.ndarray:
    return np.concatenate([a.ravel() for a in backend.to_canonical(model, tensors)])


def close(actual, desired):
    np.testing.assert_allclose(actual, desired, rtol=RTOL64,
                               atol=ATOL64 * float(np.max(np.abs(desired))))


def backpack_diagonals(model, x, y, loss):
    """BackPACK on a copy of ``model``: (SumGradSquared, DiagGGNExact, DiagHessian), flat."""
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact, DiagHessian, SumGradSquared
    twin = extend(ct.mlp(SIZES, seed=0, dtype="float64",
                         activation=type(model.act0).__name__.lower()))
    ct.set_weights(twin, ct.get_weights(model))
    # BackPACK's mean reduction scales each example's gradient by 1/N: sum_i (g_i/N)^2
    function = extend(torch.nn.CrossEntropyLoss() if loss == "cross_entropy"
                      else torch.nn.MSELoss())
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    found = []
    for extension, name in ((SumGradSquared, "sum_grad_squared"),
                            (DiagGGNExact, "diag_ggn_exact"), (DiagHessian, "diag_h")):
        twin.zero_grad()
        with backpack(extension()):
            function(twin(xt), yt).backward()
        found.append(np.concatenate([getattr(p, name).reshape(-1).numpy()
                                     for p in twin.parameters()]))
    return found


# BackPACK's hooks warn that the inputs do not require gradients; they need not.
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_closed_forms_equal_backpack_and_the_dense_hessian(rng, activation, loss):
    model = float64_mlp(ct, SIZES, activation)
    x, y = make_data(rng, loss)
    squared, ggn, hessian = backpack_diagonals(model, x, y, loss)
    fisher = flat(ct, model, ct.hessian_diagonal(model, x, y, "fisher", loss=loss,
                                                 batch_size=7))
    close(fisher, len(x) * squared)
    close(flat(ct, model, ct.ggn_diagonal(model, x, y, loss=loss, batch_size=7)), ggn)
    exact = flat(ct, model, ct.hessian_diagonal(model, x, y, loss=loss, batch_size=7))
    close(exact, hessian)
    close(exact, np.diag(ct.hessian(model, x, y, loss=loss)))
    if activation == "relu":  # piecewise linear: no second-derivative term
        close(exact, ggn)
    else:
        assert np.max(np.abs(exact - ggn)) > 1e-3 * np.max(np.abs(exact))


@pytest.mark.parametrize("loss", LOSSES)
def test_ggn_diagonal_equals_a_dense_ggn(rng, loss):
    """``(1/N) sum_i J_i^T Lambda_i J_i`` with each example's Jacobian from ``jacrev``."""
    model = float64_mlp(ct, SIZES, "tanh")
    x, y = make_data(rng, loss)
    params = {k: v.detach() for k, v in model.named_parameters()}
    jacobians = []
    for xi in torch.as_tensor(x):
        blocks = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (xi,)))(
            params)
        jacobians.append(torch.cat([blocks[k].reshape(SIZES[-1], -1) for k in params], 1))
    outputs = model(torch.as_tensor(x)).detach().numpy()
    total = 0
    for jacobian, output in zip(jacobians, outputs):
        if loss == "cross_entropy":
            p = np.exp(output - output.max())
            p /= p.sum()
            output_hessian = np.diag(p) - np.outer(p, p)
        else:
            output_hessian = 2 / SIZES[-1] * np.eye(SIZES[-1])
        total = total + np.diag(jacobian.numpy().T @ output_hessian @ jacobian.numpy())
    close(flat(ct, model, ct.ggn_diagonal(model, x, y, loss=loss)), total / len(x))


def outside_the_closed_form(backend, model):
    """The same function as ``model`` (sharing its weights), as a model the closed forms
    do not cover: a module with its own ``forward`` / a functional Keras model."""
    if is_torch(backend):
        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = model

            def forward(self, x):
                return self.inner(x)

        return Wrapped()
    return keras.Model(model.inputs, model.outputs)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_fast_paths_equal_the_general_paths(backend, rng, activation):
    """Closed forms against one HVP per weight, per-sample gradients and the general GGN
    (a batched backward pass per output column), same function."""
    model = float64_mlp(backend, SIZES, activation)
    general = outside_the_closed_form(backend, model)
    for loss in LOSSES:
        x, y = make_data(rng, loss)
        for method in ("exact", "fisher"):
            close(flat(backend, model, backend.hessian_diagonal(model, x, y, method,
                                                                loss=loss, batch_size=7)),
                  flat(backend, general, backend.hessian_diagonal(general, x, y, method,
                                                                  loss=loss)))
        close(flat(backend, model, backend.ggn_diagonal(model, x, y, loss=loss, batch_size=7)),
              flat(backend, general, backend.ggn_diagonal(general, x, y, loss=loss,
                                                          batch_size=7)))


def test_layers_without_bias_and_separate_activation_layers(backend, rng):
    """A chain written by hand: no bias in the first layer, the activation its own layer."""
    if is_torch(backend):
        model = torch.nn.Sequential(torch.nn.Linear(5, 6, bias=False), torch.nn.Tanh(),
                                    torch.nn.Linear(6, 3)).double()
    else:
        model = keras.Sequential([keras.Input((5,), dtype="float64"),
                                  keras.layers.Dense(6, use_bias=False, dtype="float64"),
                                  keras.layers.Activation("tanh", dtype="float64"),
                                  keras.layers.Dense(3, dtype="float64")])
    x, y = make_data(rng, "cross_entropy")
    exact = flat(backend, model, backend.hessian_diagonal(model, x, y))
    close(exact, np.diag(backend.hessian(model, x, y)))
    general = outside_the_closed_form(backend, model)
    close(flat(backend, model, backend.hessian_diagonal(model, x, y, "fisher")),
          flat(backend, general, backend.hessian_diagonal(general, x, y, "fisher")))


def test_back_ends_agree(rng):
    """Same weights, same data: float64 to rounding, the float32 ReLU MLP to the house
    tolerance."""
    for dtype in ("float64", "float32"):
        torch_model = ct.mlp(SIZES, activation="tanh", seed=1, dtype=dtype)
        tf_model = ctf.mlp(SIZES, activation="tanh", seed=2, dtype=dtype)
        ctf.set_weights(tf_model, ct.get_weights(torch_model))
        x, y = make_data(rng, "cross_entropy", n=64)
        x = x.astype(dtype)
        calls = [lambda b, m: b.ggn_diagonal(m, x, y),
                 lambda b, m: b.hessian_diagonal(m, x, y, "exact"),
                 lambda b, m: b.hessian_diagonal(m, x, y, "fisher")]
        for call in calls:
            theirs = ct.to_canonical(torch_model, call(ct, torch_model))
            ours = ctf.to_canonical(tf_model, call(ctf, tf_model))
            if dtype == "float64":
                close(np.concatenate([a.ravel() for a in ours]),
                      np.concatenate([a.ravel() for a in theirs]))
            else:
                assert_arrays_close(ours, theirs, what=dtype)


def test_the_general_exact_diagonal_is_refused_above_the_limit(backend, rng, monkeypatch):
    """Outside the closed form, one HVP per weight: refused above the limit with the time
    estimate and the alternatives; below it, a progress bar on stderr."""
    model = float64_mlp(backend, SIZES)
    general = outside_the_closed_form(backend, model)
    x, y = make_data(rng, "cross_entropy")
    monkeypatch.setattr(core_diagonals, "EXACT_DIAGONAL_LIMIT", 78)
    with pytest.raises(ValueError, match=r"79 products, about \d+ s here .* refused above 78 "
                                         r"parameters\. Use method='fisher' .*'hutchinson'"):
        backend.hessian_diagonal(general, x, y)
    backend.hessian_diagonal(model, x, y)  # the closed form has no limit


def test_the_general_exact_diagonal_shows_progress(backend, rng, monkeypatch, capsys):
    model = outside_the_closed_form(backend, float64_mlp(backend, SIZES))
    x, y = make_data(rng, "cross_entropy")
    monkeypatch.setattr(core_diagonals, "PROGRESS_FROM", 79)
    backend.hessian_diagonal(model, x, y)
    assert "exact Hessian diagonal" in capsys.readouterr().err


def test_bad_input_is_refused_before_anything_changes(backend, rng):
    model = float64_mlp(backend, SIZES)
    x, y = make_data(rng, "cross_entropy")
    before = backend.get_weights(model)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        backend.ggn_diagonal(model, x, y, loss="hinge")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        backend.ggn_diagonal(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match="same number of examples"):
        backend.ggn_diagonal(model, x, y[:-1])
    assert_weights_equal(before, backend.get_weights(model))
    broken = [w.copy() for w in before]
    broken[0][0, 0] = np.nan
    backend.set_weights(model, broken)
    for method in ("exact", "fisher"):
        with pytest.raises(ValueError, match="diagonal holds nan or inf"):
            backend.hessian_diagonal(model, x, y, method)
    with pytest.raises(ValueError, match="ggn diagonal holds nan or inf"):
        backend.ggn_diagonal(outside_the_closed_form(backend, model), x, y)


# --------------------------------------------------------------------------- convolutions


def torch_cnn(activation, stride=1, padding=1, dilation=1):
    """Conv(2->3, 3x3) -> Conv(3->2, 2x2) -> Flatten -> Dense(5, tanh) -> Dense(3), on 7x7."""
    torch.manual_seed(0)
    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[activation]
    convolutions = [torch.nn.Conv2d(2, 3, 3, stride=stride, padding=padding,
                                    dilation=dilation), act(), torch.nn.Conv2d(3, 2, 2), act(),
                    torch.nn.Flatten()]
    width = torch.nn.Sequential(*convolutions)(torch.zeros(1, 2, 7, 7)).shape[1]
    return torch.nn.Sequential(*convolutions, torch.nn.Linear(width, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 3)).double()


def keras_cnn(activation, stride=1, padding="valid"):
    """The same network in Keras (channels last)."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((7, 7, 2), dtype="float64"),
        layers.Conv2D(3, 3, strides=stride, padding=padding, activation=activation,
                      dtype="float64"),
        layers.Conv2D(2, 2, dtype="float64"), layers.Activation(activation, dtype="float64"),
        layers.Flatten(dtype="float64"), layers.Dense(5, activation="tanh", dtype="float64"),
        layers.Dense(3, dtype="float64")])


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 0, 2)])
def test_convolutions_equal_backpack_and_the_dense_hessian(rng, activation, stride, padding,
                                                            dilation):
    """After a tanh convolution the Hessian takes the general path (also checked)."""
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact, SumGradSquared
    model = torch_cnn(activation, stride, padding, dilation)
    x, y = rng.standard_normal((9, 2, 7, 7)), rng.integers(0, 3, 9)
    twin, function = extend(torch_cnn(activation, stride, padding, dilation)), extend(
        torch.nn.CrossEntropyLoss(reduction="sum"))
    found = {}
    for extension, name in ((SumGradSquared, "sum_grad_squared"),
                            (DiagGGNExact, "diag_ggn_exact")):
        twin.zero_grad()
        with backpack(extension()):
            function(twin(torch.as_tensor(x)), torch.as_tensor(y)).backward()
        found[name] = np.concatenate([getattr(p, name).reshape(-1).numpy()
                                      for p in twin.parameters()]) / len(x)
    close(flat(ct, model, ct.hessian_diagonal(model, x, y, "fisher", batch_size=4)),
          found["sum_grad_squared"])
    close(flat(ct, model, ct.ggn_diagonal(model, x, y, batch_size=4)), found["diag_ggn_exact"])
    close(flat(ct, model, ct.hessian_diagonal(model, x, y, batch_size=4)),
          np.diag(ct.hessian(model, x, y)))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("stride, padding", [(1, "same"), (2, "valid")])
def test_keras_convolutions_equal_the_dense_hessian_and_the_general_paths(rng, activation,
                                                                         stride, padding):
    keras.utils.set_random_seed(0)
    model = keras_cnn(activation, stride, padding)
    general = outside_the_closed_form(ctf, model)
    x, y = rng.standard_normal((9, 7, 7, 2)), rng.integers(0, 3, 9)
    close(flat(ctf, model, ctf.hessian_diagonal(model, x, y, batch_size=4)),
          np.diag(ctf.hessian(model, x, y)))
    close(flat(ctf, model, ctf.hessian_diagonal(model, x, y, "fisher", batch_size=4)),
          flat(ctf, general, ctf.hessian_diagonal(general, x, y, "fisher")))
    close(flat(ctf, model, ctf.ggn_diagonal(model, x, y, batch_size=4)),
          flat(ctf, general, ctf.ggn_diagonal(general, x, y)))


def test_convolution_diagonals_agree_across_back_ends(rng):
    """Keras flattens (H, W, C), PyTorch (C, H, W): the canonical layout permutes the first
    dense layer's columns, for the weights copied and for the diagonals compared."""
    torch_model, tf_model = torch_cnn("tanh", padding=0), keras_cnn("tanh")
    ctf.set_weights(tf_model, ct.get_weights(torch_model))
    x, y = rng.standard_normal((9, 2, 7, 7)), rng.integers(0, 3, 9)
    for call in (lambda b, m, x: b.ggn_diagonal(m, x, y),
                 lambda b, m, x: b.hessian_diagonal(m, x, y, "fisher")):
        theirs = ct.to_canonical(torch_model, call(ct, torch_model, x))
        ours = ctf.to_canonical(tf_model, call(ctf, tf_model, x.transpose(0, 2, 3, 1)))
        close(np.concatenate([a.ravel() for a in ours]),
              np.concatenate([a.ravel() for a in theirs]))
