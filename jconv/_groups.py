"""A grouped correlation as one dense correlation per group.

With ``G`` feature groups (:class:`~jconv._correlation.Correlation`), output
feature block ``g`` (``rhs`` out features ``g O' ... (g + 1) O' - 1``) reads
only lhs feature block ``g`` (``g C ... (g + 1) C - 1``, ``C`` the rhs
in-feature size)::

    out[:, g O' + o, i] = sum_{c, k} lhs~[:, g C + c, i s + k d] rhs[g O' + o, c, k]

which, for each ``g``, is the dense correlation of the lhs block with the rhs
block, written to output block ``g``. Worked case: ``G = 2`` groups, ``C = 1``,
one spatial tap, lhs features ``(a, b)``, rhs ``[[p], [q]]`` (one out feature
per group): block 0 is ``a p`` and block 1 ``b q``, so ``out = (a p, b q)``, as
the grouped formula gives.

Why: XLA:CPU computes a grouped convolution far below its dense rate, and the
taps lowering's batched matmuls contract only ``C`` features per product
(``experiments/README.md``, session 11: a ResNeXt 3x3 of 32 groups over 8
images of 28x28x256, forward 62 ms as XLA's and 60 ms (58 MiB) as taps, 8-10
ms as 32 dense correlations). Each block goes back through ``correlate``, so
it gets the dense rules of ``auto`` (the every-core route, im2col kernel
gradients, ...).
"""

from __future__ import annotations

import dataclasses
import math

from . import _terms
from ._chunks import dynamic_slice_bits, in_blocks
from ._correlation import Correlation

# Feature-grouped terms contracting at most this many features per group, over
# at most this many products per output (taps x features), are left to the taps
# lowering, which unrolls them into broadcast products (``_terms.term``): 8
# images of 28x28, forward ms unrolled vs by groups: 3x3 over 32 groups of 8
# 8.6 vs 10.9, 5x5 over 32 of 4 8.2 vs 30.2, 7x7 over 64 of 2 46 vs 120; 5x5
# over 16 of 8 (200 products) 59 vs 7.1.
UNROLLED_PRODUCTS = 100


def splits(lhs_shape, rhs_shape, corr: Correlation, looped_well) -> bool:
    """Whether ``auto`` computes ``corr`` group by group (on CPU).

    Feature groups (forwards and input gradients; not kernel gradients, whose
    batch groups the taps lowering computes as fast, as a loop over groups was
    up to 2x slower in 1-D, strided and channels-first ones) are split unless
    depthwise (one feature per group), unrolled by the taps lowering (above) or
    of a 1x1 window (one batched matmul in the taps lowering: 3 groups of 80
    features over 8 images of 28x28, 3.7 ms, 5.5 by groups).
    Channels-first ones only where ``looped_well(lhs_block, rhs_block,
    corr_block)``: inside a loop XLA:CPU's convolution takes its operands in the
    layout the loop gives them, and slowly in that one (4 groups of 32 over 8
    images of 28x28 in NCHW: forward 126 ms by groups, 19 as XLA's grouped
    convolution).
    """
    if corr.feature_group_count == 1:
        return False
    features = rhs_shape[corr.rhs_axes[1]]  # contracted per group
    taps = math.prod(rhs_shape[a] for a in corr.rhs_axes[2:])
    unrolled = features <= _terms.UNROLLED_FEATURES and taps * features <= UNROLLED_PRODUCTS
    if features == 1 or unrolled or taps == 1:
        return False  # (a 1x1 window: the taps lowering's one batched matmul)
    channels_last = corr.lhs_axes[1] == len(lhs_shape) - 1
    return channels_last or looped_well(*_blocks(lhs_shape, rhs_shape, corr)[1:])


def _blocks(lhs_shape, rhs_shape, corr: Correlation):
    """The lhs axis cut into groups, the shapes of one group's operands, and its
    dense correlation."""
    groups = corr.feature_group_count
    cut = corr.lhs_axes[1]
    lhs_block = _terms.resized(lhs_shape, (cut,), (lhs_shape[cut] // groups,))
    ro = corr.rhs_axes[0]
    rhs_block = _terms.resized(rhs_shape, (ro,), (rhs_shape[ro] // groups,))
    each = dataclasses.replace(corr, feature_group_count=1)
    return cut, lhs_block, rhs_block, each


def by_groups(lhs, rhs, corr: Correlation, dense):
    """``corr`` of ``lhs`` with ``rhs`` as one ``dense(lhs_g, rhs_g, corr_g)`` per group,
    written into output feature block ``g`` (see the module docstring), one
    group at a time in a loop (:func:`_chunks.in_blocks`)."""
    groups = corr.feature_group_count
    cut, lhs_block, rhs_block, each = _blocks(lhs.shape, rhs.shape, corr)
    ro = corr.rhs_axes[0]
    features, outs = lhs_block[cut], rhs_block[ro]

    def block(g):
        lhs_g = dynamic_slice_bits(lhs, g * features, features, cut)
        return dense(lhs_g, dynamic_slice_bits(rhs, g * outs, outs, ro), each)

    return in_blocks(block, groups, corr.out_axes[1], lhs)
