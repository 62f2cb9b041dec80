"""Gradual pruning while training (``prune_gradually``, Keras ``GradualPruning``) and what
the pruned weights cost to store (``compressed_size``), in both back ends.

Oracles: the schedule's own steps and sparsities (``pruning_steps``), exact counts
``round(s * n)``, ``torch.nn.utils.prune`` (``l1_unstructured`` per layer,
``global_unstructured`` across layers) applied to the weights the criterion saw at the last
pruning step, the other back end (same seed, same data), and ``scipy.sparse.csr_matrix``'s
``data``, ``indices`` and ``indptr`` arrays for the byte counts.
"""

import keras
import numpy as np
import pytest
import scipy.sparse
import torch
from torch.nn.utils import prune as torch_prune

from companion import tensorflow as ctf
from companion import torch as ct
from numpy_reference import assert_arrays_close, assert_weights_equal

SIZES = [6, 16, 4]
N, BATCH, EPOCHS = 64, 8, 2
STEPS = EPOCHS * N // BATCH  # 16
CRITERIA = ["magnitude", "random", "gradient", "snip", "taylor"] + (
    ["obd"] if hasattr(ct, "obd_scores") and hasattr(ctf, "obd_scores") else [])


def problem(n: int = N):
    rng = np.random.default_rng(21)
    return rng.standard_normal((n, SIZES[0])).astype(np.float32), rng.integers(0, 4, n)


def schedule_for(backend, final: float = 0.8):
    """Prunes at steps 2, 6, 10 and 14 (end - begin is a multiple of frequency)."""
    return lambda t: backend.polynomial_decay(t, 0.0, final, begin_step=2, end_step=14,
                                              frequency=4)


class ZeroRecorder:
    """A ``monitor`` that notes which weights are exactly zero at every step.

    ``train`` calls ``record`` after the step's pruning and gradient, before its update.
    """

    def __init__(self, backend, model, eligible):
        self.backend, self.model, self.eligible = backend, model, eligible
        self.zeros = []

    def record(self, step, grads):
        assert step == len(self.zeros)
        weights = self.backend.get_weights(self.model)
        self.zeros.append([w == 0 for w, ok in zip(weights, self.eligible) if ok])


def expected_counts(sparsity, sizes, scope):
    if scope == "global":
        return [round(sparsity * sum(sizes))]
    return [round(sparsity * n) for n in sizes]


def counts(zeros, scope):
    per_tensor = [int(z.sum()) for z in zeros]
    return [sum(per_tensor)] if scope == "global" else per_tensor


def eligible_of(model, backend, prune_biases=False):
    return [prune_biases or w.ndim >= 2 for w in backend.get_weights(model)]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_reaches_final_sparsity_and_pruned_weights_stay_zero(backend, criterion):
    x, y = problem()
    model = backend.mlp(SIZES, seed=22)
    eligible = eligible_of(model, backend)
    recorder = ZeroRecorder(backend, model, eligible)
    schedule = schedule_for(backend)
    result = backend.prune_gradually(model, x, y, criterion, schedule, EPOCHS, lr=0.1,
                                     batch_size=BATCH, momentum=0.9, monitor=recorder,
                                     progress=False)
    plan = backend.pruning_steps(schedule, STEPS)
    assert result.steps == [t for t, _ in plan] == [2, 6, 10, 14]
    assert result.sparsities == [s for _, s in plan]
    assert len(result.history) == STEPS == len(recorder.zeros)
    sizes = [w.size for w, ok in zip(backend.get_weights(model), eligible) if ok]
    for t in range(STEPS):  # batch t is tfmot's step t + 1
        now = recorder.zeros[t]
        if t + 1 in dict(plan):  # exactly round(s_t * n) pruned at a pruning step
            assert counts(now, "global") == expected_counts(dict(plan)[t + 1], sizes,
                                                            "global")
        elif t > 0:  # nothing changes between pruning steps
            for before, after in zip(recorder.zeros[t - 1], now):
                np.testing.assert_array_equal(before, after)
        if t > 0:  # masks only grow: a pruned weight stays pruned
            assert all(np.all(after[before]) for before, after in zip(recorder.zeros[t - 1],
                                                                      now))
    # At the end: exactly the final sparsity, and zeros exactly where the masks prune.
    masks = backend.to_canonical(model, result.masks)
    weights = backend.get_weights(model)
    assert [m is not None for m in masks] == eligible
    for w, m in zip(weights, masks):
        if m is not None:
            np.testing.assert_array_equal(w == 0, m == 0)
    assert sum(int((m == 0).sum()) for m in masks if m is not None) == round(0.8 * sum(sizes))
    assert result.pruned[-1] == pytest.approx(round(0.8 * sum(sizes)) / sum(sizes))
    assert backend.sparsity_report(model).weights == pytest.approx(result.pruned[-1])


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_last_magnitude_masks_equal_torch_prune(backend, scope):
    """At the last pruning step, the masks are torch.nn.utils.prune's on the weights the
    criterion saw (pruned ones among them are zero, so they are the smallest)."""
    x, y = problem()
    model = backend.mlp(SIZES, seed=23)
    seen = []

    def magnitude(m):
        seen.append(backend.get_weights(m))
        return backend.magnitude_scores(m)

    result = backend.prune_gradually(model, x, y, magnitude, schedule_for(backend, 0.7),
                                     EPOCHS, lr=0.1, batch_size=BATCH, scope=scope,
                                     progress=False)
    assert len(seen) == len(result.steps) == 4
    layers = []
    for weight in seen[-1]:
        if weight.ndim == 2:
            layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                layer.weight.copy_(torch.as_tensor(weight))
            layers.append(layer)
            if scope == "layer":
                torch_prune.l1_unstructured(layer, "weight", amount=0.7)
    if scope == "global":
        torch_prune.global_unstructured([(layer, "weight") for layer in layers],
                                        pruning_method=torch_prune.L1Unstructured,
                                        amount=0.7)
    ours = [m for m in backend.to_canonical(model, result.masks) if m is not None]
    assert len(ours) == len(layers) == 2
    for mask, layer in zip(ours, layers):
        np.testing.assert_array_equal(mask, layer.weight_mask.numpy())
    # The weights seen at each pruning step have zeros exactly where earlier steps pruned.
    zeros = [sum(int((w == 0).sum()) for w in weights if w.ndim == 2) for weights in seen]
    assert zeros == [0] + [round(s * 160) if scope == "global" else
                           round(s * 96) + round(s * 64) for s in result.sparsities[:-1]]


def test_constant_sparsity_prunes_once_then_keeps_the_masks(backend):
    """Pruning again at the same sparsity prunes nothing more: the first masks, which are
    the one-shot masks of the initial weights, stay."""
    x, y = problem()
    model = backend.mlp(SIZES, seed=24)
    one_shot = backend.to_canonical(model, backend.masks_from_scores(
        model, backend.magnitude_scores(model), 0.5, "layer"))
    result = backend.prune_gradually(
        model, x, y, "magnitude",
        lambda t: backend.constant_sparsity(t, 0.5, begin_step=1, frequency=5),
        EPOCHS, lr=0.1, batch_size=BATCH, scope="layer", progress=False)
    assert result.steps == [1, 6, 11, 16] and result.pruned == [0.5] * 4
    np.testing.assert_equal(backend.to_canonical(model, result.masks), one_shot)


def test_prune_biases(backend):
    x, y = problem()
    model = backend.mlp(SIZES, seed=25)
    result = backend.prune_gradually(model, x, y, "magnitude", schedule_for(backend, 0.5),
                                     EPOCHS, lr=0.1, batch_size=BATCH, scope="layer",
                                     prune_biases=True, progress=False)
    masks = backend.to_canonical(model, result.masks)
    assert all(m is not None for m in masks)
    assert [int((m == 0).sum()) for m in masks] == [round(0.5 * m.size) for m in masks]


@pytest.mark.parametrize("criterion", ["magnitude", "snip", "random"])
def test_gradual_pruning_agrees_across_back_ends(criterion):
    x, y = problem()
    runs = []
    for backend in (ct, ctf):
        model = backend.mlp(SIZES, seed=26)
        result = backend.prune_gradually(model, x, y, criterion, schedule_for(backend),
                                         EPOCHS, lr=0.1, batch_size=BATCH, momentum=0.9,
                                         progress=False, seed=3)
        runs.append((result, backend.to_canonical(model, result.masks),
                     backend.get_weights(model)))
    (a, a_masks, a_weights), (b, b_masks, b_weights) = runs
    assert (a.steps, a.sparsities, a.pruned) == (b.steps, b.sparsities, b.pruned)
    for m, n in zip(a_masks, b_masks):
        assert (m is None and n is None) or np.array_equal(m, n)
    assert_arrays_close(a_weights, b_weights, rtol=1e-4, atol_factor=1e-5)
    assert_arrays_close([np.array(a.history.loss)], [np.array(b.history.loss)], rtol=1e-4)


def keras_model(seed):
    model = ctf.mlp(SIZES, seed=seed)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("criterion", ["magnitude", "snip"])
def test_keras_callback_reaches_final_sparsity_and_masks_persist(criterion):
    x, y = problem()
    model = keras_model(27)
    schedule = schedule_for(ctf)
    pruning = ctf.GradualPruning(criterion, schedule, x, y)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
              callbacks=[pruning])
    assert pruning.steps == [2, 6]
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
              callbacks=[pruning])  # goes on from the optimizer's iteration count
    plan = ctf.pruning_steps(schedule, STEPS)
    assert pruning.steps == [t for t, _ in plan] and pruning.sparsities == [s for _, s in plan]
    masks = ctf.to_canonical(model, pruning.masks)
    weights = ctf.get_weights(model)
    assert [m is None for m in masks] == [w.ndim < 2 for w in weights]
    for w, m in zip(weights, masks):
        if m is not None:
            np.testing.assert_array_equal(w == 0, m == 0)
    assert sum(int((m == 0).sum()) for m in masks if m is not None) == round(0.8 * 160)


def test_keras_callback_masks_only_grow():
    """The criterion sees the weights at each pruning step: earlier prunes are zeros, and
    the step is the optimizer's iteration count plus one (tfmot's count)."""
    x, y = problem()
    model = keras_model(28)
    seen = []

    def random_scores(m):
        seen.append((int(m.optimizer.iterations.numpy()), ctf.get_weights(m)))
        return ctf.random_scores(m, seed=len(seen))

    pruning = ctf.GradualPruning(random_scores, schedule_for(ctf), scope="layer")
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=[pruning])
    assert [step + 1 for step, _ in seen] == pruning.steps == [2, 6, 10, 14]
    final = [m == 0 for m in ctf.to_canonical(model, pruning.masks) if m is not None]
    history = [[w == 0 for w in weights if w.ndim == 2] for _, weights in seen] + [final]
    for before, after in zip(history, history[1:]):
        assert all(np.all(a[b]) for b, a in zip(before, after))
    assert [int(z.sum()) for z in final] == [round(0.8 * 96), round(0.8 * 64)]


@pytest.mark.parametrize("bad, error, message", [
    (dict(schedule=lambda t: ct.polynomial_decay(t, 0.0, 1.0, 0, 8, frequency=2)),
     ValueError, "sparsity must be in \\[0, 1\\)"),
    (dict(schedule=lambda t: ct.polynomial_decay(t, 0.0, 0.5, 8, 4, frequency=2)),
     ValueError, "end_step must be >= begin_step"),
    (dict(schedule=lambda t: ct.polynomial_decay(t, 0.0, 0.5, 0, 8, frequency=0)),
     ValueError, "frequency must be an integer >= 1"),
    (dict(schedule=lambda t: ct.polynomial_decay(t, 0.6, 0.5, 0, 8, frequency=2)),
     ValueError, "must not exceed final_sparsity"),
    (dict(schedule=lambda t: ct.constant_sparsity(t, 0.5, 4, 2)), ValueError,
     "end_step must be >= begin_step"),
    (dict(schedule=0.5), TypeError, "schedule must be a function"),
    (dict(criterion="hessian"), ValueError, "unknown criterion 'hessian'"),
    (dict(criterion=3), TypeError, "criterion must be a name"),
    (dict(scope="row"), ValueError, "unknown scope 'row'"),
    (dict(lr=-1.0), ValueError, "lr must be a finite number > 0"),
    (dict(epochs=0), ValueError, "epochs must be an integer >= 1"),
])
def test_bad_input_raises_and_changes_nothing(backend, bad, error, message):
    x, y = problem()
    model = backend.mlp(SIZES, seed=29)
    before = backend.get_weights(model)
    kwargs = dict(criterion="magnitude", schedule=schedule_for(backend), epochs=1, lr=0.1,
                  batch_size=BATCH, progress=False) | bad
    with pytest.raises(error, match=message):
        backend.prune_gradually(model, x, y, **kwargs)
    assert_weights_equal(before, backend.get_weights(model))


@pytest.mark.parametrize("args, kwargs, error, message", [
    (("snip", schedule_for(ctf)), {}, ValueError, "criterion 'snip' scores weights on data"),
    (("magnitude", lambda t: ct.polynomial_decay(t, 0.0, 1.0, 0, 8)), {}, ValueError,
     "sparsity must be in"),
    (("magnitude", schedule_for(ctf)), dict(scope="row"), ValueError, "unknown scope"),
    ((len, schedule_for(ctf)), dict(loss="hinge"), ValueError, "unknown loss 'hinge'"),
])
def test_keras_callback_rejects_bad_input_when_made(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        ctf.GradualPruning(*args, **kwargs)


def test_keras_callback_checks_every_step_of_a_fit_before_training():
    """A schedule that goes bad at step 11 stops ``fit`` before the first batch."""
    x, y = problem()
    model = keras_model(28)
    before = ctf.get_weights(model)

    def schedule(t):
        return ct.polynomial_decay(t, 0.0, 1.0 if t >= 11 else 0.5, 0, 16, frequency=4)

    pruning = ctf.GradualPruning("magnitude", schedule)
    with pytest.raises(ValueError, match="sparsity must be in"):
        model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=[pruning])
    assert pruning.steps == [] and int(model.optimizer.iterations.numpy()) == 0
    for mine, theirs in zip(ctf.get_weights(model), before, strict=True):
        np.testing.assert_array_equal(mine, theirs)


# --------------------------------------------------------------------------- compressed size


def scipy_csr_bytes(weight, index_dtype):
    """Bytes of scipy's CSR arrays with values in the weight's dtype and the given (or, for
    row pointers that need it, a wider) unsigned index dtype; casts must be lossless."""
    matrix = scipy.sparse.csr_matrix(weight.reshape(weight.shape[0], -1))
    assert matrix.data.dtype == weight.dtype
    indices = matrix.indices.astype(index_dtype)
    assert np.array_equal(indices, matrix.indices)
    pointer_dtype = next(d for d in (np.uint8, np.uint16, np.uint32, np.uint64)
                         if np.dtype(d).itemsize >= np.dtype(index_dtype).itemsize
                         and matrix.nnz <= np.iinfo(d).max)
    indptr = matrix.indptr.astype(pointer_dtype)
    assert np.array_equal(indptr, matrix.indptr)
    return matrix.data.nbytes + indices.nbytes + indptr.nbytes


@pytest.mark.parametrize("index_bits, dtype", [(8, np.uint8), (16, np.uint16),
                                               (32, np.uint32), (64, np.uint64)])
def test_compressed_size_matches_scipy_csr(backend, index_bits, dtype):
    model = backend.mlp([6, 40, 30, 4], seed=30)
    backend.prune(model, backend.magnitude_scores(model), 0.75, scope="layer")
    record = backend.compressed_size(model, index_bits=index_bits)
    weights = backend.get_weights(model)
    assert [r.name for r in record.rows] == backend.parameter_names(model)
    for row, weight in zip(record.rows, weights):
        assert row.dense_bytes == weight.nbytes and row.shape == weight.shape
        assert row.nonzeros == np.count_nonzero(weight)
        expected = scipy_csr_bytes(weight, dtype) if weight.ndim >= 2 else weight.nbytes
        assert row.sparse_bytes == expected, row.name
    assert record.dense_bytes == sum(w.nbytes for w in weights)
    assert record.sparse_bytes == sum(r.sparse_bytes for r in record.rows)
    assert record.ratio == record.dense_bytes / record.sparse_bytes
    # dense1.weight is 30 x 40 with 300 non-zeros: 8-bit row pointers cannot hold 300.
    assert record.rows[2].pointer_bits == max(index_bits, 16)
    text = str(record)
    assert f"dense / sparse = {record.ratio:.2f}" in text
    assert f"{record.dense_bytes:>10}{record.sparse_bytes:>10}" in text


def test_compressed_size_hand_worked(backend):
    """A 2x4 weight with 3 non-zeros, 16-bit indices: 3*4 + 3*2 + 3*2 = 24 bytes (dense 32);
    the bias (2 float32) is stored dense in both: 8 bytes."""
    model = backend.mlp([4, 2], activation="linear")
    weight = np.array([[0.5, 0.0, 0.0, 2.0], [0.0, 0.0, -1.0, 0.0]], np.float32)
    backend.set_weights(model, [weight, np.zeros(2, np.float32)])
    record = backend.compressed_size(model, index_bits=16)
    assert (record.dense_bytes, record.sparse_bytes) == (40, 32)
    assert record.rows[0].sparse_bytes == scipy_csr_bytes(weight, np.uint16) == 24
    assert record.ratio == 40 / 32


def test_compressed_size_agrees_across_back_ends():
    records = []
    for backend in (ct, ctf):
        model = backend.mlp([6, 40, 30, 4], seed=31)
        backend.prune(model, backend.magnitude_scores(model), 0.8)
        records.append(backend.compressed_size(model, index_bits=8))
    assert records[0] == records[1]


def test_csr_bytes_of_a_kernel_with_three_dimensions(rng):
    """(out, in, k) is a matrix of out rows and in * k columns."""
    from companion.core.pruning import csr_bytes

    kernel = rng.standard_normal((5, 3, 4)).astype(np.float32)
    kernel[rng.random(kernel.shape) < 0.6] = 0
    assert csr_bytes("conv.weight", kernel, 8).sparse_bytes == scipy_csr_bytes(kernel, np.uint8)
    assert csr_bytes("conv.weight", kernel.astype(np.float64), 32).sparse_bytes == (
        scipy_csr_bytes(kernel.astype(np.float64), np.uint32))


@pytest.mark.parametrize("index_bits, message", [
    (8, "dense0.weight has 300 columns: 8-bit column indices address at most 256; "
        "use index_bits=16 or more"),
    (12, "unknown index_bits 12; allowed: 8, 16, 32, 64"),
    (True, "unknown index_bits True"),
])
def test_compressed_size_rejects_indices_that_cannot_address_the_columns(backend, index_bits,
                                                                        message):
    model = backend.mlp([300, 2], seed=32)
    with pytest.raises(ValueError, match=message):
        backend.compressed_size(model, index_bits=index_bits)
    assert backend.compressed_size(model, index_bits=16).rows[0].index_bytes == 600 * 2
    backend.compressed_size(backend.mlp([256, 2], seed=32), index_bits=8)  # 256 fit in 8 bits


def tfmot_mask_update_steps(schedule, batches, iterations=0):
    """The steps at which tfmot updates the masks in ``batches`` batches of ``fit``.

    Transcribed from tensorflow/model-optimization, ``sparsity/keras/pruning_callbacks.py``
    (``UpdatePruningStep.on_train_batch_begin`` assigns ``pruning_step = iterations``,
    counted from ``optimizer.iterations`` at ``on_train_begin``) and ``pruning_wrapper.py``
    (``PruneLowMagnitude.call`` runs ``pruning_step += 1`` and then
    ``conditional_mask_update``, which prunes when the schedule says so at ``pruning_step``).
    """
    steps = []
    for batch in range(batches):
        pruning_step = iterations + batch  # UpdatePruningStep
        pruning_step += 1                  # pruning_wrapper's increment_step
        if schedule(pruning_step)[0]:      # conditional_mask_update
            steps.append(pruning_step)
    return steps


@pytest.mark.parametrize("frequency", [1, 4, 5])
def test_steps_are_counted_as_tfmot_counts_them(backend, frequency):
    """Training exactly end_step steps reaches the final sparsity, as in tfmot."""
    x, y = problem()
    model = backend.mlp(SIZES, seed=29)
    schedule = lambda t: backend.polynomial_decay(
        t, 0.0, 0.6, begin_step=STEPS - 3 * frequency, end_step=STEPS, frequency=frequency)
    result = backend.prune_gradually(model, x, y, "magnitude", schedule, EPOCHS, lr=0.1,
                                     batch_size=BATCH, progress=False)
    assert result.steps == tfmot_mask_update_steps(schedule, STEPS)
    assert result.steps[-1] == STEPS and result.sparsities[-1] == pytest.approx(0.6)
    assert result.pruned[-1] == round(0.6 * 160) / 160


def test_keras_callback_counts_steps_as_tfmot():
    x, y = problem()
    model = keras_model(30)
    schedule = lambda t: ctf.polynomial_decay(t, 0.0, 0.6, begin_step=0, end_step=STEPS,
                                              frequency=4)
    pruning = ctf.GradualPruning("magnitude", schedule)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
              callbacks=[pruning])
    assert pruning.steps == tfmot_mask_update_steps(schedule, STEPS // 2) == [4, 8]
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
              callbacks=[pruning])
    assert pruning.steps == tfmot_mask_update_steps(schedule, STEPS) == [4, 8, 12, 16]
    assert pruning.pruned[-1] == round(0.6 * 160) / 160
