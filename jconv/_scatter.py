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

from ._correlation import Correlation, accumulation_dtype
from ._terms import (
    dense,
    divisor_within,
    in_batch_chunks,
    interleave,
    kernel_tap,
    pad,
    tap_starts,
    term,
    window_slice,
)

# Output features up to which a correlation counts as thin (see choose_mode).
THIN = 4


def scatter_sum(lhs, rhs, corr: Correlation, precision, window, outs):
    """``out = sum_i slice_i(pad(lhs · rhs[i]))``: multiply first, then shift and add.

    Padding, dilating and slicing act on spatial axes and the product contracts
    features, so they commute: ``slice_i(lhs~) · rhs[i] = slice_i((lhs · rhs[i])~)``.
    All taps' products come from one matmul of the (unpadded, undilated) lhs with
    the taps side by side on the out-feature axis, so the lhs is read once instead
    of once per tap; the shifted sum is one fused loop over the output. This is
    the col2im half of im2col, and what a transposed (strided) convolution is.
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
    all_taps = _side_by_side(rhs, corr)
    features = rhs.shape[corr.rhs_axes[0]]

    def scatter(lhs):
        products = term(lhs, all_taps, corr, (), precision, acc)
        of = corr.out_axes[1]
        return place(
            {
                tap: lax.slice_in_dim(products, i * features, (i + 1) * features, axis=of)
                for i, tap in enumerate(taps)
            }
        )

    # The products are len(taps) times the lhs's spatial size: computed and
    # consumed a batch chunk at a time they stay in cache and never exist whole.
    spatial = math.prod(lhs.shape[a] for a in corr.lhs_axes[2:])
    entry_bytes = spatial * len(taps) * features * jnp.dtype(acc or lhs.dtype).itemsize
    chunk = divisor_within(lhs.shape[corr.lhs_axes[0]], SCATTER_BYTES // entry_bytes)
    return in_batch_chunks(scatter, lhs, chunk, corr)


def _side_by_side(rhs, corr: Correlation):
    """Every tap's ``kernel_tap`` side by side on the out-feature axis, tap-major.

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


# The scatter mode's products are computed this many bytes (a batch chunk) at a time.
SCATTER_BYTES = 1 << 19


def _shifted_sum(per_tap, corr: Correlation, outs):
    """``sum_i slice_i(pad(y_i))`` (no dilation): one fused loop over the output."""
    out_sp, total = corr.out_axes[2:], None
    for tap, y in per_tap.items():
        starts = tap_starts(tap, corr)
        part = window_slice(pad(y, out_sp, corr), out_sp, starts, outs, corr.window_strides)
        total = part if total is None else total + part
    return total


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
