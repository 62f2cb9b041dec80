"""Gradient clipping in both back ends, each rule against an independent oracle.

Oracles: a float64 NumPy reference of every rule (below, written from the formulas, never
calling the companion), PyTorch's ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``
and TensorFlow's ``tf.clip_by_global_norm`` / ``tf.clip_by_norm`` / ``tf.clip_by_value``.
Where the libraries differ from the companion (PyTorch's ``+ 1e-6``, non-finite gradients)
the tests pin the difference down with numbers.

Tolerances. Gradients are float32 (unit roundoff u = 6e-8); the references work in float64
on the same float32 inputs. Norm clipping multiplies each entry by a factor computed from a
float32 norm, so every entry carries a *relative* error of a few u (reduction, division,
product) and no absolute one: we compare with rtol = RTOL (1e-5, the suite's convention) and
atol = 0, i.e. stricter than the convention, still with ~30x margin. Value clipping and
"unchanged" are exact (``assert_array_equal``). Only across frameworks (parity), where the
*inputs* already differ by float32 rounding, the suite's rtol + ATOL_FACTOR applies.
"""

import dataclasses
import math

import numpy as np
import pytest

# The companion first: it loads triton (when installed) before TensorFlow (see GUIDE §5).
from companion import tensorflow as ctf
from companion import torch as ct
from companion.core.clipping import Clip
from companion.core.batches import minibatches
from numpy_reference import RTOL, assert_arrays_close, is_torch, scalar, tensors

import tensorflow as tf  # noqa: E402  (after companion, on purpose)
import torch  # noqa: E402

P_VALUES = [0.5, 1.0, 2.0, 4.0, math.inf]
SHAPES = [(5, 3), (5,), (2, 5), (2,)]


# ---------------------------------------------------------------- helpers and references


def _numpy(values) -> list:
    """Back-end tensors (or None) as NumPy arrays."""
    out = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, torch.Tensor):
            out.append(v.detach().cpu().numpy())
        else:
            out.append(np.asarray(v))
    return out


def _copies(arrays) -> list:
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def _assert_unchanged(arrays, copies):
    for a, c in zip(arrays, copies):
        if a is None:
            assert c is None
        else:
            np.testing.assert_array_equal(a, c)


def _random_grads(rng, shapes=SHAPES, dtype=np.float32) -> list:
    """Tensors of different sizes: scales 10**U(-1, 1), so their norms differ."""
    return [(10.0 ** rng.uniform(-1, 1) * rng.standard_normal(s)).astype(dtype) for s in shapes]


def ref_norm(arrays, p: float) -> float:
    """``||concat(arrays)||_p`` in float64 (no overflow or underflow for float32 inputs)."""
    flat = np.concatenate([np.ravel(a).astype(np.float64) for a in arrays if a is not None]
                          + [np.zeros(0)])
    if flat.size == 0:
        return 0.0
    flat = np.abs(flat)
    if math.isinf(p):
        return float(flat.max())
    return float(np.sum(flat ** p) ** (1.0 / p))


def ref_clip_by_value(arrays, c):
    return [None if a is None else np.clip(a, -c, c) for a in arrays]


def ref_clip_by_norm(arrays, c):
    return [None if a is None else a.astype(np.float64) * (c / max(ref_norm([a], 2.0), c))
            for a in arrays]


def ref_clip_by_global_norm(arrays, c, p=2.0):
    total = ref_norm(arrays, p)
    scale = c / max(total, c)
    return [None if a is None else a.astype(np.float64) * scale for a in arrays], total


def ref_adaptive_clip(grads, params, lam=0.01, eps=1e-3):
    """AGC on the canonical layout: unit i is row i of ``(out, in, k...)``; vectors whole."""
    out = []
    for g, w in zip(grads, params):
        if g is None:
            out.append(None)
            continue
        g = np.asarray(g, np.float64)
        w = np.asarray(w, np.float64)
        rows_g = g.reshape(1, -1) if g.ndim < 2 else g.reshape(g.shape[0], -1)
        rows_w = w.reshape(1, -1) if w.ndim < 2 else w.reshape(w.shape[0], -1)
        clipped = rows_g.copy()
        for i in range(rows_g.shape[0]):
            bound = lam * max(np.linalg.norm(rows_w[i]), eps)
            g_norm = np.linalg.norm(rows_g[i])
            if g_norm > bound:
                clipped[i] = rows_g[i] * (bound / g_norm)
        out.append(clipped.reshape(g.shape))
    return out


def _keras_layout(a):
    """Canonical ``(out, in, k...)`` -> Keras ``(k..., in, out)``; vectors unchanged."""
    if a is None or np.ndim(a) < 2:
        return a
    return np.ascontiguousarray(np.transpose(a, [*range(2, a.ndim), 1, 0]))


def _canonical_layout(a):
    """Keras ``(k..., in, out)`` -> canonical ``(out, in, k...)``; vectors unchanged."""
    if a is None or np.ndim(a) < 2:
        return a
    return np.ascontiguousarray(np.transpose(a, [a.ndim - 1, a.ndim - 2, *range(a.ndim - 2)]))


def _adaptive(backend, grads, params, **kwargs):
    """``backend.adaptive_clip`` on canonical arrays, in the back end's own weight layout."""
    if is_torch(backend):
        return _numpy(backend.adaptive_clip(tensors(backend, grads), tensors(backend, params),
                                            **kwargs))
    native = backend.adaptive_clip(tensors(backend, [_keras_layout(g) for g in grads]),
                                   tensors(backend, [_keras_layout(w) for w in params]),
                                   **kwargs)
    return [_canonical_layout(a) for a in _numpy(native)]


def _assert_scaled_close(actual, desired, rtol=RTOL):
    """Entrywise relative comparison (atol 0): see the module note on tolerances."""
    assert len(actual) == len(desired)
    for i, (a, d) in enumerate(zip(actual, desired)):
        if d is None:
            assert a is None, i
            continue
        assert np.shape(a) == np.shape(d), i
        np.testing.assert_allclose(a, d, rtol=rtol, atol=0, err_msg=f"[{i}]")


def _torch_library_clip_norm(arrays, max_norm, p=2.0, error_if_nonfinite=False):
    """``torch.nn.utils.clip_grad_norm_`` on parameters whose ``.grad`` are ``arrays``."""
    params = []
    for a in arrays:
        if a is None:
            params.append(None)
            continue
        param = torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.from_numpy(a).dtype))
        param.grad = torch.tensor(a)
        params.append(param)
    total = torch.nn.utils.clip_grad_norm_([q for q in params if q is not None], max_norm,
                                           norm_type=p, error_if_nonfinite=error_if_nonfinite)
    return [None if q is None else q.grad.numpy() for q in params], float(total)


def _cosine(a, b) -> float:
    a = np.concatenate([np.ravel(x).astype(np.float64) for x in a if x is not None])
    b = np.concatenate([np.ravel(x).astype(np.float64) for x in b if x is not None])
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------- clip_by_value


def test_clip_by_value_matches_numpy_and_both_libraries(backend, rng):
    arrays = _random_grads(rng) + [None, np.zeros((3, 2), np.float32),
                                   np.zeros((0, 4), np.float32)]
    copies = _copies(arrays)
    c = 0.4
    clipped = _numpy(backend.clip_by_value(tensors(backend, arrays), c))
    _assert_unchanged(arrays, copies)
    expected = ref_clip_by_value(arrays, c)
    assert clipped[4] is None
    for got, want in zip(clipped, expected):
        if want is not None:
            np.testing.assert_array_equal(got, want)  # clamping is exact
            assert got.dtype == np.float32
    assert any(np.any(np.abs(a) > c) for a in arrays[:4])  # something was clipped
    # The libraries do exactly the same.
    params = [torch.nn.Parameter(torch.zeros(a.shape)) for a in arrays[:4]]
    for param, a in zip(params, arrays):
        param.grad = torch.tensor(a)
    torch.nn.utils.clip_grad_value_(params, c)
    for param, got in zip(params, clipped):
        np.testing.assert_array_equal(param.grad.numpy(), got)
    for a, got in zip(arrays[:4], clipped):
        np.testing.assert_array_equal(tf.clip_by_value(a, -c, c).numpy(), got)


# ---------------------------------------------------------------- clip_by_norm


def test_clip_by_norm_matches_numpy_and_tf_clip_by_norm(backend, rng):
    arrays = _random_grads(rng) + [None]
    norms = [ref_norm([a], 2.0) for a in arrays[:4]]
    c = float(np.median(norms))  # some tensors above, some below
    copies = _copies(arrays)
    clipped = _numpy(backend.clip_by_norm(tensors(backend, arrays), c))
    _assert_unchanged(arrays, copies)
    _assert_scaled_close(clipped, ref_clip_by_norm(arrays, c))
    for a, got, norm in zip(arrays, clipped, norms):
        if norm <= c:
            np.testing.assert_array_equal(got, a)  # scale c / c == 1 exactly
        else:
            assert ref_norm([got], 2.0) == pytest.approx(c, rel=RTOL)
        # tf.clip_by_norm: t * c / max(||t||, c), the same rule (what Keras' clipnorm uses).
        np.testing.assert_allclose(got, tf.clip_by_norm(a, c).numpy(), rtol=RTOL, atol=0)
    assert min(norms) < c < max(norms)


# ---------------------------------------------------------------- clip_by_global_norm


@pytest.mark.parametrize("p", P_VALUES)
def test_clip_by_global_norm_matches_numpy(backend, rng, p):
    arrays = _random_grads(rng) + [None, np.zeros((0,), np.float32)]
    total_ref = ref_norm(arrays, p)
    c = 0.3 * total_ref
    copies = _copies(arrays)
    clipped, total = backend.clip_by_global_norm(tensors(backend, arrays), c, norm_type=p)
    _assert_unchanged(arrays, copies)
    clipped = _numpy(clipped)
    # Per-tensor norms in float32: a relative error of a few u (test_diagnostics, too).
    assert scalar(total) == pytest.approx(total_ref, rel=RTOL)
    expected, _ = ref_clip_by_global_norm(arrays, c, p)
    _assert_scaled_close(clipped, expected)
    assert ref_norm(clipped, p) == pytest.approx(c, rel=RTOL)
    assert clipped[4] is None and clipped[5].shape == (0,)
    # Below the threshold nothing changes, bit for bit (scale c / c == 1).
    unclipped, total = backend.clip_by_global_norm(tensors(backend, arrays), 2 * total_ref, p)
    _assert_unchanged(_numpy(unclipped), arrays)


def test_clip_by_global_norm_matches_tf_clip_by_global_norm(backend, rng):
    arrays = _random_grads(rng)
    total_ref = ref_norm(arrays, 2.0)
    for c in (0.2 * total_ref, 5.0 * total_ref):
        # TensorFlow: t * c / max(T, c), 2-norm only: the companion's rule exactly.
        expected, tf_total = tf.clip_by_global_norm([tf.constant(a) for a in arrays], c)
        clipped, total = backend.clip_by_global_norm(tensors(backend, arrays), c)
        assert scalar(total) == pytest.approx(float(tf_total), rel=RTOL)
        _assert_scaled_close(_numpy(clipped), [e.numpy() for e in expected])


@pytest.mark.parametrize("p", P_VALUES)
def test_clip_by_global_norm_against_torch_clip_grad_norm(backend, rng, p):
    """The same total norm; torch's result is ours times T / (T + 1e-6)."""
    arrays = _random_grads(rng)
    total_ref = ref_norm(arrays, p)
    c = 0.3 * total_ref
    torch_clipped, torch_total = _torch_library_clip_norm(arrays, c, p)
    clipped, total = backend.clip_by_global_norm(tensors(backend, arrays), c, p)
    assert scalar(total) == pytest.approx(torch_total, rel=RTOL)
    factor = (torch_total + 1e-6) / torch_total
    _assert_scaled_close(_numpy(clipped), [t.astype(np.float64) * factor for t in torch_clipped])


def test_torch_plus_1e6_pinned_down_with_numbers(backend):
    """PyTorch scales by c / (T + 1e-6) (clamped at 1); the companion and TensorFlow by
    c / max(T, c). In float64 the difference is exact arithmetic:

    * T = 5e-6 > c = 1e-6: torch leaves norm c * T / (T + 1e-6) = 8.333e-7, 16.7 % below c;
      the companion and TensorFlow leave exactly c.
    * T = c = 1e-6 (at the threshold): torch halves the gradient (factor 1e-6 / 2e-6);
      the companion and TensorFlow leave it unchanged.
    * T = 10, c = 1: torch's result is smaller by the factor 1 + 1e-6 / T = 1 + 1e-7,
      below float32's resolution (u = 6e-8 relative per entry, a few u per norm).
    """
    cases = [([3e-6, 4e-6], 5e-6, 1e-6), ([6e-7, 8e-7], 1e-6, 1e-6), ([6.0, 8.0], 10.0, 1.0)]
    for values, total_true, c in cases:
        arrays = [np.array(values, np.float64)]
        ours, total = backend.clip_by_global_norm(tensors(backend, arrays), c)
        ours = _numpy(ours)[0]
        torch_lib, torch_total = _torch_library_clip_norm(arrays, c)
        tf_lib = tf.clip_by_global_norm([tf.constant(arrays[0])], c)[0][0].numpy()
        assert scalar(total) == pytest.approx(total_true, rel=1e-12)
        assert torch_total == pytest.approx(total_true, rel=1e-12)
        ours_norm, torch_norm = np.linalg.norm(ours), np.linalg.norm(torch_lib[0])
        assert ours_norm == pytest.approx(min(total_true, c), rel=1e-12)
        np.testing.assert_allclose(tf_lib, ours, rtol=1e-12)
        torch_factor = min(c / (total_true + 1e-6), 1.0)
        assert torch_norm == pytest.approx(total_true * torch_factor, rel=1e-12)
        assert ours_norm / torch_norm - 1 == pytest.approx(1e-6 / total_true, rel=1e-6)


# ---------------------------------------------------------------- non-finite gradients


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("p", P_VALUES)
def test_nonfinite_total_norm_makes_every_entry_nan(backend, p, bad):
    """The documented rule, the same in both back ends: T = inf or nan -> all nan."""
    arrays = [np.array([1.0, bad, 2.0], np.float32), None,
              np.array([[3.0, 4.0]], np.float32), np.zeros((0,), np.float32)]
    copies = _copies(arrays)
    clipped, total = backend.clip_by_global_norm(tensors(backend, arrays), 1.0, p)
    _assert_unchanged(arrays, copies)
    clipped = _numpy(clipped)
    assert clipped[1] is None
    for got, a in zip(clipped, arrays):
        if a is not None:
            assert got.shape == a.shape and np.all(np.isnan(got))
    if math.isnan(bad):
        assert math.isnan(scalar(total))
    else:
        assert scalar(total) == math.inf


def test_nonfinite_gradients_differ_between_libraries(backend):
    """What each library does with inf / nan gradients, against the companion's rule.

    * inf: torch's clip_grad_norm_ multiplies by c / (inf + 1e-6) = 0, so finite entries
      become 0 and the inf entry nan (inf * 0): a step of (mostly) zeros that looks
      harmless. tf.clip_by_global_norm and the companion: all nan.
    * nan: all three give all nan.
    * per tensor: tf.clip_by_norm on [1, inf, 2] gives [0, nan, 0]; the companion's
      clip_by_norm makes that tensor all nan and clips the others normally.
    * by value: inf -> c, -inf -> -c, nan stays nan, in all of them.
    """
    inf_grads = [np.array([1.0, math.inf, 2.0], np.float32), np.array([3.0, 4.0], np.float32)]
    nan_grads = [np.array([1.0, math.nan, 2.0], np.float32), np.array([3.0, 4.0], np.float32)]

    torch_lib, torch_total = _torch_library_clip_norm(inf_grads, 1.0)
    assert torch_total == math.inf
    np.testing.assert_array_equal(torch_lib[0], [0.0, math.nan, 0.0])
    np.testing.assert_array_equal(torch_lib[1], [0.0, 0.0])
    tf_lib, tf_total = tf.clip_by_global_norm([tf.constant(a) for a in inf_grads], 1.0)
    assert float(tf_total) == math.inf
    assert all(np.all(np.isnan(t.numpy())) for t in tf_lib)
    ours, total = backend.clip_by_global_norm(tensors(backend, inf_grads), 1.0)
    assert scalar(total) == math.inf
    assert all(np.all(np.isnan(t)) for t in _numpy(ours))

    torch_lib, torch_total = _torch_library_clip_norm(nan_grads, 1.0)
    tf_lib, tf_total = tf.clip_by_global_norm([tf.constant(a) for a in nan_grads], 1.0)
    ours, total = backend.clip_by_global_norm(tensors(backend, nan_grads), 1.0)
    assert math.isnan(torch_total) and math.isnan(float(tf_total)) and math.isnan(scalar(total))
    for result in (torch_lib, [t.numpy() for t in tf_lib], _numpy(ours)):
        assert all(np.all(np.isnan(t)) for t in result)

    np.testing.assert_array_equal(tf.clip_by_norm(inf_grads[0], 1.0).numpy(),
                                  [0.0, math.nan, 0.0])
    per_tensor = _numpy(backend.clip_by_norm(tensors(backend, inf_grads), 1.0))
    assert np.all(np.isnan(per_tensor[0]))
    np.testing.assert_allclose(per_tensor[1], [0.6, 0.8], rtol=RTOL)

    by_value = _numpy(backend.clip_by_value(
        tensors(backend, [np.array([math.inf, -math.inf, math.nan, 0.5], np.float32)]), 1.0))
    np.testing.assert_array_equal(by_value[0], [1.0, -1.0, math.nan, 0.5])


@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["inf", "nan"])
def test_error_if_nonfinite_raises_before_anything(backend, bad):
    arrays = [np.array([1.0, bad], np.float32), np.array([3.0, 4.0], np.float32)]
    copies = _copies(arrays)
    with pytest.raises(FloatingPointError,
                       match=rf"total gradient norm of order 2\.0 is {bad}; nothing was clipped"):
        backend.clip_by_global_norm(tensors(backend, arrays), 1.0, error_if_nonfinite=True)
    _assert_unchanged(arrays, copies)
    with pytest.raises(FloatingPointError, match="order inf"):
        backend.clip_by_global_norm(tensors(backend, arrays), 1.0, math.inf, True)
    # PyTorch raises a RuntimeError instead (not a FloatingPointError).
    with pytest.raises(RuntimeError, match="non-finite"):
        _torch_library_clip_norm(arrays, 1.0, error_if_nonfinite=True)
    assert not issubclass(FloatingPointError, RuntimeError)
    # Finite gradients: error_if_nonfinite changes nothing.
    finite = [np.array([1.0, 2.0], np.float32), np.array([3.0, 4.0], np.float32)]
    a, ta = backend.clip_by_global_norm(tensors(backend, finite), 1.0, error_if_nonfinite=True)
    b, tb = backend.clip_by_global_norm(tensors(backend, finite), 1.0)
    _assert_unchanged(_numpy(a), _numpy(b))
    assert scalar(ta) == scalar(tb)


def test_tf_clip_by_global_norm_inside_tf_function(rng):
    """Documented for TensorFlow: works in a graph; a non-finite norm with
    error_if_nonfinite raises TensorFlow's InvalidArgumentError there."""
    arrays = _random_grads(rng)
    c = 0.3 * ref_norm(arrays, 2.0)
    graph = tf.function(lambda grads: ctf.clip_by_global_norm(grads, c))
    clipped, total = graph([tf.constant(a) for a in arrays])
    expected, total_ref = ref_clip_by_global_norm(arrays, c)
    assert float(total) == pytest.approx(total_ref, rel=RTOL)
    _assert_scaled_close(_numpy(clipped), expected)
    strict = tf.function(lambda grads: ctf.clip_by_global_norm(grads, c,
                                                               error_if_nonfinite=True))
    with pytest.raises(tf.errors.InvalidArgumentError, match="not finite"):
        strict([tf.constant([1.0, math.inf]), tf.constant([1.0])])


# ---------------------------------------------------------------- None, empty, zero


def test_none_empty_and_zero_gradients_pass_through(backend):
    zero = np.zeros((3, 2), np.float32)
    arrays = [None, zero, np.zeros((0,), np.float32), np.zeros((0, 4), np.float32), None]
    params = [np.ones(s, np.float32) for s in [(2,), (3, 2), (0,), (0, 4), (2,)]]
    for p in P_VALUES:
        clipped, total = backend.clip_by_global_norm(tensors(backend, arrays), 1.0, p)
        assert scalar(total) == 0.0
        _assert_unchanged(_numpy(clipped), arrays)
        clipped, total = backend.clip_by_global_norm([], 1.0, p)
        assert clipped == [] and scalar(total) == 0.0
        clipped, total = backend.clip_by_global_norm([None, None], 1.0, p)
        assert clipped == [None, None] and scalar(total) == 0.0
    _assert_unchanged(_numpy(backend.clip_by_value(tensors(backend, arrays), 1.0)), arrays)
    _assert_unchanged(_numpy(backend.clip_by_norm(tensors(backend, arrays), 1.0)), arrays)
    _assert_unchanged(_adaptive(backend, arrays, params), arrays)
    assert backend.clip_by_value([], 1.0) == [] and backend.clip_by_norm([], 1.0) == []
    assert backend.adaptive_clip([], []) == []


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("p", P_VALUES)
def test_clipped_global_norm_never_exceeds_max_norm(backend, p):
    """Property over random draws at scales 1e-30 ... 1e30, where float32 allows: the
    per-tensor sums of |g|^p are float32, so |g|^p must stay within float32's normal range
    (we require 1e-30 <= scale^p <= 1e30; outside, see the xfail test below)."""
    rng = np.random.default_rng(7)
    checked = 0
    for k in range(-30, 31, 5):
        if not math.isinf(p) and abs(k * p) > 30:
            continue
        scale = 10.0 ** k
        for _ in range(4):
            arrays = [(scale * rng.standard_normal(s)).astype(np.float32)
                      for s in [(4, 3), (4,), (2, 4)]]
            total_ref = ref_norm(arrays, p)
            c = total_ref * 10.0 ** rng.uniform(-1.5, 1.5)
            clipped, total = backend.clip_by_global_norm(tensors(backend, arrays), c, p)
            clipped = _numpy(clipped)
            assert all(np.all(np.isfinite(a)) for a in clipped), (k, p)
            assert ref_norm(clipped, p) <= c * (1 + RTOL), (k, p)
            assert scalar(total) == pytest.approx(total_ref, rel=RTOL), (k, p)
            if total_ref < c * (1 - RTOL):
                _assert_unchanged(clipped, arrays)
            elif total_ref > c * (1 + RTOL):
                assert ref_norm(clipped, p) == pytest.approx(c, rel=RTOL), (k, p)
            checked += 1
    assert checked >= 12


@pytest.mark.parametrize("rule, scale", [("global_norm", 1e30), ("global_norm", 1e-30),
                                         ("norm", 1e30), ("norm", 1e-30), ("adaptive", 1e30)])
def test_float32_norms_of_huge_and_tiny_gradients(backend, rule, scale):
    """Norms are reduced in float64: |g|^2 of float32 entries near 1e30 would overflow
    (and near 1e-30 underflow) in float32, turning finite gradients into nan or 0."""
    grads = [(scale * np.array([[3.0, 4.0], [0.0, 12.0]])).astype(np.float32)]  # T = 13 scale
    c = 5.0 * scale  # representable, clipping binds
    if rule == "global_norm":
        clipped, total = backend.clip_by_global_norm(tensors(backend, grads), c)
        assert scalar(total) == pytest.approx(13.0 * scale, rel=RTOL)
        _assert_scaled_close(_numpy(clipped), ref_clip_by_global_norm(grads, c)[0])
    elif rule == "norm":
        _assert_scaled_close(_numpy(backend.clip_by_norm(tensors(backend, grads), c)),
                             ref_clip_by_norm(grads, c))
    else:
        params = [np.full((2, 2), 10.0 * scale, np.float32)]
        _assert_scaled_close(_adaptive(backend, grads, params, clipping=0.1),
                             ref_adaptive_clip(grads, params, 0.1))


@pytest.mark.parametrize("p", P_VALUES)
def test_global_norm_clipping_scales_every_tensor_by_one_factor(backend, rng, p):
    arrays = _random_grads(rng)
    total_ref = ref_norm(arrays, p)
    c = 0.25 * total_ref
    clipped, _ = backend.clip_by_global_norm(tensors(backend, arrays), c, p)
    clipped = _numpy(clipped)
    ratios = np.concatenate([(got.astype(np.float64) / a)[a != 0].ravel()
                             for got, a in zip(clipped, arrays)])
    # Each entry is one float32 product g * s: relative error <= u = 6e-8 (2u for s itself).
    assert np.ptp(ratios) <= 4 * 2.0 ** -24 * ratios.max()
    assert np.median(ratios) == pytest.approx(c / total_ref, rel=RTOL)
    # The direction of the whole gradient is kept.
    assert _cosine(clipped, arrays) == pytest.approx(1.0, abs=1e-12)


def test_value_clipping_changes_direction_norm_clipping_does_not(backend, rng):
    # Hand-worked: (10, 1) clipped at 1 is (1, 1): cos = 11 / (sqrt(101) sqrt(2)).
    by_value = _numpy(backend.clip_by_value(tensors(backend, [np.array([10.0, 1.0])]), 1.0))
    np.testing.assert_array_equal(by_value[0], [1.0, 1.0])
    assert _cosine(by_value, [np.array([10.0, 1.0])]) == pytest.approx(
        11 / math.sqrt(202), rel=1e-12)
    # Random, heavy-tailed gradients: clipping at the 80th percentile of |g|.
    arrays = [(rng.standard_t(2, s)).astype(np.float32) for s in SHAPES]
    c = float(np.quantile(np.abs(np.concatenate([a.ravel() for a in arrays])), 0.8))
    by_value = _numpy(backend.clip_by_value(tensors(backend, arrays), c))
    by_norm, _ = backend.clip_by_global_norm(tensors(backend, arrays), 0.1 * ref_norm(arrays, 2))
    assert _cosine(by_value, arrays) == pytest.approx(
        _cosine(ref_clip_by_value(arrays, c), arrays), rel=1e-6)
    assert _cosine(by_value, arrays) < 0.99
    assert _cosine(_numpy(by_norm), arrays) == pytest.approx(1.0, abs=1e-12)


def test_per_tensor_norm_clipping_changes_direction_of_the_whole(backend):
    """Tensors of norms 10 and 0.5 clipped at 1 each: the first shrinks 10x, the second
    not at all. Each keeps its own direction; the concatenation turns."""
    g1 = np.array([6.0, 8.0], np.float32)         # norm 10
    g2 = np.array([0.3, -0.4, 0.0], np.float32)   # norm 0.5
    clipped = _numpy(backend.clip_by_norm(tensors(backend, [g1, g2]), 1.0))
    np.testing.assert_allclose(clipped[0], [0.6, 0.8], rtol=RTOL)
    np.testing.assert_array_equal(clipped[1], g2)
    assert _cosine([clipped[0]], [g1]) == pytest.approx(1.0, abs=1e-12)
    # cos(concat) = (||g1|| * 1 + ||g2||^2) / (||concat g|| * ||concat clipped||)
    expected = (10 * 1 + 0.5 ** 2) / (math.sqrt(100.25) * math.sqrt(1.25))
    assert _cosine(clipped, [g1, g2]) == pytest.approx(expected, rel=1e-6)
    assert expected < 0.92
    # Control: global-norm clipping keeps the concatenation's direction...
    together, _ = backend.clip_by_global_norm(tensors(backend, [g1, g2]), 1.0)
    assert _cosine(_numpy(together), [g1, g2]) == pytest.approx(1.0, abs=1e-12)
    # ...and so does per-tensor clipping when all tensors have the same norm.
    same = [g1, np.array([0.0, 10.0, 0.0], np.float32)]
    assert _cosine(_numpy(backend.clip_by_norm(tensors(backend, same), 1.0)),
                   same) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- adaptive_clip


def _agc_problem(rng, lam, eps, shapes=((4, 3), (4,), (5, 3, 2), (3, 2, 2, 2), (3,))):
    """Canonical weights (one all-zero unit per matrix, to exercise the eps floor) and
    gradients whose units lie clearly below (x 0.2-0.7) or above (x 1.5-5) their bound."""
    grads, params = [], []
    for shape in shapes:
        units = 1 if len(shape) < 2 else shape[0]
        unit_scales = 10.0 ** rng.uniform(-1, 1, (units,) + (1,) * (len(shape) - 1))
        w = rng.standard_normal(shape) * (unit_scales if len(shape) >= 2 else unit_scales[0])
        if len(shape) >= 2:
            w[0] = 0.0
        w = w.astype(np.float32)
        g = rng.standard_normal(shape)
        rows_w = w.reshape(units, -1).astype(np.float64)
        rows_g = g.reshape(units, -1)
        for i in range(units):
            bound = lam * max(np.linalg.norm(rows_w[i]), eps)
            factor = rng.choice([rng.uniform(0.2, 0.7), rng.uniform(1.5, 5.0)])
            if i == 0:
                factor = 3.0  # the zero unit (or whole vector) is clipped
            rows_g[i] *= factor * bound / np.linalg.norm(rows_g[i])
        grads.append(rows_g.reshape(shape).astype(np.float32))
        params.append(w)
    return grads, params


@pytest.mark.parametrize("lam, eps", [(0.01, 1e-3), (0.1, 1e-2), (0.01, 1e-5)])
def test_adaptive_clip_matches_numpy_reference(backend, rng, lam, eps):
    """The back ends receive their own layouts (Keras: dense (in, out), conv (k..., in, out));
    the reference works on rows of the canonical layout. (0.01, 1e-5): bounds of 1e-7,
    below the 1e-6 floor that optax and the NFNet code divide by."""
    grads, params = _agc_problem(rng, lam, eps)
    grads.insert(2, None)
    params.insert(2, np.ones((7,), np.float32))
    g_copies, w_copies = _copies(grads), _copies(params)
    clipped = _adaptive(backend, grads, params, clipping=lam, eps=eps)
    _assert_unchanged(grads, g_copies)
    _assert_unchanged(params, w_copies)
    expected = ref_adaptive_clip(grads, params, lam, eps)
    _assert_scaled_close(clipped, expected)
    for got, g, w in zip(clipped, grads, params):
        if g is None:
            assert got is None
            continue
        units = 1 if g.ndim < 2 else g.shape[0]
        for got_i, g_i, w_i in zip(got.reshape(units, -1), g.reshape(units, -1),
                                   w.reshape(units, -1)):
            bound = lam * max(np.linalg.norm(w_i.astype(np.float64)), eps)
            if np.linalg.norm(g_i.astype(np.float64)) <= bound:
                np.testing.assert_array_equal(got_i, g_i)  # untouched, bit for bit
            else:
                assert np.linalg.norm(got_i.astype(np.float64)) == pytest.approx(bound,
                                                                                rel=RTOL)


def test_adaptive_clip_hand_worked(backend):
    """lambda = 0.1, eps = 1e-3. Weight rows (3, 4), (0, 0), (1, 0): bounds 0.5, 1e-4, 0.1.
    Gradient rows (0.3, 0) stays (0.3 <= 0.5); (3e-4, 4e-4) -> (6e-5, 8e-5) (norm 1e-4, the
    eps floor); (1, 1) -> (0.1, 0.1) / sqrt(2). Bias (3, 4) has bound 0.5 for the whole
    vector: gradient (0.4, 0.4) (norm 0.566) -> 0.5 (1, 1) / sqrt(2), not the entrywise
    (0.3, 0.4) that per-entry "units" would give."""
    w = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], np.float32)
    g = np.array([[0.3, 0.0], [3e-4, 4e-4], [1.0, 1.0]], np.float32)
    b = np.array([3.0, 4.0], np.float32)
    gb = np.array([0.4, 0.4], np.float32)
    got = _adaptive(backend, [g, gb], [w, b], clipping=0.1, eps=1e-3)
    s = 1 / math.sqrt(2)
    expected = [np.array([[0.3, 0.0], [6e-5, 8e-5], [0.1 * s, 0.1 * s]]),
                np.array([0.5 * s, 0.5 * s])]
    _assert_scaled_close(got, expected)
    np.testing.assert_array_equal(got[0][0], g[0])
    # The layout matters: handed the other framework's layout, a back end takes the
    # columns of the canonical matrix for units and clips other groups of entries.
    if is_torch(backend):
        misread = _numpy(backend.adaptive_clip(tensors(backend, [g.T.copy()]),
                                               tensors(backend, [w.T.copy()]), 0.1))[0].T
    else:
        misread = _numpy(backend.adaptive_clip(tensors(backend, [g]), tensors(backend, [w]),
                                               0.1))[0]
    assert not np.allclose(misread, expected[0], rtol=1e-3)


def test_adaptive_clip_tiny_bounds_are_met_exactly(backend):
    """Zero weights, lambda 0.01, eps 1e-5: the bound is 1e-7. A unit with gradient norm
    5e-7 must come out with norm 1e-7; dividing by max(||G||, 1e-6) (as optax does) would
    give 5e-8. Regression test for that floor, removed from both back ends."""
    g = np.array([[3e-7, 4e-7], [3e-8, 4e-8]], np.float32)
    got = _adaptive(backend, [g], [np.zeros((2, 2), np.float32)], clipping=0.01, eps=1e-5)[0]
    np.testing.assert_allclose(got, [[6e-8, 8e-8], [3e-8, 4e-8]], rtol=RTOL)


def test_adaptive_clip_nonfinite_units_stay_nonfinite_in_both_back_ends():
    """Not a documented rule: a unit with an inf gradient becomes 0 / nan, one with a nan
    keeps it; in both back ends alike, and the other units are clipped as usual."""
    g = np.array([[1.0, math.inf], [math.nan, 1.0], [0.3, 0.4]], np.float32)
    w = np.ones((3, 2), np.float32)
    results = [_adaptive(backend, [g], [w], clipping=0.1)[0] for backend in (ct, ctf)]
    np.testing.assert_allclose(results[0], results[1], rtol=RTOL)  # nan where nan
    for got in results:
        assert not np.all(np.isfinite(got[0])) and not np.all(np.isfinite(got[1]))
        _assert_scaled_close([got[2:]], ref_adaptive_clip([g[2:]], [w[2:]], 0.1))


# ---------------------------------------------------------------- parity


def _parity_rules(canonical, params_torch, params_tf):
    """(name, torch call, tf call) for every rule, thresholds that make each rule bind."""
    flat = np.abs(np.concatenate([g.ravel() for g in canonical]))
    c_value = float(np.quantile(flat, 0.7))
    c_norm = float(np.median([ref_norm([g], 2.0) for g in canonical]))
    rules = [("value", lambda b, g: b.clip_by_value(g, c_value)),
             ("norm", lambda b, g: b.clip_by_norm(g, c_norm))]
    for p in P_VALUES:
        c = 0.3 * ref_norm(canonical, p)
        rules.append((f"global_norm p={p}",
                      lambda b, g, c=c, p=p: b.clip_by_global_norm(g, c, p)))
    for lam in (0.01, 0.1):
        rules.append((f"adaptive {lam}", lambda b, g, lam=lam: b.adaptive_clip(
            g, params_torch if is_torch(b) else params_tf, lam)))
    return rules


@pytest.mark.parametrize("build, kwargs, loss", [
    ("mlp", dict(sizes=[6, 10, 8, 3], activation="tanh"), "cross_entropy"),
    ("rnn", dict(input_size=2, hidden_size=5, output_size=1, gain=1.2), "mse"),
])
def test_clipped_gradients_agree_across_frameworks(rng, build, kwargs, loss):
    """Same weights and batch in both frameworks -> same clipped gradients and norms for
    every rule. The two frameworks' *gradients* agree to float32 rounding only (rtol 1e-5
    plus atol 1e-6 x max|g|, as in test_parity); every clipping map is continuous and
    scales by factors computed to a few u, so the clipped gradients agree to the same
    tolerance (value clipping is 1-Lipschitz; the norm rules' factors depend smoothly on
    T away from T = c, which the thresholds here avoid)."""
    torch_model = getattr(ct, build)(seed=3, **kwargs)
    tf_model = getattr(ctf, build)(seed=3, **kwargs)
    for a, b in zip(ct.get_weights(torch_model), ctf.get_weights(tf_model)):
        np.testing.assert_array_equal(a, b)  # both built from the same canonical arrays
    if build == "mlp":
        x = rng.standard_normal((32, 6)).astype(np.float32)
        y = rng.integers(0, 3, 32)
    else:
        x = rng.standard_normal((16, 7, 2)).astype(np.float32)
        y = rng.standard_normal((16, 1)).astype(np.float32)
    torch_grads = ct.gradients(torch_model, x, y, loss)
    tf_grads = ctf.gradients(tf_model, x, y, loss)
    canonical = ct.to_canonical(torch_model, torch_grads)
    assert_arrays_close(ctf.to_canonical(tf_model, tf_grads), canonical, what="gradients")
    rules = _parity_rules(canonical, ct.trainable_parameters(torch_model),
                          ctf.trainable_parameters(tf_model))
    for name, call in rules:
        torch_out, tf_out = call(ct, torch_grads), call(ctf, tf_grads)
        if isinstance(torch_out, tuple):
            assert scalar(tf_out[1]) == pytest.approx(scalar(torch_out[1]), rel=RTOL), name
            torch_out, tf_out = torch_out[0], tf_out[0]
        torch_can = ct.to_canonical(torch_model, torch_out)
        tf_can = ctf.to_canonical(tf_model, tf_out)
        assert_arrays_close(tf_can, torch_can, what=name)
        assert not all(np.array_equal(a, g) for a, g in zip(torch_can, canonical)), name


# ---------------------------------------------------------------- train(..., clip=...)


def _train_problem(backend, n=12):
    rng = np.random.default_rng(5)
    model = backend.mlp([4, 6, 3], activation="tanh", seed=2)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = rng.integers(0, 3, n)
    return model, x, y


def _reference_clip(clip, grads, params):
    if clip.rule == "value":
        return ref_clip_by_value(grads, clip.threshold)
    if clip.rule == "norm":
        return ref_clip_by_norm(grads, clip.threshold)
    if clip.rule == "global_norm":
        return ref_clip_by_global_norm(grads, clip.threshold, clip.norm_type)[0]
    return ref_adaptive_clip(grads, params, clip.threshold, clip.eps)


def _assert_sgd_step(before, after, update):
    """``after = before - update`` up to float32 rounding: one ulp of the weight (the
    subtraction) plus RTOL of the update (float32 clipping and lr * g)."""
    for w0, w1, u in zip(before, after, update):
        moved = w0.astype(np.float64) - w1.astype(np.float64)
        ulp = np.spacing(np.maximum(np.abs(w0), np.abs(w1)).astype(np.float32))
        assert np.all(np.abs(moved - u) <= ulp + RTOL * np.abs(u))


TRAIN_CLIPS = [Clip("value", 2e-3), Clip("norm", 0.05), Clip("global_norm", 0.05),
               Clip("global_norm", 0.1, norm_type=1.0), Clip("global_norm", 0.01,
                                                             norm_type=math.inf),
               Clip("adaptive", 0.01)]


@pytest.mark.parametrize("clip", TRAIN_CLIPS, ids=lambda c: f"{c.rule}-{c.norm_type}")
def test_train_applies_each_clip_rule(backend, clip):
    """One SGD step (no momentum) on the whole batch equals the NumPy update
    w - lr * clip(g), with g the gradient of that batch, and obeys the rule's bound."""
    lr = 0.1
    model, x, y = _train_problem(backend)
    [batch] = list(minibatches(len(x), len(x), 1, 0))
    before = backend.get_weights(model)
    grads = backend.to_canonical(model, backend.gradients(model, x[batch], y[batch]))
    update = [lr * g for g in _reference_clip(clip, grads, before)]
    history = backend.train(model, x, y, epochs=1, lr=lr, batch_size=len(x), clip=clip,
                            progress=False)
    after = backend.get_weights(model)
    assert len(history) == 1
    assert history.grad_norm[0] == pytest.approx(ref_norm(grads, 2.0), rel=RTOL)
    _assert_sgd_step(before, after, update)
    # The clip binds (the unclipped step would be different) ...
    assert max(np.max(np.abs(lr * g - u)) for g, u in zip(grads, update)) > 1e-3 * lr
    # ... and the rule's bound holds for the step actually taken.
    moved = [w0.astype(np.float64) - w1 for w0, w1 in zip(before, after)]
    slack = [np.spacing(np.maximum(np.abs(w0), np.abs(w1))) for w0, w1 in zip(before, after)]
    c = clip.threshold
    if clip.rule == "value":
        assert all(np.all(np.abs(m) <= lr * c + s) for m, s in zip(moved, slack))
    elif clip.rule == "norm":
        assert all(ref_norm([m], 2) <= lr * c * (1 + RTOL) + ref_norm([s], 2)
                   for m, s in zip(moved, slack))
    elif clip.rule == "global_norm":
        p = clip.norm_type
        assert ref_norm(grads, p) > c
        assert ref_norm(moved, p) <= lr * c * (1 + RTOL) + ref_norm(slack, p)
    else:
        for m, s, w in zip(moved, slack, before):
            units = 1 if m.ndim < 2 else m.shape[0]
            bounds = lr * c * np.maximum(np.linalg.norm(w.reshape(units, -1), axis=1),
                                         clip.eps)
            assert np.all(np.linalg.norm(m.reshape(units, -1), axis=1)
                          <= bounds * (1 + RTOL) + np.linalg.norm(s.reshape(units, -1), axis=1))


def test_train_adaptive_clip_uses_the_current_weights(backend):
    """Step 2's bound is lambda * ||W_i|| of the weights after step 1, not the initial ones."""
    lr, clip = 0.5, Clip("adaptive", 0.05)
    model_a, x, y = _train_problem(backend)
    model_b, _, _ = _train_problem(backend)
    first, second = list(minibatches(len(x), len(x), 2, 0))
    w0 = backend.get_weights(model_a)
    backend.train(model_a, x, y, epochs=1, lr=lr, batch_size=len(x), clip=clip,
                  progress=False)
    w1 = backend.get_weights(model_a)
    g1 = backend.to_canonical(model_a, backend.gradients(model_a, x[second], y[second]))
    backend.train(model_b, x, y, epochs=2, lr=lr, batch_size=len(x), clip=clip,
                  progress=False)
    update = [lr * g for g in ref_adaptive_clip(g1, w1, 0.05)]
    _assert_sgd_step(w1, backend.get_weights(model_b), update)
    stale = [lr * g for g in ref_adaptive_clip(g1, w0, 0.05)]
    assert max(np.max(np.abs(u - s) / (np.abs(u) + 1e-30)) for u, s in zip(update, stale)) > 1e-3


def test_train_accepts_any_function(backend):
    """A callable sees the raw gradients (aligned with the parameters) at every step, and
    its result is what is applied: returning zeros leaves SGD's weights unchanged."""
    model, x, y = _train_problem(backend)
    before = backend.get_weights(model)
    seen = []

    def zero(grads):
        seen.append(backend.to_canonical(model, grads))
        return [g * 0 for g in grads]

    history = backend.train(model, x, y, epochs=2, lr=0.1, batch_size=6, clip=zero,
                            progress=False)
    assert len(seen) == len(history) == 4
    assert [ref_norm(g, 2.0) for g in seen] == pytest.approx(history.grad_norm, rel=RTOL)
    for b, a in zip(before, backend.get_weights(model)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make, error, match", [
    (lambda: Clip("bogus", 1.0), ValueError,
     "unknown clip rule 'bogus'; allowed: 'value', 'norm', 'global_norm', 'adaptive'"),
    (lambda: Clip("value", 0.0), ValueError, "clip threshold must be a finite number > 0"),
    (lambda: Clip("norm", -1.0), ValueError, "clip threshold must be a finite number > 0"),
    (lambda: Clip("global_norm", math.nan), ValueError, "clip threshold must be a finite"),
    (lambda: Clip("global_norm", math.inf), ValueError, "clip threshold must be a finite"),
    (lambda: Clip("value", "1"), TypeError, "clip threshold must be a real number"),
    (lambda: Clip("global_norm", 1.0, norm_type=0), ValueError,
     "norm_type must be a number > 0 or inf"),
    (lambda: Clip("global_norm", 1.0, norm_type=-2.0), ValueError, "norm_type must be"),
    (lambda: Clip("global_norm", 1.0, norm_type=math.nan), ValueError, "norm_type must be"),
    (lambda: Clip("adaptive", 0.01, eps=0.0), ValueError, "eps must be a finite number > 0"),
    (lambda: "global_norm", TypeError,
     r"clip must be None, a Clip\(\.\.\.\) rule or a function grads -> grads, got str"),
    (lambda: 1.0, TypeError, "clip must be None, a Clip"),
    (lambda: ("global_norm", 1.0), TypeError, "clip must be None, a Clip"),
], ids=["rule", "zero", "negative", "nan", "inf", "str", "p0", "p-2", "pnan", "eps0",
        "str-clip", "float-clip", "tuple-clip"])
def test_train_rejects_bad_clips_before_training(backend, make, error, match):
    model, x, y = _train_problem(backend)
    before = backend.get_weights(model)
    with pytest.raises(error, match=match):
        backend.train(model, x, y, epochs=1, lr=0.1, batch_size=4, clip=make(),
                      progress=False)
    for b, a in zip(before, backend.get_weights(model)):
        np.testing.assert_array_equal(a, b)


def test_clip_is_one_frozen_object_for_both_back_ends():
    assert ct.Clip is ctf.Clip is Clip
    rule = Clip("global_norm", 1.0)
    assert (rule.norm_type, rule.eps) == (2.0, 1e-3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.threshold = -1.0  # cannot be made invalid after validation


# ---------------------------------------------------------------- bad input


def _calls(backend, arrays):
    """(name of the checked argument, call with that argument) for every function."""
    grads = tensors(backend, arrays)
    return [
        ("clip_value", lambda v: backend.clip_by_value(grads, v)),
        ("max_norm", lambda v: backend.clip_by_norm(grads, v)),
        ("max_norm", lambda v: backend.clip_by_global_norm(grads, v)),
        ("clipping", lambda v: backend.adaptive_clip(grads, grads, clipping=v)),
        ("eps", lambda v: backend.adaptive_clip(grads, grads, eps=v)),
    ]


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, -math.inf],
                         ids=["0", "-1", "nan", "inf", "-inf"])
def test_bad_thresholds_raise_value_error_naming_what_is_allowed(backend, bad):
    arrays = [np.array([[3.0, 4.0]], np.float32), np.array([1.0], np.float32)]
    copies = _copies(arrays)
    for name, call in _calls(backend, arrays):
        with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
            call(bad)
    _assert_unchanged(arrays, copies)


@pytest.mark.parametrize("bad", ["1", True, None], ids=["str", "bool", "None"])
def test_non_numeric_thresholds_raise_type_error(backend, bad):
    for name, call in _calls(backend, [np.ones((2, 2), np.float32)]):
        with pytest.raises(TypeError, match=f"{name} must be a real number"):
            call(bad)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1.0, ValueError),
                                        (math.nan, ValueError), (-math.inf, ValueError),
                                        ("fro", TypeError)])
def test_bad_norm_type(backend, bad, error):
    grads = tensors(backend, [np.ones((2, 2), np.float32)])
    match = "norm_type must be a number > 0 or inf" if error is ValueError else \
        "norm_type must be a real number"
    with pytest.raises(error, match=match):
        backend.clip_by_global_norm(grads, 1.0, norm_type=bad)


def test_adaptive_clip_rejects_misaligned_grads_and_params(backend):
    a, b = np.ones((3, 2), np.float32), np.ones((2,), np.float32)
    with pytest.raises(ValueError, match="grads and params must have the same length, "
                                         "got 2 and 1"):
        backend.adaptive_clip(tensors(backend, [a, b]), tensors(backend, [a]))
    with pytest.raises(ValueError, match=r"gradient 1 has shape \(2,\); it must have its "
                                         r"parameter's shape \(3,\)"):
        backend.adaptive_clip(tensors(backend, [a, b]),
                              tensors(backend, [a, np.ones(3, np.float32)]))
    # A gradient in the other framework's layout is caught too.
    with pytest.raises(ValueError, match=r"gradient 0 has shape \(2, 3\)"):
        backend.adaptive_clip(tensors(backend, [a.T.copy()]), tensors(backend, [a]))
    # None gradients need no matching shape.
    assert backend.adaptive_clip([None], tensors(backend, [a])) == [None]


# ---------------------------------------------- clipping inside user loops and model.fit


def test_clip_fields_that_a_rule_ignores_are_rejected():
    with pytest.raises(ValueError, match="norm_type applies to the 'global_norm' rule only"):
        Clip("norm", 1.0, norm_type=1.0)
    with pytest.raises(ValueError, match="eps applies to the 'adaptive' rule only"):
        Clip("global_norm", 1.0, eps=1e-2)


@pytest.mark.parametrize("clip", [Clip("global_norm", 0.3), Clip("adaptive", 0.01),
                                  Clip("value", 0.001)])
def test_torch_clip_grads_clips_dot_grad_in_place(rng, clip):
    """clip_grads_ leaves in .grad what the functional rule returns for the same gradient."""
    model = ct.mlp([5, 4, 3], seed=1)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    expected = ct.clip_function(clip, ct.trainable_parameters(model))(ct.gradients(model, x, y))
    ct.loss_value(model, x, y).backward()
    ct.clip_grads_(model, clip)
    for param, want in zip(ct.trainable_parameters(model), expected):
        np.testing.assert_array_equal(param.grad.numpy(), want.numpy())
    with pytest.raises(TypeError, match="Clip"):
        ct.clip_grads_(model, None)


@pytest.mark.parametrize("clip", [Clip("global_norm", 0.3), Clip("adaptive", 0.01),
                                  Clip("norm", 0.2)])
def test_keras_fit_with_clipping_optimizer_takes_the_clipped_sgd_step(rng, clip):
    """One step of model.fit equals w - lr * clip(g), g from ctf.gradients (NumPy update)."""
    import keras

    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    model = ctf.mlp([5, 4, 3], seed=2)
    before = ctf.get_weights(model)
    grads = ctf.clip_function(clip, model.trainable_variables)(ctf.gradients(model, x, y))
    expected = [w - 0.1 * g for w, g in zip(before, ctf.to_canonical(model, grads))]
    optimizer = ctf.clipping_optimizer(keras.optimizers.SGD(0.1), clip)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert_arrays_close(ctf.get_weights(model), expected)
    assert type(optimizer).__name__ == "ClippingSGD"
    with pytest.raises(TypeError, match="Clip"):
        ctf.clipping_optimizer(keras.optimizers.SGD(0.1), "global_norm")
