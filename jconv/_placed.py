"""Positions mode with the rhs placed on the lhs grid: im2col of the thinner operand.

A kernel gradient's output position (kernel tap) ``k`` is a sum over the batch
and the output grid, ``dK[k] = sum_{n, s} x~[n, s + k] dz[n, s]`` (unit forward
stride; ``x~`` the padded input, features left out). Substituting ``u = s + k -
lo``, an index of the *unpadded* input, it is ``sum_{n, u} x[n, u] dz_k[n, u]``
with ``dz_k[u] = dz[u - k + lo]``: ``dz`` shifted onto ``x``'s grid, zero where
it does not reach (a pad with edges ``k - lo`` and ``size(x) - size(dz) - k +
lo``, negative ones cropping). All positions then read the same ``x``, and
with their shifted ``dz`` side by side on the output-feature axis they are one
matmul: ``x`` as ``(C_in, N*H*W)`` times ``(N*H*W, positions*C_out)``.

The im2col of ``_im2col.stacked_positions`` stacks the other operand, ``x``'s slices, so
it suits few input channels (a stem); this one suits kernel gradients whose
``dz`` is the thinner operand (``C_out < C_in``), where XLA:CPU's convolution
and the per-position matmuls are slow: GoogLeNet's 5x5, 192 -> 32, 31.6 ->
15.4-17.4 ms at 5.8 instead of 5.9 MiB; 3x3 256 -> 64 at 28x28, 45 -> 23 ms.
Its cost beside the matmul is writing the shifted ``dz`` (``positions`` times
``dz``, a batch chunk at a time), which is paid back only where each of its
entries meets enough input channels (see :func:`places`).
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from ._chunks import divisor_within
from ._correlation import Correlation
from ._slicing import positions_last, term_counts
from ._terms import dense, term

# The shifted rhs copies of one batch chunk are kept under this many bytes.
PLACED_BYTES = 1 << 22
# Placing pays from this many lhs batch entries (input channels) on.
PLACED_CHANNELS = 64


def places(lhs_shape, rhs_shape, corr: Correlation, itemsize: int) -> bool:
    """Whether positions mode places the rhs (see the module docstring).

    For dense correlations with an undilated lhs and unit rhs dilation (the
    kernel gradients of unit-stride convolutions; also a forward whose output is
    smaller than its kernel, which the same algebra covers) whose rhs has fewer output
    features than the lhs has batch entries (``C_out < C_in``), at least
    :data:`PLACED_CHANNELS` of those, and whose shifted copies for one batch
    entry fit :data:`PLACED_BYTES`. Measured against XLA:CPU's convolution on
    kernel gradients: 96 -> 64 channels at 28x28, 3x3: 16 -> 7 ms; 48 -> 16
    channels, 5x5: 5.3 -> 7.0 ms, a loss (the shifted copies outweigh a thin
    matmul); equal channels lose to the input-side im2col (3x3@56, 64 -> 64:
    20 ms stacked, 24 placed); 7x7, 64 -> 16 at 56x56 halves the time but
    its copies (9.8 MB per image) triple the memory.
    """
    if not dense(corr) or any(d > 1 for d in (*corr.lhs_dilation, *corr.rhs_dilation)):
        return False
    window, outs = term_counts(lhs_shape, rhs_shape, corr)
    if math.prod(outs) >= math.prod(window) or math.prod(outs) == 1:
        return False  # not positions mode, or one position (a plain matmul)
    channels, features = lhs_shape[corr.lhs_axes[0]], rhs_shape[corr.rhs_axes[0]]
    copies = _copies_bytes(lhs_shape, rhs_shape, corr, itemsize)
    return PLACED_CHANNELS <= channels and features < channels and copies <= PLACED_BYTES


def placed_chunk(lhs, rhs, corr: Correlation) -> int:
    """Batch entries per chunk: the shifted copies within :data:`PLACED_BYTES`."""
    copies = _copies_bytes(lhs.shape, rhs.shape, corr, rhs.dtype.itemsize)
    return divisor_within(lhs.shape[corr.lhs_axes[1]], PLACED_BYTES // copies)


def _copies_bytes(lhs_shape, rhs_shape, corr: Correlation, itemsize: int) -> int:
    """Bytes of every position's shifted rhs for one batch entry (on the lhs grid)."""
    _, outs = term_counts(lhs_shape, rhs_shape, corr)
    spatial = math.prod(lhs_shape[a] for a in corr.lhs_axes[2:])
    return math.prod(outs) * spatial * rhs_shape[corr.rhs_axes[0]] * itemsize


def placed_positions(lhs, rhs, corr: Correlation, precision, acc, outs):
    """Every position's term, stacked on a trailing axis (as ``_slicing.place_positions``
    takes it), from one matmul.

    Args:
        lhs: the unpadded lhs; rhs: the rhs; corr: the correlation.
        precision, acc: passed to the einsum; outs: the output's spatial sizes.
    """
    ro, rs = corr.rhs_axes[0], corr.rhs_axes[2:]
    lhs_sizes = [lhs.shape[a] for a in corr.lhs_axes[2:]]
    shifted = []
    for position in itertools.product(*(range(o) for o in outs)):
        config = [(0, 0, 0)] * rhs.ndim
        for a, k, ws, (lo, _), size in zip(
            rs, position, corr.window_strides, corr.padding, lhs_sizes, strict=True
        ):
            shift = k * ws - lo  # rhs entry s meets lhs entry s + shift
            config[a] = (shift, size - rhs.shape[a] - shift, 0)
        shifted.append(lax.pad(rhs, jnp.zeros((), rhs.dtype), config))
    placed = jnp.concatenate(shifted, axis=ro)
    out = term(lhs, placed, corr, tuple(range(len(outs))), precision, acc)
    axis = sorted(corr.out_axes[:2]).index(corr.out_axes[1])  # features: (position, out)
    return positions_last(out, axis, len(shifted))
