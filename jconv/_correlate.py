"""The one correlation from which the forward pass and every rule are built.

The seed writes each quantity of a convolution layer as a sum of products of a
sliding window: ``Z = conv(X, K)``, ``dL/dK = conv(X, dL/dZ)`` and
``dL/dX = conv(padded(dL/dZ), rot180(K))``. Each of those is a *correlation*
in the sense of :class:`Correlation`. The rules in ``_rules.py`` only decide
*which* correlation to compute (which operand is which, strides, dilations,
padding, groups); :func:`correlate` decides *how* it is computed. Keeping that
split means a faster lowering for some shape or platform is a change here alone,
and can never change what the rules mean.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from . import (
    _bands,
    _cpu_xla,
    _groups,
    _im2col,
    _measured,
    _placed,
    _rows,
    _slicing,
    _taps,
    _winograd,
)
from ._correlation import Correlation, accumulation_dtype

# The taps lowering unrolls one einsum per term; beyond this many it stays XLA's.
MAX_TERMS = 64
# Dense kernel gradients use taps on CPU while one forward input entry is this small.
MAX_ENTRY_BYTES = 1 << 20
# ... and, unstacked (at _im2col.STACKED_CHANNELS input channels), at least this large.
MIN_UNSTACKED_ENTRY_BYTES = 1 << 18
# ... and while a chunk's im2col stacks take at most this, or twice the operands.
MAX_STACK_BYTES = 1 << 22


def correlate(lhs, rhs, corr: Correlation, precision=None, lowering: str = "auto"):
    """Computes the correlation ``corr`` of ``lhs`` with ``rhs``.

    Args:
        lhs, rhs: operands of one dtype, laid out as ``corr`` says.
        corr: which correlation.
        precision: passed to XLA.
        lowering: ``"xla"`` (``lax.conv_general_dilated``), ``"taps"`` (strided
            slices times einsums, ``_taps.py``), ``"winograd"`` (F(2, 3) tiles
            for 3-tap windows, F(3, 2) pieces for the kernel gradients of
            those over >= 128 features, ``_winograd.py``, where
            :func:`_winograd.applies`; as ``"auto"`` elsewhere) or ``"auto"``:
            on CPU, grouped forwards and input gradients one dense
            correlation per group (``_groups.splits``: not depthwise, not
            one output per group, not 1x1, not where the taps unroll them into
            broadcast products, channels-first only where the blocks are
            taps), taps where XLA:CPU's convolution is slow
            (:func:`_taps_pays_on_cpu`: grouped and depthwise correlations,
            most kernel gradients, thin input gradients), one-channel kernel
            gradients of small images as one matmul over whole rows
            (``_rows.py``), kernel gradients over a few large images that
            the taps refuse whole as ones over bands of rows stacked on the
            batch (``_bands.py``), dense channels-last 2-D
            forwards and input gradients as XLA's convolution with extra
            output rows, which XLA:CPU runs on every core (``_cpu_xla.py``);
            XLA's convolution (cuDNN on GPU) everywhere else. ``"auto"`` does
            not take the tiles: they beat XLA:CPU's dense 3x3 convolution and
            torch over 64 and 256 channels (training steps 3x3@56 53.0 ms,
            3x3@14 41.5 ms, torch 59.6 and 48.5, session 13) but hold more
            memory than autodiff's step (14.7 vs 12.4, 31.6 vs 5.3 MiB), and
            lose to torch over 128 channels in NCHW (61.0 vs 50.4 ms).
            ``"measured"``: ``"auto"`` or ``"xla"``, whichever ran faster for
            this correlation on this machine, timed on the first trace
            (``_measured.py``; on CPU only, elsewhere ``"auto"``).

    Returns:
        The result, in ``lhs``'s dtype.
    """
    cropped = _crop_negative_padding(lhs, corr)
    if cropped is None or lhs.size == 0 or rhs.size == 0:
        # Every lhs entry cropped away, or an empty operand (an empty batch: the
        # kernel gradient's sums are empty, the other passes' outputs): zeros,
        # which no lowering has to chunk or tile.
        shape = jax.eval_shape(functools.partial(_xla_conv, corr=corr), lhs, rhs).shape
        return jnp.zeros(shape, lhs.dtype)
    lhs, corr = cropped
    xla = functools.partial(_hazard_free_xla_conv, corr=corr, precision=precision)
    if not all(isinstance(d, int) for d in (*lhs.shape, *rhs.shape)):
        # Symbolic dims (``jax.export`` shape polymorphism): the lowerings size
        # their chunks and pick their modes from concrete shapes; XLA's
        # convolution takes any.
        return xla(lhs, rhs)
    if lowering == "measured":
        lowering = _measured.choose(lhs, rhs, corr, precision, correlate)
    taps = functools.partial(_taps.taps_correlate, corr=corr, precision=precision)
    winograd = functools.partial(_winograd.winograd_correlate, corr=corr, precision=precision)
    if lowering == "xla":
        return xla(lhs, rhs)
    if lowering == "taps":
        return taps(lhs, rhs)
    if lowering == "winograd" and _winograd.applies(lhs.shape, rhs.shape, corr):
        return winograd(lhs, rhs)
    if _groups.splits(lhs.shape, rhs.shape, corr, looped_well=_looped_well(lhs.dtype.itemsize)):
        # (Each block as ``auto``: a forced ``winograd`` stays off grouped ones.)
        dense = functools.partial(correlate, precision=precision, lowering="auto")
        by_groups = functools.partial(_groups.by_groups, corr=corr, dense=dense)
        return lax.platform_dependent(lhs, rhs, cpu=by_groups, default=xla)
    if _taps_pays_on_cpu(lhs.shape, rhs.shape, corr, lhs.dtype.itemsize):
        return lax.platform_dependent(lhs, rhs, cpu=taps, default=xla)
    if _rows.applies(lhs.shape, rhs.shape, corr, lhs.dtype.itemsize):
        rows = functools.partial(_rows.rows_correlate, corr=corr, precision=precision)
        return lax.platform_dependent(lhs, rhs, cpu=rows, default=xla)
    taken = functools.partial(_taps_pays_on_cpu, itemsize=lhs.dtype.itemsize)
    rows = _bands.band_rows(lhs.shape, rhs.shape, corr, lhs.dtype.itemsize, taken)
    if rows is not None:

        def banded(lhs, rhs):
            lhs_b, rhs_b, corr_b = _bands.rows_as_batch(lhs, rhs, corr, rows)
            return _taps.taps_correlate(lhs_b, rhs_b, corr_b, precision=precision)

        return lax.platform_dependent(lhs, rhs, cpu=banded, default=xla)
    if _cpu_xla.applies(lhs, rhs, corr):
        every_core = functools.partial(
            _cpu_xla.cpu_xla_correlate,
            corr=corr,
            conv=functools.partial(_xla_conv, precision=precision),
        )
        return lax.platform_dependent(lhs, rhs, cpu=every_core, default=xla)
    return xla(lhs, rhs)


def _looped_well(itemsize: int):
    """Whether a group's dense correlation runs well inside a loop: where the
    taps or rows lowering computes it (see ``_groups.splits``)."""

    def looped_well(lhs_shape, rhs_shape, corr: Correlation) -> bool:
        return _taps_pays_on_cpu(lhs_shape, rhs_shape, corr, itemsize) or _rows.applies(
            lhs_shape, rhs_shape, corr, itemsize
        )

    return looped_well


def _taps_pays_on_cpu(lhs_shape, rhs_shape, corr: Correlation, itemsize: int) -> bool:
    """The "auto" rule: where the taps lowering beats XLA:CPU's convolution.

    Measured pass by pass with ``experiments/lowering_passes.py`` and as a whole
    with ``jconv bench`` (``experiments/README.md``):

    - grouped and depthwise correlations, and those with one input feature (a
      fused broadcast product, as for depthwise): always, but in positions
      mode for dense ones (the kernel gradient of one image, whose one lhs
      feature is the batch), which go by the rules below (and ``_bands.py``);
    - kernel gradients (positions mode: the output is smaller than the window)
      of a 1x1 kernel (one matmul), of 2 to 128 input channels (an im2col
      matmul per batch chunk; at 128, per-position matmuls, over images of at
      least :data:`MIN_UNSTACKED_ENTRY_BYTES` only) while one lhs feature entry
      (one image of the forward input) stays cache-sized: with larger entries the chunks lose to
      XLA, with wider channels XLA's matmuls are as good, and stacks that
      outgrow the operands cost more memory than XLA's; and of unit-stride
      convolutions with fewer output than input channels (``_placed.places``:
      ``dz`` shifted onto ``x``'s grid, one matmul);
    - thin correlations (scatter mode: a stem's or LeNet's input gradient);
    - unit-stride 1x1 correlations that narrow the features (the input gradient
      of a channel-expanding 1x1: 20 -> 16 ms on the bench's expand shape);
    - float32 strided 1x1 correlations of an unpadded, undilated lhs (a ResNet
      downsampling shortcut's forward): the strided grid sliced out, in
      cache-sized batch chunks
      (``_taps._copied_batch``), times one matmul beats XLA:CPU's strided
      convolution (8 images of 56x56x256 -> 128, forward alone 2.2 vs 3.2 ms,
      training step 7.1-7.3 vs 8.5-8.8 ms plain, 9.0-9.5 vs 11.3-12.2 ms
      chained; channels-first 18-25 vs 26-33 ms; session 15, where session 5,
      slicing whole on another box, had measured a loss). In bfloat16 the
      step was no clear win (plain 19.2-19.9 vs 16.4-18.4 ms, chained
      19.4-19.5 vs 21.2), and stays XLA's.

    Everything else, unit-stride 1x1 forwards included (XLA:CPU's convolution is
    a matmul there already), stays XLA's.
    """
    window, outs = _slicing.term_counts(lhs_shape, rhs_shape, corr)
    if min(math.prod(window), math.prod(outs)) > MAX_TERMS:
        return False
    grouped = corr.feature_group_count > 1 or corr.batch_group_count > 1
    one_feature = lhs_shape[corr.lhs_axes[1]] == corr.feature_group_count  # nothing to contract
    mode = _taps.choose_mode(lhs_shape, rhs_shape, corr)
    if grouped or (one_feature and mode != "positions"):
        return True
    if _taps.sliced_tap(lhs_shape, window, corr) and itemsize == 4:
        return True
    if math.prod(window) == 1 and all(s == 1 for s in corr.window_strides):
        # One matmul: ours wins when it narrows the features (a 1x1 input gradient)
        return lhs_shape[corr.lhs_axes[1]] > rhs_shape[corr.rhs_axes[0]]
    if mode == "positions":
        if _placed.places(lhs_shape, rhs_shape, corr, itemsize):
            return True
        if len(window) == 1 and corr.rhs_dilation == (1,):
            # 1-D, the forward at unit stride (the kernel gradient's rhs
            # dilation): XLA's kernel gradient is as fast alone and faster in a
            # step (16 x 4000 x 32, 5 taps: 18.9 vs 30.4 ms plain, 20.8 vs 25.9
            # chained; 3 and 9 taps, dilation 2, 32 -> 64: 9-35 % faster), at
            # autodiff's memory. Strided forwards keep the taps (7 taps, stride
            # 2: 30.4 vs 36.2 ms).
            return math.prod(outs) == 1
        entry = _slicing.entry_bytes(lhs_shape, corr, itemsize)
        channels = lhs_shape[corr.lhs_axes[0]]
        # At STACKED_CHANNELS the positions' matmuls go unstacked, which pays
        # over large images only (8 images, 128 channels, 3x3, ms taps vs XLA:
        # 28x28 21.4 vs 25.8 and NCHW 21.2 vs 35.1, 24x24 14.1 vs 17.2; 21x21
        # 27.7 vs 21.6, 14x14 11.4 vs 6.0, 7x7 4.9 vs 2.9).
        wide = channels == _im2col.STACKED_CHANNELS and entry < MIN_UNSTACKED_ENTRY_BYTES
        small = entry <= MAX_ENTRY_BYTES and not wide
        thin = 1 < channels <= _im2col.STACKED_CHANNELS
        # The im2col stacks of a chunk (before any row bands) within
        # MAX_STACK_BYTES or twice the larger operand (XLA's own kernel gradient
        # takes about that: 12.4 MiB for 3x3@56's 6.4 MB operands); a 7x7 at
        # 56x56 over 64 channels would hold 39 MiB where XLA needs 4.
        operands = max(math.prod(lhs_shape), math.prod(rhs_shape)) * itemsize
        stacks = _taps.stack_bytes(lhs_shape, rhs_shape, corr, itemsize)
        fits = stacks <= max(2 * operands, MAX_STACK_BYTES)
        return math.prod(outs) == 1 or (thin and small and fits)
    return mode == "scatter"


def _hazard_free_xla_conv(lhs, rhs, corr: Correlation, precision=None):
    if _swapper_hazard(corr, rhs.shape):
        lhs, corr = _explicit_lhs_dilation(lhs, corr)
    return _xla_conv(lhs, rhs, corr, precision)


def _xla_conv(lhs, rhs, corr: Correlation, precision=None):
    out = lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides=corr.window_strides,
        padding=corr.padding,
        lhs_dilation=corr.lhs_dilation,
        rhs_dilation=corr.rhs_dilation,
        dimension_numbers=lax.ConvDimensionNumbers(corr.lhs_axes, corr.rhs_axes, corr.out_axes),
        feature_group_count=corr.feature_group_count,
        batch_group_count=corr.batch_group_count,
        precision=precision,
        preferred_element_type=accumulation_dtype(lhs.dtype),
    )
    return out.astype(lhs.dtype)


def _crop_negative_padding(lhs, corr: Correlation):
    """Rewrites negative (cropping) padding as a slice of ``lhs`` plus padding >= 0.

    The rules produce negative padding whenever the forward padded by more than
    the dilated kernel's extent (input gradient) or its stride skipped trailing
    entries (kernel gradient). XLA:CPU computes some such convolutions wrongly
    (negative low with positive high padding reads out of bounds; openxla/xla
    issue 48713, which also breaks ``jax.grad`` of ``lax.conv_general_dilated``),
    so no negative padding ever reaches XLA from here.

    Cropping ``c > 0`` entries from an end of the lhs dilated by ``l`` (entries at
    ``0, l, 2l, ...``) removes ``q = ceil(c / l)`` original entries and leaves
    ``q l - c`` zeros of the dilation gap in their place, which become padding.
    Returns ``None`` when some dim loses every entry (the output is then zero).
    """
    if all(lo >= 0 and hi >= 0 for lo, hi in corr.padding):
        return lhs, corr
    spatial = corr.lhs_axes[2:]
    starts, limits = [0] * lhs.ndim, list(lhs.shape)
    padding = []
    for axis, (lo, hi), dil in zip(spatial, corr.padding, corr.lhs_dilation, strict=True):
        if lo < 0:
            q = -(lo // dil)  # ceil(-lo / dil)
            starts[axis], lo = q, q * dil + lo
        if hi < 0:
            q = -(hi // dil)
            limits[axis], hi = lhs.shape[axis] - q, q * dil + hi
        padding.append((lo, hi))
        if limits[axis] <= starts[axis]:
            return None
    lhs = lax.slice(lhs, starts, limits)
    return lhs, dataclasses.replace(corr, padding=tuple(padding))


def _swapper_hazard(corr: Correlation, rhs_shape) -> bool:
    """Whether XLA's convolution operand swapper would abort compiling ``corr``.

    XLA (jax 0.10.2) may swap a convolution's operands when the kernel is larger
    than the input. It copies unchanged every spatial dim it takes for a "group"
    dim: one with ``lhs_dilation == window size``, ``window_stride == size - 1``,
    no padding and no rhs dilation. With a real lhs dilation the copied window no
    longer matches the swapped kernel and the compiler hits a fatal check,
    killing the process. The input gradient of a stride-2, 2-wide, low-padded
    convolution is exactly such a dim (``jax.grad`` of lax aborts there too).
    """
    if corr.feature_group_count > 1 or corr.batch_group_count > 1:
        return False
    for i, axis in enumerate(corr.rhs_axes[2:]):
        size, (lo, hi) = rhs_shape[axis], corr.padding[i]
        if (
            corr.lhs_dilation[i] > 1
            and corr.lhs_dilation[i] == size
            and corr.window_strides[i] == size - 1
            and lo == hi == 0
            and corr.rhs_dilation[i] == 1
        ):
            return True
    return False


def _explicit_lhs_dilation(lhs, corr: Correlation):
    """Interleaves the lhs dilation's zeros explicitly, behind an optimisation barrier.

    The barrier keeps XLA from folding the interior padding back into the
    convolution as a base dilation (which would bring back the hazard).
    """
    config = [(0, 0, 0)] * lhs.ndim
    for axis, dil in zip(corr.lhs_axes[2:], corr.lhs_dilation, strict=True):
        config[axis] = (0, 0, dil - 1)
    lhs = lax.optimization_barrier(lax.pad(lhs, jnp.zeros((), lhs.dtype), config))
    return lhs, dataclasses.replace(corr, lhs_dilation=(1,) * len(corr.lhs_dilation))
