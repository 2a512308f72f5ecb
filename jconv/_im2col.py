"""Positions mode as im2col matmuls: the output positions' slices of the lhs
stacked side by side, so that one matmul computes many positions.

``_taps.py`` sums a correlation over its output positions where the output is
small (the kernel gradient, whose output is the kernel): one contraction per
position. Where each is thin (few lhs batch entries: the kernel gradient's
input channels), :func:`stacks` says so, and :func:`stacked_positions` stacks
the positions' pieces into a few row-major matmul operands instead.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ._correlation import Correlation
from ._slicing import positions_last, window_slice
from ._terms import dense, term


def stacked_positions(xp, rhs, corr: Correlation, precision, acc, window, starts):
    """Positions mode as im2col matmuls: the positions' pieces stacked, in planes.

    The padded lhs is first laid out planar, ``(batch, feature, *spatial)``: the
    kernel gradient's batch is ``x``'s channels and its feature ``x``'s batch,
    so each channel becomes a plane of contiguous rows. The pieces (one per
    output position) are stacked on that leading axis, in groups of at most
    :data:`STACK_BYTES`, at least :data:`MIN_GROUPS` of them, of even sizes (9
    positions over 2 groups are 5 and 4); each group is then a row-major ``(M,
    K)`` matmul operand, and ``dz`` (its batch and positions leading) a
    row-major ``(K, N)`` one, so XLA:CPU transposes neither. Stacked channels-last instead, the
    stack or ``dz`` was transposed for every group: the stem's kernel gradient
    (3 channels, 49 positions) took 67-74 ms that way and takes 22-25 ms
    planar; 3x3@56 (64 channels) 23 -> 21 ms and 11.5 -> 8.5 MiB. The
    positions are split back off the output batch axis.
    """
    planar = jnp.transpose(xp, corr.lhs_axes)
    corr = dataclasses.replace(corr, lhs_axes=tuple(range(xp.ndim)))
    spatial = corr.lhs_axes[2:]
    pieces = [window_slice(planar, spatial, at, window, corr.rhs_dilation) for at in starts]
    summed = tuple(range(len(window)))
    ob = corr.out_axes[0]
    axis = sorted(corr.out_axes[:2]).index(ob)
    size = pieces[0].size * pieces[0].dtype.itemsize
    per_group = max(1, STACK_BYTES // size)  # at most, ...
    groups = min(len(pieces), max(-(-len(pieces) // per_group), MIN_GROUPS))
    parts, first = [], 0
    for g in range(groups):  # ... as even as they go: 9 over 2 groups are 5 and 4
        group = pieces[first : first + len(pieces) // groups + (g < len(pieces) % groups)]
        first += len(group)
        part = term(jnp.concatenate(group, axis=0), rhs, corr, summed, precision, acc)
        parts.append(positions_last(part, axis, len(group)))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


# Positions mode stacks pieces for one matmul up to this many bytes at a time:
# half a band (``_taps.BAND_STACK_BYTES``, see ``_taps.row_bands``). A whole
# band's pieces in one group, XLA:CPU copied each piece out and then
# concatenated them, instead of one fused loop (3x3@56's kernel gradient in 2
# MiB bands: 25 ms in one group a band, 21.0 in two; without bands, 19.2).
STACK_BYTES = 1 << 21  # (``_taps.BAND_STACK_BYTES`` is twice this)
# ... and in at least this many groups: one stack of all 9 positions of a 3x3
# was slower than two (the kernel gradient over 8 images of 28x28x64: 8.2 vs
# 5.4 ms; three such layers' training step 43 -> 33 ms, 13.1 -> 11.6 MiB).
MIN_GROUPS = 2


def stacks(channels: int, corr: Correlation, positions: int) -> bool:
    """Whether positions mode computes one im2col matmul rather than one per position.

    Stacking pays when each position's matmul is thin, i.e. few lhs batch entries
    (the kernel gradient's input channels; the stem's 3). Measured on XLA:CPU with
    planar stacks (:func:`stacked_positions`): the stem 74 -> 28 ms and ResNet 3x3@56 (64
    channels) 49 -> 25 ms against XLA; at 192 channels (GoogLeNet) stacking gains
    nothing (31 vs 33 ms), at 256 (3x3@14) 25 -> 20 ms but at 7.3 instead of 3.8
    MiB, over autodiff's memory, and with a single channel (LeNet) 2.0 -> 1.4 ms
    at 3.5 instead of 1.0 MiB. Dense correlations only: the stack would cut
    across the groups.
    """
    return dense(corr) and positions > 1 and 1 < channels < STACKED_CHANNELS


# Positions mode stacks (im2col) below this many lhs batch entries (see stacks).
STACKED_CHANNELS = 128
