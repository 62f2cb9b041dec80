"""The clipping fast paths against the exact ones (issue 13).

``total_norm`` first computes the norm in the gradients' own dtype with the library's
helper (``torch.nn.utils.get_total_norm``, ``tf.linalg.global_norm``) and falls back to
float64 only when that result is not finite or may have underflowed; ``clip_grads_``
scales the gradients in place. Oracles: the float64 norm of NumPy, and
``clip_by_global_norm`` (which returns new tensors).
"""

import numpy as np
import pytest
import tensorflow as tf
import torch

from companion import tensorflow as ctf
from companion import torch as ct
from companion.core.clipping import Clip

RNG = np.random.default_rng(3)


def arrays(scale):
    return [scale * RNG.standard_normal(shape).astype(np.float32)
            for shape in ((64, 32), (32,), (10, 64), (10,))]


def exact(values):
    return float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in values)))


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e25, 1e-25, 0.0])
def test_the_norm_in_float32_or_its_float64_fallback_is_the_exact_norm(scale):
    values = arrays(scale)
    expected = exact(values)
    for backend, convert in ((ct, torch.from_numpy), (ctf, tf.constant)):
        norm = float(backend.total_norm([convert(v) for v in values]))
        # float32 rounding on the fast path; the fallback is exact to float64
        assert norm == pytest.approx(expected, rel=1e-6, abs=0), (backend.__name__, scale)


def test_clip_grads_in_place_equals_clip_by_global_norm():
    model = ct.mlp([6, 16, 4], seed=0)
    x, y = RNG.standard_normal((32, 6)).astype(np.float32), RNG.integers(0, 4, 32)
    torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    params = list(model.parameters())
    before = [p.grad.clone() for p in params]
    storage = [p.grad.data_ptr() for p in params]
    expected, _ = ct.clip_by_global_norm(before, 0.05)
    ct.clip_grads_(model, Clip("global_norm", 0.05))
    assert [p.grad.data_ptr() for p in params] == storage  # in place
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=0)
