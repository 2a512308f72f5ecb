"""XLA:CPU's dense 2-D convolutions on every core, by extra output rows.

XLA:CPU (jax 0.10) hands each 2-D float32/float64 convolution with more than
16 features that it can (``ynn_support.cc``: no base dilation, no window
reversal, no output or kernel dim larger than its input dim) to YNNPACK, whose
convolution runs on one thread where the output has up to about 64 features
(8 images of 56x56x64, 3x3, 64 -> 64: 24 ms on one core and on two). Any other
convolution goes to Eigen's, which uses every core of the intra-op pool (13-14
ms on two cores for that convolution, 25 ms on one: the same work per core).
The gain is the idle cores': on a machine busy with other work it is gone.

Asking for ``e`` more output rows than the correlation has, by padding the lhs
``e`` more rows at the high end of the first spatial dim, makes the output
larger than the input there, so YNNPACK's check refuses it and Eigen computes
it; the extra rows are sliced off. They read only padding beyond the last real
row's window, so the kept rows are the correlation's (Eigen's sums, which may
round differently from YNNPACK's). With unit stride, input size ``n``, window
``w`` and padding ``(lo, hi)``, the output has ``m = n + lo + hi - w + 1`` rows
and ``e = n - m + 1`` extra rows make it ``n + 1 > n``. The input gradient of a
SAME 3x3 over 56 rows correlates ``dz`` (56 rows) padded ``(1, 1)``: ``m = 56``,
one extra row, ``hi = 2``, 57 rows computed and 56 kept (1.8 % more work). A
forward padded ``(2, 2)`` has 58 output rows, and its input gradient correlates
them unpadded: ``m = 56``, three extra rows. The route is taken while the extra
rows are at most an eighth of the output, and only where YNNPACK would take the
plain correlation (no output or window dim already larger than the input).

Each batch chunk holds its taller output and the slice kept from it, so the
batch goes in chunks of at most :data:`CHUNK_BYTES` of output (one entry at
least: a chunk of one 112x112x64 image holds 6.3 MiB), each written into the
output in place (``_chunks.in_batch_chunks``).

Taken by ``lowering="auto"`` on CPU only (``lax.platform_dependent``), for
channels-last, unit-stride, undilated, ungrouped 2-D correlations with windows
larger than 1x1, from at least :data:`MIN_FEATURES` input features to at
least as many and at most :data:`MAX_OUT_FEATURES` output features (more than
16 of either), that slide (window no larger than the output): forward passes
and input gradients. Kernel gradients (positions: a window as large as the image)
and channels-first operands (XLA would transpose every chunk) stay as they were.

The forward's cost: YNNPACK fuses what consumes its convolution (the bias, and
a reduction such as ``jconv bench``'s loss ``sum(z * ct)``) into it, and there
never stores the output; routed, the output is stored. In a network it is
stored anyway (the next layer's input, a ReLU's mask), so the route pays in
full (same-process A/B): three 3x3 layers over 8 images of 56x56x64, 184 -> 148
ms at 45.5 MiB either way (autodiff: 244 ms, 49.0 MiB); over 8 images of
28x28x64, 62 -> 46 ms. Where
a loss reduces the output directly the step holds it in addition (3x3@56: 10.7
MiB, autodiff's 12.4, after the kernel gradient's row bands of ``_taps.py`` cut
its own share 8.5 -> 4.5 MiB; 2 images of 112x112x64: 18.5 against 12.4), and
is no faster, as YNNPACK's one-thread forward overlapped the independent
backward passes there (3x3@56: 46.6 -> 51.6 ms).

Measured on the 2-core development machine (medians, same process): 3x3@56 over
64 features, input gradient 24.2 -> 14.6 ms (``experiments/lowering_passes.py``);
its training step 54.4 -> 49.6 ms with ``jconv bench``'s loss, and 71.4 -> 59.4
ms in a chained step whose backward waits for the forward, as in a network
(``jconv bench --chained``). GoogLeNet's 5x5 (192 -> 32), with its forward
routed too (same-process A/B against the input gradient alone): chained step
58.3 -> 45.8 ms, ``jconv bench``'s step 44.2 -> 42.0 ms, memory unchanged (5.4
and 6.1 MiB).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jax import lax

from . import _chunks, _slicing
from ._correlation import Correlation

# Output bytes per batch chunk (the extra buffer the route holds at once).
CHUNK_BYTES = 1 << 20
# The most extra rows, as a fraction of the output rows, worth computing.
MAX_EXTRA_FRACTION = 1 / 8
# YNNPACK's own threshold: convolutions of at most this many features stay XLA's loops.
YNN_MIN_FEATURES = 16
# Beyond this many output features YNNPACK spreads the work itself (3x3@14, 256
# features: 14.6 ms either way; 128 features at 28x28: 15.3 -> 13.5 ms).
MAX_OUT_FEATURES = 128
# With fewer input or output features Eigen's convolution is no faster than
# YNNPACK's one thread and the route only adds its chunks' memory: a VGG stem's
# forward (2 images of 224x224x3, 3x3, 3 -> 64) 13.2 -> 18.1 ms and 12.9 MiB
# routed; 8 input features: 19.3 vs 19.4 ms; 16: 33.0 -> 25.7 ms. Its input
# gradient (64 -> 3) 12.0 -> 23.6 ms routed.
MIN_FEATURES = 16
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))
_CHANNELS_LAST = (0, 3, 1, 2)  # (batch, feature, *spatial) axes of an NHWC array


def extra_rows(lhs_shape, rhs_shape, corr: Correlation) -> int:
    """Rows to add to the output so that it outgrows the lhs (0: the route does not apply)."""
    if not _eligible(lhs_shape, rhs_shape, corr):
        return 0
    window, outs = _slicing.term_counts(lhs_shape, rhs_shape, corr)
    if math.prod(window) == 1:
        # YNNPACK spreads a 1x1 convolution (a matmul) itself: input gradients
        # over 8 images of 56x56x64 take 3.4 ms plain and 3.6 routed.
        return 0
    if any(w > o for w, o in zip(window, outs, strict=True)):
        return 0  # positions (a kernel gradient): not a sliding window
    sizes = [lhs_shape[a] for a in corr.lhs_axes[2:]]
    if any(o > n or w > n for o, w, n in zip(outs, window, sizes, strict=True)):
        return 0  # YNNPACK refuses the plain correlation already
    extra = lhs_shape[corr.lhs_axes[2]] - outs[0] + 1
    return extra if 0 < extra <= max(1, outs[0] * MAX_EXTRA_FRACTION) else 0


def _eligible(lhs_shape, rhs_shape, corr: Correlation) -> bool:
    features = max(lhs_shape[corr.lhs_axes[1]], rhs_shape[corr.rhs_axes[0]])
    out_features = rhs_shape[corr.rhs_axes[0]]
    return (
        len(corr.padding) == 2
        and lhs_shape[corr.lhs_axes[0]] > 0
        and corr.lhs_axes == _CHANNELS_LAST
        and corr.out_axes == _CHANNELS_LAST
        and corr.feature_group_count == 1
        and corr.batch_group_count == 1
        and all(s == 1 for s in corr.window_strides)
        and all(d == 1 for d in corr.lhs_dilation + corr.rhs_dilation)
        and all(lo >= 0 and hi >= 0 for lo, hi in corr.padding)
        and features > YNN_MIN_FEATURES
        and min(lhs_shape[corr.lhs_axes[1]], out_features) >= MIN_FEATURES
        and out_features <= MAX_OUT_FEATURES
    )


def applies(lhs, rhs, corr: Correlation) -> bool:
    """Whether ``lowering="auto"`` computes ``corr`` by this route on CPU.

    Not with symbolic dims (``jax.export`` with a symbolic batch): the chunks
    need a known batch, and ``lax.platform_dependent`` traces the CPU branch
    whatever the platform exported for.
    """
    if not all(isinstance(d, int) for d in (*lhs.shape, *rhs.shape)):
        return False
    return jnp.dtype(lhs.dtype) in _DTYPES and extra_rows(lhs.shape, rhs.shape, corr) > 0


def cpu_xla_correlate(lhs, rhs, corr: Correlation, conv):
    """``conv(lhs, rhs, corr)`` computed with :func:`extra_rows` more rows, in batch chunks.

    Args:
        lhs, rhs: the operands, channels-last (see :func:`applies`).
        corr: the correlation.
        conv: ``conv(lhs, rhs, corr) -> out``, XLA's convolution.
    """
    extra = extra_rows(lhs.shape, rhs.shape, corr)
    (lo, hi), rest = corr.padding[0], corr.padding[1:]
    taller = dataclasses.replace(corr, padding=((lo, hi + extra), *rest))
    rows_axis = corr.out_axes[2]

    def rows_kept(part):
        out = conv(part, rhs, taller)
        return lax.slice_in_dim(out, 0, out.shape[rows_axis] - extra, axis=rows_axis)

    outs = _slicing.term_counts(lhs.shape, rhs.shape, corr)[1]  # the rows kept
    per_entry = math.prod(outs) * rhs.shape[corr.rhs_axes[0]] * lhs.dtype.itemsize
    chunk = _chunks.divisor_within(lhs.shape[corr.lhs_axes[0]], CHUNK_BYTES // per_entry)
    return _chunks.in_batch_chunks(rows_kept, lhs, chunk, corr)
