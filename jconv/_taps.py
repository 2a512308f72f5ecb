"""The "taps" lowering: a correlation as a short sum of strided slices times einsums.

A correlation ``out[k] = sum_i lhs~[k ws + i rd] rhs[i]`` (per spatial dim, ``lhs~``
the padded, dilated lhs) can be computed either

- **over window taps** ``i``: ``out = sum_i slice_i(lhs~) · rhs[i]``, where
  ``slice_i`` takes every ``ws``-th entry starting at ``i rd`` (as many as there
  are outputs) — the seed's "slide the kernel" read literally, one term per
  kernel entry; or
- **over output positions** ``k``: ``out[k] = sum_i slice'_k(lhs~)[i] · rhs[i]``,
  where ``slice'_k`` takes every ``rd``-th entry starting at ``k ws`` (as many as
  there are window taps) — one contraction per output position, which is the
  cheap way when the *output* is small (the kernel gradient, whose output is the
  kernel).

Each term contracts the feature axis per group with an einsum: a plain matmul
for dense convolutions, a batched matmul for grouped ones, and an elementwise
multiply-add for depthwise ones (where XLA:CPU's convolution is slow). The
number of terms is the smaller of the two spatial products, so it is only used
when that is small.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from ._correlation import Correlation, accumulation_dtype


def _canonical(a, axes):
    """``a`` transposed to ``(first, *spatial, second)`` from role axes."""
    first, second, *spatial = axes
    return jnp.transpose(a, (first, *spatial, second))


def _restore(a, axes):
    """Inverse of :func:`_canonical` for the output axes."""
    first, second, *spatial = axes
    perm = (first, *spatial, second)
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return jnp.transpose(a, inverse)


def _pad(lhs, corr: Correlation):
    """``lhs~``: interior (dilation) and edge padding, explicitly (pads >= 0)."""
    config = [(0, 0, 0)]
    config += [(lo, hi, d - 1) for (lo, hi), d in zip(corr.padding, corr.lhs_dilation, strict=True)]
    config += [(0, 0, 0)]
    return lax.pad(lhs, jnp.zeros((), lhs.dtype), config)


def _strided(a, starts, counts, strides):
    """``a[:, s0::t0][:n0], ...`` on the spatial axes of a canonical array."""
    begin = (0, *starts, 0)
    limit = (
        a.shape[0],
        *(s + (n - 1) * t + 1 for s, n, t in zip(starts, counts, strides, strict=True)),
        a.shape[-1],
    )
    return lax.slice(a, begin, limit, (1, *strides, 1))


def _contract(piece, rhs_piece, corr: Correlation, n_spatial_contracted: int, precision):
    """One term: ``piece (B, *S, F) x rhs_piece (*W, I, O) -> (B', *S', O)``.

    ``n_spatial_contracted`` spatial axes (0 over taps, all over positions) are
    summed together with the feature axis, per group.
    """
    gf, gb = corr.feature_group_count, corr.batch_group_count
    nd = piece.ndim - 2
    keep = "".join(chr(ord("p") + i) for i in range(nd - n_spatial_contracted))
    summed = "".join(chr(ord("h") + i) for i in range(n_spatial_contracted))
    b, f = piece.shape[0], piece.shape[-1]
    o = rhs_piece.shape[-1]
    acc = accumulation_dtype(piece.dtype)
    if gb > 1:  # lhs batch split in gb blocks, output feature block g sees block g
        lhs = piece.reshape(gb, b // gb, *piece.shape[1:])
        rhs = rhs_piece.reshape(*rhs_piece.shape[:-1], gb, o // gb)
        spec = f"gb{keep}{summed}c,{summed}cgm->b{keep}gm"
    else:
        g = gf
        lhs = piece.reshape(*piece.shape[:-1], g, f // g)
        rhs = rhs_piece.reshape(*rhs_piece.shape[:-1], g, o // g)
        spec = f"b{keep}{summed}gc,{summed}cgm->b{keep}gm"
    out = jnp.einsum(spec, lhs, rhs, precision=precision, preferred_element_type=acc)
    return out.reshape(*out.shape[:-2], -1)


def term_counts(x_shape, w_shape, corr: Correlation):
    """``(window, outputs)``: spatial sizes of the rhs and of the result."""
    window = tuple(w_shape[:-2])
    dilated = [
        (n - 1) * d + 1 + lo + hi
        for n, d, (lo, hi) in zip(x_shape[1:-1], corr.lhs_dilation, corr.padding, strict=True)
    ]
    outs = tuple(
        (n - (k - 1) * rd - 1) // s + 1
        for n, k, rd, s in zip(dilated, window, corr.rhs_dilation, corr.window_strides, strict=True)
    )
    return window, outs


def taps_correlate(lhs, rhs, corr: Correlation, precision=None, by: str | None = None):
    """The correlation ``corr``, as a sum over taps or over output positions.

    Args:
        lhs, rhs: operands laid out as ``corr`` says; paddings must be >= 0.
        corr: the correlation.
        precision: passed to the einsums.
        by: ``"taps"``, ``"positions"`` or ``None`` (the one with fewer terms).
    """
    x = _canonical(lhs, corr.lhs_axes)  # (B, *S, F)
    out_ax, in_ax, *w_spatial = corr.rhs_axes
    w = jnp.transpose(rhs, (*w_spatial, in_ax, out_ax))  # (*W, I, O)
    window, outs = term_counts(x.shape, w.shape, corr)
    if by is None:
        by = "taps" if math.prod(window) <= math.prod(outs) else "positions"
    single_tap = math.prod(window) == 1 and all(s == 1 for s in corr.window_strides)
    if single_tap and any(d > 1 for d in corr.lhs_dilation):
        # One tap, unit stride: contract first, then place (dilate/pad) the result:
        # no multiply-adds with the dilation's zeros.
        out = _pad(_contract(x, w[(0,) * len(window)], corr, 0, precision), corr)
        return _restore(out.astype(lhs.dtype), corr.out_axes)
    xp = _pad(x, corr)
    if by == "taps":
        total = None
        for tap in itertools.product(*(range(k) for k in window)):
            starts = [t * rd for t, rd in zip(tap, corr.rhs_dilation, strict=True)]
            piece = _strided(xp, starts, outs, corr.window_strides)
            term = _contract(piece, w[tap], corr, 0, precision)
            total = term if total is None else total + term
        out = total
    else:
        rows = []
        for pos in itertools.product(*(range(o) for o in outs)):
            starts = [p * s for p, s in zip(pos, corr.window_strides, strict=True)]
            piece = _strided(xp, starts, window, corr.rhs_dilation)
            rows.append(_contract(piece, w, corr, len(window), precision))
        out = jnp.stack(rows, axis=1).reshape(rows[0].shape[0], *outs, rows[0].shape[-1])
    return _restore(out.astype(lhs.dtype), corr.out_axes)
