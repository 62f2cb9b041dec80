"""Global-norm clipping under data parallelism: DDP (2 gloo processes) and MirroredStrategy
(2 logical CPU devices) against single-process training on the whole batch.

The batch is built so that the two shards' gradients differ in size: shard 0's inputs are
10 times larger, so its gradient norm is about ten times shard 1's. Three thresholds:
``MAX_NORM`` below both workers' norms, ``MID_NORM`` above the whole batch's norm ``||g||``
but below worker 0's, ``NO_CLIP_NORM`` above all. Clipping after the all-reduce must
reproduce the single-process step at every threshold; clipping per worker must not at the
first two (at ``MID_NORM`` one process would not clip at all), and must equal its own
formula ``(1/K) sum_k g_k c / max(||g_k||, c)``; above every norm all modes agree.

Tolerances. Every quantity is float32. The data-parallel gradient is
``(mean over shard 0 + mean over shard 1) / 2``, the single-process one the mean over all
16 examples: the same sum in a different order, so they agree to a few float32 roundings
(unit roundoff 6e-8), as do the two frameworks. Updates are compared as
``||u - u_ref|| / ||u_ref||`` with ``u = (w_old - w_new) / lr`` (measured: below 2e-7)
against ``UPDATE_RTOL = 1e-5``; weights entrywise with ``assert_arrays_close`` (rtol 1e-5,
see ``numpy_reference``). The differences per-worker clipping makes here are 0.53 and 0.34.

The worker processes are expensive (each imports its framework), so each back end starts
them once, in a module fixture, for every mode and threshold. The fixture first runs a
PyTorch and a TensorFlow op in this process, as a notebook that uses both frameworks would
have, and records this process's output; the first port it hands the DDP workers is
taken, so they must retry on another.
"""

import os
import socket
import tempfile
import warnings

import numpy as np
import pytest

from companion.core import distributed as core_distributed
from companion import tensorflow as ctf
from companion import torch as ct
from companion.tensorflow import distributed as tf_distributed
from companion.torch import distributed as torch_distributed
from numpy_reference import assert_arrays_close

SIZES = [8, 16, 4]
BATCH = 16
WORKERS = 2
LR = 0.5
MAX_NORM = 1.0  # below both workers' gradient norms
MID_NORM = 12.0  # above the whole batch's gradient norm, below worker 0's
NO_CLIP_NORM = 1e3  # above every gradient norm: no worker clips
THRESHOLDS = [MAX_NORM, MID_NORM, NO_CLIP_NORM]
UPDATE_RTOL = 1e-5
MODES = core_distributed.DATA_PARALLEL_CLIPS

FRAMEWORKS = {
    "torch": (ct, torch_distributed),
    "tensorflow": (ctf, tf_distributed),
}


def _problem():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    x[:BATCH // WORKERS] *= 10.0  # shard 0: a much larger gradient than shard 1
    y = rng.integers(0, SIZES[-1], BATCH)
    weights = ct.get_weights(ct.mlp(SIZES, seed=3))
    return weights, x, y


WEIGHTS, X, Y = _problem()


class _CapturedOutput:
    """Everything written to file descriptors 1 and 2 (Python and C level) while active."""

    def __enter__(self):
        self._files = [tempfile.TemporaryFile() for _ in range(2)]
        self._saved = [os.dup(1), os.dup(2)]
        for fd, f in zip((1, 2), self._files):
            os.dup2(f.fileno(), fd)
        return self

    def __exit__(self, *exc):
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.stdout, self.stderr = [self._read(f) for f in self._files]

    @staticmethod
    def _read(f):
        f.seek(0)
        text = f.read().decode(errors="replace")
        f.close()
        return text


@pytest.fixture(scope="module")
def runs():
    """Both back ends' results for every mode and threshold, plus this process's output."""
    import tensorflow as tf
    import torch

    # Both frameworks have run ops here, as in a notebook that uses both.
    assert float(torch.ones(2).sum()) == 2.0
    assert float(tf.reduce_sum(tf.ones(2))) == 2.0
    results = {"ports": []}
    free_port = torch_distributed._free_port
    with socket.socket() as busy, pytest.MonkeyPatch.context() as patch:
        # The first port handed to the DDP workers is taken: they must retry on another.
        busy.bind(("127.0.0.1", 0))
        busy.listen()

        def next_port():
            port = free_port() if results["ports"] else busy.getsockname()[1]
            results["ports"].append(port)
            return port

        patch.setattr(torch_distributed, "_free_port", next_port)
        with _CapturedOutput() as output, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name, (_, distributed) in FRAMEWORKS.items():
                results[name] = distributed.compare_data_parallel_clipping(
                    WEIGHTS, SIZES, X, Y, lr=LR, max_norm=THRESHOLDS, workers=WORKERS)
        results["busy"] = busy.getsockname()[1]
    results["stdout"], results["stderr"] = output.stdout, output.stderr
    results["warnings"] = [str(w.message) for w in caught]
    return results


def _update(weights) -> np.ndarray:
    """``(w_old - w_new) / lr`` as one float64 vector."""
    return np.concatenate([(np.float64(a) - np.float64(b)).ravel()
                           for a, b in zip(WEIGHTS, weights)]) / LR


def _relative_difference(weights, reference) -> float:
    u, v = _update(weights), _update(reference)
    return float(np.linalg.norm(u - v) / np.linalg.norm(v))


def _model(backend):
    model = backend.mlp(SIZES, seed=0)
    backend.set_weights(model, WEIGHTS)
    return model


def _reference_step(framework: str, max_norm):
    """Single process, whole batch: gradients, clip_by_global_norm, SGD step in NumPy."""
    backend, _ = FRAMEWORKS[framework]
    model = _model(backend)
    grads = backend.gradients(model, X, Y)
    if max_norm is not None:
        grads, _ = backend.clip_by_global_norm(grads, max_norm)
    return [w - np.float32(LR) * g for w, g in zip(WEIGHTS, backend.to_canonical(model, grads))]


def _per_worker_reference(framework: str, max_norm):
    """``w - lr (1/K) sum_k clip(g_k)`` with each shard's gradient from one process."""
    backend, _ = FRAMEWORKS[framework]
    model = _model(backend)
    shard = BATCH // WORKERS
    updates = []
    for k in range(WORKERS):
        rows = slice(k * shard, (k + 1) * shard)
        grads, _ = backend.clip_by_global_norm(backend.gradients(model, X[rows], Y[rows]),
                                                max_norm)
        updates.append(backend.to_canonical(model, grads))
    return [w - np.float32(LR) * np.mean(gs, axis=0) for w, *gs in zip(WEIGHTS, *updates)]


FRAMEWORK_NAMES = sorted(FRAMEWORKS)


def test_the_calls_print_and_warn_nothing(runs):
    assert runs["stdout"] == ""
    assert runs["stderr"] == ""
    assert runs["warnings"] == []


def test_a_port_taken_by_another_program_is_retried(runs):
    assert len(runs["ports"]) == 2 and runs["ports"][0] == runs["busy"]
    assert runs["ports"][1] != runs["busy"]


def test_every_mode_and_threshold_ran_once(runs):
    expected = [(clip, c) for clip in MODES if clip for c in THRESHOLDS] + [(None, None)]
    for framework in FRAMEWORK_NAMES:
        assert list(runs[framework]) == expected
        for (clip, c), step in runs[framework].items():
            assert (step.clip, step.max_norm) == (clip, c)


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_norms_are_the_whole_batch_and_the_shard_norms(runs, framework):
    backend, _ = FRAMEWORKS[framework]
    model = _model(backend)
    shard = BATCH // WORKERS
    whole = backend.global_norm(backend.gradients(model, X, Y))
    shards = [backend.global_norm(backend.gradients(model, X[k * shard:(k + 1) * shard],
                                                    Y[k * shard:(k + 1) * shard]))
              for k in range(WORKERS)]
    for step in runs[framework].values():
        np.testing.assert_allclose(step.global_norm, whole, rtol=1e-5)
        np.testing.assert_allclose(step.worker_norms, shards, rtol=1e-5)
    # The constructed case: at MAX_NORM both workers clip, by clearly different factors;
    # at MID_NORM worker 0 clips although the whole batch's gradient would not be clipped.
    assert MAX_NORM < min(shards) and 2 * min(shards) < max(shards)
    assert whole < MID_NORM < max(shards) < NO_CLIP_NORM


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
@pytest.mark.parametrize("max_norm", THRESHOLDS)
def test_clipping_after_the_allreduce_is_single_process_clipping(runs, framework, max_norm):
    step = runs[framework]["after_allreduce", max_norm]
    reference = _reference_step(framework, max_norm)
    assert _relative_difference(step.weights, reference) < UPDATE_RTOL
    assert_arrays_close(step.weights, reference)
    expected_norm = min(max_norm, step.global_norm)
    np.testing.assert_allclose(np.linalg.norm(_update(step.weights)), expected_norm, rtol=1e-5)


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_no_clipping_is_plain_sgd_on_the_whole_batch(runs, framework):
    step = runs[framework][None, None]
    assert _relative_difference(step.weights, _reference_step(framework, None)) < UPDATE_RTOL


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
@pytest.mark.parametrize("max_norm", [MAX_NORM, MID_NORM])
def test_clipping_per_worker_changes_the_update(runs, framework, max_norm):
    step = runs[framework]["per_worker", max_norm]
    single = _reference_step(framework, max_norm)
    assert _relative_difference(step.weights, single) > 1e-1
    # ... and it is what its formula says: the mean of the separately clipped gradients.
    assert _relative_difference(step.weights, _per_worker_reference(framework, max_norm)) \
        < UPDATE_RTOL
    u, v = _update(step.weights), _update(single)
    cosine = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    assert np.linalg.norm(u) < max_norm
    if max_norm == MAX_NORM:  # both clip, by different factors: the direction changes
        assert cosine < 0.9
    else:  # only worker 0 clips: mostly a shorter step where one process takes all of it
        assert np.linalg.norm(u) < 0.7 * np.linalg.norm(v)


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_when_no_worker_clips_every_mode_is_the_single_process_step(runs, framework):
    reference = _reference_step(framework, None)
    for clip in MODES:
        step = runs[framework][clip, NO_CLIP_NORM if clip else None]
        assert _relative_difference(step.weights, reference) < UPDATE_RTOL


@pytest.mark.parametrize("key", [(clip, c) for clip in MODES if clip for c in THRESHOLDS]
                         + [(None, None)])
def test_both_frameworks_take_the_same_step(runs, key):
    torch_step, tf_step = runs["torch"][key], runs["tensorflow"][key]
    assert_arrays_close(tf_step.weights, torch_step.weights, what=str(key))
    assert _relative_difference(tf_step.weights, torch_step.weights) < UPDATE_RTOL
    np.testing.assert_allclose(tf_step.global_norm, torch_step.global_norm, rtol=1e-5)
    np.testing.assert_allclose(tf_step.worker_norms, torch_step.worker_norms, rtol=1e-5)


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
@pytest.mark.parametrize("max_norm", [MAX_NORM, None])
def test_single_process_step_is_the_reference(framework, max_norm):
    _, distributed = FRAMEWORKS[framework]
    step = distributed.single_process_step(WEIGHTS, SIZES, X, Y, lr=LR, max_norm=max_norm)
    assert step.clip == (None if max_norm is None else "after_allreduce")
    assert_arrays_close(step.weights, _reference_step(framework, max_norm))
    assert step.worker_norms == [step.global_norm]


BAD_ARGUMENTS = {
    "no workers": (dict(workers=0), "workers"),
    "bool workers": (dict(workers=True), "workers"),
    "uneven shards": (dict(workers=3), "equal shards"),
    "unknown clip": (dict(clip="sometimes"), "clip mode"),
    "no max_norm": (dict(clip="per_worker", max_norm=None), "max_norm"),
    "negative max_norm": (dict(max_norm=-1.0), "max_norm"),
    "several max_norms": (dict(max_norm=[1.0, 2.0]), "one number"),
    "zero lr": (dict(lr=0.0), "lr"),
    "unknown loss": (dict(loss="hinge"), "loss"),
    "too few weights": (dict(weights=WEIGHTS[:2]), "weights"),
    "wrong input width": (dict(x=X[:, :4]), "shape"),
    "label out of range": (dict(y=np.full(BATCH, SIZES[-1])), "labels"),
    "zero timeout": (dict(timeout=0), "timeout"),
}


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_raise_before_any_process_starts(framework, case, monkeypatch):
    _, distributed = FRAMEWORKS[framework]

    def no_processes(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(distributed, "run_worker_processes", no_processes)
    arguments = dict(weights=WEIGHTS, sizes=SIZES, x=X, y=Y, lr=LR, max_norm=MAX_NORM,
                     clip="after_allreduce", workers=WORKERS)
    change, message = BAD_ARGUMENTS[case]
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        distributed.data_parallel_step(**arguments)


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
@pytest.mark.parametrize("max_norm, message", [([], "empty"), ([1.0, np.nan], "max_norm"),
                                               ([1.0, -2.0], "max_norm")])
def test_bad_thresholds_of_a_comparison_raise_before_any_process_starts(
        framework, max_norm, message, monkeypatch):
    _, distributed = FRAMEWORKS[framework]
    monkeypatch.setattr(distributed, "run_worker_processes", None)  # calling it would fail
    with pytest.raises(ValueError, match=message):
        distributed.compare_data_parallel_clipping(WEIGHTS, SIZES, X, Y, lr=LR,
                                                   max_norm=max_norm)


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_data_parallel_step_is_one_entry_of_the_comparison(framework, monkeypatch):
    _, distributed = FRAMEWORKS[framework]
    calls = []

    def fake(*args, **kwargs):
        calls.append(kwargs)
        return {(kwargs["clips"][0], kwargs["max_norm"]): "the step"}

    monkeypatch.setattr(distributed, "compare_data_parallel_clipping", fake)
    step = distributed.data_parallel_step(WEIGHTS, SIZES, X, Y, lr=LR, max_norm=MAX_NORM,
                                          clip="per_worker", workers=WORKERS, timeout=5)
    assert step == "the step"
    assert calls[0]["clips"] == ("per_worker",) and calls[0]["workers"] == WORKERS
    assert calls[0]["timeout"] == 5


def _children() -> set:
    """Process ids of this process's children (Linux; empty where /proc is missing)."""
    found = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
                found.update(f.read().split())
        except OSError:
            pass
    return found


def test_a_failing_worker_raises_with_its_output_and_leaves_no_process():
    before = _children()
    with tempfile.TemporaryDirectory() as folder:
        # companion.core.distributed has no _worker_main: both workers fail on start.
        with pytest.raises(RuntimeError, match="_worker_main"):
            core_distributed.run_worker_processes("companion.core.distributed", 2, folder, timeout=60)
    assert _children() <= before


def test_a_slow_worker_times_out_and_is_stopped():
    before = _children()
    with tempfile.TemporaryDirectory() as folder:
        with pytest.raises(TimeoutError, match="within 0.2 s"):
            core_distributed.run_worker_processes("companion.torch.distributed", 2, folder, timeout=0.2)
    assert _children() <= before
