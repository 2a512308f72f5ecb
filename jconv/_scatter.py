"""The taps lowering's scatter mode: multiply first, then shift and add.

``out = sum_i slice_i(pad(lhs)) · rhs[i]`` is also ``sum_i slice_i(pad(lhs · rhs[i]))``
(padding, dilation and slicing act on spatial axes, the product on features).
Computing the products first reads the lhs once instead of once per tap, and with
a dilated lhs (a strided convolution's input gradient) the sum splits into
phases that never touch the dilation's zeros. This is the col2im half of im2col,
and what a transposed convolution is.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from ._chunks import divisor_within, in_batch_chunks
from ._correlation import Correlation, accumulation_dtype
from ._slicing import interleave, kernel_tap, pad, pad_axis, tap_starts, window_slice
from ._terms import Plan, dense, term

# Output features up to which a correlation counts as thin (see :func:`thin`).
THIN = 4


def thin(lhs_shape, rhs_shape, corr: Correlation, window) -> bool:
    """Whether a dense correlation is scattered for being thin (``_taps.choose_mode``).

    Thin: at most :data:`THIN` output features, at most half the input features
    (an image's channels: the input gradient of a stem or of LeNet's first
    layer), where one matmul per tap would be a thin product re-reading the
    whole lhs. Without an lhs dilation (a unit-stride forward's input
    gradient) only while one batch entry's products fit :data:`SCATTER_BYTES`
    (counted in float32; tap-major ones are chunked by entries of up to that,
    past :data:`TAP_MAJOR_BYTES`): the products are chunked by whole entries,
    and over larger images XLA:CPU's own convolution is as fast
    and holds nothing (64 -> 3 features, 3x3, ms XLA vs scatter: 2 images of
    224x224, 5.4 MB of products an image, 11.0 vs 12.8 and 0 vs 17.4 MiB; of
    112x112, 1.4 MB, 4.0 vs 5.0; 5x5 over 8 images of 56x56, 0.9 MB, 8.3 vs
    10.2-10.6 in two runs, 8.8 vs 6.9 in a third; LeNet's, 64 images of 28x28,
    6 -> 1, 5x5, 78 KB, 6.4 vs 1.2). A dilated lhs (a strided forward's input
    gradient, such as a 7x7 stride-2 stem's: 80 -> 27 ms at 7.4 MB an image) is
    scattered in phases, which XLA's lhs dilation lacks.
    """
    f_out, f_in = rhs_shape[corr.rhs_axes[0]], lhs_shape[corr.lhs_axes[1]]
    if not (dense(corr) and f_out <= THIN and 2 * f_out <= f_in):
        return False
    if any(d > 1 for d in corr.lhs_dilation):
        return True
    return _entry_products(lhs_shape, corr, window, f_out) * 4 <= SCATTER_BYTES


def _entry_products(lhs_shape, corr: Correlation, window, features: int) -> int:
    """Every tap's products of one batch entry: the lhs's spatial size, times
    the window's taps, times the output features."""
    spatial = math.prod(lhs_shape[a] for a in corr.lhs_axes[2:])
    return spatial * math.prod(window) * features


def scatter_sum(lhs, rhs, corr: Correlation, precision, window, outs):
    """``out = sum_i slice_i(pad(lhs · rhs[i]))``: multiply first, then shift and add.

    Padding, dilating and slicing act on spatial axes and the product contracts
    features, so they commute: ``slice_i(lhs~) · rhs[i] = slice_i((lhs · rhs[i])~)``.
    All taps' products come from one matmul of the (unpadded, undilated) lhs, so
    the lhs is read once instead of once per tap: with the taps side by side on
    the out-feature axis, or tap-major where that is cheaper
    (:func:`_tap_major`). The shifted sum is one fused loop over the output, or
    one per window axis (:func:`_separable_sum`). This is the col2im half of
    im2col, and what a transposed (strided) convolution is.
    """
    acc = accumulation_dtype(lhs.dtype)
    taps = list(itertools.product(*(range(k) for k in window)))

    def place(per_tap):
        if all(d == 1 for d in corr.lhs_dilation):
            return _shifted_sum(per_tap, corr, outs)
        return _phased_sum(per_tap, corr, outs)

    if not dense(corr):
        # Grouped: one term per tap (for depthwise, broadcast products that XLA
        # fuses into the loops of the sum, so none is materialised).
        terms = {t: term(lhs, kernel_tap(rhs, corr, t), corr, (), precision, acc) for t in taps}
        return place(terms)
    features = rhs.shape[corr.rhs_axes[0]]
    tap_major = _tap_major(lhs.shape, len(taps) * features, corr)

    def scatter(lhs):
        if tap_major:
            products = _tap_major_products(lhs, rhs, corr, precision, acc)
            if math.prod(window) > 2 * sum(window):
                return _separable_sum(products.reshape(*window, *products.shape[1:]), corr, outs)
            return place(dict(zip(taps, products, strict=True)))
        products = term(lhs, _side_by_side(rhs, corr), corr, (), precision, acc)
        of = corr.out_axes[1]
        return place(
            {
                tap: lax.slice_in_dim(products, i * features, (i + 1) * features, axis=of)
                for i, tap in enumerate(taps)
            }
        )

    # The products are len(taps) times the lhs's spatial size: computed and
    # consumed a batch chunk at a time they stay in cache and never exist whole.
    itemsize = jnp.dtype(acc or lhs.dtype).itemsize
    entry_bytes = _entry_products(lhs.shape, corr, window, features) * itemsize
    most = (TAP_MAJOR_BYTES if tap_major else SCATTER_BYTES) // entry_bytes
    chunk = divisor_within(lhs.shape[corr.lhs_axes[0]], most)
    return in_batch_chunks(scatter, lhs, chunk, corr)


def _tap_major(lhs_shape, products: int, corr: Correlation) -> bool:
    """Whether the products are computed tap-major (:func:`_tap_major_products`).

    Tap-major products give the shifted sum contiguous rows to read; side by
    side on the out-feature axis, a tap's slice reads every ``products``-th
    entry. But XLA:CPU computes a tap-major matmul by transposing the lhs
    first, which costs ``f_in`` entries per pixel against the products'
    ``taps x f_out``, so they are tap-major only where the lhs is the thinner
    (LeNet's input gradient: 6 features against 25 x 1). Where it is wider,
    tap-major was slower: 3x3, 32 -> 1 over 8 images of 64x64, 0.9 -> 1.05 ms.
    Not for a dilated lhs either: the stem's (phased) input gradient went 34 ->
    45 ms.
    """
    undilated = all(d == 1 for d in corr.lhs_dilation)
    return undilated and lhs_shape[corr.lhs_axes[1]] <= products


def _tap_major_products(lhs, rhs, corr: Correlation, precision, acc):
    """Every tap's product ``lhs · rhs[i]``, stacked on a new leading axis (tap-major).

    One einsum against the rhs with its spatial axes moved first and merged
    (``(H, W, O, I)`` -> ``(H W, O, I)``: a transpose of the small rhs); each
    tap's product is then a contiguous block laid out as the output
    (``corr.out_axes``).
    """
    spatial = corr.rhs_axes[2:]
    window = [rhs.shape[a] for a in spatial]
    stacked = jnp.moveaxis(rhs, spatial, range(len(spatial)))
    stacked = stacked.reshape(math.prod(window), *stacked.shape[len(spatial) :])
    plan = Plan.of(lhs, stacked[0], corr, ())
    return jnp.einsum(
        f"{plan.x_spec},T{plan.w_spec}->T{plan.out_spec}",
        lhs,
        stacked,
        precision=precision,
        preferred_element_type=acc,
    )


def _side_by_side(rhs, corr: Correlation):
    """Every tap's ``kernel_tap`` side by side on the out-feature axis, tap by tap.

    One transpose of the rhs (its spatial axes moved to just before the
    out-feature axis, then merged with it) instead of a slice per tap: an
    ``(H, W, O, I)`` rhs becomes ``(H W O, I)``, entry ``(h W + w) O + o``.
    """
    ro, spatial = corr.rhs_axes[0], corr.rhs_axes[2:]
    perm = []
    for a in range(rhs.ndim):
        if a == ro:
            perm += spatial
        if a not in spatial:
            perm.append(a)
    moved = jnp.transpose(rhs, perm)
    at = perm.index(spatial[0])
    return moved.reshape(*moved.shape[:at], -1, *moved.shape[at + len(spatial) + 1 :])


# The scatter mode's products are computed this many bytes (a batch chunk) at a
# time; tap-major ones in smaller chunks, measured on LeNet's input gradient
# (64 images of 24x24x6 -> 28x28x1, 5x5 taps, 57.6 KB of products per image),
# whose separable sum reads each chunk's products and then its partial sums:
# 0.68 ms in chunks of 64 KiB (one image), 0.75 at 128, 1.0 at 256, 1.3 at 512.
# (A tap-major 3x3, one shifted sum, was as fast at 64 KiB as at 512.)
SCATTER_BYTES = 1 << 19
TAP_MAJOR_BYTES = 1 << 16


def _shifted_sum(per_tap, corr: Correlation, outs):
    """``sum_i slice_i(pad(y_i))`` (no dilation): one fused loop over the output."""
    out_sp, total = corr.out_axes[2:], None
    for tap, y in per_tap.items():
        starts = tap_starts(tap, corr)
        part = window_slice(pad(y, out_sp, corr), out_sp, starts, outs, corr.window_strides)
        total = part if total is None else total + part
    return total


def _separable_sum(products, corr: Correlation, outs):
    """:func:`_shifted_sum` of tap-major products, one window axis at a time.

    ``products`` has the window's axes first, then the output's. Tap ``(i, j)``
    adds ``y_ij[k ws + i rd, l ws + j rd]`` to output ``(k, l)`` (``y`` padded,
    ``ws`` the window stride, ``rd`` the rhs dilation); the shift along each
    axis depends on that axis's tap alone, so the sum splits: first ``r_i[k',
    l] = sum_j y_ij[k', l ws + j rd]`` (the last window axis, its spatial axis
    padded once), then ``out[k, l] = sum_i r_i[k ws + i rd, l]``. A ``k x k``
    window takes ``2 k`` adds per output instead of ``k^2``, for one more pass
    over memory per window axis after the first (the partial sums), so it is
    taken where the window's taps outnumber twice its axes' sizes (5x5: 25 >
    20; 3x3x3: 27 > 18; not 3x3). LeNet's input
    gradient: 0.79 -> 0.63 ms; 5x5, 16 -> 1 over 4 images of 96x96: 1.3 -> 1.1.
    """
    spatial = corr.out_axes[2:]
    for d in reversed(range(len(spatial))):
        axis = d + 1 + spatial[d]  # window axes 0..d still lead
        padded = pad_axis(products, axis, *corr.padding[d])
        total = None
        for t in range(products.shape[d]):
            tap = lax.index_in_dim(padded, t, axis=d, keepdims=False)
            start, stride = t * corr.rhs_dilation[d], corr.window_strides[d]
            part = window_slice(tap, (axis - 1,), (start,), (outs[d],), (stride,))
            total = part if total is None else total + part
        products = total
    return products


def _phased_sum(per_tap, corr: Correlation, outs):
    """:func:`_shifted_sum` with ``lhs_dilation`` d, split into d phases per dim.

    Output ``k`` reads the dilated, padded ``y_i`` at ``k + i rd - lo``, a real
    entry only when that is a multiple of d: entry ``(k + i rd - lo) / d``. For
    ``k = p + d m`` (phase ``p``) that is ``m + (p + i rd - lo) / d``: within a
    phase each contributing tap is a plain shift of ``y_i``, with no zeros
    multiplied or added. The phases are then interleaved (``k = p + d m``).
    Worked case (1-D, d = 2, rd = 1, lo = 1, 2 taps): phase 0 gets tap 1 at
    shift 0, phase 1 gets tap 0 at shift 0.
    """
    out_sp = corr.out_axes[2:]
    dil = corr.lhs_dilation
    counts = [-(-o // d) for o, d in zip(outs, dil, strict=True)]  # per phase, padded
    some = next(iter(per_tap.values()))
    phases = {}
    for phase in itertools.product(*(range(d) for d in dil)):
        total = None
        for tap, y in per_tap.items():
            shifts = []
            for p, t, rd, (lo, _), d in zip(
                phase, tap, corr.rhs_dilation, corr.padding, dil, strict=True
            ):
                offset = p + t * rd - lo
                if offset % d:
                    break
                shifts.append(offset // d)
            else:
                part = _shifted_window(y, out_sp, shifts, counts)
                total = part if total is None else total + part
        if total is None:  # no tap lands on this phase: zeros
            shape = list(some.shape)
            for a, n in zip(out_sp, counts, strict=True):
                shape[a] = n
            total = jnp.zeros(shape, some.dtype)
        phases[phase] = total
    return interleave(phases, out_sp, dil, outs)


def _shifted_window(y, axes, shifts, counts):
    """``y[shift : shift + count]`` per axis, zero where that leaves ``y``."""
    config = [(0, 0, 0)] * y.ndim
    for a, s, n in zip(axes, shifts, counts, strict=True):
        config[a] = (-s, s + n - y.shape[a], 0)  # lax.pad crops on negative padding
    return lax.pad(y, jnp.zeros((), y.dtype), config)
