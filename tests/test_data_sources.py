"""Data sources and loss functions (issue 12): every function that takes ``(x, y)`` also
takes a source of ``(x, y)`` batches (a ``DataLoader``, a ``tf.data.Dataset``, any
re-iterable object) and a loss given as a function, in each framework's own order.

Oracles: the same function on the arrays (a mean over the data set does not depend on
how it is batched), and the framework's own loss on the whole arrays.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from companion import tensorflow as ctf
from companion.core.batches import minibatches
from companion import torch as ct

RNG = np.random.default_rng(5)
X = RNG.standard_normal((70, 6)).astype(np.float32)
LABELS = RNG.integers(0, 3, 70)
TARGETS = RNG.standard_normal((70, 3)).astype(np.float32)
SIZES = [6, 8, 3]


class Batches:
    """A re-iterable source of one's own: ``iter()`` starts a new pass."""

    def __init__(self, x, y, size):
        self.x, self.y, self.size = x, y, size

    def __iter__(self):
        for start in range(0, len(self.x), self.size):
            yield self.x[start:start + self.size], self.y[start:start + self.size]


def torch_loader(y, size=32):
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    return torch.utils.data.DataLoader(dataset, batch_size=size)


def tf_dataset(y, size=32):
    return tf.data.Dataset.from_tensor_slices((X, y)).batch(size)


SOURCES = {
    "torch": (ct, torch_loader),
    "tensorflow": (ctf, tf_dataset),
}


def numpy(values):
    if isinstance(values, (list, tuple)):
        return [numpy(v) for v in values]
    if isinstance(values, torch.Tensor):
        return values.detach().numpy()
    return np.asarray(values)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    for a, e in zip(numpy(actual), numpy(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("framework", SOURCES)
@pytest.mark.parametrize("make_source", ["framework", "own"])
def test_a_source_gives_the_arrays_numbers(framework, make_source):
    backend, framework_source = SOURCES[framework]
    model = backend.mlp(SIZES, seed=1)
    source = (framework_source(LABELS) if make_source == "framework"
              else Batches(X, LABELS, 32))
    np.testing.assert_allclose(numpy(backend.loss_value(model, source)),
                               numpy(backend.loss_value(model, X, LABELS)), rtol=1e-6)
    assert_close(backend.gradients(model, source), backend.gradients(model, X, LABELS))
    np.testing.assert_allclose(backend.input_gradients(model, source),
                               backend.input_gradients(model, X, LABELS), rtol=1e-5, atol=1e-9)
    assert backend.evaluate(model, source) == pytest.approx(backend.evaluate(model, X, LABELS))
    np.testing.assert_allclose(backend.predict(model, source), backend.predict(model, X),
                               rtol=1e-6)
    assert_close(backend.gradient_scores(model, source),
                 backend.gradient_scores(model, X, LABELS))
    assert_close(backend.snip_scores(model, source), backend.snip_scores(model, X, LABELS))
    # Taylor scores average over minibatches: the source's batches are the minibatches.
    assert_close(backend.taylor_scores(model, source),
                 backend.taylor_scores(model, X, LABELS, batch_size=32))


def test_loss_functions_in_each_frameworks_order_equal_the_named_losses():
    torch_model, keras_model = ct.mlp(SIZES, seed=2), ctf.mlp(SIZES, seed=2)
    named = ct.loss_value(torch_model, X, LABELS)
    np.testing.assert_allclose(
        numpy(ct.loss_value(torch_model, X, LABELS, loss=torch.nn.CrossEntropyLoss())),
        numpy(named), rtol=1e-6)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(
        numpy(ctf.loss_value(keras_model, X, LABELS, loss=cross_entropy)), numpy(named),
        rtol=1e-5)
    assert_close(ct.gradients(torch_model, X, TARGETS, loss=torch.nn.MSELoss()),
                 ct.gradients(torch_model, X, TARGETS, loss="mse"))
    assert_close(ctf.gradients(keras_model, X, TARGETS, loss=keras.losses.MeanSquaredError()),
                 ctf.gradients(keras_model, X, TARGETS, loss="mse"))


def test_a_loss_of_ones_own_gives_the_same_numbers_in_both_frameworks():
    """Huber's loss (no named loss has it): PyTorch's and Keras' implementations agree, over
    arrays and over sources."""
    torch_model, keras_model = ct.mlp(SIZES, seed=3), ctf.mlp(SIZES, seed=3)
    torch_huber = torch.nn.HuberLoss(delta=0.5)
    keras_huber = keras.losses.Huber(delta=0.5)
    expected = ct.to_canonical(torch_model, ct.gradients(torch_model, X, TARGETS,
                                                         loss=torch_huber))
    from_source = ct.gradients(torch_model, torch_loader(TARGETS), loss=torch_huber)
    assert_close(ct.to_canonical(torch_model, from_source), expected)
    keras_grads = ctf.gradients(keras_model, tf_dataset(TARGETS), loss=keras_huber)
    assert_close(ctf.to_canonical(keras_model, keras_grads), expected, rtol=1e-4, atol=1e-6)
    assert ctf.evaluate(keras_model, tf_dataset(TARGETS), loss=keras_huber)["loss"] == \
        pytest.approx(ct.evaluate(torch_model, X, TARGETS, loss=torch_huber)["loss"], rel=1e-5)


def _generator(y):
    return ((X[i:i + 10], y[i:i + 10]) for i in range(0, 70, 10))


@pytest.mark.parametrize("framework", SOURCES)
def test_bad_sources_and_losses_are_refused_clearly(framework):
    backend, framework_source = SOURCES[framework]
    model = backend.mlp(SIZES, seed=4)
    before = numpy(backend.trainable_parameters(model))
    with pytest.raises(TypeError, match="one-pass iterator"):
        backend.gradients(model, _generator(LABELS))
    with pytest.raises(TypeError, match="y must be None"):
        backend.evaluate(model, framework_source(LABELS), LABELS)
    with pytest.raises(TypeError, match="y is missing"):
        backend.loss_value(model, X)
    with pytest.raises(ValueError, match="batch 0 of the data source is not a pair"):
        backend.gradient_scores(model, _Singles())
    with pytest.raises(ValueError, match="yielded no batch"):
        backend.evaluate(model, Batches(X[:0], LABELS[:0], 32))
    with pytest.raises(ValueError, match="batch 0 of the data source: .*integer class labels"):
        backend.loss_value(model, Batches(X, TARGETS, 32))
    with pytest.raises(TypeError, match="loss must be one of"):
        backend.gradients(model, X, LABELS, loss=3)
    with pytest.raises(ValueError, match="unknown loss"):
        backend.evaluate(model, X, LABELS, loss="hinge")

    def per_example(outputs_or_targets, other):
        return outputs_or_targets[:, 0] * 0

    with pytest.raises(ValueError, match="must return the mean loss"):
        backend.gradients(model, X, TARGETS, loss=per_example)
    for a, b in zip(numpy(backend.trainable_parameters(model)), before, strict=True):
        np.testing.assert_array_equal(a, b)


class _Singles:
    """A source whose batches are inputs only, not (x, y) pairs."""

    def __iter__(self):
        yield X[:10]


def test_predict_takes_a_source_of_inputs_alone():
    model = ct.mlp(SIZES, seed=6)
    np.testing.assert_allclose(ct.predict(model, _Singles()), ct.predict(model, X[:10]),
                               rtol=1e-6)
    keras_model = ctf.mlp(SIZES, seed=6)
    inputs = tf.data.Dataset.from_tensor_slices(X).batch(16)
    np.testing.assert_allclose(ctf.predict(keras_model, inputs), ctf.predict(keras_model, X),
                               rtol=1e-6)


@pytest.mark.parametrize("framework", SOURCES)
def test_curvature_reads_a_source_batch_by_batch(framework):
    """The Hessian of the mean loss is the batch-size-weighted mean of the batches'
    Hessians; every curvature function built on Hessian-vector products agrees."""
    backend, framework_source = SOURCES[framework]
    model = backend.mlp(SIZES, seed=7)
    source = framework_source(LABELS, size=24)  # batches of 24, 24 and 22
    np.testing.assert_allclose(backend.hessian(model, source),
                               backend.hessian(model, X, LABELS), rtol=1e-5, atol=1e-7)
    vectors = [np.full(tuple(p.shape), 0.5, np.float32)
               for p in backend.trainable_parameters(model)]
    assert_close(backend.hvp(model, source, None, vectors),
                 backend.hvp(model, X, LABELS, vectors))
    assert backend.hutchinson_trace(model, source, samples=4) == pytest.approx(
        backend.hutchinson_trace(model, X, LABELS, samples=4), rel=1e-5)
    assert backend.top_eigenvalue(model, source, iterations=30) == pytest.approx(
        backend.top_eigenvalue(model, X, LABELS, iterations=30), rel=1e-4)


class SeededBatches:
    """The minibatches ``train`` draws from arrays with ``seed``, as a data source of one's
    own whose every pass is the next epoch: training on it must repeat training on the
    arrays, step for step."""

    def __init__(self, x, y, size, seed, epochs):
        order = list(minibatches(len(x), size, epochs, seed))
        steps = -(-len(x) // size)
        self.epochs = [order[k * steps:(k + 1) * steps] for k in range(epochs)]
        self.x, self.y, self.passes = x, y, 0

    def __iter__(self):
        batches = self.epochs[self.passes % len(self.epochs)]
        self.passes += 1
        return iter([(self.x[i], self.y[i]) for i in batches])

    def __len__(self):
        return len(self.epochs[0])


@pytest.mark.parametrize("framework", SOURCES)
def test_training_on_a_source_repeats_training_on_the_arrays(framework):
    backend, _ = SOURCES[framework]
    settings = dict(epochs=2, lr=0.1, momentum=0.9, progress=False)
    on_arrays, on_source = backend.mlp(SIZES, seed=8), backend.mlp(SIZES, seed=8)
    history = backend.train(on_arrays, X, LABELS, batch_size=16, seed=3, **settings)
    streamed = backend.train(on_source, SeededBatches(X, LABELS, 16, 3, 2), **settings)
    np.testing.assert_allclose(streamed.loss, history.loss, rtol=1e-6)
    assert_close(backend.get_weights(on_source), backend.get_weights(on_arrays))


def framework_optimizer(framework, model):
    if framework == "torch":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)


@pytest.mark.parametrize("framework", SOURCES)
def test_train_takes_the_frameworks_own_optimizer(framework):
    backend, framework_source = SOURCES[framework]
    by_name, by_object = backend.mlp(SIZES, seed=9), backend.mlp(SIZES, seed=9)
    backend.train(by_name, X, LABELS, epochs=2, lr=0.1, momentum=0.9, batch_size=16,
                  progress=False)
    backend.train(by_object, X, LABELS, epochs=2, batch_size=16,
                  optimizer=framework_optimizer(framework, by_object), progress=False)
    assert_close(backend.get_weights(by_object), backend.get_weights(by_name))


@pytest.mark.parametrize("framework", SOURCES)
def test_bad_training_arguments_with_sources_and_optimizers(framework):
    backend, framework_source = SOURCES[framework]
    model, other = backend.mlp(SIZES, seed=10), backend.mlp(SIZES, seed=11)
    before = numpy(backend.get_weights(model))
    optimizer = framework_optimizer(framework, model)
    cases = [
        (dict(x=X, y=LABELS, batch_size=16, optimizer=optimizer, lr=0.1), ValueError,
         "holds its own learning rate"),
        (dict(x=framework_source(LABELS), lr=0.1, batch_size=16), ValueError,
         "batch_size must be None with a data source"),
        (dict(x=X, y=LABELS, lr=0.1), ValueError, "batch_size must be an integer"),
        (dict(x=X, y=LABELS, batch_size=16), ValueError, "lr is needed"),
        (dict(x=X, y=LABELS, batch_size=16, optimizer=3), TypeError, "optimizer must be"),
    ]
    for arguments, error, message in cases:
        with pytest.raises(error, match=message):
            backend.train(model, epochs=1, progress=False, **arguments)
    foreign = framework_optimizer(framework, other)
    if framework == "tensorflow":  # a Keras optimizer is tied to variables once built
        backend.train(other, X, LABELS, epochs=1, batch_size=16, optimizer=foreign,
                      progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        backend.train(model, X, LABELS, epochs=1, batch_size=16, optimizer=foreign,
                      progress=False)
    for a, b in zip(numpy(backend.get_weights(model)), before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("framework", SOURCES)
def test_gradual_pruning_on_a_source_repeats_it_on_the_arrays(framework):
    backend, _ = SOURCES[framework]

    def schedule(t):
        return backend.polynomial_decay(t, 0.0, 0.6, begin_step=1, end_step=9, frequency=4)

    settings = dict(epochs=2, lr=0.1, progress=False)
    on_arrays, on_source = backend.mlp(SIZES, seed=12), backend.mlp(SIZES, seed=12)
    # magnitude: scoring must not read the source, whose passes are the epochs here
    expected = backend.prune_gradually(on_arrays, X, LABELS, "magnitude", schedule,
                                       batch_size=16, seed=4, **settings)
    result = backend.prune_gradually(on_source, SeededBatches(X, LABELS, 16, 4, 2), None,
                                     "magnitude", schedule, **settings)
    assert result.steps == expected.steps == [1, 5, 9]
    assert_close(backend.get_weights(on_source), backend.get_weights(on_arrays))
    # a data-based criterion scores on the source too
    snip = backend.prune_gradually(backend.mlp(SIZES, seed=12), Batches(X, LABELS, 16), None,
                                   "snip", schedule, **settings)
    assert snip.steps == [1, 5, 9] and snip.pruned[-1] == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("framework", SOURCES)
@pytest.mark.parametrize("method", ["exact", "fisher", "hutchinson"])
def test_diagonals_and_obd_read_a_source(framework, method):
    backend, framework_source = SOURCES[framework]
    model = backend.mlp(SIZES, seed=13)
    settings = dict(method=method, samples=3)
    assert_close(backend.hessian_diagonal(model, framework_source(LABELS, size=24), **settings),
                 backend.hessian_diagonal(model, X, LABELS, **settings))
    assert_close(backend.obd_scores(model, framework_source(LABELS, size=24), **settings),
                 backend.obd_scores(model, X, LABELS, **settings))


@pytest.mark.parametrize("framework", SOURCES)
def test_obs_from_a_source_prunes_as_from_the_arrays(framework):
    backend, framework_source = SOURCES[framework]
    streamed, whole = backend.mlp(SIZES, seed=14), backend.mlp(SIZES, seed=14)
    masks = backend.obs_prune(streamed, framework_source(LABELS, size=24), sparsity=0.5,
                              block_size=8, batch_size=10)
    expected = backend.obs_prune(whole, X, LABELS, 0.5, block_size=8, batch_size=10)
    for mine, theirs in zip(masks, expected, strict=True):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            np.testing.assert_array_equal(numpy(mine), numpy(theirs))
    assert_close(backend.get_weights(streamed), backend.get_weights(whole), rtol=1e-4,
                 atol=1e-6)
    with pytest.raises(TypeError, match="needs sparsity"):
        backend.obs_prune(whole, X, LABELS)
