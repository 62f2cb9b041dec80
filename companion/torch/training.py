"""Losses, gradients, evaluation and a training loop, PyTorch back end."""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from tqdm import tqdm

from ..core.checks import (check_data, check_label_outputs, check_loss,
                           check_masks, check_positive_int)
from ..core.training import (History, NonFiniteError, check_train_args,
                             nonfinite_clip_message, nonfinite_message, scheduled_lr)
from .batches import (_batch_mean, _batches, _mean_loss, _numpy, step_count, minibatches,
                      check_data_source, check_model_data, checked_batches, input_arrays)
from .clipping import Clip, clip_function
from .diagnostics import _trustworthy, global_norm, total_norm
from .layout import parameter_names, trainable_parameters
from .runtime import as_tensor, measured_in_inference_mode, training_mode

__all__ = ["loss_value", "gradients", "input_gradients", "predict", "evaluate", "train"]

# What ``train`` accepts besides the names "sgd" and "adam".
OPTIMIZER_TYPE = (torch.optim.Optimizer, "torch.optim.Optimizer")


@measured_in_inference_mode
def loss_value(model, x, y=None, loss="cross_entropy") -> torch.Tensor:
    """The mean loss of ``model`` on ``(x, y)`` as a scalar tensor (differentiable).

    * ``"cross_entropy"``: ``-(1/n) sum_i log softmax(f(x_i))_{y_i}``; the model returns
      logits and ``y`` holds integer class labels; logits ``(n, T, C)`` and labels
      ``(n, T)`` (a sequence model) give the mean over all ``n T`` positions.
    * ``"mse"``: ``(1/(n d)) sum_i ||f(x_i) - y_i||^2``, the mean over every entry.

    Runs in inference mode (``model.eval()``: Dropout off, BatchNorm on its running
    statistics) and gives every module back its mode; no buffer changes.

    Args:
        model: a model that returns logits (``"cross_entropy"``) or predictions (``"mse"``).
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (then ``y`` is ``None``; see
            :func:`companion.core.checks.is_data_source`).
        y: for ``"cross_entropy"``, integer labels ``(n,)`` (or ``(n, T)``); for ``"mse"``,
            the targets, ``d`` values per example.
        loss: ``"cross_entropy"``, ``"mse"`` or a function ``(outputs, targets) -> mean
            loss`` (see :func:`companion.core.checks.check_loss`).

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
    return _mean_loss(model(as_tensor(x, like)), as_tensor(y, like), loss)


@measured_in_inference_mode
def gradients(model, x, y=None, loss="cross_entropy") -> list:
    """``[dL/dθ for θ in trainable parameters]`` of the mean loss on ``(x, y)``.

    The gradients are returned, not stored in ``.grad``: the model is not changed.
    Runs in inference mode (``model.eval()``: Dropout off, BatchNorm on its running
    statistics) and gives every module back its mode; no buffer changes.

    Args:
        model: a model that returns logits (``"cross_entropy"``) or predictions (``"mse"``).
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (then ``y`` is ``None``; see
            :func:`companion.core.checks.is_data_source`).
        y: for ``"cross_entropy"``, integer labels ``(n,)`` (or ``(n, T)``); for ``"mse"``,
            the targets, ``d`` values per example.
        loss: ``"cross_entropy"``, ``"mse"`` or a function ``(outputs, targets) -> mean
            loss`` (see :func:`companion.core.checks.check_loss`).

    Raises:
        ValueError: an unknown loss, ``x`` and ``y`` of different lengths or empty, or (for
            ``"cross_entropy"``) ``y`` not integer labels that match the outputs.
        TypeError: a loss that is neither a name nor a function, ``y`` missing with arrays
            or given with a data source, or a one-pass iterator as ``x``.
    """
    if check_data_source(x, y):
        loss = check_loss(loss)
        return _batch_mean(lambda xb, yb: gradients(model, xb, yb, loss), x, loss)
    return list(torch.autograd.grad(loss_value(model, x, y, loss), trainable_parameters(model)))


@measured_in_inference_mode
def input_gradients(model, x, y=None, loss="cross_entropy") -> np.ndarray:
    """``dL/dx``: the gradient of the mean loss with respect to the inputs, as NumPy.

    Same shape as ``x``. For a sequence model, ``||dL/dx_t||`` against ``t`` shows how far
    back in time the gradient reaches (it vanishes or explodes with the distance ``T - t``).
    Runs in inference mode (``model.eval()``: Dropout off, BatchNorm on its running
    statistics) and gives every module back its mode; no buffer changes.

    Args:
        model: a model that returns logits (``"cross_entropy"``) or predictions (``"mse"``).
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (then ``y`` is ``None``; see
            :func:`companion.core.checks.is_data_source`).
        y: for ``"cross_entropy"``, integer labels ``(n,)`` (or ``(n, T)``); for ``"mse"``,
            the targets, ``d`` values per example.
        loss: ``"cross_entropy"``, ``"mse"`` or a function ``(outputs, targets) -> mean
            loss`` (see :func:`companion.core.checks.check_loss`).

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
    inputs = as_tensor(x, like).requires_grad_(True)
    value = _mean_loss(model(inputs), as_tensor(y, like), loss)
    return torch.autograd.grad(value, inputs)[0].cpu().numpy()
    # [input-gradients-end]


@measured_in_inference_mode
def predict(model, x, batch_size: int = 1024) -> np.ndarray:
    """The model's outputs on ``x`` as a NumPy array: logits for a classifier.

    Computed without gradients, ``batch_size`` examples at a time;
    ``predict(model, x).argmax(axis=1)`` gives the predicted classes.
    Runs in inference mode (``model.eval()``: Dropout off, BatchNorm on its running
    statistics) and gives every module back its mode; no buffer changes.

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
    with torch.no_grad():
        return np.concatenate([model(as_tensor(xb, like)).cpu().numpy() for xb in batches])


@measured_in_inference_mode
def evaluate(model, x, y=None, loss="cross_entropy", batch_size: int = 1024) -> dict:
    """Mean loss, and accuracy for ``"cross_entropy"``, over all of ``(x, y)``.

    Returns ``{"loss": float, "accuracy": float}`` (``{"loss": float}`` for ``"mse"``).
    Batches only bound memory; the result is the mean over every example (every position
    of every sequence for labels ``(n, T)``).
    Runs in inference mode (``model.eval()``: Dropout off, BatchNorm on its running
    statistics) and gives every module back its mode; no buffer changes.

    Args:
        model: a model that returns logits (``"cross_entropy"``) or predictions (``"mse"``).
        x: the inputs, an array-like with one example per row (axis 0), or a data source
            of ``(x, y)`` batches such as a ``DataLoader`` (then ``y`` is ``None``; see
            :func:`companion.core.checks.is_data_source`).
        y: for ``"cross_entropy"``, integer labels ``(n,)`` (or ``(n, T)``); for ``"mse"``,
            the targets, ``d`` values per example.
        loss: ``"cross_entropy"``, ``"mse"`` or a function ``(outputs, targets) -> mean
            loss`` (see :func:`companion.core.checks.check_loss`).
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
    with torch.no_grad():
        for xb, yb in batches:
            output = model(as_tensor(xb, like))
            if loss == "cross_entropy":
                check_label_outputs(yb, output.shape)
                correct += int(np.sum(output.argmax(dim=-1).cpu().numpy() == yb))
                positions += yb.size
            total_loss += _mean_loss(output, as_tensor(yb, like), loss).item() * len(xb)
            count += len(xb)
    result = {"loss": total_loss / count}
    if loss == "cross_entropy":
        result["accuracy"] = correct / positions
    return result


def _optimizer(model, optimizer, lr, momentum):
    """The optimizer of :func:`train`: a new one by name, or the caller's, checked to update
    every trainable parameter."""
    params = trainable_parameters(model)
    lr = 0.0 if callable(lr) else lr  # a schedule sets it before every step
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in zip(parameter_names(model), params) if id(p) not in held]
    if missing:
        raise ValueError(f"the optimizer does not update the model's parameters {missing}: "
                         "build it over model.parameters()")
    return optimizer


def _mask_weights(masked) -> None:
    with torch.no_grad():
        for param, mask in masked:
            param.mul_(mask)


def train(model, x, y=None, *, epochs: int, lr: float | None = None,
          batch_size: int | None = None, optimizer="sgd", momentum: float = 0.0,
          loss="cross_entropy", clip=None, monitor=None, masks=None, progress: bool = True,
          seed: int = 0) -> History:
    """Minibatch training of ``model`` on ``(x, y)``; returns a :class:`History`.

    Each step takes the next shuffled minibatch (the order depends on ``seed`` only, the
    same in both back ends), computes the mean loss and its gradient ``g``, records
    ``||g||_2`` (and hands ``g`` to ``monitor``), applies ``clip`` if given, and takes an
    optimizer step: SGD ``v <- momentum v + g; θ <- θ - lr v``, Adam, or the caller's own
    ``torch.optim.Optimizer`` (built over the model's parameters; its learning rate,
    momentum and schedule are its own, so ``lr`` and ``momentum`` stay unset). With
    ``masks`` the pruned entries stay exactly zero: masked before training, their gradients
    zeroed before each step (so optimizer state stays zero there) and re-masked after it.

    ``x`` may be a data source of ``(x, y)`` batches, e.g. a ``DataLoader`` (``y`` and
    ``batch_size`` then stay unset): each epoch is one pass over it, in its own order, and
    its labels are checked batch by batch, so a bad label stops training at its batch.

    Adam is each framework's own (``torch.optim.Adam``, ``keras.optimizers.Adam``); they
    add epsilon at different places, so Adam runs agree across back ends only to about
    1e-3, while SGD runs agree to float32 rounding.

    The model trains in training mode (``model.train()``) and is given back with every
    module in the mode it had.

    Args:
        x, y: arrays (one example per row), or a data source as ``x`` and ``y=None``.
        epochs: passes over the data, an integer >= 1.
        lr: the learning rate of ``optimizer="sgd"`` or ``"adam"``: a finite number > 0,
            or a schedule ``step -> lr`` (e.g. :func:`warmup_schedule`) read before each
            step, the first being step 0.
        batch_size: examples per step with arrays, an integer >= 1.
        optimizer: ``"sgd"``, ``"adam"`` or a ``torch.optim.Optimizer``.
        momentum: SGD's momentum, in ``[0, 1)``.
        loss: ``"cross_entropy"``, ``"mse"`` or a loss function (see :func:`loss_value`).
        clip: ``None``, a rule such as ``Clip("global_norm", 1.0)`` (see
            :class:`companion.core.clipping.Clip`), or any function ``grads -> grads``; applied
            to every gradient before its update.
        monitor: e.g. a :class:`GradientMonitor`; its ``record(step, grads)`` sees the raw
            (unclipped) gradients of every step, including one that is not finite.
        masks: ``None``, or one 0/1 tensor (or ``None``) per trainable parameter, e.g.
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


def _mask_tensors(params, names, masks) -> tuple:
    """Checked masks as tensors like the parameters, and the (parameter, mask) pairs."""
    masks = [None] * len(params) if masks is None else [
        None if m is None else torch.as_tensor(m, dtype=p.dtype, device=p.device)
        for p, m in zip(params, check_masks(names, params, masks))]
    return masks, [(p, m) for p, m in zip(params, masks) if m is not None]


def _train(model, x, y, *, epochs, lr, batch_size, optimizer, momentum, loss, clip, monitor,
           masks, progress, seed, before_step=None) -> History:
    """The loop of :func:`train`, with a hook for gradual pruning.

    ``before_step(step)``, if given, runs at the start of every step, before the
    minibatch's gradient. If it returns masks, they replace ``masks`` from that step on
    and are applied to the weights at once.
    """
    x, y = check_train_args(x, y, epochs, lr, batch_size, optimizer, momentum, loss,
                            monitor, optimizer_type=OPTIMIZER_TYPE)
    if y is not None:
        x, y = check_model_data(model, x, y, loss)
    params = trainable_parameters(model)
    # A Clip rule keeps finite gradients finite; a function of the user's is checked.
    check_clipped = clip is not None and not isinstance(clip, Clip)
    clip = clip_function(clip, params)
    masks, masked = _mask_tensors(params, parameter_names(model), masks)
    _mask_weights(masked)
    opt = _optimizer(model, optimizer, lr, momentum)
    history = History()
    total = step_count(x, y, batch_size, epochs)
    with training_mode(model), tqdm(total=total, desc="train", file=sys.stdout,
                                    disable=not progress) as bar:
        for step, (xb, yb) in enumerate(_tensor_batches(x, y, batch_size, epochs, seed, loss,
                                                        params[0])):
            new_masks = None if before_step is None else before_step(step)
            if new_masks is not None:
                masks, masked = _mask_tensors(params, parameter_names(model), new_masks)
                _mask_weights(masked)
            output = model(xb)
            if y is None and loss == "cross_entropy":  # a source's labels, batch by batch
                check_label_outputs(_numpy(yb), output.shape)
            batch_loss = _mean_loss(output, yb, loss)
            grads = list(torch.autograd.grad(batch_loss, params))
            loss_item, norm, accuracy = _step_numbers(batch_loss, output, yb, loss, grads)
            if monitor is not None:
                monitor.record(step, grads)
            if not (math.isfinite(loss_item) and math.isfinite(norm)):
                raise NonFiniteError(nonfinite_message(step, loss_item, norm), step, history)
            history.loss.append(loss_item)
            history.grad_norm.append(norm)
            if accuracy is not None:
                history.accuracy.append(accuracy)
            if clip is not None:
                grads = clip(grads)
            if check_clipped and not math.isfinite(global_norm(grads)):
                raise NonFiniteError(nonfinite_clip_message(step), step, history)
            for param, grad, mask in zip(params, grads, masks):
                param.grad = grad if mask is None else grad * mask
            rate = scheduled_lr(lr, step)
            if rate is not None:
                for group in opt.param_groups:
                    group["lr"] = rate
            opt.step()
            _mask_weights(masked)
            bar.update()
            if progress:
                bar.set_postfix(loss=f"{loss_item:.4f}", refresh=False)
    return history


def _tensor_batches(x, y, batch_size, epochs, seed, loss, like):
    """:func:`_batches` as tensors like the parameters; arrays go to the device once, so a
    minibatch is one indexing op, as in a plain loop."""
    if y is None:
        for xb, yb in _batches(x, y, batch_size, epochs, seed, loss):
            yield as_tensor(xb, like), as_tensor(yb, like)
        return
    inputs, targets = as_tensor(x, like), as_tensor(y, like)
    for batch in minibatches(len(x), batch_size, epochs, seed):
        batch = torch.as_tensor(batch, device=like.device)
        yield inputs[batch], targets[batch]


def _step_numbers(batch_loss, output, target, loss, grads) -> tuple:
    """The step's loss, ``||g||_2`` and accuracy (``None`` unless cross-entropy) as Python
    floats, read from the device in one transfer. The norm is taken in the gradients'
    dtype and again in float64 where that may have overflowed or underflowed, as
    :func:`total_norm` does."""
    present = [g for g in grads if g is not None and g.numel()]
    same = len({(g.dtype, g.device) for g in present}) == 1
    norm = (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present))) if same
            else total_norm(present))
    numbers = [batch_loss.detach(), norm]
    if loss == "cross_entropy":
        numbers.append((output.argmax(dim=-1) == target).sum())
    values = torch.stack([n.to(torch.float64) for n in numbers]).tolist()
    if same and not _trustworthy(torch.tensor(values[1], dtype=present[0].dtype)):
        values[1] = float(total_norm(present))
    return values[0], values[1], values[2] / target.numel() if len(values) == 3 else None

