"""Clipping and gradual pruning under data parallelism, TensorFlow: ``MirroredStrategy``.

``K`` replicas each hold a copy of the model and the ``k``-th of ``K`` equal shards ``B_k``
of the batch ``B``. Replica ``k`` computes the gradient of the mean loss on its shard,
``g_k = (1/|B_k|) sum_{i in B_k} grad l_i``; the all-reduce (``MEAN``) leaves on every replica

    ``g = (1/K) sum_k g_k = (1/|B|) sum_{i in B} grad l_i``,

the gradient of the whole batch, because the shards have equal size. Where clipping happens
decides whether data parallelism still computes the single-process update:

* ``clip="after_allreduce"``: ``g <- g * c / max(||g||, c)``. ``||g||`` is the whole
  batch's norm, the same on every replica, so each replica takes the step that one process
  would take on all of ``B``.
* ``clip="per_worker"``: each replica clips its own gradient first,
  ``s_k = c / max(||g_k||, c)``, and the clipped gradients are averaged:
  ``update = (1/K) sum_k s_k g_k``. Unless every ``s_k`` is 1 (no replica clips, and then
  nothing changes) or all ``s_k`` are equal, this is in general not a multiple of ``g``:
  shards with large gradients are down-weighted against the others, and the update
  depends on how the batch was split (on ``K``). Its norm is still ``<= c`` (an average of
  vectors of norm ``<= c``), so nothing *looks* wrong. Even when ``||g|| <= c``, so that one
  process would not clip at all, a replica with ``||g_k|| > c`` changes the step.
* ``clip=None``: plain SGD on ``g``.

The step is SGD, ``w <- w - lr * update``. The replicas are ``K`` logical CPU devices of one
process. Why that process is a fresh one, started for the call: TensorFlow fixes its logical
devices when its runtime initialises (at the first op), and
``tf.config.set_logical_device_configuration`` raises afterwards. A notebook kernel or a test
process that has run any TensorFlow op can no longer split its CPU, so the strategy runs in
a new Python process that configures the devices before anything else.
"""

from __future__ import annotations

import importlib
import os
import pickle
import tempfile

import keras
import tensorflow as tf

from ..core.checks import check_positive
from ..core.distributed import (DATA_PARALLEL_CLIPS, DataParallelPruning, DataParallelStep,
                                check_data_parallel_args, check_momentum, check_pruning_plan,
                                load_data_parallel_steps, load_replicas, run_worker_processes,
                                save_data_parallel_steps, save_replicas, whole_batch_step)
from .clipping import clip_by_global_norm
from .diagnostics import total_norm
from .layout import get_weights, set_weights, to_canonical
from .models import mlp
from .schedules import GradualPruning
from .training import _mean_loss

__all__ = ["data_parallel_step", "compare_data_parallel_clipping", "single_process_step",
           "data_parallel_pruning", "DataParallelStep", "DataParallelPruning",
           "DATA_PARALLEL_CLIPS"]


def data_parallel_step(weights, sizes, x, y, *, lr: float, max_norm: float | None = None,
                       clip: str | None = "after_allreduce", workers: int = 2,
                       loss: str = "cross_entropy", activation: str = "relu",
                       timeout: float = 120.0) -> DataParallelStep:
    """One SGD step of ``mlp(sizes)`` from ``weights`` on ``(x, y)``, split over ``workers``.

    A ``tf.distribute.MirroredStrategy`` over ``workers`` logical CPU devices (in a fresh
    process, see the module docstring). Replica ``k`` gets rows ``k*n/K .. (k+1)*n/K - 1``
    of ``x`` and ``y`` and computes ``g_k``, the gradient of its shard's mean loss; the
    replica context's ``all_reduce(MEAN)`` gives ``g = (1/K) sum_k g_k``; then

    * ``"after_allreduce"``: ``update = g * c / max(||g||_2, c)``, the same as one process
      clipping the whole batch's gradient;
    * ``"per_worker"``: ``update = (1/K) sum_k g_k * c / max(||g_k||_2, c)``: each replica
      clips its own gradient, then the clipped gradients are all-reduced;
    * ``None``: ``update = g``;

    and every replica applies ``w <- w - lr * update`` to its copy of the weights.
    Clipping is :func:`~companion.tensorflow.clip_by_global_norm`, inside the replicas'
    ``tf.function``.

    Args:
        weights: canonical arrays ``[W0 (out, in), b0, W1, b1, ...]`` of ``mlp(sizes)``.
        sizes: the MLP's layer widths, e.g. ``[8, 16, 4]``.
        x, y: the batch; its size must be a multiple of ``workers``.
        lr: the SGD learning rate.
        max_norm: the clipping threshold ``c``; needed unless ``clip`` is ``None``.
        clip: ``"after_allreduce"``, ``"per_worker"`` or ``None``.
        workers: the number of replicas ``K`` (logical CPU devices).
        loss, activation: as in :func:`~companion.tensorflow.train` and :func:`mlp`.
        timeout: seconds to wait for the process before stopping it.

    Returns:
        A :class:`~companion.core.distributed.DataParallelStep`: the new weights, ``||g||`` and every
        ``||g_k||`` (both before clipping).

    Raises:
        ValueError: bad arguments (unknown ``clip``, ``workers < 1``, a batch not divisible
            by ``workers``, ...), before any process is started.
        RuntimeError: the process failed (the message holds its output); ``TimeoutError`` if
            it did not finish within ``timeout`` seconds. No process is left running.
    """
    check_data_parallel_args(weights, sizes, x, y, lr, max_norm, workers, (clip,), loss,
                             one_max_norm=True)
    steps = compare_data_parallel_clipping(weights, sizes, x, y, lr=lr, max_norm=max_norm,
                                           clips=(clip,), workers=workers, loss=loss,
                                           activation=activation, timeout=timeout)
    return next(iter(steps.values()))


def compare_data_parallel_clipping(weights, sizes, x, y, *, lr: float, max_norm=None,
                                   clips=DATA_PARALLEL_CLIPS, workers: int = 2,
                                   loss: str = "cross_entropy", activation: str = "relu",
                                   timeout: float = 120.0) -> dict:
    """:func:`data_parallel_step` for several clipping modes and thresholds at once.

    Every mode in ``clips`` runs from the same ``weights`` with every threshold in
    ``max_norm`` (one number or a sequence), in one process, so the start-up cost is paid
    once. Returns ``{(clip, max_norm): DataParallelStep}``, with the key ``(None, None)``
    for ``clip=None``, e.g. ``steps["per_worker", 1.0]``. Arguments and errors as in
    :func:`data_parallel_step`.

    Args:
        weights: canonical arrays ``[W0 (out, in), b0, W1, b1, ...]`` of ``mlp(sizes)``.
        sizes: the MLP's layer widths, e.g. ``[8, 16, 4]``.
        x, y: the batch; its size must be a multiple of ``workers``.
        lr: the SGD learning rate, a finite number > 0.
        max_norm: the clipping threshold ``c``, a finite number > 0, or a non-empty sequence
            of them; needed unless ``clips`` holds only ``None``.
        clips: the modes to run, a non-empty collection of ``"after_allreduce"``,
            ``"per_worker"`` and ``None``.
        workers: the number of replicas ``K`` (logical CPU devices), an integer >= 1.
        loss: ``"cross_entropy"`` or ``"mse"``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``, as in :func:`mlp`.
        timeout: seconds to wait for the process before stopping it, a finite number > 0.

    Raises:
        ValueError: bad arguments, before any process is started: an empty ``clips``, an
            unknown mode or loss, ``workers < 1``, a batch not divisible by ``workers``,
            weights that do not fit ``sizes``, inputs whose width is not ``sizes[0]``, labels
            outside ``[0, sizes[-1])`` (targets of the wrong size for ``"mse"``), ``max_norm``
            missing, or ``lr``, a ``max_norm`` or ``timeout`` not a finite number > 0.
        RuntimeError: the process failed, e.g. on an unknown ``activation`` (the message
            holds its output). No process is left running.
        TimeoutError: the process did not finish within ``timeout`` seconds; it is stopped.
    """
    weights, sizes, x, y, lr, workers, jobs = check_data_parallel_args(
        weights, sizes, x, y, lr, max_norm, workers, clips, loss)
    timeout = check_positive("timeout", timeout)
    shard = len(x) // workers
    shards = [(x[k * shard:(k + 1) * shard], y[k * shard:(k + 1) * shard])
              for k in range(workers)]
    with tempfile.TemporaryDirectory(prefix="companion-mirrored-") as folder:
        _run_process(folder, dict(task="clipping", workers=workers, weights=weights,
                                  sizes=sizes, activation=activation, loss=loss,
                                  shards=shards, lr=lr, jobs=jobs), timeout)
        return load_data_parallel_steps(os.path.join(folder, "result.npz"), jobs,
                                        len(weights))


def data_parallel_pruning(weights, sizes, x, y, *, lr: float, schedule, steps: int,
                          momentum: float = 0.0, workers: int = 2,
                          loss: str = "cross_entropy", activation: str = "relu",
                          timeout: float = 120.0) -> DataParallelPruning:
    """Gradual magnitude pruning under ``MirroredStrategy``: ``model.fit`` with the
    :class:`GradualPruning` callback, ``steps`` SGD steps of ``mlp(sizes)`` from
    ``weights`` on the batch ``(x, y)``, split over ``workers`` replicas.

    The model is built and compiled in the strategy's scope (its variables are
    ``MirroredVariable``\ s, one copy per replica); Keras splits each global batch over the
    replicas and all-reduces the gradients. The callback runs in the cross-replica
    context: it scores and masks the mirrored variables, so every copy is masked alike. The
    result must equal one process running ``prune_gradually(mlp(sizes), x, y, "magnitude",
    schedule, epochs=steps, batch_size=len(x), lr=lr, momentum=momentum)``, in every
    replica. Arguments, return value and errors as in the PyTorch back end's
    ``data_parallel_pruning``; ``workers`` are logical CPU devices of one fresh process.

    Args:
        weights: canonical arrays ``[W0 (out, in), b0, W1, b1, ...]`` of ``mlp(sizes)``.
        sizes: the MLP's layer widths, e.g. ``[8, 16, 4]``.
        x, y: the batch of every step; its size must be a multiple of ``workers``.
        lr: the SGD learning rate, a finite number > 0.
        schedule: a function ``step -> (should_prune, sparsity)``, as in ``prune_gradually``.
        steps: the number of SGD steps, an integer >= 1; the schedule must prune in them.
        momentum: SGD's momentum, in ``[0, 1)``.
        workers: the number of replicas ``K``, an integer >= 1.
        loss: ``"cross_entropy"`` or ``"mse"``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``, as in :func:`mlp`.
        timeout: seconds to wait for the process before stopping it, a finite number > 0.

    Raises:
        ValueError, TypeError: bad arguments, before the process is started.
        RuntimeError, TimeoutError: as in :func:`compare_data_parallel_clipping`.
    """
    weights, sizes, x, y, lr, workers, _ = check_data_parallel_args(
        weights, sizes, x, y, lr, None, workers, (None,), loss)
    plan = check_pruning_plan(schedule, steps)
    momentum = check_momentum(momentum)
    timeout = check_positive("timeout", timeout)
    with tempfile.TemporaryDirectory(prefix="companion-mirrored-") as folder:
        _run_process(folder, dict(task="pruning", workers=workers, weights=weights,
                                  sizes=sizes, activation=activation, loss=loss, x=x, y=y,
                                  lr=lr, momentum=momentum, plan=plan, steps=steps), timeout)
        replicas = load_replicas(os.path.join(folder, "result.npz"), workers, len(weights))
    return DataParallelPruning(replicas, [t for t, _ in plan], [s for _, s in plan])


def _run_process(folder: str, inputs: dict, timeout: float) -> None:
    with open(os.path.join(folder, "inputs.pkl"), "wb") as f:
        pickle.dump(inputs, f)
    run_worker_processes(__name__, 1, folder, timeout, what="MirroredStrategy process")


def single_process_step(weights, sizes, x, y, *, lr: float, max_norm: float | None = None,
                        loss: str = "cross_entropy",
                        activation: str = "relu") -> DataParallelStep:
    """The reference: one process, the whole batch, ``w <- w - lr * clip(g)``.

    ``g`` is the gradient of the mean loss on all of ``(x, y)``; with ``max_norm`` it is
    clipped by :func:`~companion.tensorflow.clip_by_global_norm`, ``g * c / max(||g||, c)``.
    The step is taken in NumPy. Runs in the calling process (nothing is started).
    Returns a :class:`~companion.core.distributed.DataParallelStep` with ``worker_norms = [||g||]``.

    Args:
        weights: canonical arrays ``[W0 (out, in), b0, W1, b1, ...]`` of ``mlp(sizes)``.
        sizes: the MLP's layer widths, e.g. ``[8, 16, 4]``.
        x, y: the whole batch.
        lr: the SGD learning rate, a finite number > 0.
        max_norm: the clipping threshold ``c``, one finite number > 0; ``None`` for no
            clipping.
        loss: ``"cross_entropy"`` or ``"mse"``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``, as in :func:`mlp`.

    Raises:
        ValueError: an unknown loss or activation, ``x`` and ``y`` of different lengths or
            empty, weights that do not fit ``sizes``, inputs whose width is not ``sizes[0]``,
            labels outside ``[0, sizes[-1])`` (targets of the wrong size for ``"mse"``), or
            ``lr`` or ``max_norm`` not a finite number > 0 (``max_norm`` a sequence included).
    """
    return whole_batch_step(importlib.import_module(__package__), weights, sizes, x, y,
                            lr=lr, max_norm=max_norm, loss=loss, activation=activation)


def _worker_main(rank: int, folder: str) -> None:
    """Body of the fresh process: split the CPU, run every job, save the results."""
    with open(os.path.join(folder, "inputs.pkl"), "rb") as f:
        inputs = pickle.load(f)
    workers = inputs["workers"]
    # Must come before TensorFlow's first op: the runtime fixes its devices then.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * workers)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:workers]
    # ReductionToOneDevice: the all-reduce for CPU devices (NCCL is for GPUs only).
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if inputs["task"] == "pruning":
        save_replicas(os.path.join(folder, "result.npz"),
                      _mirrored_gradual_pruning(strategy, inputs))
        return
    shards = inputs["shards"]
    x = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(shards[context.replica_id_in_sync_group][0]))
    y = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(shards[context.replica_id_in_sync_group][1]))
    with strategy.scope():  # variables become MirroredVariables, one copy per replica
        model = mlp(inputs["sizes"], activation=inputs["activation"], seed=0)
    steps = []
    for clip, max_norm in inputs["jobs"]:
        set_weights(model, inputs["weights"])  # each job starts from the given weights
        step = _mirrored_sgd_step(strategy, model, inputs["loss"], inputs["lr"], clip,
                                  max_norm)
        worker_norms, norm = step(x, y)
        steps.append(DataParallelStep(
            clip, max_norm, get_weights(model),
            float(strategy.experimental_local_results(norm)[0]),
            [float(n) for n in strategy.experimental_local_results(worker_norms)]))
    save_data_parallel_steps(os.path.join(folder, "result.npz"), steps)


_KERAS_LOSSES = {"cross_entropy": lambda: keras.losses.SparseCategoricalCrossentropy(
    from_logits=True), "mse": lambda: keras.losses.MeanSquaredError()}


def _mirrored_gradual_pruning(strategy, inputs) -> list:
    """``model.fit`` with :class:`GradualPruning` in the strategy's scope; returns every
    replica's canonical weights."""
    with strategy.scope():
        model = mlp(inputs["sizes"], activation=inputs["activation"], seed=0)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=inputs["lr"],
                                                     momentum=inputs["momentum"]),
                      loss=_KERAS_LOSSES[inputs["loss"]]())
    set_weights(model, inputs["weights"])
    plan = dict(inputs["plan"])
    pruning = GradualPruning("magnitude", lambda t: (t in plan, plan.get(t, 0.0)))
    model.fit(inputs["x"], inputs["y"], batch_size=len(inputs["x"]), epochs=inputs["steps"],
              shuffle=False, verbose=0, callbacks=[pruning])
    copies = [strategy.experimental_local_results(v.value) for v in model.trainable_variables]
    return [to_canonical(model, [copy[k] for copy in copies])
            for k in range(inputs["workers"])]


def _mirrored_sgd_step(strategy, model, loss: str, lr: float, clip, max_norm):
    """A ``tf.function`` ``(x, y) -> (||g_k|| per replica, ||g||)`` taking one SGD step."""
    variables = model.trainable_variables
    mean = tf.distribute.ReduceOp.MEAN

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            value = _mean_loss(model(x, training=True), y, loss)
        local = tape.gradient(value, variables)  # g_k, this replica's own gradient
        context = tf.distribute.get_replica_context()
        # g = (1/K) sum_k g_k, on every replica (with per-worker clipping only for ||g||)
        averaged = context.all_reduce(mean, local)
        if clip == "per_worker":
            clipped, _ = clip_by_global_norm(local, max_norm)  # s_k g_k
            update = context.all_reduce(mean, clipped)  # (1/K) sum_k s_k g_k
        elif clip == "after_allreduce":
            update, _ = clip_by_global_norm(averaged, max_norm)  # ||g|| same everywhere
        else:
            update = averaged
        return update, total_norm(local), total_norm(averaged)

    def sgd(variable, delta):
        return variable.assign_sub(lr * delta)

    @tf.function
    def step(x, y):
        update, local_norm, norm = strategy.run(replica_step, args=(x, y))
        for variable, delta in zip(variables, update):
            # Each replica applies its own (identical) update to its own copy.
            strategy.extended.update(variable.value, sgd, args=(delta,))
        return local_norm, norm

    return step
