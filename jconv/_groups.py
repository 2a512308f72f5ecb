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
(``experiments/README.md``, session 11: a ResNeXt 3x3 of 32 groups of 16
features over 8 images of 14x14x512, forward 16 ms as XLA's, 29 ms as taps,
3.7 ms as 32 dense correlations). Each block goes back through ``correlate``, so
it gets the dense rules of ``auto`` (the every-core route, im2col kernel
gradients, ...).
"""

from __future__ import annotations

import dataclasses
import math

from . import _slicing, _terms
from ._chunks import dynamic_slice_bits, in_blocks
from ._correlation import Correlation


def splits(lhs_shape, rhs_shape, corr: Correlation, looped_well) -> bool:
    """Whether ``auto`` computes ``corr`` group by group (on CPU).

    Feature groups only: forwards and input gradients. Kernel gradients (batch
    groups) are computed as fast by the taps lowering; a loop over their
    groups was up to 2x slower in 1-D, strided and channels-first ones.
    Not split, as the taps lowering's terms are already cheap there:

    - one feature per group (depthwise) or one output per group: broadcast
      products;
    - grouped terms that the taps unroll (``_terms.unrolls``);
    - a 1x1 window: one batched matmul (3 groups of 80 features over 8 images
      of 28x28: 3.7 ms, 5.5 by groups).

    Channels-first ones are split only where ``looped_well(lhs_block,
    rhs_block, corr_block)``. Inside a loop, XLA:CPU's convolution takes its
    operands in the layout the loop gives them, and is slow in that one: 4
    groups of 32 over 8 images of 28x28 in NCHW, forward 126 ms by groups,
    18 ms as the taps' batched matmuls, 19 ms as XLA's grouped convolution.
    """
    groups = corr.feature_group_count
    if groups == 1:
        return False
    features = rhs_shape[corr.rhs_axes[1]]  # contracted per group
    taps = math.prod(rhs_shape[a] for a in corr.rhs_axes[2:])
    one_out = rhs_shape[corr.rhs_axes[0]] == groups  # one output per group: broadcast products
    if features == 1 or one_out or taps == 1 or _terms.unrolls(rhs_shape, corr):
        return False
    channels_last = corr.lhs_axes[1] == len(lhs_shape) - 1
    return channels_last or looped_well(*_blocks(lhs_shape, rhs_shape, corr))


def _blocks(lhs_shape, rhs_shape, corr: Correlation):
    """The shapes of one group's operands, and its dense correlation."""
    groups, lf, ro = corr.feature_group_count, corr.lhs_axes[1], corr.rhs_axes[0]
    lhs_block = _slicing.resized(lhs_shape, (lf,), (lhs_shape[lf] // groups,))
    rhs_block = _slicing.resized(rhs_shape, (ro,), (rhs_shape[ro] // groups,))
    return lhs_block, rhs_block, dataclasses.replace(corr, feature_group_count=1)


def by_groups(lhs, rhs, corr: Correlation, dense):
    """``corr`` of ``lhs`` with ``rhs`` as one ``dense(lhs_g, rhs_g, corr_g)`` per group,
    written into output feature block ``g`` (see the module docstring), one
    group at a time in a loop (:func:`_chunks.in_blocks`)."""
    groups, lf, ro = corr.feature_group_count, corr.lhs_axes[1], corr.rhs_axes[0]
    lhs_block, rhs_block, each = _blocks(lhs.shape, rhs.shape, corr)
    features, outs = lhs_block[lf], rhs_block[ro]

    def block(g):
        lhs_g = dynamic_slice_bits(lhs, g * features, features, lf)
        return dense(lhs_g, dynamic_slice_bits(rhs, g * outs, outs, ro), each)

    return in_blocks(block, groups, corr.out_axes[1], lhs)
