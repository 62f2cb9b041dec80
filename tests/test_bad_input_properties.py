"""Property-based bad input (issue 12): whatever wrong value an argument gets, every public
function that changes a model raises ``ValueError`` or ``TypeError`` and leaves the model
as it was, in both back ends; the pure functions raise the same and return nothing.

Hypothesis draws from a wide pool of values (numbers of every sign and size, nan, inf,
booleans, strings, ``None``, lists) and keeps those the argument does not allow.
"""

import math
import numbers

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion import tensorflow as ctf
from companion import torch as ct

RNG = np.random.default_rng(4)
X = RNG.standard_normal((12, 5)).astype(np.float32)
Y = RNG.integers(0, 3, 12)
SIZES = [5, 7, 3]
BACKENDS = {"torch": ct, "tensorflow": ctf}
MODELS = {name: backend.mlp(SIZES, seed=0) for name, backend in BACKENDS.items()}

ANYTHING = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
    st.booleans(), st.none(), st.text(max_size=4), st.lists(st.integers(0, 3), max_size=3),
    st.sampled_from([0, 1, -1, 0.5, 1.0, 1e-30, 1e30, "0.9", "sgd", "global"]))


def is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive(value) -> bool:
    return is_real(value) and math.isfinite(value) and value > 0


def positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def fraction(value) -> bool:
    return is_real(value) and 0 <= value < 1


def bad(valid):
    return ANYTHING.filter(lambda value: not valid(value))


def weights(name):
    return [np.array(w) for w in BACKENDS[name].get_weights(MODELS[name])]


def assert_refused_and_unchanged(name, call):
    before = weights(name)
    with pytest.raises((ValueError, TypeError)):
        call()
    for now, then in zip(weights(name), before, strict=True):
        np.testing.assert_array_equal(now, then)


PROPERTY = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(argument=st.sampled_from(["lr", "epochs", "batch_size", "momentum", "optimizer",
                                 "loss"]), data=st.data())
def test_train_refuses_any_bad_setting_and_trains_nothing(name, argument, data):
    valid = {"lr": positive, "epochs": positive_int, "batch_size": positive_int,
             "momentum": fraction, "optimizer": lambda v: v in ("sgd", "adam"),
             "loss": lambda v: v in ("cross_entropy", "mse") or callable(v)}[argument]
    value = data.draw(bad(valid), label=argument)
    settings_ = dict(epochs=1, lr=0.1, batch_size=4, momentum=0.0, optimizer="sgd",
                     loss="cross_entropy", progress=False)
    settings_[argument] = value
    assert_refused_and_unchanged(
        name, lambda: BACKENDS[name].train(MODELS[name], X, Y, **settings_))


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(sparsity=bad(fraction), scope=st.sampled_from(["global", "layer", "row"]))
def test_prune_refuses_any_bad_sparsity(name, sparsity, scope):
    backend = BACKENDS[name]
    scores = backend.magnitude_scores(MODELS[name])
    assert_refused_and_unchanged(name, lambda: backend.prune(MODELS[name], scores, sparsity,
                                                             scope=scope))


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(scope=bad(lambda v: v in ("global", "layer", "row")),
       prune_biases=bad(lambda v: isinstance(v, bool)))
def test_prune_refuses_any_bad_scope_or_flag(name, scope, prune_biases):
    backend = BACKENDS[name]
    scores = backend.magnitude_scores(MODELS[name])
    assert_refused_and_unchanged(name, lambda: backend.prune(MODELS[name], scores, 0.5,
                                                             scope=scope))
    assert_refused_and_unchanged(name, lambda: backend.prune(MODELS[name], scores, 0.5,
                                                             prune_biases=prune_biases))


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(argument=st.sampled_from(["sparsity", "damping", "block_size"]), data=st.data())
def test_obs_prune_refuses_any_bad_setting(name, argument, data):
    valid = {"sparsity": fraction, "damping": positive, "block_size": positive_int}[argument]
    settings_ = dict(sparsity=0.5, damping=1e-3, block_size=8)
    settings_[argument] = data.draw(bad(valid), label=argument)
    assert_refused_and_unchanged(
        name, lambda: BACKENDS[name].obs_prune(MODELS[name], X, Y, **settings_))


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(max_norm=bad(positive))
def test_clipping_refuses_any_bad_threshold(name, max_norm):
    backend = BACKENDS[name]
    grads = backend.gradients(MODELS[name], X, Y)
    with pytest.raises((ValueError, TypeError)):
        backend.clip_by_global_norm(grads, max_norm)
    with pytest.raises((ValueError, TypeError)):
        backend.clip_by_norm(grads, max_norm)


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(argument=st.sampled_from(["method", "samples", "seed"]), data=st.data())
def test_curvature_refuses_any_bad_setting(name, argument, data):
    valid = {"method": lambda v: v in ("exact", "hutchinson", "fisher"),
             "samples": positive_int,
             "seed": lambda v: v is None or (isinstance(v, numbers.Integral)
                                            and not isinstance(v, bool) and v >= 0)}[argument]
    settings_ = dict(method="hutchinson", samples=2, seed=0)
    settings_[argument] = data.draw(bad(valid), label=argument)
    with pytest.raises((ValueError, TypeError)):
        BACKENDS[name].hessian_diagonal(MODELS[name], X, Y, **settings_)
