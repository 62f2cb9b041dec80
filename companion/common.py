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
DTYPES = ("float32", "float64")
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


def check_inputs(x) -> np.ndarray:
    """Return ``x`` as an array if it holds at least one example along axis 0.

    Raises:
        ValueError: ``x`` is a scalar or empty.
    """
    x = np.asarray(x)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"x must hold at least one example along axis 0, got shape {x.shape}")
    return x


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


def check_labels(y: np.ndarray, classes: int) -> None:
    """Check that integer labels ``y`` name one of ``classes`` outputs: ``0 <= y < classes``.

    Without it a label out of range is an ``IndexError`` in PyTorch, an
    ``InvalidArgumentError`` in TensorFlow on the CPU, and a silent ``nan`` loss in
    TensorFlow on a GPU.

    Raises:
        ValueError: a label below 0 or at least ``classes``.
    """
    low, high = int(np.min(y)), int(np.max(y))
    if low < 0 or high >= classes:
        raise ValueError(f"class labels must be in [0, {classes}) for a model with {classes} "
                         f"outputs, got labels from {low} to {high}")


def check_train_args(x, y, epochs, lr, batch_size, optimizer, momentum, loss, monitor):
    """Validate ``train``'s arguments (both back ends); return ``x, y`` as arrays."""
    check_positive_int("epochs", epochs)
    check_positive("lr", lr)
    check_positive_int("batch_size", batch_size)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if momentum and optimizer != "sgd":
        raise ValueError("momentum applies to optimizer='sgd' only")
    check_choice("loss", loss, LOSSES)
    if monitor is not None and not hasattr(monitor, "record"):
        raise TypeError("monitor must have a record(step, grads) method, e.g. GradientMonitor")
    return check_data(x, y, loss)


def check_matching_shapes(names, params, tensors, what: str) -> list:
    """Check that ``tensors`` has one entry per parameter, each ``None`` or of its shape."""
    tensors = list(tensors)
    if len(tensors) != len(params):
        raise ValueError(f"expected one {what} entry per trainable parameter "
                         f"({len(params)}), got {len(tensors)}")
    for name, param, tensor in zip(names, params, tensors):
        if tensor is not None and tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(f"{what} for {name} has shape {tuple(tensor.shape)}, "
                             f"the parameter has {tuple(param.shape)}")
    return tensors


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
    finite values among the previous ``window`` total norms (at least ``min_history`` of
    them). The median is robust: one earlier spike does not hide the next.
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


def data_batches(n: int, batch_size: int):
    """Yield ``slice`` objects that cover ``range(n)`` in order, ``batch_size`` at a time.

    Scores that sum over the whole data set (``gradient_scores``, ...) use these: the
    order is fixed, so the sums are the same in both back ends.
    """
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def random_canonical_scores(shapes, seed: int) -> list:
    """Uniform ``[0, 1)`` scores for parameters of canonical ``shapes``, from ``seed``.

    Drawn in NumPy in the canonical layout, so a seed prunes the same entries in both back
    ends. As a pruning criterion this is the baseline every saliency must beat.
    """
    rng = np.random.default_rng(resolve_seed(seed))
    return [rng.random(shape) for shape in shapes]


def check_masks(names, params, masks) -> list:
    """Check that ``masks`` is aligned with ``params`` and holds only 0s and 1s."""
    masks = check_matching_shapes(names, params, masks, "mask")
    for name, mask in zip(names, masks):
        if mask is None:
            continue
        # A torch tensor may live on a GPU; .detach().cpu() brings it to NumPy's reach.
        values = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        if not np.all((values == 0) | (values == 1)):
            raise ValueError(f"mask for {name} must hold only 0 and 1")
    return masks


@dataclass(frozen=True)
class SparsityRow:
    """One line of a :class:`SparsityReport`: a parameter and how many of its entries are 0."""

    name: str
    shape: tuple
    zeros: int
    size: int

    @property
    def sparsity(self) -> float:
        """The fraction of entries that are exactly zero."""
        return self.zeros / self.size if self.size else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Per-parameter and total sparsity (fraction of exact zeros) of a model.

    ``weights`` totals the parameters with two or more dimensions (what pruning removes),
    ``total`` every parameter. ``str(report)`` is a table a notebook can print.
    """

    rows: tuple

    @classmethod
    def from_arrays(cls, names, arrays) -> "SparsityReport":
        """The report of canonical-layout ``arrays`` named ``names``."""
        return cls(tuple(SparsityRow(name, tuple(np.shape(a)), int(np.sum(np.asarray(a) == 0)),
                                     int(np.size(a))) for name, a in zip(names, arrays)))

    @staticmethod
    def _sum(label: str, rows) -> SparsityRow:
        return SparsityRow(label, (), sum(r.zeros for r in rows), sum(r.size for r in rows))

    def _totals(self) -> list:
        weights = [r for r in self.rows if len(r.shape) >= 2]
        return [self._sum("weights", weights), self._sum("total", self.rows)]

    @property
    def weights(self) -> float:
        """Sparsity over all parameters with two or more dimensions."""
        return self._totals()[0].sparsity

    @property
    def total(self) -> float:
        """Sparsity over every parameter, biases included."""
        return self._totals()[1].sparsity

    def __str__(self) -> str:
        lines = [f"{'parameter':<16}{'shape':>10}{'zeros':>8}{'size':>8}{'sparsity':>10}"]
        for r in (*self.rows, *self._totals()):
            shape = "x".join(map(str, r.shape))
            lines.append(f"{r.name:<16}{shape:>10}{r.zeros:>8}{r.size:>8}{r.sparsity:>10.2%}")
        return "\n".join(lines)


def check_clip_inputs(grads, params):
    """Check that ``grads`` and ``params`` are aligned lists of equal shapes; return lists."""
    grads, params = list(grads), list(params)
    if len(grads) != len(params):
        raise ValueError(f"grads and params must have the same length, got {len(grads)} "
                         f"and {len(params)}")
    for i, (g, w) in enumerate(zip(grads, params)):
        if g is not None and tuple(g.shape) != tuple(w.shape):
            raise ValueError(f"gradient {i} has shape {tuple(g.shape)}; it must have its "
                             f"parameter's shape {tuple(w.shape)}")
    return grads, params


def nonfinite_norm_message(total: float, norm_type: float) -> str:
    """The message of the error raised for a non-finite global gradient norm."""
    return (f"the total gradient norm of order {norm_type} is {total}; nothing was clipped "
            "(pass error_if_nonfinite=False to get all-nan gradients instead)")


CLIP_RULES = ("value", "norm", "global_norm", "adaptive")


@dataclass(frozen=True)
class Clip:
    """A clipping rule for ``train(..., clip=Clip(...))``, the same object for both back ends.

    * ``Clip("value", c)``: :func:`clip_by_value` with ``clip_value=c``;
    * ``Clip("norm", c)``: :func:`clip_by_norm`, each tensor to norm ``<= c``;
    * ``Clip("global_norm", c, norm_type=p)``: :func:`clip_by_global_norm`;
    * ``Clip("adaptive", lam, eps=e)``: :func:`adaptive_clip` relative to the weights.

    Raises:
        ValueError: an unknown rule, or a threshold, ``norm_type`` or ``eps`` that is not
            a number > 0 (``norm_type`` may be inf).
    """

    rule: str
    threshold: float
    norm_type: float = 2.0
    eps: float = 1e-3

    def __post_init__(self):
        check_choice("clip rule", self.rule, CLIP_RULES)
        check_positive("clip threshold", self.threshold)
        check_positive("norm_type", self.norm_type, allow_inf=True)
        check_positive("eps", self.eps)
        if self.norm_type != 2.0 and self.rule != "global_norm":
            raise ValueError(f"norm_type applies to the 'global_norm' rule only, not {self.rule!r}")
        if self.eps != 1e-3 and self.rule != "adaptive":
            raise ValueError(f"eps applies to the 'adaptive' rule only, not {self.rule!r}")


def resolve_clip(clip, params, rules):
    """``clip`` as a function ``grads -> grads``, using a back end's clipping module ``rules``.

    ``None`` and plain functions are returned as they are; a :class:`Clip` becomes a call of
    the matching function of ``rules`` (``clip_by_value``, ``clip_by_norm``,
    ``clip_by_global_norm`` or ``adaptive_clip``).
    """
    if clip is None or (callable(clip) and not isinstance(clip, Clip)):
        return clip
    if not isinstance(clip, Clip):
        raise TypeError("clip must be None, a Clip(...) rule or a function grads -> grads, "
                        f"got {type(clip).__name__}")
    if clip.rule == "value":
        return lambda grads: rules.clip_by_value(grads, clip.threshold)
    if clip.rule == "norm":
        return lambda grads: rules.clip_by_norm(grads, clip.threshold)
    if clip.rule == "global_norm":
        return lambda grads: rules.clip_by_global_norm(grads, clip.threshold, clip.norm_type)[0]
    return lambda grads: rules.adaptive_clip(grads, params, clip.threshold, clip.eps)


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
    root = str(Path(__file__).resolve().parent.parent)  # so workers import this companion
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
