"""Persistent masks and gradual pruning under data parallelism (issue 12): DDP (2 gloo
processes, ``keep_masks_after_step`` on each worker's optimizer) and MirroredStrategy
(2 logical CPU devices, Keras ``fit`` with the ``GradualPruning`` callback).

Oracles: every replica holds the same weights, exactly; the pruned entries are exactly zero
in every replica and the final sparsity is the schedule's; the weights equal one process
running ``prune_gradually`` on the whole batch (the same sums in another order: float32
roundings, compared with ``assert_arrays_close``, rtol 1e-5); the two frameworks agree.
Momentum 0.9 makes a mask that let momentum through show: the pruned weights would move.
"""

import numpy as np
import pytest

from companion import tensorflow as ctf
from companion import torch as ct
from numpy_reference import assert_arrays_close

SIZES = [6, 16, 4]
BATCH, STEPS, LR, MOMENTUM = 16, 12, 0.1, 0.9
FINAL = 0.8
RNG = np.random.default_rng(12)
X = RNG.standard_normal((BATCH, SIZES[0])).astype(np.float32)
Y = RNG.integers(0, SIZES[-1], BATCH)
WEIGHTS = ct.get_weights(ct.mlp(SIZES, seed=3))
BACKENDS = {"torch": ct, "tensorflow": ctf}


def schedule(step):
    """Prunes at steps 2, 6 and 10."""
    return ct.polynomial_decay(step, 0.0, FINAL, begin_step=2, end_step=10, frequency=4)


@pytest.fixture(scope="module")
def runs():
    return {name: backend.data_parallel_pruning(WEIGHTS, SIZES, X, Y, lr=LR,
                                                schedule=schedule, steps=STEPS,
                                                momentum=MOMENTUM, workers=2)
            for name, backend in BACKENDS.items()}


@pytest.mark.parametrize("name", BACKENDS)
def test_every_replica_holds_the_same_masked_weights(runs, name):
    run = runs[name]
    assert len(run.replicas) == 2
    assert run.steps == [2, 6, 10]
    for mine, theirs in zip(*run.replicas, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    kernels = [w for w in run.replicas[0] if w.ndim == 2]
    pruned = sum(int((w == 0).sum()) for w in kernels)
    assert pruned == round(FINAL * sum(w.size for w in kernels))


@pytest.mark.parametrize("name", BACKENDS)
def test_data_parallel_pruning_is_single_process_gradual_pruning(runs, name):
    backend = BACKENDS[name]
    model = backend.mlp(SIZES, seed=0)
    backend.set_weights(model, WEIGHTS)
    reference = backend.prune_gradually(model, X, Y, "magnitude", schedule, epochs=STEPS,
                                        lr=LR, batch_size=BATCH, momentum=MOMENTUM,
                                        progress=False)
    assert reference.steps == runs[name].steps
    for mine, theirs in zip(runs[name].replicas[0], backend.get_weights(model), strict=True):
        np.testing.assert_array_equal(mine == 0, theirs == 0)
        assert_arrays_close(mine, theirs)


def test_both_frameworks_prune_and_train_alike(runs):
    for mine, theirs in zip(runs["torch"].replicas[0], runs["tensorflow"].replicas[0],
                            strict=True):
        np.testing.assert_array_equal(mine == 0, theirs == 0)
        assert_arrays_close(mine, theirs)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("change, error, message", [
    (dict(schedule=lambda t: (False, 0.5)), ValueError, "never prunes"),
    (dict(momentum=1.0), ValueError, "momentum"),
    (dict(momentum="0.9"), TypeError, "momentum"),
    (dict(steps=0), ValueError, "steps"),
    (dict(x=X[:15], y=Y[:15]), ValueError, "equal shards"),
])
def test_bad_arguments_raise_before_any_process_starts(name, change, error, message,
                                                       monkeypatch):
    backend = BACKENDS[name]
    distributed = __import__(f"companion.{name}.distributed", fromlist=["_"])
    monkeypatch.setattr(distributed, "run_worker_processes", None)  # calling it would fail
    arguments = dict(weights=WEIGHTS, sizes=SIZES, x=X, y=Y, lr=LR, schedule=schedule,
                     steps=STEPS)
    arguments.update(change)
    with pytest.raises(error, match=message):
        backend.data_parallel_pruning(**arguments)
