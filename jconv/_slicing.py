"""The index arithmetic of a correlation: its output sizes, its padding, and the
strided slices, interleavings and layouts its lowerings read and write.

Every lowering (``_taps``, ``_rows``, ``_bands``, ``_winograd``, ...) shares
these; none of them computes anything but shapes, pads, slices and transposes.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from ._correlation import Correlation


def term_counts(lhs_shape, rhs_shape, corr: Correlation):
    """``(window, outputs)``: the spatial sizes of the rhs and of the result."""
    window = tuple(rhs_shape[a] for a in corr.rhs_axes[2:])
    padded = padded_shape(lhs_shape, corr)
    outs = [
        (padded[axis] - (k - 1) * rd - 1) // s + 1
        for axis, k, rd, s in zip(
            corr.lhs_axes[2:], window, corr.rhs_dilation, corr.window_strides, strict=True
        )
    ]
    return window, tuple(outs)


def padded_shape(lhs_shape, corr: Correlation) -> tuple[int, ...]:
    """The shape of :func:`pad`'s result: the lhs dilated and edge-padded."""
    shape = list(lhs_shape)
    for axis, (lo, hi), d in zip(corr.lhs_axes[2:], corr.padding, corr.lhs_dilation, strict=True):
        shape[axis] = (shape[axis] - 1) * d + 1 + lo + hi
    return tuple(shape)


def pad(a, axes, corr: Correlation):
    """Edge and interior (dilation) padding of ``a`` on ``axes``, explicitly."""
    config = [(0, 0, 0)] * a.ndim
    for axis, (lo, hi), d in zip(axes, corr.padding, corr.lhs_dilation, strict=True):
        config[axis] = (lo, hi, d - 1)
    if all(c == (0, 0, 0) for c in config):
        return a
    return lax.pad(a, jnp.zeros((), a.dtype), config)


def pad_axis(a, axis: int, low: int, high: int):
    """``a`` zero-padded by ``(low, high)`` on ``axis`` alone."""
    if low == high == 0:
        return a
    config = [(0, 0, 0)] * a.ndim
    config[axis] = (low, high, 0)
    return lax.pad(a, jnp.zeros((), a.dtype), config)


def window_slice(a, axes, starts, counts, strides):
    begin, limit, step = [0] * a.ndim, list(a.shape), [1] * a.ndim
    for axis, s0, n, t in zip(axes, starts, counts, strides, strict=True):
        begin[axis], limit[axis], step[axis] = s0, s0 + (n - 1) * t + 1, t
    return lax.slice(a, begin, limit, step)


def interleave(phases, axes, dil, outs):
    """``out[p + d m] = phases[p][m]`` per axis, cropped to ``outs``."""
    arrays = dict(phases)
    for level in reversed(range(len(axes))):  # merge the last phase index first
        a, d = axes[level], dil[level]
        merged = {}
        for key in {k[:level] for k in arrays}:
            parts = [arrays[(*key, p)] for p in range(d)]
            stacked = jnp.stack(parts, axis=a + 1)
            shape = list(parts[0].shape)
            shape[a] *= d
            merged[key] = stacked.reshape(shape)
        arrays = merged
    out = arrays[()]
    return lax.slice(
        out,
        [0] * out.ndim,
        [outs[axes.index(a)] if a in axes else n for a, n in enumerate(out.shape)],
    )


def laid_out(out, axes, corr: Correlation):
    """``out``, whose (batch, feature, *spatial) roles sit on ``axes``, transposed
    to ``corr.out_axes``."""
    order = [0] * out.ndim
    for axis, role_out in zip(axes, corr.out_axes, strict=True):
        order[role_out] = axis
    return out if order == list(range(out.ndim)) else jnp.transpose(out, order)


def resized(shape, axes, sizes) -> tuple[int, ...]:
    """``shape`` with each of ``axes`` given the matching size of ``sizes``."""
    shape = list(shape)
    for axis, size in zip(axes, sizes, strict=True):
        shape[axis] = size
    return tuple(shape)


def positions_last(out, axis: int, count: int):
    """``out`` with ``count`` positions split off the front of ``axis`` (position-major
    there, as an im2col matmul leaves them) and moved to a new trailing axis."""
    out = out.reshape(*out.shape[:axis], count, -1, *out.shape[axis + 1 :])
    return jnp.moveaxis(out, axis, -1)


def tap_starts(tap, corr: Correlation) -> list[int]:
    """Where window tap ``tap`` starts in the (dilated) window: ``tap * rhs_dilation``."""
    return [t * rd for t, rd in zip(tap, corr.rhs_dilation, strict=True)]


def kernel_tap(rhs, corr: Correlation, tap):
    """The rhs at window tap ``tap``, its spatial axes dropped: ``(out, in)`` features."""
    spatial = corr.rhs_axes[2:]
    ones = [1] * len(tap)
    return lax.squeeze(window_slice(rhs, spatial, tap, ones, ones), spatial)


def entry_bytes(lhs_shape, corr: Correlation, itemsize: int) -> int:
    """Bytes of one entry of the lhs feature axis (one image of a kernel gradient's x)."""
    return math.prod(lhs_shape) // lhs_shape[corr.lhs_axes[1]] * itemsize


def place_positions(stacked, outs, out_axes):
    """The output from per-position results stacked on a trailing axis."""
    ob, of, *os_ = out_axes
    stacked = stacked.reshape(*stacked.shape[:-1], *outs)
    # stacked axes: the non-spatial out axes in increasing order, then spatial.
    current = sorted((ob, of)) + list(os_)
    perm = [current.index(a) for a in range(len(current))]
    return jnp.transpose(stacked, perm)
