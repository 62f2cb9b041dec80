"""Framework-neutral data parallelism: argument checks, the step record, worker processes
and the single-process reference step that both back ends' data-parallel runs are checked
against; and the record of gradual pruning under data parallelism
(:class:`DataParallelPruning`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from .checks import LOSSES, check_choice, check_data, check_positive, check_positive_int
from .models import check_sizes
from .schedules import pruning_steps as _pruning_steps  # private: documented in schedules


DATA_PARALLEL_CLIPS = ("after_allreduce", "per_worker", None)


@dataclass
class DataParallelStep:
    """One SGD step under data parallelism (``data_parallel_step`` in either back end).

    With ``K`` workers, worker ``k`` computes ``g_k``, the gradient of the mean loss on its
    shard; the all-reduce gives every worker ``g = (1/K) sum_k g_k``.

    Attributes:
        clip: ``"after_allreduce"``, ``"per_worker"`` or ``None`` (see ``data_parallel_step``).
        max_norm: the clipping threshold ``c`` (``None`` when ``clip`` is ``None``).
        weights: canonical-layout arrays after the step ``w - lr * update`` (worker 0's copy;
            every worker holds the same after the all-reduce).
        global_norm: ``||g||_2``, the norm of the all-reduced gradient before any clipping:
            the whole batch's gradient norm.
        worker_norms: ``[||g_k||_2 for k < K]``, each worker's own gradient norm before any
            clipping.
    """

    clip: str | None
    max_norm: float | None
    weights: list
    global_norm: float
    worker_norms: list


def check_data_parallel_args(weights, sizes, x, y, lr, max_norm, workers, clips, loss,
                             one_max_norm: bool = False):
    """Validate the arguments of ``data_parallel_step`` before any process is started.

    Returns ``(weights, sizes, x, y, lr, workers, jobs)``: float32 canonical weights and
    ``x``, ``lr`` as a float, and ``jobs``, the ``(clip, max_norm)`` pairs to run: every
    clipping mode in ``clips`` with every threshold in ``max_norm`` (a number or a
    sequence of numbers; only a number if ``one_max_norm``), and ``(None, None)`` once if
    ``None`` is in ``clips``.

    Raises:
        ValueError: an unknown clipping mode or loss, ``workers < 1``, a batch whose size is
            not a multiple of ``workers``, weights that do not fit ``sizes``, inputs whose
            width is not ``sizes[0]``, labels outside ``[0, sizes[-1])`` (targets of the
            wrong size for ``"mse"``), ``lr`` or a ``max_norm`` not a finite number > 0.
    """
    clips = tuple(dict.fromkeys(clips))
    if not clips:
        raise ValueError("clips is empty; allowed modes: "
                         f"{', '.join(map(repr, DATA_PARALLEL_CLIPS))}")
    for clip in clips:
        check_choice("clip mode", clip, DATA_PARALLEL_CLIPS)
    workers = check_positive_int("workers", workers)
    check_choice("loss", loss, LOSSES)
    sizes = check_sizes(sizes)
    x, y = check_data(x, y, loss)
    if x.ndim != 2 or x.shape[1] != sizes[0]:
        raise ValueError(f"x must have shape (n, {sizes[0]}), got {x.shape}")
    if loss == "cross_entropy" and (y.min() < 0 or y.max() >= sizes[-1]):
        raise ValueError(f"class labels must lie in [0, {sizes[-1]}), got {y.min()}..{y.max()}")
    if loss == "mse" and y.size != len(y) * sizes[-1]:
        raise ValueError(f"mse targets need {sizes[-1]} values per example, got shape {y.shape}")
    if len(x) % workers:
        raise ValueError(f"the batch of {len(x)} examples cannot be split into {workers} "
                         "equal shards; use a batch size that is a multiple of workers")
    weights = [np.asarray(w, dtype=np.float32) for w in weights]
    shapes = [s for i, o in zip(sizes[:-1], sizes[1:]) for s in ((o, i), (o,))]
    if [w.shape for w in weights] != shapes:
        raise ValueError(f"weights must be canonical MLP arrays of shapes {shapes}, got "
                         f"{[w.shape for w in weights]}")
    lr = check_positive("lr", lr)
    modes = [clip for clip in clips if clip is not None]
    if max_norm is None:
        if modes:
            raise ValueError(f"max_norm is needed by the clipping modes {modes}")
        norms = ()
    else:
        many = isinstance(max_norm, (list, tuple, np.ndarray))
        if many and one_max_norm:
            raise ValueError("max_norm must be one number here; compare_data_parallel_clipping "
                             "takes several")
        norms = [check_positive("max_norm", c) for c in (max_norm if many else [max_norm])]
        if modes and not norms:
            raise ValueError("max_norm is an empty sequence")
        norms = tuple(dict.fromkeys(norms))
    jobs = [(clip, c) for clip in modes for c in norms]
    if None in clips:
        jobs.insert(clips.index(None) * len(norms), (None, None))
    if np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float32, copy=False)
    return weights, sizes, x.astype(np.float32, copy=False), y, lr, workers, jobs


def save_data_parallel_steps(path: str, steps) -> None:
    """Write :class:`DataParallelStep` objects to a ``.npz`` file (a worker's result)."""
    arrays = {}
    for j, step in enumerate(steps):
        arrays.update({f"{j}.w{i}": w for i, w in enumerate(step.weights)})
        arrays[f"{j}.global_norm"] = np.float64(step.global_norm)
        arrays[f"{j}.worker_norms"] = np.asarray(step.worker_norms, np.float64)
    np.savez(path, **arrays)


def load_data_parallel_steps(path: str, jobs, count: int) -> dict:
    """Read what :func:`save_data_parallel_steps` wrote: ``{(clip, max_norm): step}``."""
    with np.load(path) as arrays:
        return {(clip, c): DataParallelStep(
            clip=clip, max_norm=c,
            weights=[arrays[f"{j}.w{i}"] for i in range(count)],
            global_norm=float(arrays[f"{j}.global_norm"]),
            worker_norms=arrays[f"{j}.worker_norms"].tolist())
            for j, (clip, c) in enumerate(jobs)}


@dataclass
class DataParallelPruning:
    """Gradual magnitude pruning under data parallelism (``data_parallel_pruning``).

    Attributes:
        replicas: one list of canonical-layout weights per worker (PyTorch) or replica
            (TensorFlow) after the last step: every copy must hold the same numbers, and
            the pruned entries exactly zero in every copy.
        steps: the steps that pruned (counted from 1, as in ``pruning_steps``).
        sparsities: the target sparsity of each of those steps.
    """

    replicas: list
    steps: list
    sparsities: list


def check_momentum(momentum) -> float:
    """Return ``momentum`` as a float if it is a real number in ``[0, 1)``."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)):
        raise TypeError(f"momentum must be a real number in [0, 1), got {type(momentum).__name__}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return float(momentum)


def check_pruning_plan(schedule, steps) -> list:
    """``pruning_steps(schedule, steps)``, as plain ``(step, sparsity)`` pairs that can be
    sent to worker processes (a schedule function often cannot be pickled).

    Raises:
        ValueError, TypeError: ``steps`` not an integer >= 1, or an invalid schedule.
    """
    steps = check_positive_int("steps", steps)
    plan = [(int(t), float(s)) for t, s in _pruning_steps(schedule, steps)]
    if not plan:
        raise ValueError(f"the schedule never prunes in {steps} steps")
    return plan


def save_replicas(path: str, replicas) -> None:
    """Write one list of weight arrays per replica to a ``.npz`` file."""
    np.savez(path, **{f"{k}.w{i}": w for k, weights in enumerate(replicas)
                      for i, w in enumerate(weights)})


def load_replicas(path: str, count: int, parameters: int) -> list:
    """Read what :func:`save_replicas` wrote: ``count`` lists of ``parameters`` arrays."""
    with np.load(path) as arrays:
        return [[arrays[f"{k}.w{i}"] for i in range(parameters)] for k in range(count)]


def run_worker_processes(module: str, count: int, folder: str, timeout: float,
                         what: str = "worker") -> None:
    """Run ``module._worker_main(rank, folder)`` in ``count`` fresh Python processes; wait.

    Each worker is a new interpreter (``sys.executable -c ...``), not a ``multiprocessing``
    child: ``spawn`` re-runs the caller's main script in every child (a script without an
    ``if __name__ == "__main__"`` guard starts workers recursively) and ``fork`` copies a
    process whose TensorFlow or PyTorch thread pools are already running. Inputs and results
    travel as files in ``folder``; worker ``k``'s stdout and stderr go to
    ``folder/worker{k}.log``, so the caller's output stays clean, and an error quotes them.
    Whatever happens, no worker is left running.

    Raises:
        RuntimeError: a worker exited with an error (the others are stopped at once).
        TimeoutError: the workers did not all finish within ``timeout`` seconds.
    """
    import os
    import subprocess
    import time
    from pathlib import Path

    timeout = check_positive("timeout", timeout)
    root = str(Path(__file__).resolve().parents[2])  # so workers import this companion
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    code = (f"import sys; from {module} import _worker_main; "
            "_worker_main(int(sys.argv[1]), sys.argv[2])")
    processes = []
    try:
        for rank in range(count):
            with open(os.path.join(folder, f"worker{rank}.log"), "wb") as log:
                processes.append(subprocess.Popen(
                    [sys.executable, "-c", code, str(rank), folder], stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder))
        deadline = time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in processes]
            failed = [k for k, code in enumerate(codes) if code not in (None, 0)]
            if failed:  # the others would wait for it until their own timeout
                raise RuntimeError(f"{what} {failed[0]} failed with exit code "
                                   f"{codes[failed[0]]}{_worker_logs(folder, count)}")
            if all(code == 0 for code in codes):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every {what} finished within {timeout} s"
                                   f"{_worker_logs(folder, count)}")
            time.sleep(0.02)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def _worker_logs(folder: str, count: int) -> str:
    """The end of every worker's captured output, for an error message."""
    import os

    text = ""
    for rank in range(count):
        path = os.path.join(folder, f"worker{rank}.log")
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                text += f"\n--- worker {rank} output ---\n{f.read()[-4000:]}"
    return text


def whole_batch_step(backend, weights, sizes, x, y, *, lr, max_norm, loss, activation):
    """``single_process_step`` of either back end: ``backend`` is ``companion.torch`` or
    ``companion.tensorflow``, whose ``mlp``, ``gradients``, ``global_norm`` and
    ``clip_by_global_norm`` compute the step ``w <- w - lr * clip(g)`` on the whole batch."""
    clip = None if max_norm is None else "after_allreduce"
    weights, sizes, x, y, lr, _, jobs = check_data_parallel_args(
        weights, sizes, x, y, lr, max_norm, 1, (clip,), loss, one_max_norm=True)
    (clip, max_norm), = jobs
    model = backend.mlp(sizes, activation=activation, seed=0)
    backend.set_weights(model, weights)
    grads = backend.gradients(model, x, y, loss)
    norm = backend.global_norm(grads)
    if clip is not None:
        grads, _ = backend.clip_by_global_norm(grads, max_norm)
    new = [w - np.float32(lr) * g for w, g in zip(weights, backend.to_canonical(model, grads))]
    return DataParallelStep(clip=clip, max_norm=max_norm, weights=new, global_norm=norm,
                            worker_norms=[norm])
