"""`warmup_schedule`: closed-form values, Keras' own CosineDecay with warm-up, and the
learning rates PyTorch's LambdaLR and a Keras optimizer actually use, in both back ends."""

import keras
import numpy as np
import pytest
import torch

from companion import tensorflow as ctf
from companion import torch as ct

PEAK, WARMUP, TOTAL = 0.1, 4, 12


@pytest.mark.parametrize("decay, expected", [
    # s:    0     1      2     3      4    6                  8     12   20
    (None, [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1]),
    ("linear", [0.0, 0.025, 0.05, 0.075, 0.1, 0.075, 0.05, 0.0, 0.0]),
    ("cosine", [0.0, 0.025, 0.05, 0.075, 0.1, 0.05 * (1 + 2 ** -0.5), 0.05, 0.0, 0.0]),
])
def test_closed_form_values(decay, expected):
    steps = [0, 1, 2, 3, 4, 6, 8, 12, 20]
    total = None if decay is None else TOTAL
    torch_lr = ct.warmup_schedule(PEAK, WARMUP, total, decay)
    keras_lr = ctf.warmup_schedule(PEAK, WARMUP, total, decay)
    np.testing.assert_allclose([torch_lr(s) for s in steps], expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal([float(keras_lr(s)) for s in steps],
                                  np.float32([torch_lr(s) for s in steps]))


def test_cosine_matches_keras_cosine_decay_with_warmup():
    oracle = keras.optimizers.schedules.CosineDecay(
        0.0, TOTAL - WARMUP, warmup_target=PEAK, warmup_steps=WARMUP)
    ours = ct.warmup_schedule(PEAK, WARMUP, TOTAL, "cosine")
    steps = range(TOTAL + 3)
    np.testing.assert_allclose([ours(s) for s in steps], [float(oracle(s)) for s in steps],
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("decay", [None, "linear", "cosine"])
def test_learning_rates_the_optimizers_use(decay):
    total = None if decay is None else TOTAL
    expected = [ct.warmup_schedule(PEAK, WARMUP, total, decay)(s) for s in range(TOTAL + 2)]
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=PEAK)
    schedule = ct.warmup_schedule(PEAK, WARMUP, total, decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s) / PEAK)
    used = []
    for _ in expected:
        used.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(used, expected, rtol=1e-12, atol=1e-15)

    variable = keras.Variable(np.ones(2, np.float32))
    optimizer = keras.optimizers.SGD(learning_rate=ctf.warmup_schedule(PEAK, WARMUP, total,
                                                                       decay))
    used = []
    for _ in expected:
        used.append(float(optimizer.learning_rate))
        optimizer.apply_gradients([(np.ones(2, np.float32), variable)])
    np.testing.assert_array_equal(used, np.float32(expected))


@pytest.mark.parametrize("args, error", [
    ((0.0, 4), ValueError), ((float("nan"), 4), ValueError), ((0.1, -1), ValueError),
    ((0.1, 2.5), TypeError), ((0.1, 4, 10), ValueError), ((0.1, 4, None, "linear"), ValueError),
    ((0.1, 4, 4, "cosine"), ValueError), ((0.1, 4, 10, "exponential"), ValueError),
])
def test_bad_arguments(backend, args, error):
    with pytest.raises(error):
        backend.warmup_schedule(*args)


def test_bad_step():
    schedule = ct.warmup_schedule(PEAK, WARMUP)
    with pytest.raises(ValueError, match="step"):
        schedule(-1)
    with pytest.raises(TypeError, match="step"):
        schedule(1.5)
