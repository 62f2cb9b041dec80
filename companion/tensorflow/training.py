"""Losses, gradients, evaluation and a training loop, TensorFlow back end.

**The mode rule.** :func:`train` calls the model with ``training=True`` (Dropout on,
BatchNorm normalising by the batch and updating its moving statistics). Everything that
measures (:func:`evaluate`, :func:`predict`, :func:`loss_value`, :func:`gradients`, the
pruning scores, curvature) calls it with ``training=False``, so it gives the same numbers
on every call and changes no moving statistic; the gradient is then the gradient of
:func:`loss_value`.
"""

from __future__ import annotations

import math
import sys

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from ..core.checks import (check_data, check_label_outputs, check_loss,
                           check_masks, check_positive_int)
from ..core.training import (History, NonFiniteError, check_train_args,
                             nonfinite_clip_message, nonfinite_message, scheduled_lr)
from .batches import (_batch_mean, _batches, _mean_loss, _numpy, step_count,
                      check_data_source, check_model_data, checked_batches, input_arrays)
from .clipping import Clip, clip_function
from .diagnostics import total_norm
from .layout import parameter_names, trainable_parameters
from .runtime import as_tensor, compiled_for

__all__ = ["loss_value", "gradients", "input_gradients", "predict", "evaluate", "train"]

# What ``train`` accepts besides the names "sgd" and "adam".
OPTIMIZER_TYPE = (keras.optimizers.Optimizer, "keras.optimizers.Optimizer")


def loss_value(model, x, y=None, loss="cross_entropy") -> tf.Tensor:
    """The mean loss of ``model`` on ``(x, y)`` as a scalar tensor (differentiable).

    * ``"cross_entropy"``: ``-(1/n) sum_i log softmax(f(x_i))_{y_i}``; the model returns
      logits and ``y`` holds integer class labels; logits ``(n, T, C)`` and labels
      ``(n, T)`` (a sequence model) give the mean over all ``n T`` positions.
    * ``"mse"``: ``(1/(n d)) sum_i ||f(x_i) - y_i||^2``, the mean over every entry.

    Args:
        model: a model that returns logits (``"cross_entropy"``) or predictions (``"mse"``).
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (then ``y`` is ``None``;
            see :func:`companion.core.checks.is_data_source`).
        y: for ``"cross_entropy"``, integer labels ``(n,)`` (or ``(n, T)``); for ``"mse"``,
            the targets, ``d`` values per example.
        loss: ``"cross_entropy"``, ``"mse"`` or a function ``(targets, outputs) -> mean
            loss`` such as a ``keras.losses`` object (see
            :func:`companion.core.checks.check_loss`).

    Raises:
        ValueError: an unknown loss, ``x`` and ``y`` of different lengths or empty, or (for
            ``"cross_entropy"``) ``y`` not integer labels that match the outputs.
        TypeError: a loss that is neither a name nor a function, ``y`` missing with arrays
            or given with a data source, or a one-pass iterator as ``x``.
    """
    loss = check_loss(loss)
    if check_data_source(x, y):
        return _batch_mean(lambda xb, yb: loss_value(model, xb, yb, loss), x, loss)
    x, y = check_model_data(model, x, y, loss)
    like = trainable_parameters(model)[0]
    return _mean_loss(model(as_tensor(x, like), training=False), as_tensor(y, like), loss)


def _compiled_gradients(model, loss: str, training: bool):
    """A ``tf.function`` ``(x, y) -> (loss, output, grads, ||grads||_2)``, made once per
    model, loss, mode and set of trainable variables (it captures them when it traces, so
    after ``layer.trainable = ...`` a new one is made).

    ``training`` is the Keras call's mode: ``True`` to train (Dropout on, BatchNorm on the
    batch's statistics, updating its moving ones), ``False`` to measure. The norm is
    :func:`total_norm` (float64), as ``global_norm`` in the PyTorch loop.
    """
    variables = trainable_parameters(model)

    def make():
        @tf.function(reduce_retracing=True)
        def loss_output_gradients(x, y):
            with tf.GradientTape() as tape:
                output = model(x, training=training)
                value = _mean_loss(output, y, loss)
            grads = tape.gradient(value, variables)
            return value, output, grads, total_norm(grads)

        return loss_output_gradients

    return compiled_for(model, ("gradients", loss, training), make)


def gradients(model, x, y=None, loss="cross_entropy") -> list:
    """``[dL/dθ for θ in trainable variables]`` of the mean loss on ``(x, y)``.

    The gradients are returned; the model is not changed.

    Args:
        model: a model that returns logits (``"cross_entropy"``) or predictions (``"mse"``).
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (then ``y`` is ``None``;
            see :func:`companion.core.checks.is_data_source`).
        y: for ``"cross_entropy"``, integer labels ``(n,)`` (or ``(n, T)``); for ``"mse"``,
            the targets, ``d`` values per example.
        loss: ``"cross_entropy"``, ``"mse"`` or a function ``(targets, outputs) -> mean
            loss`` such as a ``keras.losses`` object (see
            :func:`companion.core.checks.check_loss`).

    Raises:
        ValueError: an unknown loss, ``x`` and ``y`` of different lengths or empty, or (for
            ``"cross_entropy"``) ``y`` not integer labels that match the outputs.
        TypeError: a loss that is neither a name nor a function, ``y`` missing with arrays
            or given with a data source, or a one-pass iterator as ``x``.
    """
    loss = check_loss(loss)
    if check_data_source(x, y):
        return _batch_mean(lambda xb, yb: gradients(model, xb, yb, loss), x, loss)
    x, y = check_model_data(model, x, y, loss)
    like = trainable_parameters(model)[0]
    compiled = _compiled_gradients(model, loss, training=False)
    _, _, grads, _ = compiled(as_tensor(x, like), as_tensor(y, like))
    return list(grads)


def input_gradients(model, x, y=None, loss="cross_entropy") -> np.ndarray:
    """``dL/dx``: the gradient of the mean loss with respect to the inputs, as NumPy.

    Same shape as ``x``. For a sequence model, ``||dL/dx_t||`` against ``t`` shows how far
    back in time the gradient reaches (it vanishes or explodes with the distance ``T - t``).

    Args:
        model: a model that returns logits (``"cross_entropy"``) or predictions (``"mse"``).
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (then ``y`` is ``None``;
            see :func:`companion.core.checks.is_data_source`).
        y: for ``"cross_entropy"``, integer labels ``(n,)`` (or ``(n, T)``); for ``"mse"``,
            the targets, ``d`` values per example.
        loss: ``"cross_entropy"``, ``"mse"`` or a function ``(targets, outputs) -> mean
            loss`` such as a ``keras.losses`` object (see
            :func:`companion.core.checks.check_loss`).

    Raises:
        ValueError: an unknown loss, ``x`` and ``y`` of different lengths or empty, or (for
            ``"cross_entropy"``) ``y`` not integer labels that match the outputs.
        TypeError: a loss that is neither a name nor a function, ``y`` missing with arrays
            or given with a data source, or a one-pass iterator as ``x``.
    """
    loss = check_loss(loss)
    if check_data_source(x, y):
        parts = [(len(xb), input_gradients(model, xb, yb, loss))
                 for xb, yb in checked_batches(x, loss, _numpy)]
        count = sum(n for n, _ in parts)
        return np.concatenate([part * (n / count) for n, part in parts])
    x, y = check_model_data(model, x, y, loss)
    like = trainable_parameters(model)[0]
    # [input-gradients]
    inputs = as_tensor(x, like)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        value = _mean_loss(model(inputs, training=False), as_tensor(y, like), loss)
    return tape.gradient(value, inputs).numpy()
    # [input-gradients-end]


def predict(model, x, batch_size: int = 1024) -> np.ndarray:
    """The model's outputs on ``x`` as a NumPy array: logits for a classifier.

    Computed without gradients, ``batch_size`` examples at a time;
    ``predict(model, x).argmax(axis=1)`` gives the predicted classes.

    Args:
        model: a model of this back end, e.g. from :func:`mlp` or :func:`rnn`.
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            whose batches are inputs or ``(x, y)`` pairs (``y`` is ignored).
        batch_size: examples per forward pass, an integer >= 1 (bounds memory only; a data
            source brings its own batches).

    Raises:
        ValueError: ``x`` empty or without an example axis, or a ``batch_size`` that is
            not an integer >= 1.
    """
    batches = input_arrays(x, batch_size)
    like = trainable_parameters(model)[0]
    return np.concatenate([model(as_tensor(xb, like), training=False).numpy()
                           for xb in batches])


def evaluate(model, x, y=None, loss="cross_entropy", batch_size: int = 1024) -> dict:
    """Mean loss, and accuracy for ``"cross_entropy"``, over all of ``(x, y)``.

    Returns ``{"loss": float, "accuracy": float}`` (``{"loss": float}`` for ``"mse"``).
    Batches only bound memory; the result is the mean over every example (every position
    of every sequence for labels ``(n, T)``).

    Args:
        model: a model that returns logits (``"cross_entropy"``) or predictions (``"mse"``).
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``tf.data.Dataset`` (then ``y`` is ``None``;
            see :func:`companion.core.checks.is_data_source`).
        y: for ``"cross_entropy"``, integer labels ``(n,)`` (or ``(n, T)``); for ``"mse"``,
            the targets, ``d`` values per example.
        loss: ``"cross_entropy"``, ``"mse"`` or a function ``(targets, outputs) -> mean
            loss`` such as a ``keras.losses`` object (see
            :func:`companion.core.checks.check_loss`).
        batch_size: examples per forward pass, an integer >= 1 (bounds memory only).

    Raises:
        ValueError: an unknown loss, ``x`` and ``y`` of different lengths or empty, ``y``
            not integer labels that match the outputs (``"cross_entropy"``), or a
            ``batch_size`` that is not an integer >= 1.
        TypeError: a loss that is neither a name nor a function, ``y`` missing with arrays
            or given with a data source, or a one-pass iterator as ``x``.
    """
    loss = check_loss(loss)
    batch_size = check_positive_int("batch_size", batch_size)
    if check_data_source(x, y):
        batches = checked_batches(x, loss, _numpy)
    else:
        x, y = check_data(x, y, loss)
        batches = ((x[start:start + batch_size], y[start:start + batch_size])
                   for start in range(0, len(x), batch_size))
    like = trainable_parameters(model)[0]
    total_loss, correct, count, positions = 0.0, 0, 0, 0
    for xb, yb in batches:
        output = model(as_tensor(xb, like), training=False)
        if loss == "cross_entropy":
            check_label_outputs(yb, output.shape)
            correct += int(np.sum(np.argmax(output.numpy(), axis=-1) == yb))
            positions += yb.size
        total_loss += float(_mean_loss(output, as_tensor(yb, like), loss)) * len(xb)
        count += len(xb)
    result = {"loss": total_loss / count}
    if loss == "cross_entropy":
        result["accuracy"] = correct / positions
    return result


def _optimizer(model, optimizer, lr, momentum):
    """The optimizer of :func:`train`: a new one by name, or the caller's, checked not to
    be built for another model's variables."""
    lr = 0.0 if callable(lr) else lr  # a schedule sets it before every step
    if optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    if optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if optimizer.built:
        held = {id(v) for v in optimizer._trainable_variables}  # set by Keras' build()
        missing = [name for name, v in zip(parameter_names(model),
                                           trainable_parameters(model)) if id(v) not in held]
        if missing:
            raise ValueError(f"the optimizer was built for other variables, not {missing}: "
                             "pass a new optimizer or the one built for this model")
    return optimizer


def _mask_weights(masked) -> None:
    for variable, mask in masked:
        variable.assign(variable * mask)


def train(model, x, y=None, *, epochs: int, lr: float | None = None,
          batch_size: int | None = None, optimizer="sgd", momentum: float = 0.0,
          loss="cross_entropy", clip=None, monitor=None, masks=None, progress: bool = True,
          seed: int = 0) -> History:
    """Minibatch training of ``model`` on ``(x, y)``; returns a :class:`History`.

    Each step takes the next shuffled minibatch (the order depends on ``seed`` only, the
    same in both back ends), computes the mean loss and its gradient ``g``, records
    ``||g||_2`` (and hands ``g`` to ``monitor``), applies ``clip`` if given, and takes an
    optimizer step: SGD ``v <- momentum v + g; θ <- θ - lr v`` (Keras' equivalent form),
    Adam, or the caller's own ``keras.optimizers.Optimizer`` (its learning rate, momentum
    and schedule are its own, so ``lr`` and ``momentum`` stay unset). With ``masks`` the
    pruned entries stay exactly zero: masked before training, their gradients zeroed before
    each step (so optimizer state stays zero there) and re-masked after it.

    Adam is each framework's own (``torch.optim.Adam``, ``keras.optimizers.Adam``); they
    add epsilon at different places, so Adam runs agree across back ends only to about
    1e-3, while SGD runs agree to float32 rounding.

    ``x`` may be a data source of ``(x, y)`` batches, e.g. a ``tf.data.Dataset`` (``y``
    and ``batch_size`` then stay unset): each epoch is one pass over it, in its own order,
    and its labels are checked batch by batch, so a bad label stops training at its batch.

    Args:
        x, y: arrays (one example per row), or a data source as ``x`` and ``y=None``.
        epochs: passes over the data, an integer >= 1.
        lr: the learning rate of ``optimizer="sgd"`` or ``"adam"``: a finite number > 0,
            or a schedule ``step -> lr`` (e.g. :func:`warmup_schedule`) read before each
            step, the first being step 0.
        batch_size: examples per step with arrays, an integer >= 1.
        optimizer: ``"sgd"``, ``"adam"`` or a ``keras.optimizers.Optimizer``.
        momentum: SGD's momentum, in ``[0, 1)``.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        clip: ``None``, a rule such as ``Clip("global_norm", 1.0)`` (see
            :class:`companion.core.clipping.Clip`), or any function ``grads -> grads``; applied
            to every gradient before its update.
        monitor: e.g. a :class:`GradientMonitor`; its ``record(step, grads)`` sees the raw
            (unclipped) gradients of every step, including one that is not finite.
        masks: ``None``, or one 0/1 tensor (or ``None``) per trainable variable, e.g.
            from :func:`prune`: the pruned weights to keep at zero.
        progress: show a tqdm progress bar (on stdout) with the running loss.

    Raises:
        NonFiniteError: the loss or the gradient norm is ``nan`` or ``inf`` at some step. The
            message names the step; the update of that step is not applied, and the error's
            ``history`` holds the steps before it.
        ValueError, TypeError: bad arguments (e.g. a ``clip`` that is none of the above),
            before anything is changed.
    """
    return _train(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size,
                  optimizer=optimizer, momentum=momentum, loss=loss, clip=clip,
                  monitor=monitor, masks=masks, progress=progress, seed=seed)


def _checked_masks(variables, names, masks) -> list:
    """Checked masks as tensors of the variables' dtypes (``None`` stays ``None``)."""
    return [None] * len(variables) if masks is None else [
        None if m is None else tf.cast(m, v.dtype)
        for v, m in zip(variables, check_masks(names, variables, masks))]


def _train(model, x, y, *, epochs, lr, batch_size, optimizer, momentum, loss, clip, monitor,
           masks, progress, seed, before_step=None) -> History:
    """The loop of :func:`train`, with a hook for gradual pruning.

    ``before_step(step)``, if given, runs at the start of every step, before the
    minibatch's gradient. If it returns masks, they replace ``masks`` from that step on
    and are applied to the weights at once; they must be ``None`` exactly where ``masks``
    is (the masks live in variables that the compiled update reads).
    """
    x, y = check_train_args(x, y, epochs, lr, batch_size, optimizer, momentum, loss,
                            monitor, optimizer_type=OPTIMIZER_TYPE)
    if y is not None:
        x, y = check_model_data(model, x, y, loss)
    variables = trainable_parameters(model)
    names = parameter_names(model)
    # A Clip rule is made of TensorFlow ops and runs inside the compiled update; a function
    # of the user's may not be graph-safe, so it runs eagerly before it.
    compiled_clip = clip_function(clip, variables) if isinstance(clip, Clip) else None
    eager_clip = None if isinstance(clip, Clip) else clip_function(clip, variables)
    masks = [None if m is None else tf.Variable(m, trainable=False)
             for m in _checked_masks(variables, names, masks)]
    masked = [(v, m) for v, m in zip(variables, masks) if m is not None]
    _mask_weights(masked)
    opt = _optimizer(model, optimizer, lr, momentum)
    step_gradients = _compiled_gradients(model, loss, training=True)

    # Keras' own fit() compiles the update too; eagerly it costs ~10x the gradient.
    @tf.function
    def apply_update(grads):
        grads = list(grads if compiled_clip is None else compiled_clip(grads))
        grads = [g if m is None else g * m for g, m in zip(grads, masks)]
        opt.apply_gradients(zip(grads, variables))
        _mask_weights(masked)
    history = History()
    total = step_count(x, y, batch_size, epochs)
    with tqdm(total=total, desc="train", file=sys.stdout, disable=not progress) as bar:
        for step, (xb, yb) in enumerate(_batches(x, y, batch_size, epochs, seed, loss)):
            new_masks = None if before_step is None else before_step(step)
            if new_masks is not None:
                for mask, new in zip(masks, _checked_masks(variables, names, new_masks)):
                    if (mask is None) != (new is None):
                        raise ValueError("before_step must return masks that are None "
                                         "exactly where the initial masks are")
                    if mask is not None:
                        mask.assign(new)
                _mask_weights(masked)
            target = as_tensor(yb, variables[0])
            batch_loss, output, grads, norm = step_gradients(as_tensor(xb, variables[0]),
                                                             target)
            if y is None and loss == "cross_entropy":  # a source's labels, batch by batch
                check_label_outputs(yb, output.shape)
            grads = list(grads)
            loss_item, norm = float(batch_loss), float(norm)
            if monitor is not None:
                monitor.record(step, grads)
            if not (math.isfinite(loss_item) and math.isfinite(norm)):
                raise NonFiniteError(nonfinite_message(step, loss_item, norm), step, history)
            history.loss.append(loss_item)
            history.grad_norm.append(norm)
            if loss == "cross_entropy":
                history.accuracy.append(float(np.mean(np.argmax(output.numpy(), axis=-1)
                                                      == yb)))
            if eager_clip is not None:
                grads = eager_clip(grads)
                if not math.isfinite(float(total_norm(grads))):
                    raise NonFiniteError(nonfinite_clip_message(step), step, history)
            rate = scheduled_lr(lr, step)
            if rate is not None:
                opt.learning_rate = rate
            apply_update(grads)
            bar.update()
            bar.set_postfix(loss=f"{loss_item:.4f}", refresh=False)
    return history
