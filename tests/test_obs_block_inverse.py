"""The block Fisher inverse by matrix products (issue 13) against the Woodbury updates and
a dense inverse: the same matrix ``(damping I + G_b^T G_b / N)^-1`` for every block."""

import numpy as np
import pytest

from companion.core import obs as core_obs


@pytest.mark.parametrize("n, block, dtype", [(30, 8, np.float64), (30, 8, np.float32),
                                             (24, 24, np.float64)])
def test_block_fisher_inverse_equals_woodbury_and_the_dense_inverse(n, block, dtype):
    rng = np.random.default_rng(2)
    g = rng.standard_normal((40, n)).astype(dtype)
    chunks = [g[:7], g[7:30], g[30:]]
    damping = 0.05
    ours = core_obs.block_fisher_inverse(chunks, n, 40, block, damping)
    woodbury = core_obs.woodbury_block_inverse(chunks, n, 40, block, damping)
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(ours, woodbury, rtol=rtol, atol=rtol * 1 / damping)
    padded = np.concatenate([g.astype(np.float64), np.zeros((40, len(ours) * block - n))], 1)
    for b, inverse in enumerate(ours):
        columns = padded[:, b * block:(b + 1) * block]
        dense = np.linalg.inv(damping * np.eye(block) + columns.T @ columns / 40)
        np.testing.assert_allclose(inverse, dense, rtol=rtol, atol=rtol / damping)


def test_block_fisher_inverse_refuses_what_woodbury_refuses():
    g = np.ones((4, 6))
    with pytest.raises(ValueError, match="nan or inf"):
        core_obs.block_fisher_inverse([np.full((4, 6), np.nan)], 6, 4, 3, 0.1)
    with pytest.raises(ValueError, match="hold 4 examples"):
        core_obs.block_fisher_inverse([g], 6, 5, 3, 0.1)
    with pytest.raises(ValueError, match="shape"):
        core_obs.block_fisher_inverse([g], 5, 4, 3, 0.1)


def test_the_back_ends_batched_products_equal_the_numpy_reference():
    import tensorflow as tf
    import torch

    from companion.tensorflow import obs as tf_obs
    from companion.torch import obs as torch_obs

    chunk = np.random.default_rng(4).standard_normal((9, 30)).astype(np.float32)
    expected, count = core_obs.gram_blocks(chunk, 4, 8)  # 30 weights padded to 32
    for gram, convert in ((torch_obs._gram, torch.from_numpy), (tf_obs._gram, tf.constant)):
        sums, k = gram(convert(chunk), 4, 8)
        assert k == count == 9
        np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-5)
