"""Positions mode over whole rows: a one-channel kernel gradient as one matmul.

The seed's ``dL/dK = conv(X, dL/dZ)`` has, per kernel tap ``(i, j)`` (one
input channel, unit stride, features of ``dz`` left in ``o``)::

    dK[i, j, o] = sum_{n, h, w} x[n, h + i, w + j] dz[n, h, w, o]

With one input channel there is nothing to contract per tap but the batch and
the output grid: XLA:CPU computes it as 25 long dot products (LeNet's 5x5, 64
images, 1 -> 6 channels: 1.1-1.5 ms, 4-5 GFLOP/s), and the taps' im2col stacks
25 copies of ``x`` (8.9 ms). Instead, keep the last axis whole on both sides
and contract the batch and the output rows only::

    M[i, v, w, o] = sum_{n, h} x[n, h + i, v] dz[n, h, w, o]

one matmul of ``(K_h W, N H_out)`` by ``(N H_out, W_out C_out)`` whose lhs is
``x``'s rows stacked ``K_h`` times (each tap row ``i`` its own slice), read in
``x``'s layout. ``M`` pairs every input column ``v`` with every output column
``w``; the kernel gradient is the pairs with ``v = w + j``, a diagonal::

    dK[i, j, o] = sum_w M[i, w + j, w, o]

Worked case (one row, ``x = (1, 2, 3)``, ``dz = (1, -1)``, 2 taps): ``M`` is
``x`` times ``dz``, rows ``v`` ``(1, -1), (2, -2), (3, -3)``; tap 0 sums
``M[0, 0] + M[1, 1] = 1 - 2 = -1`` and tap 1 ``M[1, 0] + M[2, 1] = 2 - 3 =
-1``: ``1*1 + 2*(-1)`` and ``2*1 + 3*(-1)``, as the sum above says.

In general (a :class:`Correlation` in positions mode, ``k`` its output
positions, ``s`` the rhs window, forward stride ``r`` as rhs dilation and
forward dilation ``d`` as window stride), lhs entry ``k d + s r`` meets rhs
entry ``s``. The leading spatial axes are stacked, one lhs slice per leading
position (start ``k d``, stride ``r``), and contracted with the batch; the
last axis keeps the lhs extent ``V = (S - 1) r + (K - 1) d + 1``, and
position ``k``'s diagonal in ``M``'s flattened ``(v, s)`` pairs, ``v S + s =
k d S + s (r S + 1)``, is a strided slice. The matmul computes ``V / K``
products for each one the kernel gradient needs (LeNet: 28 / 5), paid back
where the direct form runs at a few GFLOP/s, and reads ``dz`` in place where
XLA's transposes it (0.9 MB): LeNet's training step 2.20-2.32 -> 1.92-1.99 ms
(its kernel gradient alone: 1.1 -> 0.8 ms in one run, a tie in others).
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from ._chunks import batch_chunk, divisor_within, sum_of_chunks
from ._correlation import Correlation, accumulation_dtype
from ._slicing import laid_out, pad, term_counts, window_slice
from ._terms import dense

# Most products the matmul computes per product of the kernel gradient (V / K).
ROWS_WASTE = 8
# Fewest rows of ``M`` (leading positions times V): smaller matmuls lose to
# XLA's kernel gradient (5x5 over 20x20 images, 100 rows: 1.04-1.24x its time).
ROWS_MIN_ROWS = 128
# Most output features: from 16 on XLA's kernel gradient is the faster
# (5x5 over 28x28: 1.67x its time at 16, 0.64-0.93x at 6-12).
ROWS_FEATURES = 12
# Most bytes of ``M``, and of the stacked lhs rows of a batch chunk.
M_BYTES = 1 << 20
ROWS_BYTES = 1 << 20


def applies(lhs_shape, rhs_shape, corr: Correlation, itemsize: int) -> bool:
    """Whether the rows form computes ``corr`` (see the module docstring).

    For dense correlations in positions mode (fewer positions than window
    entries, as in kernel gradients) with an undilated lhs and one lhs batch
    entry (one input channel, which the taps' im2col does not take), at most
    :data:`ROWS_FEATURES` rhs output features, a last axis that computes at
    most :data:`ROWS_WASTE` products per needed one, at least
    :data:`ROWS_MIN_ROWS` rows of ``M`` and ``M`` within :data:`M_BYTES`.
    Measured on XLA:CPU, kernel gradient alone, 64 images, one input channel,
    5x5 (ms, rows vs XLA): 28x28, 6 features 0.73-0.81 vs 1.11-1.14, 8
    features 0.97 vs 1.29, 12 features 1.28 vs 1.37; 32x32, 6-12 features
    0.85-0.95x XLA's time. 3x3 kernels do not qualify: over 20x20 images
    (waste 6.7, 60 rows) 1.3-2x XLA's time, over 28x28 the waste is 9.3 (VALID)
    to 10 (SAME). A batch-1 forward whose output is smaller than its kernel
    is in positions mode with one lhs batch entry too, and qualifies alike.
    """
    if not dense(corr) or any(d > 1 for d in corr.lhs_dilation):
        return False
    if lhs_shape[corr.lhs_axes[0]] != 1 or rhs_shape[corr.rhs_axes[0]] > ROWS_FEATURES:
        return False
    window, outs = term_counts(lhs_shape, rhs_shape, corr)
    if not 1 < math.prod(outs) < math.prod(window):
        return False
    extent = _last_extent(window, outs, corr)
    rows = math.prod(outs[:-1]) * extent
    m_bytes = rows * rhs_shape[corr.rhs_axes[0]] * window[-1] * max(itemsize, 4)  # M: >= f32
    return extent <= ROWS_WASTE * outs[-1] and rows >= ROWS_MIN_ROWS and m_bytes <= M_BYTES


def _last_extent(window, outs, corr: Correlation) -> int:
    """``V``: the lhs entries of the last axis that any position reads."""
    return (window[-1] - 1) * corr.rhs_dilation[-1] + (outs[-1] - 1) * corr.window_strides[-1] + 1


def rows_correlate(lhs, rhs, corr: Correlation, precision=None):
    """The correlation as one matmul over rows and diagonal sums (module docstring).

    Args:
        lhs: of shape ``(1, N, *spatial)`` in ``corr.lhs_axes`` roles (one batch
            entry: the forward's one input channel; the forward's batch as
            features); padding ``>= 0``.
        rhs: of shape ``(C_out, N, *window)`` in ``corr.rhs_axes`` roles.
        corr: the correlation; precision: passed to XLA.

    Returns:
        The result of shape ``(1, C_out, *positions)`` in ``corr.out_axes`` roles,
        in ``lhs``'s dtype. The lhs rows are stacked a batch chunk at a time
        (within :data:`ROWS_BYTES`), the chunks summed in a loop.
    """
    acc = accumulation_dtype(lhs.dtype)
    window, outs = term_counts(lhs.shape, rhs.shape, corr)
    lf, ri = corr.lhs_axes[1], corr.rhs_axes[1]
    rows = math.prod(outs[:-1]) * math.prod(window[:-1]) * _last_extent(window, outs, corr)
    chunk = divisor_within(lhs.shape[lf], ROWS_BYTES // (rows * lhs.dtype.itemsize))  # >= 1

    count = lhs.shape[lf] // chunk

    def part(i):
        lhs_part = batch_chunk(lhs, i, count, lf)
        rhs_part = batch_chunk(rhs, i, count, ri)
        return _diagonals(_crossed(lhs_part, rhs_part, corr, precision, acc), corr, window, outs)

    return sum_of_chunks(part, count).astype(lhs.dtype)


def _crossed(lhs, rhs, corr: Correlation, precision, acc):
    """``M``, laid out ``(lhs batch, leading positions, C_out, V, S)``."""
    window, outs = term_counts(lhs.shape, rhs.shape, corr)
    lb, lf, *ls = corr.lhs_axes
    ro, ri, *rs = corr.rhs_axes
    xp = pad(lhs, ls, corr)
    counts = (*window[:-1], _last_extent(window, outs, corr))
    strides = (*corr.rhs_dilation[:-1], 1)
    slices = []
    for lead in itertools.product(*(range(k) for k in outs[:-1])):
        starts = (*(k * d for k, d in zip(lead, corr.window_strides[:-1], strict=True)), 0)
        slices.append(window_slice(xp, ls, starts, counts, strides))
    stacked = jnp.stack(slices, axis=xp.ndim)  # leading positions on a new last axis
    contract = ((lf, *ls[:-1]), (ri, *rs[:-1]))
    m = lax.dot_general(stacked, rhs, (contract, ((), ())), precision, preferred_element_type=acc)
    # dot_general's result: the lhs's free axes in order, then the rhs's.
    free = [a for a in range(stacked.ndim) if a not in contract[0]]
    free += [stacked.ndim + a for a in range(rhs.ndim) if a not in contract[1]]
    wanted = (lb, xp.ndim, stacked.ndim + ro, ls[-1], stacked.ndim + rs[-1])
    return jnp.transpose(m, [free.index(a) for a in wanted])


def _diagonals(m, corr: Correlation, window, outs):
    """Position ``k`` of the last axis: ``sum_s M[..., k d + s r, s]``, in ``out_axes`` order."""
    c, lead, f, extent, size = m.shape
    flat = m.reshape(c, lead, f, extent * size)
    step = corr.rhs_dilation[-1] * size + 1
    sums = []
    for k in range(outs[-1]):
        start = k * corr.window_strides[-1] * size
        diagonal = lax.slice_in_dim(flat, start, start + (size - 1) * step + 1, step, axis=3)
        sums.append(jnp.sum(diagonal, axis=3))
    out = jnp.stack(sums, axis=-1).reshape(c, *outs[:-1], f, outs[-1])
    r = len(outs)  # (batch, *leading positions, features, last position)
    return laid_out(out, (0, r, *range(1, r), r + 1), corr)
