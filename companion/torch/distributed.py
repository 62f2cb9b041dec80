"""Clipping and gradual pruning under data parallelism, PyTorch back end: DDP over CPUs.

``K`` workers each hold a replica of the model and the ``k``-th of ``K`` equal shards
``B_k`` of the batch ``B``. Worker ``k`` computes the gradient of the mean loss on its shard,
``g_k = (1/|B_k|) sum_{i in B_k} grad l_i``; the all-reduce of
:class:`~torch.nn.parallel.DistributedDataParallel` (DDP) leaves on every worker

    ``g = (1/K) sum_k g_k = (1/|B|) sum_{i in B} grad l_i``,

the gradient of the whole batch, because the shards have equal size. Where clipping happens
decides whether data parallelism still computes the single-process update:

* ``clip="after_allreduce"``: ``g <- g * c / max(||g||, c)``. ``||g||`` is the whole
  batch's norm, the same on every worker, so each worker takes the step that one process
  would take on all of ``B``.
* ``clip="per_worker"``: each worker clips its own gradient first,
  ``s_k = c / max(||g_k||, c)``, and the clipped gradients are averaged:
  ``update = (1/K) sum_k s_k g_k``. Unless every ``s_k`` is 1 (no worker clips, and then
  nothing changes) or all ``s_k`` are equal, this is in general not a multiple of ``g``:
  shards with large gradients are down-weighted against the others, and the update
  depends on how the batch was split (on ``K``). Its norm is still ``<= c`` (an average of
  vectors of norm ``<= c``), so nothing *looks* wrong. Even when ``||g|| <= c``, so that one
  process would not clip at all, a worker with ``||g_k|| > c`` changes the step.
* ``clip=None``: plain SGD on ``g``.

The step is SGD, ``w <- w - lr * update``. Each worker is a fresh Python process (see
:func:`companion.core.distributed.run_worker_processes` for why not ``torch.multiprocessing.spawn``),
so the functions work from a notebook kernel or a process that has loaded TensorFlow. The
workers join a ``gloo`` process group (CPU) through ``MASTER_ADDR=127.0.0.1`` and a
``MASTER_PORT`` found free at run time.
"""

from __future__ import annotations

import importlib
import os
import pickle
import socket
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..core.checks import check_positive
from ..core.distributed import (DATA_PARALLEL_CLIPS, DataParallelPruning, DataParallelStep,
                                check_data_parallel_args, check_momentum, check_pruning_plan,
                                load_data_parallel_steps, load_replicas, run_worker_processes,
                                save_data_parallel_steps, save_replicas, whole_batch_step)
from .clipping import clip_by_global_norm
from .diagnostics import global_norm
from .layout import get_weights, set_weights, trainable_parameters
from .models import mlp
from .pruning import keep_masks_after_step, magnitude_scores
from .schedules import _eligible, _grow, _initial_masks
from .training import _mean_loss

__all__ = ["data_parallel_step", "compare_data_parallel_clipping", "single_process_step",
           "data_parallel_pruning", "DataParallelStep", "DataParallelPruning",
           "DATA_PARALLEL_CLIPS"]


def data_parallel_step(weights, sizes, x, y, *, lr: float, max_norm: float | None = None,
                       clip: str | None = "after_allreduce", workers: int = 2,
                       loss: str = "cross_entropy", activation: str = "relu",
                       timeout: float = 120.0) -> DataParallelStep:
    """One SGD step of ``mlp(sizes)`` from ``weights`` on ``(x, y)``, split over ``workers``.

    Worker ``k`` (a process) gets rows ``k*n/K .. (k+1)*n/K - 1`` of ``x`` and ``y``,
    computes ``g_k``, the gradient of its shard's mean loss; DDP averages,
    ``g = (1/K) sum_k g_k``; then

    * ``"after_allreduce"``: ``update = g * c / max(||g||_2, c)``, the same as one process
      clipping the whole batch's gradient;
    * ``"per_worker"``: ``update = (1/K) sum_k g_k * c / max(||g_k||_2, c)``: each worker
      clips its own gradient before the average (DDP's ``no_sync()`` skips its all-reduce,
      the clipped gradients are summed with ``dist.all_reduce`` and divided by ``K``);
    * ``None``: ``update = g``;

    and ``w <- w - lr * update``. Clipping is :func:`~companion.torch.clip_by_global_norm`.
    See the module docstring for why the modes differ.

    Args:
        weights: canonical arrays ``[W0 (out, in), b0, W1, b1, ...]`` of ``mlp(sizes)``.
        sizes: the MLP's layer widths, e.g. ``[8, 16, 4]``.
        x, y: the batch; its size must be a multiple of ``workers``.
        lr: the SGD learning rate.
        max_norm: the clipping threshold ``c``; needed unless ``clip`` is ``None``.
        clip: ``"after_allreduce"``, ``"per_worker"`` or ``None``.
        workers: the number of processes ``K`` (more than the CPU cores works, slowly).
        loss, activation: as in :func:`~companion.torch.train` and :func:`mlp`.
        timeout: seconds to wait for the workers before stopping them.

    Returns:
        A :class:`~companion.core.distributed.DataParallelStep`: the new weights, ``||g||`` and every
        ``||g_k||`` (both before clipping).

    Raises:
        ValueError: bad arguments (unknown ``clip``, ``workers < 1``, a batch not divisible
            by ``workers``, ...), before any process is started.
        RuntimeError: a worker failed (the message holds its output); ``TimeoutError`` if the
            workers did not finish within ``timeout`` seconds. No process is left running.
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
    ``max_norm`` (one number or a sequence), in one set of worker processes, so the
    start-up cost is paid once. Returns ``{(clip, max_norm): DataParallelStep}``, with the
    key ``(None, None)`` for ``clip=None``, e.g. ``steps["per_worker", 1.0]``. Arguments and
    errors as in :func:`data_parallel_step`.

    Args:
        weights: canonical arrays ``[W0 (out, in), b0, W1, b1, ...]`` of ``mlp(sizes)``.
        sizes: the MLP's layer widths, e.g. ``[8, 16, 4]``.
        x, y: the batch; its size must be a multiple of ``workers``.
        lr: the SGD learning rate, a finite number > 0.
        max_norm: the clipping threshold ``c``, a finite number > 0, or a non-empty sequence
            of them; needed unless ``clips`` holds only ``None``.
        clips: the modes to run, a non-empty collection of ``"after_allreduce"``,
            ``"per_worker"`` and ``None``.
        workers: the number of processes ``K``, an integer >= 1.
        loss: ``"cross_entropy"`` or ``"mse"``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``, as in :func:`mlp`.
        timeout: seconds to wait for the workers before stopping them, a finite number > 0.

    Raises:
        ValueError: bad arguments, before any process is started: an empty ``clips``, an
            unknown mode or loss, ``workers < 1``, a batch not divisible by ``workers``,
            weights that do not fit ``sizes``, inputs whose width is not ``sizes[0]``, labels
            outside ``[0, sizes[-1])`` (targets of the wrong size for ``"mse"``), ``max_norm``
            missing, or ``lr``, a ``max_norm`` or ``timeout`` not a finite number > 0.
        RuntimeError: a worker failed, e.g. on an unknown ``activation`` (the message holds
            its output). No process is left running.
        TimeoutError: the workers did not all finish within ``timeout`` seconds; they are
            stopped.
    """
    weights, sizes, x, y, lr, workers, jobs = check_data_parallel_args(
        weights, sizes, x, y, lr, max_norm, workers, clips, loss)
    timeout = check_positive("timeout", timeout)
    shard = len(x) // workers
    shards = [(x[k * shard:(k + 1) * shard], y[k * shard:(k + 1) * shard])
              for k in range(workers)]
    with tempfile.TemporaryDirectory(prefix="companion-ddp-") as folder:
        _run_workers(folder, dict(task="clipping", workers=workers, weights=weights,
                                  sizes=sizes, activation=activation, loss=loss,
                                  shards=shards, lr=lr, jobs=jobs, timeout=timeout))
        return load_data_parallel_steps(os.path.join(folder, "result.npz"), jobs,
                                        len(weights))


def data_parallel_pruning(weights, sizes, x, y, *, lr: float, schedule, steps: int,
                          momentum: float = 0.0, workers: int = 2,
                          loss: str = "cross_entropy", activation: str = "relu",
                          timeout: float = 120.0) -> DataParallelPruning:
    """Gradual magnitude pruning under DDP: ``steps`` SGD steps of ``mlp(sizes)`` from
    ``weights`` on the batch ``(x, y)``, split over ``workers`` processes.

    Every worker holds a replica and the ``k``-th shard of the batch. At a step where
    ``schedule`` prunes, each worker scores its own replica by magnitude and grows its masks
    (:func:`~companion.core.schedules.grow_masks`); the replicas are equal, so are the masks,
    and no mask travels between processes. :func:`keep_masks_after_step` on each worker's
    ``torch.optim.SGD`` zeroes the pruned entries of the all-reduced gradient before the
    step (so momentum stays zero there) and re-masks the weights after it. The result must
    equal one process running ``prune_gradually(mlp(sizes), x, y, "magnitude", schedule,
    epochs=steps, batch_size=len(x), lr=lr, momentum=momentum)``, in every replica.

    Args:
        weights: canonical arrays ``[W0 (out, in), b0, W1, b1, ...]`` of ``mlp(sizes)``.
        sizes: the MLP's layer widths, e.g. ``[8, 16, 4]``.
        x, y: the batch of every step; its size must be a multiple of ``workers``.
        lr: the SGD learning rate, a finite number > 0.
        schedule: a function ``step -> (should_prune, sparsity)``, as in ``prune_gradually``.
        steps: the number of SGD steps, an integer >= 1; the schedule must prune in them.
        momentum: SGD's momentum, in ``[0, 1)``.
        workers: the number of processes ``K``, an integer >= 1.
        loss: ``"cross_entropy"`` or ``"mse"``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"linear"``, as in :func:`mlp`.
        timeout: seconds to wait for the workers before stopping them, a finite number > 0.

    Returns:
        A :class:`~companion.core.distributed.DataParallelPruning` with every worker's
        weights.

    Raises:
        ValueError, TypeError: bad arguments (as in :func:`compare_data_parallel_clipping`,
            an invalid schedule or one that never prunes), before any process is started.
        RuntimeError, TimeoutError: as in :func:`compare_data_parallel_clipping`.
    """
    weights, sizes, x, y, lr, workers, _ = check_data_parallel_args(
        weights, sizes, x, y, lr, None, workers, (None,), loss)
    plan = check_pruning_plan(schedule, steps)
    momentum = check_momentum(momentum)
    timeout = check_positive("timeout", timeout)
    shard = len(x) // workers
    shards = [(x[k * shard:(k + 1) * shard], y[k * shard:(k + 1) * shard])
              for k in range(workers)]
    with tempfile.TemporaryDirectory(prefix="companion-ddp-") as folder:
        _run_workers(folder, dict(task="pruning", workers=workers, weights=weights,
                                  sizes=sizes, activation=activation, loss=loss,
                                  shards=shards, lr=lr, momentum=momentum, plan=plan,
                                  steps=steps, timeout=timeout))
        replicas = load_replicas(os.path.join(folder, "result.npz"), workers, len(weights))
    return DataParallelPruning(replicas, [t for t, _ in plan], [s for _, s in plan])


def _run_workers(folder: str, inputs: dict) -> None:
    """Start the DDP workers on ``inputs`` (and a free port), retrying a port taken."""
    for attempt in range(_PORT_ATTEMPTS):
        with open(os.path.join(folder, "inputs.pkl"), "wb") as f:
            pickle.dump(dict(inputs, port=_free_port()), f)
        try:
            run_worker_processes(__name__, inputs["workers"], folder, inputs["timeout"],
                                 what="DDP worker")
            return
        except RuntimeError as error:
            # Another program took the free port before worker 0 could listen on it.
            if "EADDRINUSE" not in str(error) or attempt == _PORT_ATTEMPTS - 1:
                raise


def single_process_step(weights, sizes, x, y, *, lr: float, max_norm: float | None = None,
                        loss: str = "cross_entropy",
                        activation: str = "relu") -> DataParallelStep:
    """The reference: one process, the whole batch, ``w <- w - lr * clip(g)``.

    ``g`` is the gradient of the mean loss on all of ``(x, y)``; with ``max_norm`` it is
    clipped by :func:`~companion.torch.clip_by_global_norm`, ``g * c / max(||g||, c)``.
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


_PORT_ATTEMPTS = 3


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it).

    Between this call and worker 0 listening on the port, another program may take it;
    :func:`compare_data_parallel_clipping` then tries again with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_main(rank: int, folder: str) -> None:
    """Body of worker ``rank`` (a fresh process): join the group, run every job, save."""
    with open(os.path.join(folder, "inputs.pkl"), "rb") as f:
        inputs = pickle.load(f)
    workers = inputs["workers"]
    torch.set_num_threads(1)  # K processes share the machine's cores
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(inputs["port"])
    dist.init_process_group("gloo", rank=rank, world_size=workers,
                            timeout=timedelta(seconds=inputs["timeout"]))
    try:
        x, y = inputs["shards"][rank]
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if inputs["task"] == "pruning":
            _save_all_replicas(folder, rank, workers,
                               _ddp_gradual_pruning(_model(inputs), x, y, inputs))
            return
        norm, worker_norms = _gradient_norms(_model(inputs), x, y, inputs["loss"], workers)
        steps = []
        for clip, max_norm in inputs["jobs"]:  # each job starts from the given weights
            new = _ddp_sgd_step(_model(inputs), x, y, inputs["loss"], inputs["lr"], max_norm,
                                clip, workers)
            steps.append(DataParallelStep(clip, max_norm, new, norm, worker_norms))
        if rank == 0:
            save_data_parallel_steps(os.path.join(folder, "result.npz"), steps)
        dist.barrier()  # no worker leaves while another still needs the group
    finally:
        dist.destroy_process_group()


def _model(inputs):
    model = mlp(inputs["sizes"], activation=inputs["activation"], seed=0).cpu()
    set_weights(model, inputs["weights"])
    return model


def _ddp_sgd_step(model, x, y, loss, lr, max_norm, clip, workers) -> list:
    """One DDP SGD step of ``model`` on this worker's shard; returns the new weights."""
    ddp = DistributedDataParallel(model)  # starts from rank 0's weights (all equal here)
    params = trainable_parameters(model)
    if clip == "per_worker":
        with ddp.no_sync():  # no all-reduce: .grad holds this worker's own g_k
            _mean_loss(ddp(x), y, loss).backward()
        grads, _ = clip_by_global_norm([p.grad for p in params], max_norm)  # s_k g_k
        for g in grads:
            dist.all_reduce(g)  # sum_k s_k g_k, on every worker
            g /= workers
    else:
        _mean_loss(ddp(x), y, loss).backward()  # DDP all-reduces: .grad = (1/K) sum_k g_k
        grads = [p.grad for p in params]
        if clip == "after_allreduce":
            grads, _ = clip_by_global_norm(grads, max_norm)  # ||g|| is the same everywhere
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g
    return get_weights(model)


def _ddp_gradual_pruning(model, x, y, inputs) -> list:
    """``inputs["steps"]`` DDP SGD steps, pruning by magnitude where the plan says; returns
    this worker's weights."""
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=inputs["lr"],
                                momentum=inputs["momentum"])
    eligible = _eligible(model, False)
    masks, plan, hooks = _initial_masks(model, eligible), dict(inputs["plan"]), None
    for step in range(1, inputs["steps"] + 1):
        if step in plan:  # as prune_gradually: masks grow before the step's gradient
            masks, _ = _grow(model, magnitude_scores(model), masks, eligible, plan[step],
                             "global")
            with torch.no_grad():
                for param, mask in zip(trainable_parameters(model), masks):
                    if mask is not None:
                        param.mul_(mask)
            if hooks is not None:
                hooks.remove()
            hooks = keep_masks_after_step(optimizer, model, masks)
        optimizer.zero_grad()
        _mean_loss(ddp(x), y, inputs["loss"]).backward()  # .grad: the all-reduced mean
        optimizer.step()
    return get_weights(model)


def _save_all_replicas(folder: str, rank: int, workers: int, weights: list) -> None:
    """Gather every worker's weights on worker 0, which saves them."""
    replicas = [None] * workers
    dist.all_gather_object(replicas, weights)
    if rank == 0:
        save_replicas(os.path.join(folder, "result.npz"), replicas)
    dist.barrier()


def _gradient_norms(model, x, y, loss, workers):
    """``(||g||, [||g_k|| for every k]``) before any clipping, measured without DDP."""
    params = trainable_parameters(model)
    grads = list(torch.autograd.grad(_mean_loss(model(x), y, loss), params))
    local = torch.tensor([global_norm(grads)], dtype=torch.float64)
    every = [torch.zeros_like(local) for _ in range(workers)]
    dist.all_gather(every, local)
    for g in grads:
        dist.all_reduce(g)
        g /= workers
    return global_norm(grads), [float(n) for n in every]
