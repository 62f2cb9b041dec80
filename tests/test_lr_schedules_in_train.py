"""``train(..., lr=schedule)``: the learning rate a schedule gives is the one each step
uses, in both back ends, and equal to the frameworks' own schedulers."""

import numpy as np
import pytest

from companion import tensorflow as ctf
from companion import torch as ct
from companion.core.batches import minibatches

import keras  # noqa: E402 (after the companion)
import torch  # noqa: E402

X = np.random.default_rng(0).standard_normal((48, 5)).astype(np.float32)
Y = np.random.default_rng(1).integers(0, 3, 48)
TRAIN = dict(epochs=2, batch_size=16, progress=False)


def test_torch_schedule_equals_lambda_lr():
    schedule = ct.warmup_schedule(0.5, warmup_steps=3, total_steps=6, decay="linear")
    ours, theirs = (ct.mlp([5, 8, 3], seed=0) for _ in range(2))
    ct.train(ours, X, Y, lr=schedule, **TRAIN)
    opt = torch.optim.SGD(theirs.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule(s) / 0.5)
    for batch in minibatches(len(X), 16, epochs=2, seed=0):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.as_tensor(X[batch])),
                                          torch.as_tensor(Y[batch])).backward()
        opt.step()
        scheduler.step()
    for a, b in zip(ct.get_weights(ours), ct.get_weights(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_schedules_agree_across_back_ends_and_with_keras_own():
    keras_schedule = ctf.warmup_schedule(0.5, warmup_steps=3, total_steps=6,
                                         decay="cosine")
    models = [b.mlp([5, 8, 3], seed=0) for b in (ct, ctf)]
    ct.train(models[0], X, Y, lr=ct.warmup_schedule(0.5, 3, 6, "cosine"), **TRAIN)
    ctf.train(models[1], X, Y, lr=keras_schedule, **TRAIN)
    keras_own = ctf.mlp([5, 8, 3], seed=0)
    ctf.train(keras_own, X, Y, optimizer=keras.optimizers.SGD(keras_schedule),
              **TRAIN)
    for a, b, c in zip(ct.get_weights(models[0]), ctf.get_weights(models[1]),
                       ctf.get_weights(keras_own)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, c, rtol=1e-6, atol=1e-7)


def test_a_zero_learning_rate_step_changes_nothing(backend):
    model = backend.mlp([5, 8, 3], seed=0)
    before = backend.get_weights(model)
    backend.train(model, X, Y, lr=lambda step: 0.0, **TRAIN)
    for a, b in zip(before, backend.get_weights(model)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("schedule, step", [(lambda s: -1.0, 0),
                                            (lambda s: float("nan") if s == 2 else 0.1,
                                             2)])
def test_a_bad_schedule_value_is_refused_naming_its_step(backend, schedule, step):
    model = backend.mlp([5, 8, 3], seed=0)
    before = backend.get_weights(model)
    with pytest.raises(ValueError, match=f"at step {step}"):
        backend.train(model, X, Y, lr=schedule, **TRAIN)
    if step == 0:  # refused before anything changed
        for a, b in zip(before, backend.get_weights(model)):
            np.testing.assert_array_equal(a, b)
