"""Clipping on sparse gradients and at zero (issue 12).

* ``tf.IndexedSlices`` (an ``Embedding``'s gradient) stay sparse through every clipping
  function, with or without ``dense_shape``; the norm is that of the gradient (repeated
  rows summed), the oracle being the same clip of the dense gradient.
* The clipping functions are differentiable at a zero gradient, with the derivative of the
  framework's own clip op there (the identity: below the threshold nothing is scaled), the
  same in both back ends; TensorFlow's norm would otherwise give ``nan``.
"""

import numpy as np
import pytest
import tensorflow as tf
import torch

from companion import tensorflow as ctf
from companion import torch as ct

ROWS = tf.constant([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]])
INDICES = tf.constant([0, 2, 0])  # row 0 twice: the dense gradient's row 0 is the sum


def slices(dense_shape=(4, 2)):
    return tf.IndexedSlices(ROWS, INDICES, None if dense_shape is None
                            else tf.constant(dense_shape))


def dense():
    return tf.math.unsorted_segment_sum(ROWS, INDICES, 4)


@pytest.mark.parametrize("dense_shape", [(4, 2), None])
def test_sparse_gradients_stay_sparse_and_clip_as_the_dense_ones(dense_shape):
    other = tf.constant([0.5, -0.5])
    grads = [slices(dense_shape), other]
    clipped, norm = ctf.clip_by_global_norm(grads, 1.0)
    expected, expected_norm = tf.clip_by_global_norm([dense(), other], 1.0)
    assert isinstance(clipped[0], tf.IndexedSlices)
    assert float(norm) == pytest.approx(float(expected_norm), rel=1e-6)  # ours in float64
    summed = tf.math.unsorted_segment_sum(clipped[0].values, clipped[0].indices, 4)
    np.testing.assert_allclose(summed, expected[0], rtol=1e-6)
    by_norm = ctf.clip_by_norm([slices(dense_shape)], 1.0)[0]
    assert isinstance(by_norm, tf.IndexedSlices)
    np.testing.assert_allclose(
        tf.math.unsorted_segment_sum(by_norm.values, by_norm.indices, 4),
        tf.clip_by_norm(dense(), 1.0), rtol=1e-6)
    by_value = ctf.clip_by_value([slices(dense_shape)], 1.5)[0]
    assert isinstance(by_value, tf.IndexedSlices)
    np.testing.assert_allclose(
        tf.math.unsorted_segment_sum(by_value.values, by_value.indices, 4),
        tf.clip_by_value(dense(), -1.5, 1.5), rtol=1e-6)


def test_the_clipping_derivative_at_zero_is_the_frameworks_own():
    zero = tf.zeros([3])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(zero)
        ours_norm = ctf.clip_by_norm([zero], 1.0)[0]
        ours_global = ctf.clip_by_global_norm([zero], 1.0)[0][0]
        theirs = tf.clip_by_norm(zero, 1.0)
    for ours in (ours_norm, ours_global):
        jacobian = tape.jacobian(ours, zero)
        assert np.all(np.isfinite(jacobian))
        np.testing.assert_array_equal(jacobian, tape.jacobian(theirs, zero))
    torch_zero = torch.zeros(3, requires_grad=True)
    for clip in (lambda g: ct.clip_by_norm([g], 1.0)[0],
                 lambda g: ct.clip_by_global_norm([g], 1.0)[0][0]):
        jacobian = torch.autograd.functional.jacobian(clip, torch_zero)
        np.testing.assert_array_equal(jacobian.numpy(), tape.jacobian(theirs, zero))
