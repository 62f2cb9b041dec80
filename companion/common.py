"""Framework-neutral pieces that both back ends share.

Everything here is plain Python and NumPy: argument checking, initial weights, the
training history, the minibatch order and the gradient-norm recorder. Keeping them in one
place is what makes ``companion.torch`` and ``companion.tensorflow`` agree number for
number: both build their models from the same NumPy arrays and visit the same minibatches.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, field

import numpy as np

def share_cpu_between_frameworks() -> None:
    """Give PyTorch one CPU thread once TensorFlow is loaded in the same process.

    Both frameworks keep a pool of threads that busy-wait for work. On a laptop's few
    cores, TensorFlow's pool starves PyTorch's OpenMP threads: on this book's 2-core test
    machine, two epochs of the Chapter 1 MLP went from 0.1 s to 6-15 s after TensorFlow had
    run once. The book's small models gain nothing from a second PyTorch thread, so one is
    the better choice whenever both frameworks share a process. Each back end calls this
    on import; call ``torch.set_num_threads`` afterwards to choose otherwise.
    """
    if "torch" in sys.modules and "tensorflow" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear")
INITS = ("he", "glorot", "lecun")
LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("sgd", "adam")
RNN_NONLINEARITIES = ("tanh", "relu")


class NonFiniteError(FloatingPointError):
    """Training met a non-finite loss or gradient and stopped before applying it.

    Attributes:
        step: the optimisation step (0-based) whose loss or gradient was not finite.
        history: the :class:`History` up to, not including, that step.
    """

    def __init__(self, message: str, step: int, history: "History"):
        super().__init__(message)
        self.step = step
        self.history = history


@dataclass
class History:
    """What :func:`train` records, one entry per optimisation step.

    Attributes:
        loss: the minibatch's mean loss before the update.
        accuracy: the minibatch's accuracy (classification only, else empty).
        grad_norm: the global 2-norm of the minibatch gradient, before any clipping.
    """

    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.loss)


def check_choice(what: str, value, allowed) -> str:
    """Return ``value`` if it is one of ``allowed``; raise ``ValueError`` naming them if not."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return value


def check_positive(what: str, value, *, allow_inf: bool = False) -> float:
    """Return ``value`` as a float if it is a real number > 0 (finite unless ``allow_inf``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        allowed = "a number > 0 or inf" if allow_inf else "a finite number > 0"
        raise ValueError(f"{what} must be {allowed}, got {value}")
    return value


def check_positive_int(what: str, value) -> int:
    """Return ``value`` if it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def check_sizes(sizes) -> list:
    """Validate MLP layer sizes: at least two integers >= 1 (input and output)."""
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output size, got {sizes}")
    for size in sizes:
        check_positive_int("every layer size", size)
    return [int(s) for s in sizes]


def check_data(x, y, loss: str):
    """Check that ``x`` and ``y`` hold the same number of examples; return them as arrays."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(
            f"x and y must hold the same number of examples, got shapes {x.shape} and {y.shape}"
        )
    if len(x) == 0:
        raise ValueError("x and y are empty")
    if loss == "cross_entropy" and (y.ndim != 1 or not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(
            f"cross_entropy needs integer class labels of shape (n,), got {y.dtype} {y.shape}"
        )
    if loss == "cross_entropy":
        y = y.astype(np.int64, copy=False)  # torch rejects int32 targets, TensorFlow uint8
    return x, y


def resolve_seed(seed) -> int:
    """``seed`` if given, else a seed drawn from NumPy's global generator.

    :func:`seed_everything` seeds that generator, so after it both back ends draw the same
    seed and build the same model.
    """
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    return int(seed)


def init_std(init: str, fan_in: int, fan_out: int, gain: float) -> float:
    """Standard deviation of a zero-mean normal initialisation.

    * ``"he"`` (He et al. 2015): ``gain * sqrt(2 / fan_in)``, variance-preserving for ReLU;
    * ``"glorot"`` (Glorot & Bengio 2010): ``gain * sqrt(2 / (fan_in + fan_out))``;
    * ``"lecun"``: ``gain * sqrt(1 / fan_in)``, variance-preserving for linear layers.
    """
    check_choice("init", init, INITS)
    if init == "he":
        return gain * math.sqrt(2.0 / fan_in)
    if init == "glorot":
        return gain * math.sqrt(2.0 / (fan_in + fan_out))
    return gain * math.sqrt(1.0 / fan_in)


def mlp_initial_weights(sizes, init: str, gain: float, seed: int) -> list:
    """Canonical initial weights of an MLP: ``[W0 (out, in), b0, W1, b1, ...]``, biases zero."""
    rng = np.random.default_rng(seed)
    arrays = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        std = init_std(init, fan_in, fan_out, gain)
        arrays.append((std * rng.standard_normal((fan_out, fan_in))).astype(np.float32))
        arrays.append(np.zeros(fan_out, dtype=np.float32))
    return arrays


def rnn_initial_weights(input_size: int, hidden_size: int, output_size: int, gain: float,
                        seed: int) -> list:
    """Canonical initial weights of :func:`rnn`.

    ``[W_ih (H, I), W_hh (H, H), b (H), W_out (O, H), b_out (O)]`` with ``W_hh = gain * Q``
    for a random orthogonal ``Q``, so the recurrent matrix's spectral norm is exactly
    ``gain``; ``W_ih`` is LeCun-normal, ``W_out`` Glorot-normal, biases zero.
    """
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((hidden_size, hidden_size)))
    q *= np.sign(np.diag(r))  # makes Q uniformly (Haar) distributed
    w_ih = init_std("lecun", input_size, hidden_size, 1.0) * rng.standard_normal(
        (hidden_size, input_size))
    w_out = init_std("glorot", hidden_size, output_size, 1.0) * rng.standard_normal(
        (output_size, hidden_size))
    arrays = [w_ih, gain * q, np.zeros(hidden_size), w_out, np.zeros(output_size)]
    return [a.astype(np.float32) for a in arrays]


def minibatches(n: int, batch_size: int, epochs: int, seed: int):
    """Yield index arrays of shuffled minibatches, epoch after epoch.

    The order depends on ``seed`` only, so both back ends see the same batches. The last
    batch of an epoch may be smaller.
    """
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


def nonfinite_message(step: int, loss: float, grad_norm: float) -> str:
    """The message :class:`NonFiniteError` carries: what was not finite, at which step."""
    what = []
    if not math.isfinite(loss):
        what.append(f"loss = {loss}")
    if not math.isfinite(grad_norm):
        what.append(f"gradient norm = {grad_norm}")
    return (f"step {step}: {' and '.join(what)}; training stopped before applying this update "
            "(try a smaller learning rate, a better initialisation or gradient clipping)")


def norm_of_norms(norms, norm_type: float) -> float:
    """``||(n_1, ..., n_k)||_p``: the p-norm of all entries, from the per-tensor p-norms.

    Because ``||concat(g_i)||_p**p = sum_i ||g_i||_p**p``, the global norm is the p-norm of
    the per-tensor norms (for ``p = inf``, their maximum). An empty list has norm 0.
    """
    norms = np.asarray(list(norms), dtype=np.float64)
    if norms.size == 0:
        return 0.0
    if math.isinf(norm_type):
        return float(norms.max())
    return float(np.linalg.norm(norms, ord=norm_type))


def layer_norms_from(names, grads, tensor_norms, norm_type: float) -> dict:
    """Group per-tensor norms by layer: ``{layer: ||norms of its tensors||_p}``.

    ``tensor_norms`` holds one norm per non-``None`` entry of ``grads``; a layer's name is
    its parameters' name without the last part (``dense3.weight`` -> ``dense3``).
    """
    grads = list(grads)
    if len(grads) != len(names):
        raise ValueError(f"expected one gradient per trainable parameter ({len(names)}), "
                         f"got {len(grads)}")
    norms = iter(tensor_norms)
    per_layer: dict = {}
    for name, grad in zip(names, grads):
        if grad is not None:
            per_layer.setdefault(name.rpartition(".")[0] or name, []).append(next(norms))
    return {layer: norm_of_norms(values, norm_type) for layer, values in per_layer.items()}


class GradientNormRecorder:
    """Records gradient norms per step and flags non-finite values and spikes.

    Each back end's ``GradientMonitor`` supplies ``layer_norms(model, grads)``; this class
    turns gradients into norms with it, keeps them, decides what is a spike and plots them.

    A step is a *spike* when its total norm exceeds ``spike_factor`` times the median of the
    previous ``window`` finite total norms (at least ``min_history`` of them). The median is
    robust: one earlier spike does not hide the next.
    """

    def __init__(self, model, spike_factor: float = 10.0, window: int = 50,
                 min_history: int = 5):
        self.model = model
        self.spike_factor = check_positive("spike_factor", spike_factor)
        self.window = check_positive_int("window", window)
        self.min_history = check_positive_int("min_history", min_history)
        self.steps: list = []
        self.total: list = []
        self.layers: dict = {}
        self.nonfinite_steps: list = []
        self.spike_steps: list = []

    def record_norms(self, step: int, total: float, layers: dict) -> None:
        """Store one step's total norm and per-layer norms, and classify the step."""
        recent = [t for t in self.total[-self.window:] if math.isfinite(t)]
        if not math.isfinite(total) or not all(map(math.isfinite, layers.values())):
            self.nonfinite_steps.append(step)
        elif len(recent) >= self.min_history and total > self.spike_factor * np.median(recent):
            self.spike_steps.append(step)
        self.steps.append(step)
        self.total.append(float(total))
        for name, value in layers.items():
            self.layers.setdefault(name, []).append(float(value))

    def record(self, step: int, grads) -> None:
        """Record the gradients (aligned with the model's parameters) of one step."""
        per_layer = self.layer_norms(self.model, grads)
        self.record_norms(step, norm_of_norms(per_layer.values(), 2.0), per_layer)

    def summary(self) -> dict:
        """Steps recorded, median and max finite total norm, non-finite and spike steps."""
        finite = [t for t in self.total if math.isfinite(t)]
        return {
            "steps": len(self.steps),
            "median_norm": float(np.median(finite)) if finite else float("nan"),
            "max_norm": max(finite) if finite else float("nan"),
            "nonfinite_steps": list(self.nonfinite_steps),
            "spike_steps": list(self.spike_steps),
        }

    def plot(self, ax=None, layers: bool = True):
        """Plot total (and per-layer) norms against the step on a log scale; mark spikes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3.5))
        if layers:
            for name, values in self.layers.items():
                ax.plot(self.steps, values, lw=0.8, alpha=0.6, label=name)
        ax.plot(self.steps, self.total, color="black", lw=1.5, label="total")
        spikes = [self.total[self.steps.index(s)] for s in self.spike_steps]
        ax.scatter(self.spike_steps, spikes, color="red", zorder=3, label="spike")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("gradient norm")
        ax.legend(fontsize="small", ncol=2)
        return ax


SCOPES = ("global", "layer")


def check_sparsity(sparsity) -> float:
    """Return ``sparsity`` as a float if it lies in [0, 1); raise ``ValueError`` if not."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1), got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return float(sparsity)


def lowest_score_masks(scores, eligible, sparsity: float, scope: str) -> list:
    """0/1 masks that prune the ``round(sparsity * n)`` lowest-scoring eligible entries.

    ``scores`` are canonical-layout arrays; ``eligible[i]`` says whether tensor ``i`` may be
    pruned (its mask is ``None`` otherwise). With ``scope="global"`` the ``n`` eligible
    entries compete together; with ``"layer"`` each tensor loses ``round(sparsity * n_i)``
    of its own. Ties are broken by position (tensor order, then row-major canonical index),
    so the masks are the same in every back end. ``round`` is Python's, as in
    ``torch.nn.utils.prune``.
    """
    check_choice("scope", scope, SCOPES)
    chosen = [i for i, ok in enumerate(eligible) if ok]
    for i in chosen:
        if not np.all(np.isfinite(scores[i])):
            raise ValueError(f"scores of parameter {i} contain nan or inf")
    groups = [chosen] if scope == "global" else [[i] for i in chosen]
    masks = [None] * len(scores)
    for group in groups:
        flat = np.concatenate([np.ravel(scores[i]).astype(np.float64) for i in group]) if group \
            else np.zeros(0)
        keep = np.ones(flat.size, dtype=bool)
        keep[np.argsort(flat, kind="stable")[:round(sparsity * flat.size)]] = False
        offsets = np.cumsum([0] + [np.size(scores[i]) for i in group])
        for i, start, stop in zip(group, offsets[:-1], offsets[1:]):
            masks[i] = keep[start:stop].reshape(np.shape(scores[i])).astype(np.float32)
    return masks
