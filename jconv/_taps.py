"""The "taps" lowering: a correlation as a short sum of strided slices times products.

A correlation ``out[k] = sum_i lhs~[k ws + i rd] rhs[i]`` (per spatial dim, ``lhs~``
the padded, dilated lhs) is computed in one of three modes (:func:`choose_mode`):

- **taps** (a sum over window taps ``i``): ``out = sum_i slice_i(lhs~) · rhs[i]``,
  where ``slice_i`` takes every ``ws``-th entry from ``i rd`` on (as many as there
  are outputs): the seed's "slide the kernel" read literally, one term per kernel
  entry. The lhs is padded once, so every slice is a plain strided view that XLA
  fuses into its consumer.
- **positions** (a sum over output positions ``k``): ``out[k] = sum_i
  slice'_k(lhs~)[i] · rhs[i]``, where ``slice'_k`` takes every ``rd``-th entry from
  ``k ws`` on: one contraction per output position, the cheap way when the
  *output* is small (the kernel gradient, whose output is the kernel). The
  positions' slices are stacked side by side into one matmul (im2col) when each
  would be thin, and the contraction runs over cache-sized chunks of the batch
  (and over bands of rows, :func:`row_bands`, where a chunk's stacks are large).
  Two variants: where the terms only reduce (depthwise) they are **folded**
  (``_fold.py``: slabs of the batch summed in one fused loop for all positions,
  then one reduction), and where the rhs is the thinner operand it is
  **placed** (``_placed.py``: the rhs shifted onto the lhs grid once per
  position, side by side, and one matmul against the unsliced lhs).
- **scatter** (``_scatter.py``): the products first, then shifted and added; for
  thin outputs and strided depthwise input gradients.

Each term is built by ``_terms.term``: an einsum, or a fused broadcast product
where there is nothing to contract (depthwise).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax.numpy as jnp
from jax import lax

from . import _im2col
from ._chunks import batch_chunk, divisor_within, in_batch_chunks, sum_of_chunks
from ._correlation import Correlation, accumulation_dtype
from ._fold import folded_positions, folds
from ._placed import placed_chunk, placed_positions, places
from ._regions import region_cuts, region_sum
from ._scatter import scatter_sum, thin
from ._slicing import (
    entry_bytes,
    kernel_tap,
    pad,
    padded_shape,
    place_positions,
    resized,
    tap_starts,
    term_counts,
    window_slice,
)
from ._terms import term, unrolls


def taps_correlate(lhs, rhs, corr: Correlation, precision=None, by: str | None = None):
    """The correlation ``corr`` as a sum over taps, over output positions, or scattered.

    Args:
        lhs, rhs: operands laid out as ``corr`` says; paddings must be >= 0.
        corr: the correlation.
        precision: passed to the einsums.
        by: ``"taps"``, ``"positions"``, ``"scatter"`` or ``None`` (:func:`choose_mode`);
            positions mode folds or places where that applies.
    """
    window, outs = term_counts(lhs.shape, rhs.shape, corr)
    itemsize = _working_itemsize(lhs.shape, rhs.shape, corr, lhs.dtype)
    by = by or choose_mode(lhs.shape, rhs.shape, corr)
    if by == "scatter" and max(corr.lhs_dilation) > 1 and max(corr.window_strides) > 1:
        by = "taps"  # the phases assume unit window strides (true of every input gradient)
    if by == "scatter":
        out = scatter_sum(*_widened(lhs, rhs, corr), corr, precision, window, outs)
        return out.astype(lhs.dtype)
    chunk = None
    if by == "positions" and folds(lhs, rhs, corr, window, outs):
        by = "folded"
    elif by == "positions" and places(lhs.shape, rhs.shape, corr, itemsize):
        by, chunk = "placed", placed_chunk(lhs, rhs, corr)
        chunk = None if chunk == lhs.shape[corr.lhs_axes[1]] else chunk
    elif by == "positions":
        chunk = _contraction_chunk(lhs.shape, itemsize, corr, math.prod(outs))
    if chunk is not None:
        out = _chunked_sum(lhs, rhs, corr, precision, by, window, outs, chunk, itemsize)
        return out.astype(lhs.dtype)
    cuts = None if by != "taps" else region_cuts(lhs.shape, corr, window, outs, itemsize)
    if by == "taps" and cuts is None and corr.batch_group_count == 1:
        copied = _copied_batch(lhs, corr, itemsize, window, outs)
        chunk = divisor_within(lhs.shape[corr.lhs_axes[0]], copied)
        if chunk < lhs.shape[corr.lhs_axes[0]]:
            # A loop over batch chunks: each pads (or slices) only its own
            # chunk, and the loop writes ``out`` once (no fusion into a
            # consumer's reduction).
            def sum_of_terms(lhs):
                out = _sum_of_terms(lhs, rhs, corr, precision, by, window, outs)
                return out.astype(lhs.dtype)

            return in_batch_chunks(sum_of_terms, lhs, chunk, corr)
    if cuts is not None:  # no padded copy at all
        acc = accumulation_dtype(lhs.dtype)
        out = region_sum(*_widened(lhs, rhs, corr), corr, precision, acc, cuts)
    else:
        out = _sum_of_terms(lhs, rhs, corr, precision, by, window, outs)
    out = out.astype(lhs.dtype)
    return _materialised(out) if by == "taps" and math.prod(window) > 1 else out


# Taps mode pads the whole lhs at once while that copy stays within this many
# bytes; past it, batch chunks of at most PAD_CHUNK_BYTES (or of one entry, if
# that is larger) are padded one at a time.
PAD_BYTES = 1 << 22
PAD_CHUNK_BYTES = 1 << 21
# A single strided tap (a strided 1x1 forward) slices the lhs whole while the
# slice stays within this many bytes, and past it in batch chunks of at most
# this many bytes (or of one entry, if that is larger).
SLICE_BYTES = 1 << 22


def _copied_batch(lhs, corr: Correlation, itemsize: int, window, outs) -> int:
    """How many batch entries of ``lhs`` taps mode copies at once.

    The copy is the padded lhs, or, for a single strided tap and no padding,
    its strided slice: the one term's matmul takes its operand whole, so XLA
    writes the slice out first.

    Padded: the padded copy of the whole lhs outlives the forward's taps in a
    training step; for a strided depthwise convolution over 4 images of
    112x112x64 it was 12.7 MiB of the step's 17.3 (autodiff's: 15.5). In
    chunks of <= 2 MiB (or one entry, if that is larger) the step needs 6.5
    MiB, for 0.3-0.8 ms more per step (3x3 depthwise over 8 images of
    28x28x256: medians of 31 runs 5.5 -> 6.4 ms, 23.6 -> 15.7 MiB;
    ``value_and_grad``, A/B in one process).

    Sliced: chunks keep the slice in cache for its matmul. A ResNet-50 stride-2
    shortcut (8 images of 56x56x256 -> 128, a 0.8 MB slice per image), its
    training step: the whole slice 8.4-9.4 ms and 15.3 MiB, chunks of 4
    images 7.1-7.3 ms and 12.4 MiB, of 2 7.1-7.6, of 1 8.3-9.9 (XLA's strided
    convolution: 8.5-8.8 ms, 9.3 MiB; autodiff's step 27.6 MiB). Over 8
    images of 14x14x1024 -> 512 (a 1.6 MB slice) whole was best: 5.5-5.8 ms
    against chunks of 4 at 5.6-6.3 and XLA's 6.1-7.1 (p25-median of 21
    interleaved runs, 2-vCPU Xeon, session 15).
    """
    batch = lhs.shape[corr.lhs_axes[0]]
    if sliced_tap(lhs.shape, window, corr):
        shape, whole, part = resized(lhs.shape, corr.lhs_axes[2:], outs), SLICE_BYTES, SLICE_BYTES
    elif (shape := padded_shape(lhs.shape, corr)) != lhs.shape:
        whole, part = PAD_BYTES, PAD_CHUNK_BYTES
    else:
        return batch  # no copy at all
    copied = math.prod(shape) * itemsize
    if copied <= whole:
        return batch
    return max(1, part // (copied // batch))


def sliced_tap(lhs_shape, window, corr: Correlation) -> bool:
    """Whether the correlation is one tap read at a window stride > 1 from an
    unpadded, undilated lhs: its strided slice is the one copy it makes."""
    strided = math.prod(window) == 1 and any(s > 1 for s in corr.window_strides)
    return strided and padded_shape(lhs_shape, corr) == tuple(lhs_shape)


def _materialised(out):
    """``out`` unchanged, but kept out of the fusions of whatever reduces it.

    A taps-mode sum of several taps is one elementwise loop over the taps' slices of the padded
    lhs. When a reduction consumes it (``sum(conv(x) * ct)``, a batch norm's
    statistics, a global pool), XLA:CPU fuses the loop into its YNNPACK
    reduction, which takes no slices, and materialises every slice instead:
    25 copies of LeNet's input, a training step's loss 3 -> 8 ms at 6 instead of
    1.9 MiB. An exact ``reduce_precision`` (same exponent and mantissa bits as the
    dtype) is an op those fusions do not take, so the loop stays whole and writes
    ``out`` once.
    """
    if out.dtype not in _IEEE:  # e.g. float8 types, where it is not the identity
        return out
    info = jnp.finfo(out.dtype)
    return lax.reduce_precision(out, exponent_bits=info.nexp, mantissa_bits=info.nmant)


# The dtypes for which reduce_precision to their own bits is the identity.
_IEEE = tuple(jnp.dtype(t) for t in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))


def choose_mode(lhs_shape, rhs_shape, corr: Correlation) -> str:
    """Which sum :func:`taps_correlate` computes.

    ``"positions"`` when the output has fewer positions than the window has taps
    (the kernel gradient); ``"scatter"`` for a thin unit-stride correlation
    (``_scatter.thin``: a few output features from many, the input gradient of
    a stem or of LeNet's first layer), and for a depthwise correlation with a
    dilated lhs (a strided depthwise input gradient), which then never
    multiplies the dilation's zeros; ``"taps"`` otherwise.
    """
    window, outs = term_counts(lhs_shape, rhs_shape, corr)
    if math.prod(outs) < math.prod(window):
        return "positions"
    if math.prod(window) == 1 or any(s > 1 for s in corr.window_strides):
        return "taps"
    f_in = lhs_shape[corr.lhs_axes[1]]
    if thin(lhs_shape, rhs_shape, corr, window):
        return "scatter"
    if f_in == corr.feature_group_count and any(d > 1 for d in corr.lhs_dilation):
        return "scatter"  # depthwise, dilated: no products with the dilation's zeros
    return "taps"


# A positions-mode term reduces the whole lhs; past this many bytes the lhs is
# cut into chunks of about this size along its contracted feature axis, so that
# each chunk's strided slices stay in cache (and are never materialised whole).
# A chunk's im2col stacks, and the slices they are built from, hold about twice
# nine times a chunk for a 3x3 kernel: 512 KiB chunks held 7.3 MiB wherever the
# lhs outgrew them (XLA's own kernel gradient holds 1.7-3.2 MiB at 4-8 images of
# 28x28x64), 256 KiB chunks half that, in the same time (4.0-6.8 ms at 512 KiB,
# suite steps unchanged); three 3x3 layers over 8 images of 28x28x64 need 13.1
# MiB against autodiff's 12.3 (16.7 at 512 KiB).
CHUNK_BYTES = 1 << 18


def _contraction_chunk(lhs_shape, itemsize, corr: Correlation, positions: int) -> int | None:
    """Chunk size along the lhs feature axis, or ``None`` to contract it in one go.

    Only ungrouped-feature correlations are cut (the kernel gradient: its lhs
    feature axis is the forward's batch), into the largest divisor of the axis
    whose chunk fits :data:`CHUNK_BYTES`.
    """
    if corr.feature_group_count != 1:
        return None
    size = lhs_shape[corr.lhs_axes[1]]
    if size == 1 or math.prod(lhs_shape) * itemsize <= CHUNK_BYTES or positions == 1:
        return None  # (one position reads the lhs once: nothing to keep in cache)
    return divisor_within(size, CHUNK_BYTES // entry_bytes(lhs_shape, corr, itemsize))


def stack_bytes(lhs_shape, rhs_shape, corr: Correlation, itemsize: int) -> int:
    """Bytes of every position's piece of one batch chunk: what positions mode
    holds at its peak, as XLA materialises the pieces of all positions (stacked
    by ``_im2col.stacked_positions``, or each its own matmul operand) before the matmuls."""
    window, outs = term_counts(lhs_shape, rhs_shape, corr)
    chunk = _contraction_chunk(lhs_shape, itemsize, corr, math.prod(outs))
    entries = chunk or lhs_shape[corr.lhs_axes[1]]
    channels = lhs_shape[corr.lhs_axes[0]]
    return math.prod(outs) * channels * entries * math.prod(window) * itemsize


def _chunked_sum(lhs, rhs, corr: Correlation, precision, by, window, outs, chunk, itemsize):
    """``sum`` over chunks of the contracted lhs feature / rhs in-feature axes
    (and over :func:`row_bands`, one loop over the chunks per band, sized by
    ``itemsize``, :func:`_working_itemsize`'s bytes per entry)."""
    lf, ri = corr.lhs_axes[1], corr.rhs_axes[1]
    count = lhs.shape[lf] // chunk
    total = None
    for band in row_bands(lhs.shape, rhs.shape, corr, by, chunk, itemsize):

        def chunk_sum(i, band=band):
            lhs_part = batch_chunk(lhs, i, count, lf)
            rhs_part = batch_chunk(rhs, i, count, ri)
            if band is None:
                return _sum_of_terms(lhs_part, rhs_part, corr, precision, by, window, outs)
            (a, b), (i0, i1), banded = band
            lhs_part = lax.slice_in_dim(lhs_part, a, b, axis=corr.lhs_axes[2])
            rhs_part = lax.slice_in_dim(rhs_part, i0, i1, axis=corr.rhs_axes[2])
            rows = (i1 - i0, *window[1:])
            return _sum_of_terms(lhs_part, rhs_part, banded, precision, by, rows, outs)

        band_sum = sum_of_chunks(chunk_sum, count)  # the first chunk in the loop too
        total = band_sum if total is None else total + band_sum
    return total


# Positions mode splits a chunk's window rows into bands while its im2col
# stacks would exceed this many bytes: two of the stacked matmuls' groups.
BAND_STACK_BYTES = 2 * _im2col.STACK_BYTES


def row_bands(lhs_shape, rhs_shape, corr: Correlation, by, chunk, itemsize):
    """The bands of window rows (the rhs's first spatial dim) positions mode sums
    one after another, each over every batch chunk; ``[None]``: one band, all rows.

    As few bands as bring a chunk's im2col stacks within
    :data:`BAND_STACK_BYTES`, of equal rows but a shorter last one (53 rows in
    two bands: 27 and 26). Only chunked sums are banded (``_chunked_sum``); an
    unchunked lhs is within :data:`CHUNK_BYTES`, or ``auto`` leaves its
    kernel gradient to XLA by ``_correlate.MAX_STACK_BYTES``.

    Each band is ``((a, b), (i0, i1), banded)``: lhs rows ``a:b`` and rhs rows
    ``i0:i1``, correlated as ``banded`` (``corr`` with the band's padding). Output
    ``k`` of the band sums ``lhs~[k ws + i rd] rhs[i]`` over ``i0 <= i < i1``
    (``lhs~`` padded by ``(lo, hi)``, ``ws`` the window stride, ``rd`` the rhs
    dilation), which reads padded rows ``p0 = i0 rd`` to ``p1 = (outs - 1) ws +
    (i1 - 1) rd + 1``: lhs rows ``a = max(0, p0 - lo)`` to ``b = min(n, p1 -
    lo)``, padded by ``lo' = max(0, lo - p0)`` and ``hi' = max(0, p1 - lo - n)``.
    Worked case: the kernel gradient of a SAME 3x3 over 56 rows (``lo = hi = 1``,
    ``ws = rd = 1``, 3 outputs) in two bands of 28: the first reads padded rows
    0 to 30, lhs rows 0:29 padded ``(1, 0)``; the second padded rows 28 to 58,
    lhs rows 27:56 padded ``(0, 1)``.
    """
    if by != "positions" or corr.lhs_dilation[0] != 1:
        return [None]
    window, outs = term_counts(lhs_shape, rhs_shape, corr)
    if not _im2col.stacks(lhs_shape[corr.lhs_axes[0]], corr, math.prod(outs)):
        return [None]
    part = resized(lhs_shape, (corr.lhs_axes[1],), (chunk,))
    stacks = stack_bytes(part, resized(rhs_shape, (corr.rhs_axes[1],), (chunk,)), corr, itemsize)
    count = min(window[0], -(-stacks // BAND_STACK_BYTES))
    if count == 1:
        return [None]
    rows = -(-window[0] // count)  # the last band may be shorter
    n, (lo, _hi) = lhs_shape[corr.lhs_axes[2]], corr.padding[0]
    ws, rd = corr.window_strides[0], corr.rhs_dilation[0]
    bands = []
    for i0 in range(0, window[0], rows):
        i1 = min(i0 + rows, window[0])
        p0, p1 = i0 * rd, (outs[0] - 1) * ws + (i1 - 1) * rd + 1
        padding = ((max(0, lo - p0), max(0, p1 - lo - n)), *corr.padding[1:])
        lhs_rows = (max(0, p0 - lo), min(n, p1 - lo))
        if lhs_rows[0] < lhs_rows[1]:  # (a band that reads only padding adds nothing)
            bands.append((lhs_rows, (i0, i1), dataclasses.replace(corr, padding=padding)))
    return bands or [None]


def _working_itemsize(lhs_shape, rhs_shape, corr: Correlation, dtype) -> int:
    """Bytes per entry of the lowering's operands as computed (:func:`_widened`):
    what its chunk sizes and modes are chosen by."""
    acc = accumulation_dtype(dtype)
    widened = acc is not None and _broadcast_terms(lhs_shape, rhs_shape, corr)
    return jnp.dtype(acc if widened else dtype).itemsize


def _broadcast_terms(lhs_shape, rhs_shape, corr: Correlation) -> bool:
    """Whether a grouped correlation's terms are broadcast products, not matmuls:
    one feature (depthwise), or one output, per feature group, or unrolled
    (``_terms.unrolls``); one lhs batch entry (a kernel gradient's channel), or
    one output, per batch group."""
    gf, gb = corr.feature_group_count, corr.batch_group_count
    outs = rhs_shape[corr.rhs_axes[0]]
    if gf > 1:
        return rhs_shape[corr.rhs_axes[1]] == 1 or outs == gf or unrolls(rhs_shape, corr)
    return gb > 1 and (lhs_shape[corr.lhs_axes[0]] == gb or outs == gb)


def _widened(lhs, rhs, corr: Correlation):
    """Half-precision operands of a grouped correlation of broadcast-product
    terms (:func:`_broadcast_terms`) in float32.

    XLA:CPU computes those products slowly in half precision (bfloat16 3x3
    depthwise over 8 images of 28x28x256: kernel gradient 49 ms, 3.5 in
    float32; forward 2.1 and 1.2 ms). A product of two half-precision numbers
    is exact in float32, so this rounds less than products rounded to half
    precision did. Inside a chunk loop, only the chunk is converted. Matmul
    terms (dense, or grouped with several features and outputs per group) keep
    their operands: a float32 copy would only add memory (a bfloat16 1x1
    forward over 3 groups of 80 features: 5.8 -> 11.5 MiB).
    """
    acc = accumulation_dtype(lhs.dtype)
    if acc is None or not _broadcast_terms(lhs.shape, rhs.shape, corr):
        return lhs, rhs
    return lhs.astype(acc), rhs.astype(acc)


def _sum_of_terms(lhs, rhs, corr: Correlation, precision, by, window, outs):
    """The correlation in the accumulation dtype (``lhs``'s dtype for full precision)."""
    acc = accumulation_dtype(lhs.dtype)
    lhs, rhs = _widened(lhs, rhs, corr)
    lhs_sp, rhs_sp = corr.lhs_axes[2:], corr.rhs_axes[2:]
    single = math.prod(window) == 1 and all(s == 1 for s in corr.window_strides)
    if single and any(d > 1 for d in corr.lhs_dilation):
        # One tap, unit stride: contract first, then place the result (dilate and
        # pad): no multiply-adds with the dilation's zeros.
        part = term(lhs, lax.squeeze(rhs, rhs_sp), corr, (), precision, acc)
        return pad(part, corr.out_axes[2:], corr)
    if by == "folded":
        stacked = folded_positions(lhs, rhs, corr, acc, window, outs)
        return place_positions(stacked, outs, corr.out_axes)
    if by == "placed":
        stacked = placed_positions(lhs, rhs, corr, precision, acc, outs)
        return place_positions(stacked, outs, corr.out_axes)
    # Pad (and dilate) once: every term is then a plain strided slice, which XLA
    # fuses into its consumer with no per-element bounds checks.
    xp = pad(lhs, lhs_sp, corr)
    if by == "taps":
        unroll, total = unrolls(rhs.shape, corr), None
        for tap in itertools.product(*(range(k) for k in window)):
            piece = window_slice(xp, lhs_sp, tap_starts(tap, corr), outs, corr.window_strides)
            part = term(piece, kernel_tap(rhs, corr, tap), corr, (), precision, acc, unroll)
            total = part if total is None else total + part
        return total
    positions = itertools.product(*(range(o) for o in outs))
    starts = [[p * s for p, s in zip(pos, corr.window_strides, strict=True)] for pos in positions]
    summed = tuple(range(len(window)))
    if _im2col.stacks(xp.shape[corr.lhs_axes[0]], corr, len(starts)):
        stacked = _im2col.stacked_positions(xp, rhs, corr, precision, acc, window, starts)
    else:
        pieces = (window_slice(xp, lhs_sp, at, window, corr.rhs_dilation) for at in starts)
        rows = [term(piece, rhs, corr, summed, precision, acc) for piece in pieces]
        stacked = jnp.stack(rows, axis=-1)
    return place_positions(stacked, outs, corr.out_axes)
