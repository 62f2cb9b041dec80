"""Framework-neutral parts of gradient clipping: the ``Clip`` rule as data, argument checks
and error messages. The clipping arithmetic itself lives in each back end.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import check_choice, check_positive, check_tensor_list


def check_clip_inputs(grads, params):
    """Check that ``grads`` and ``params`` are aligned lists of equal shapes; return lists."""
    grads, params = check_tensor_list("grads", grads), check_tensor_list("params", params)
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
