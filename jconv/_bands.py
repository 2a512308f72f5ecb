"""Rows as batch: a kernel gradient over large images as one over bands of rows.

The seed's ``dL/dK = conv(X, dL/dZ)`` sums, for each kernel tap, over the batch
and over every output position. Per spatial dim of a :class:`Correlation` in
positions mode (``k`` an output position, a kernel tap; ``i`` a window entry, a
row of ``dz``; forward dilation ``d`` as window stride, forward stride ``r`` as
rhs dilation; ``x~`` the lhs padded by ``(lo, hi)``)::

    out[k] = sum_n sum_{i < R} x~[n, k d + i r] dz[n, i]

The sum over ``i`` splits into ``B = R / b`` bands of ``b`` rows (``b`` a
divisor of ``R``: padding ``dz`` with zero rows instead would multiply them
with rows of ``x`` the sum never reads, and ``0 * inf`` is NaN)::

    out[k] = sum_n sum_{t < B} sum_{j < b} x~[n, t b r + k d + j r] dz[n, t b + j]

and band ``t`` reads only ``L = (K - 1) d + (b - 1) r + 1`` rows of ``x~``,
from row ``t b r`` on. Stacking the bands on the batch axis (entry ``(n, t)``
of ``N B``, image-major) turns that into the same correlation over ``N B``
"images" of ``L`` rows (of ``b`` rows of ``dz``), unpadded in that dim::

    out[k] = sum_{(n, t)} sum_{j < b} xb[(n, t), k d + j r] dzb[(n, t), j]

``dzb`` is ``dz`` reshaped (free where the batch axis is outer to the rows, as
in NHWC and NCHW); ``xb`` a copy of ``x~``'s bands, ``L / (b r)`` times its
size. Worked case: a SAME 3x3 (``lo = hi = 1``, ``d = r = 1``, ``K = 3``) over
56 rows in bands of ``b = 28``: ``L = 30``, band 0 reads rows 0:30 of ``x~``
(x rows -1:29), band 1 rows 28:58 (x rows 27:57, the last one padding); the
two halos' rows are read twice.

Why: XLA:CPU's kernel gradient slows to a few GFLOP/s over large images (2
images of 112x112, 64 -> 128, 3x3: 220-620 ms for 3.7 GFLOP; 1 image of
224x224x64: 470-670 ms), and the taps' positions mode chunks the batch, so
over a few large images it either holds im2col stacks of whole images (one
224x224x64 image: 123 MiB) or leaves the gradient to XLA. Over bands the batch
has ``N B`` cache-sized entries and the taps' rules take it as they take many
small images: those two 40-42 and 59-64 ms, at 15.3 vs 18.7 and 30.6 vs 24.6
MiB; 2 images of 56x56x64 23 -> 8 ms (3.2 -> 3.9 MiB); one, 8.4-9.4 ms and 1.7
MiB (XLA) or 5.5 ms and 7.7 MiB (taps, one image whole) -> 4.1-5.3 ms and 3.0
MiB (measured on a 2-core AMD EPYC, family 25, where XLA's times moved 1.5x
between runs).
Where the taps take the unbanded gradient already, they keep it (8 images of
28x28x128: 27 ms unbanded, 45 in bands).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jax import lax

from ._correlation import Correlation
from ._slicing import entry_bytes, pad_axis, resized, term_counts
from ._taps import stack_bytes
from ._terms import dense

# Bytes of one banded entry (``L`` rows of one image) the band height aims at:
# a chunk of the taps' positions mode (``_taps.CHUNK_BYTES``) ...
BAND_ENTRY_BYTES = 1 << 18
# ... but no fewer rows than this a band (bands of 4 rows over 224x224x64: the
# halo copied half again, 87 ms against 55-59 for 8 and 16 rows).
MIN_BAND_ROWS = 8
# The bands' copy of x and a chunk's im2col stacks are held within twice the
# larger operand (about what XLA's own kernel gradient holds) or this many
# bytes (as ``_correlate.MAX_STACK_BYTES`` for the unbanded stacks).
MIN_BUDGET_BYTES = 1 << 22


def band_rows(lhs_shape, rhs_shape, corr: Correlation, itemsize: int, taken) -> int | None:
    """Rows of ``dz`` per band (``b``) for :func:`rows_as_batch`, or ``None``.

    Banded: dense correlations in positions mode (kernel gradients) over two
    or more spatial dims (1-D kernel gradients stay XLA's, ``_correlate``)
    that ``taken(lhs_shape, rhs_shape, corr)`` (the taps' rule) refuses and
    takes banded. ``b`` divides the rows into at least two bands of at least
    :data:`MIN_BAND_ROWS`: the largest such divisor whose banded entry stays
    within :data:`BAND_ENTRY_BYTES`, else the smallest. Not where consecutive
    bands overlap by more rows than a band holds, nor where the bands' copy of
    the lhs and a chunk's stacks outgrow :data:`MIN_BUDGET_BYTES` and twice
    the larger operand. Larger windows copy more halo and stack more
    positions: a 7x7 over 4 images of 56x56x64 -> 16 would take 33 ms banded
    against XLA's 63, but hold 10.2 against 4.0 MiB, and stays XLA's.
    """
    window, outs = term_counts(lhs_shape, rhs_shape, corr)
    if not dense(corr) or len(window) < 2 or math.prod(outs) >= math.prod(window):
        return None
    if corr.lhs_dilation[0] != 1 or taken(lhs_shape, rhs_shape, corr):
        return None
    rows, n = window[0], lhs_shape[corr.lhs_axes[2]]
    d, r = corr.window_strides[0], corr.rhs_dilation[0]
    divisors = [b for b in range(MIN_BAND_ROWS, rows // 2 + 1) if rows % b == 0]
    if not divisors:
        return None
    row_bytes = entry_bytes(lhs_shape, corr, itemsize) / n
    aim = int((BAND_ENTRY_BYTES / row_bytes - 1 - (outs[0] - 1) * d) // r) + 1
    within = [b for b in divisors if b <= aim]
    b = max(within) if within else divisors[0]
    if (outs[0] - 1) * d + 1 - r > b * r:
        return None  # each band's halo (L - b r: its overlap with the next) longer than it
    banded = rows_as_batch_shapes(lhs_shape, rhs_shape, corr, b)
    held = math.prod(banded[0]) * itemsize + stack_bytes(*banded, itemsize)
    operands = max(math.prod(lhs_shape), math.prod(rhs_shape)) * itemsize
    if held > max(2 * operands, MIN_BUDGET_BYTES):
        return None
    return b if taken(*banded) else None


def _geometry(lhs_shape, rhs_shape, corr: Correlation, b: int):
    """``(bands, L)``: how many bands, and the lhs rows each reads."""
    window, outs = term_counts(lhs_shape, rhs_shape, corr)
    if window[0] % b:
        raise ValueError(f"bands of {b} rows do not divide the window's {window[0]} rows")
    d, r = corr.window_strides[0], corr.rhs_dilation[0]
    return window[0] // b, (outs[0] - 1) * d + (b - 1) * r + 1


def rows_as_batch_shapes(lhs_shape, rhs_shape, corr: Correlation, b: int):
    """The shapes and correlation :func:`rows_as_batch` returns, without arrays."""
    bands, length = _geometry(lhs_shape, rhs_shape, corr, b)
    (lf, la), (rf, ra) = corr.lhs_axes[1:3], corr.rhs_axes[1:3]
    lhs_b = resized(lhs_shape, (lf, la), (lhs_shape[lf] * bands, length))
    rhs_b = resized(rhs_shape, (rf, ra), (rhs_shape[rf] * bands, b))
    return lhs_b, rhs_b, _banded(corr)


def _banded(corr: Correlation) -> Correlation:
    return dataclasses.replace(corr, padding=((0, 0), *corr.padding[1:]))


def rows_as_batch(lhs, rhs, corr: Correlation, b: int):
    """``(lhs_b, rhs_b, corr_b)``: the bands of ``b`` rows stacked on the batch.

    ``correlate(lhs_b, rhs_b, corr_b)`` equals ``correlate(lhs, rhs, corr)``
    (module docstring). The band axis goes just after the batch (contracted
    feature) axis on both sides and is merged with it, image-major.
    """
    bands, length = _geometry(lhs.shape, rhs.shape, corr, b)
    if not dense(corr) or corr.lhs_dilation[0] != 1:
        raise ValueError("rows_as_batch takes dense correlations of an undilated lhs")
    la, lf = corr.lhs_axes[2], corr.lhs_axes[1]
    ra, rf = corr.rhs_axes[2], corr.rhs_axes[1]
    step = b * corr.rhs_dilation[0]
    padded = pad_axis(lhs, la, *corr.padding[0])  # bands read rows 0 to (R - 1) r + (K - 1) d
    parts = [lax.slice_in_dim(padded, t * step, t * step + length, axis=la) for t in range(bands)]
    lhs_b = _merge_after(jnp.stack(parts, axis=lf + 1), lf)
    split = rhs.reshape(*rhs.shape[:ra], bands, b, *rhs.shape[ra + 1 :])  # bands at ra
    feature = rf if rf < ra else rf + 1
    moved = jnp.moveaxis(split, ra, feature if feature > ra else feature + 1)
    rhs_b = _merge_after(moved, feature - 1 if feature > ra else feature)
    return lhs_b, rhs_b, _banded(corr)


def _merge_after(a, axis: int):
    """``a`` with ``axis`` and the next one merged (``axis`` the major)."""
    return a.reshape(*a.shape[:axis], a.shape[axis] * a.shape[axis + 1], *a.shape[axis + 2 :])
