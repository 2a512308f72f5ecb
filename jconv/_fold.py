"""Positions mode for terms that only reduce (depthwise kernel gradients), folded.

A depthwise kernel gradient has nothing to contract per term: each output
position (kernel tap) ``k`` is ``sum_{n, s} x~[n, s + k, c] dz[n, s, c]``, a
product summed over the batch and the output grid. As one reduction per
position, XLA:CPU hands each to a reduction kernel that takes its operands
whole, so every position's strided slice of ``x`` is first copied out, and a
3x3 kernel makes 9 copies and 9 reductions, memory-bound.

Folded, each position's sum is split in two. Its products over ``F`` equal
*slabs* of the summed axes (images of the batch, then row blocks of the output
grid) are added elementwise in one fused loop, whose slices of ``x`` and ``dz``
are read in place; the loops' outputs (``positions / F`` times a slab's product,
at most the size of ``x``) are stacked, and one reduction sums them all. Slabs
only ever read ``x`` itself, never a padded copy: where a position's window
meets padding, the product is taken over the entries that meet ``x`` and its
sum is padded with zeros to the common shape (a sum does not care where).
Measured on XLA:CPU, kernel gradient alone: dw-28 (N=8, 28x28x256) 4.2-6.2 ->
2.2-2.8 ms, dw-14 (14x14x512) 2.3-3.8 -> 1.1-1.5 ms, both at half the
temporary memory (6.9 / 3.4 MiB).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax

from ._chunks import divisor_within
from ._correlation import Correlation, accumulation_dtype
from ._slicing import pad_axis, resized
from ._terms import Plan

# Most products added in the folded loop (positions times slabs): XLA compiles
# one fused expression with this many terms.
FOLD_TERMS = 160
# Positions mode folds while its loops' output stays within this many bytes.
# Past that the operands outgrow the cache too, and reading them once per
# position, as the folded loops do, loses to the per-image chunks of the plain
# positions mode (3x3 depthwise, 28x28x256, dk alone: 8 images 2.4 vs 4.2 ms,
# 16 images 8.0 vs 9.4 ms with a 6.9 MiB output; 32 images 20 vs 16 ms).
FOLD_BYTES = 1 << 23


def folds(lhs, rhs, corr: Correlation, window, outs) -> bool:
    """Whether positions mode folds (see :func:`_fold`), whole batch at once."""
    fold = _fold(lhs, rhs, corr, window, outs)
    return fold is not None and fold.output_bytes <= FOLD_BYTES


@dataclasses.dataclass(frozen=True)
class _Fold:
    plan: Plan  # the term of one slab
    order: list[str]  # its letters as a broadcast product
    batches: int  # batch slabs, of ``batch`` entries
    batch: int
    rows: int  # rows per row slab
    lhs_slab: jax.ShapeDtypeStruct
    rhs_slab: jax.ShapeDtypeStruct
    output_bytes: int  # of the folded loops, all positions


def _fold(lhs, rhs, corr: Correlation, window, outs) -> _Fold | None:
    """How positions mode folds, or ``None`` where it cannot.

    It folds when its terms only reduce (a broadcast product: depthwise, or one
    lhs batch entry per group), the lhs is undilated and its feature axis (the
    forward's batch, cut into slabs) ungrouped, as in every kernel gradient,
    and the folded loops' output, ``positions / F`` times a slab's product in
    the accumulation dtype, is no larger than the lhs (not so for LeNet's kernel
    gradient, one input channel against six outputs and 25 positions: its
    products are 6 times ``x``).
    """
    if any(d > 1 for d in corr.lhs_dilation) or corr.feature_group_count > 1:
        return None  # (feature groups split the lhs feature axis, which slabs cut)
    lf, ri = corr.lhs_axes[1], corr.rhs_axes[1]
    positions = math.prod(outs)
    most = max(1, FOLD_TERMS // positions)
    batches = divisor_within(lhs.shape[lf], most)
    # Then rows: the fewest slabs that bring the output to the lhs's size
    # (``positions`` slabs), counted in the accumulation dtype: half-precision
    # products are summed in float32 (a bfloat16 lhs held to its own bytes did not
    # fold, and its positions took 13x as long: 3x3 depthwise over 8 images of
    # 28x28x256, kernel gradient 3.4 vs 45 ms).
    dtype = jnp.dtype(accumulation_dtype(lhs.dtype) or lhs.dtype)
    need, fit = -(-positions // batches), most // batches
    enough = [d for d in range(need, fit + 1) if window[0] % d == 0]
    by_rows = enough[0] if enough else divisor_within(window[0], fit)
    if batches * by_rows == 1:
        return None
    batch, rows = lhs.shape[lf] // batches, window[0] // by_rows
    lhs_slab = _slab_shape(lhs, (lf, *corr.lhs_axes[2:]), (batch, rows, *window[1:]))
    rhs_slab = _slab_shape(rhs, (ri, *corr.rhs_axes[2:]), (batch, rows, *window[1:]))
    plan = Plan.of(lhs_slab, rhs_slab, corr, tuple(range(len(window))))
    order = plan.broadcast_order(lhs_slab.shape, rhs_slab.shape)
    if order is None:
        return None
    sizes = dict(zip(plan.x_spec, plan.lhs_shape(lhs_slab.shape), strict=True))
    sizes |= dict(zip(plan.w_spec, plan.rhs_shape(rhs_slab.shape), strict=True))
    output = positions * math.prod(sizes[c] for c in order) * dtype.itemsize
    if output > math.prod(lhs.shape) * dtype.itemsize:
        return None
    return _Fold(plan, order, batches, batch, rows, lhs_slab, rhs_slab, output)


def _slab_shape(a, axes, sizes):
    return jax.ShapeDtypeStruct(resized(a.shape, axes, sizes), a.dtype)


def folded_positions(lhs, rhs, corr: Correlation, acc, window, outs):
    """Every position's term, stacked on a trailing axis: one folded loop, one sum.

    Args:
        lhs: the (unpadded, undilated) lhs; rhs: the rhs, its spatial axes
            (``window``) summed against the pieces'.
        corr: the correlation (paddings >= 0); outs: the output's spatial sizes.
        acc: the accumulation dtype (``None``: the operands').
    """
    fold = _fold(lhs, rhs, corr, window, outs)
    plan, order, batch, rows = fold.plan, fold.order, fold.batch, fold.rows
    dtype = acc or lhs.dtype

    def product(x, w):
        return plan.product(x, w, order, dtype)

    full = jax.eval_shape(product, fold.lhs_slab, fold.rhs_slab).shape
    axes = [order.index(c) for c in plan.spatial]  # the spatial axes of a product
    firsts = range(0, fold.batches * batch, batch), range(0, window[0], rows)
    slabs = list(itertools.product(*firsts))  # each slab's first batch entry and row
    sums = []
    for position in itertools.product(*(range(o) for o in outs)):
        starts = [p * s for p, s in zip(position, corr.window_strides, strict=True)]
        valid = _valid(lhs, corr, starts, window)
        total = None
        for b, r in slabs if valid is not None else ():
            first, last = max(valid[0][0], r), min(valid[0][1], r + rows - 1)
            if first > last:
                continue  # these rows only meet padding
            x, w = _slab(lhs, rhs, corr, starts, [(first, last), *valid[1:]], b, batch)
            term = pad_axis(product(x, w), axes[0], first - r, r + rows - 1 - last)
            total = term if total is None else total + term
        if total is None:
            sums.append(jnp.zeros(full, dtype))
            continue
        for axis, (first, last), n in zip(axes[1:], valid[1:], window[1:], strict=True):
            total = pad_axis(total, axis, first, n - 1 - last)
        sums.append(total)
    out = plan.merge(plan.reduce(jnp.stack(sums), order, lead=1), lead=1)
    return jnp.moveaxis(out, 0, -1)


def _valid(lhs, corr: Correlation, starts, window):
    """Per spatial axis, the window entries ``(first, last)`` that meet the lhs, not
    its padding; ``None`` if some axis has none.

    Window entry ``t`` is padded-lhs entry ``start + t s`` (``s`` the rhs
    dilation), i.e. lhs entry ``u = start + t s - lo``, valid for ``0 <= u <
    size``. E.g. ``start = 0, s = 1, lo = 1`` on a size-4 axis with 4 entries:
    ``t`` in ``1..3``, reading lhs ``0..2``.
    """
    valid = []
    for axis, start, n, s, (lo, _) in zip(
        corr.lhs_axes[2:], starts, window, corr.rhs_dilation, corr.padding, strict=True
    ):
        first = max(0, -((start - lo) // s))  # ceil((lo - start) / s)
        last = min(n - 1, (lhs.shape[axis] - 1 + lo - start) // s)
        if first > last:
            return None
        valid.append((first, last))
    return valid


def _slab(lhs, rhs, corr: Correlation, starts, ranges, b, batch):
    """The lhs and rhs entries behind window entries ``ranges`` of batch slab ``b``."""
    begin, limit, step = [0] * lhs.ndim, list(lhs.shape), [1] * lhs.ndim
    begin[corr.lhs_axes[1]], limit[corr.lhs_axes[1]] = b, b + batch
    rhs_begin, rhs_limit = [0] * rhs.ndim, list(rhs.shape)
    rhs_begin[corr.rhs_axes[1]], rhs_limit[corr.rhs_axes[1]] = b, b + batch
    for i, (start, (first, last), s, (lo, _)) in enumerate(
        zip(starts, ranges, corr.rhs_dilation, corr.padding, strict=True)
    ):
        axis = corr.lhs_axes[2 + i]
        begin[axis], limit[axis], step[axis] = start + first * s - lo, start + last * s - lo + 1, s
        rhs_begin[corr.rhs_axes[2 + i]], rhs_limit[corr.rhs_axes[2 + i]] = first, last + 1
    return lax.slice(lhs, begin, limit, step), lax.slice(rhs, rhs_begin, rhs_limit)
