"""Winograd's minimal filtering: F(2, 3), a 3-tap correlation in 4 products per 2
outputs, and its transpose F(3, 2) for the kernel gradient.

The seed's forward ``Z = X ⊛ K`` and its input gradient (a full correlation of
the padded ``dL/dZ`` with the rotated ``K``) are both, for a 3x3 kernel at unit
stride, correlations with a 3-tap window per spatial dim. Two neighbouring
outputs of a 1-D such correlation read four inputs ``d0..d3``::

    y0 = d0 k0 + d1 k1 + d2 k2
    y1 = d1 k0 + d2 k1 + d3 k2

Six products. Winograd (1980; Lavin and Gray 2016 for convolutional networks)
writes the same two sums with four::

    m0 = (d0 - d2) k0                    y0 = m0 + m1 + m2
    m1 = (d1 + d2) (k0 + k1 + k2) / 2    y1 = m1 - m2 - m3
    m2 = (d2 - d1) (k0 - k1 + k2) / 2
    m3 = (d1 - d3) k2

i.e. ``y = Aᵀ [(G k) ⊙ (Bᵀ d)]`` with the constant matrices below. Worked case:
``d = (1, 2, 3, 4)``, ``k = (1, 0, -1)``: ``m = (-2, 0, 0, 2)``,
``y = (-2, -2)``, as ``1 - 3`` and ``2 - 4``. Tiles of two outputs step by two
inputs, so tile ``t`` reads ``d = lhs~[2t : 2t + 4]``.

In more dims the transforms act per axis: a 2-D tile of 2x2 outputs reads 4x4
inputs and needs 16 products instead of 36. With channels, the elementwise
product over a tile's 16 transformed positions becomes 16 matmuls contracting
the input features, over all tiles of the batch at once, which is where the
time goes: 2.25 times fewer multiply-adds than the direct correlation, for
two cheap elementwise passes (the input transform ``Bᵀ d B`` and the output
transform ``Aᵀ m A``) and the kernel transform ``G k Gᵀ``, once per pass (one
small matmul).

Padding: with ``lo``/``hi`` zeros added to ``n`` entries the output has
``o = n + lo + hi - 2`` entries per dim; ``T = ceil(o / 2)`` tiles read
``2T + 2`` padded entries, so the lhs is padded by ``lo`` below and
``2T + 2 - n - lo`` (``hi``, or ``hi + 1`` when ``o`` is odd) above, and the
extra output is cropped. E.g. ``n = 5`` SAME (``lo = hi = 1``): ``o = 5``,
``T = 3``, 8 padded entries, 6 outputs computed, 5 kept.

The kernel gradient ``dL/dK = conv(X, dL/dZ)`` of such a convolution is the
other way round: three outputs per dim, and a window as large as ``dL/dZ``.
Its sum over the window is cut into pieces of two taps, and each piece is
F(3, 2), the transpose of F(2, 3): both compute the same trilinear form
``sum_{o, t} h_o d[o + t] k_t = sum_p (A h)_p (G k)_p (Bᵀ d)_p`` (``A = (Aᵀ)ᵀ``),
read once as two outputs of a 3-tap window and once as three outputs of a
2-tap window ``h``::

    y = Gᵀ [(A h) ⊙ (Bᵀ d)],   y_t = d[t] h_0 + d[t + 1] h_1,  t = 0, 1, 2.

Worked case: ``d = (1, 2, 3, 4)``, ``h = (1, -1)``: ``A h = (1, 0, 2, 1)``,
``Bᵀ d = (-2, 5, 1, -2)``, ``m = (-2, 0, 2, -2)``, ``y = (-1, -1, -1)``, as
``1 - 2``, ``2 - 3`` and ``3 - 4``. Piece ``s`` reads ``h = dz[2s : 2s + 2]``
and ``d = x~[2s : 2s + 4]`` (``x~`` the padded forward input), and the sum over
pieces joins the matmuls' contraction: per transformed position ``p``, one
matmul of the transformed ``x`` (input features by images and pieces) with the
transformed ``dz`` (images and pieces by output features). A window of ``w``
taps makes ``S = ceil(w / 2)`` pieces (``dz`` padded with zeros to ``2S``,
``x~`` to ``2S + 2``); e.g. 3x3@14 SAME: 7 pieces per dim, 16 products per
2-D piece where the direct sum takes 36 (3 outputs times 2 taps, squared).

The transforms' arithmetic is exact up to rounding (``G``'s halves are exact),
but it mixes neighbouring outputs: a tile's (a piece's) products, among them
the products of its neighbours' terms (F(2, 3)'s ``m1`` holds ``d1 k2``, a term
of the output before ``y0``), are added and cancel. So an output's rounding
error is bounded by the magnitude of the terms around it, not by its own
terms alone: an output much smaller than its neighbours (a sum of a few small
products) agrees with XLA's convolution to the dtype's rounding *of its
neighbours*. The tests bound each entry accordingly, by the largest sum of
``|terms|`` over its image and channel (``tests/helpers.py``). Half-precision
operands are transformed and summed in float32.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax.numpy as jnp
from jax import lax

from ._chunks import batch_chunk, divisor_within, in_batch_chunks, sum_of_chunks
from ._correlation import Correlation, accumulation_dtype
from ._slicing import interleave, laid_out, term_counts, window_slice

# Bᵀ (input), G (kernel) and Aᵀ (output) of F(2, 3), as rows of coefficients.
B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))
# F(3, 2), the kernel-gradient form: A (a 2-tap piece of dz) and Gᵀ (output).
A = tuple(zip(*A_T, strict=True))
G_T = tuple(zip(*G, strict=True))

# Batch entries are transformed and multiplied this many lhs bytes at a time.
WINOGRAD_BYTES = 1 << 21
# The kernel-gradient form contracts the forward's batch in chunks whose
# transformed x takes at most this many bytes. Its matmuls lose efficiency past
# that (dk alone over 8 images of 28x28x128: chunks of 2 13.0 ms, of 8 24.3 ms;
# of 14x14x256: chunks of 4 and of 8 10.2 ms), and the chunk's arrays sit beside
# the other passes' (3x3@14's training step 38.6 MiB with 8 MiB chunks, 36.3 with 4).
GRADIENT_BYTES = 1 << 22
# ... and is taken where both its matmul dims (the forward's input and output
# features) are at least this wide; over 64 channels its 64x64 matmuls are no
# faster than the taps' (3x3@56, dk alone 23-25 ms both).
GRADIENT_FEATURES = 128


def applies(lhs_shape, rhs_shape, corr: Correlation) -> bool:
    """Whether ``corr`` is dense, unit-stride and undilated, with 3-tap windows
    (:func:`_window_form`, F(2, 3) tiles) or 3 outputs per dim
    (:func:`_output_form`, F(3, 2) pieces).

    That is the forward and the input gradient of a dense 3x3 (3, 3x3x3, ...)
    convolution at unit stride, and its kernel gradient where the features are
    wide enough. Padding is >= 0 and no operand is empty here:
    :func:`_correlate.correlate` crops negative padding and answers empty
    operands first.
    """
    dense = (
        corr.feature_group_count == 1
        and corr.batch_group_count == 1
        and all(s == 1 for s in corr.window_strides)
        and all(d == 1 for d in corr.lhs_dilation)
        and all(d == 1 for d in corr.rhs_dilation)
        and all(lo >= 0 and hi >= 0 for lo, hi in corr.padding)
    )
    return dense and (
        _window_form(lhs_shape, rhs_shape, corr) or _output_form(lhs_shape, rhs_shape, corr)
    )


def _window_form(lhs_shape, rhs_shape, corr: Correlation) -> bool:
    """F(2, 3): 3-tap windows and at least one output per dim."""
    return all(rhs_shape[a] == 3 for a in corr.rhs_axes[2:]) and all(
        o >= 1 for o in term_counts(lhs_shape, rhs_shape, corr)[1]
    )


def _output_form(lhs_shape, rhs_shape, corr: Correlation) -> bool:
    """F(3, 2): 3 outputs per dim and windows of at least 3 taps (two pieces or
    more), over at least :data:`GRADIENT_FEATURES` lhs batch entries and rhs
    out-features, every output meeting the lhs.

    That is the kernel gradient of a 3x3 (3, 3x3x3, ...) convolution over
    images of at least 3 pixels a side under SAME padding (``dz`` the window,
    the forward's input and output features the matmuls' dims), and any other
    correlation of that shape (a 5x5 forward on 7x7 images). Narrower windows
    (a 1x1 forward over 3x3 images) would be padded to a piece of 2 and lose to
    XLA's convolution.

    Output ``o`` of a dim reads padded entries ``o .. o + w - 1`` (``w`` the
    window), the lhs's ``n`` entries sit at ``lo .. lo + n - 1``: outputs 0 and 2
    meet them iff ``w - 1 >= lo`` and ``lo + n >= 3``. An output that reads only
    padding (a kernel tap beyond a huge padding) is exactly zero, which the
    pieces' mixed sums would leave as rounding residue of its neighbours.
    """
    window, outs = term_counts(lhs_shape, rhs_shape, corr)
    meets = all(
        w - 1 >= lo and lo + lhs_shape[a] >= 3
        for a, w, (lo, _) in zip(corr.lhs_axes[2:], window, corr.padding, strict=True)
    )
    return (
        all(o == 3 for o in outs)
        and all(w >= 3 for w in window)
        and meets
        and min(lhs_shape[corr.lhs_axes[0]], rhs_shape[corr.rhs_axes[0]]) >= GRADIENT_FEATURES
    )


def winograd_correlate(lhs, rhs, corr: Correlation, precision=None):
    """The correlation ``corr`` (see :func:`applies`) by F(2, 3) tiles in batch chunks,
    or, with 3 outputs per dim and no 3-tap window, by F(3, 2) pieces.

    Args:
        lhs, rhs: operands laid out as ``corr`` says.
        corr: a correlation :func:`applies` accepts.
        precision: passed to the matmuls.

    Returns:
        The result, in ``lhs``'s dtype, laid out as ``corr.out_axes`` say.
    """
    if not _window_form(lhs.shape, rhs.shape, corr):
        return _pieces_correlate(lhs, rhs, corr, precision)
    acc = accumulation_dtype(lhs.dtype) or lhs.dtype
    _, outs = term_counts(lhs.shape, rhs.shape, corr)
    tiles = [-(-o // 2) for o in outs]
    u = _kernel_transform(rhs.astype(acc), corr)
    entry = math.prod(lhs.shape) // lhs.shape[corr.lhs_axes[0]] * jnp.dtype(acc).itemsize
    chunk = divisor_within(lhs.shape[corr.lhs_axes[0]], WINOGRAD_BYTES // entry)

    # Each chunk is tiled with its features minor, (batch, *spatial, features),
    # so that the transforms' pieces are row-major matmul operands; in
    # channels_first, transposing the chunk first (and the result last) is
    # cheaper than letting XLA transpose the 4x larger pieces around the matmuls.
    d = len(corr.lhs_axes) - 2
    last = dataclasses.replace(corr, lhs_axes=(0, d + 1, *range(1, d + 1)))
    to_last = (corr.lhs_axes[0], *corr.lhs_axes[2:], corr.lhs_axes[1])

    def tiled(part):
        v = _input_transform(jnp.transpose(part.astype(acc), to_last), last, tiles)
        m = {p: _product(v[p], u[p], precision) for p in v}
        return _output_transform(m, last, outs).astype(lhs.dtype)

    return in_batch_chunks(tiled, lhs, chunk, corr)


def _pieces_correlate(lhs, rhs, corr: Correlation, precision):
    """The correlation ``corr`` with 3 outputs per dim by F(3, 2) pieces of its window.

    Both operands are first laid out with the contracted features (the
    forward's batch) major and the kept ones minor, ``lhs`` as ``(F, *spatial,
    B)`` and ``rhs`` as ``(F, *window, O)``: for channels-last ``x`` and ``dz``
    that is their own layout, and each transformed position's matmul then
    contracts ``(F, *pieces)`` on both sides. The forward's batch goes in
    chunks of :data:`GRADIENT_BYTES` of transformed ``x``, summed in a loop.
    """
    acc = accumulation_dtype(lhs.dtype) or lhs.dtype
    window, _ = term_counts(lhs.shape, rhs.shape, corr)
    d = len(window)
    pieces = [-(-w // 2) for w in window]
    lhs = jnp.transpose(lhs, (corr.lhs_axes[1], *corr.lhs_axes[2:], corr.lhs_axes[0]))
    rhs = jnp.transpose(rhs, (corr.rhs_axes[1], *corr.rhs_axes[2:], corr.rhs_axes[0]))
    last = dataclasses.replace(corr, lhs_axes=(d + 1, 0, *range(1, d + 1)))
    spatial = tuple(range(1, d + 1))
    dz_pads = [(0, 0, 0)] * rhs.ndim
    for a, w, s in zip(spatial, window, pieces, strict=True):
        dz_pads[a] = (0, 2 * s - w, 0)  # dz padded to 2S taps
    letters = "abcdefghijklmnopqrstuvwx"[:d]
    spec = f"Z{letters}B,Z{letters}O->BO"

    entry = 4**d * math.prod(pieces) * lhs.shape[-1] * jnp.dtype(acc).itemsize
    chunk = divisor_within(lhs.shape[0], GRADIENT_BYTES // entry)
    count = lhs.shape[0] // chunk

    def products(i):
        x = batch_chunk(lhs, i, count, 0).astype(acc)
        h = batch_chunk(rhs, i, count, 0).astype(acc)
        h = lax.pad(h, jnp.zeros((), acc), dz_pads)
        v = _input_transform(x, last, pieces)  # {p: (chunk, *pieces, B)}
        # {p: (chunk, *pieces, O)}: A h of every piece
        u = _transformed(lambda j: window_slice(h, spatial, j, pieces, (2,) * d), A, d)
        return jnp.stack(
            [
                jnp.einsum(spec, v[p], u[p], precision=precision, preferred_element_type=acc)
                for p in v
            ]
        )

    m = sum_of_chunks(products, count)
    m = m.reshape(*(4,) * d, *m.shape[1:])
    out = jnp.stack(list(_transformed(lambda j: m[j], G_T, d).values()))
    out = out.reshape(*(3,) * d, *m.shape[d:])  # (*outputs, B, O)
    return laid_out(out, (d, d + 1, *range(d)), corr).astype(lhs.dtype)


def _input_transform(lhs, corr: Correlation, tiles):
    """``Bᵀ d B`` of every tile: ``{p: lhs's shape with T tiles per spatial dim}``
    over the ``4**d`` transformed positions ``p``.

    The positions stay separate arrays, never stacked: each is read by its own
    matmul (:func:`_product`), into which XLA fuses its transform, and the
    positions' arrays need not all be live at once. Stacked, with one batched
    matmul over the positions, the transform was a copy of the stack: forward
    alone over 8 images of 14x14x256, 17.5 vs 11.1 ms, 16.2 vs 11.7 MiB; of
    56x56x64, 19.9 vs 17.4 ms, 12.5 vs 8.3 MiB.
    """
    sp = corr.lhs_axes[2:]
    config = [(0, 0, 0)] * lhs.ndim
    for a, (lo, _), t in zip(sp, corr.padding, tiles, strict=True):
        config[a] = (lo, 2 * t + 2 - lhs.shape[a] - lo, 0)
    padded = lax.pad(lhs, jnp.zeros((), lhs.dtype), config)

    def view(offsets):  # d[offset + 2t] per spatial dim: the tiles' entries at offsets
        return window_slice(padded, sp, offsets, tiles, (2,) * len(sp))

    return _transformed(view, B_T, len(sp))


def _kernel_transform(rhs, corr: Correlation):
    """``G k Gᵀ`` per in/out feature pair: ``{p: (in, out)}``.

    One matmul of the ``(4**d, 3**d)`` coefficients of ``G ⊗ G`` (d-fold) with
    the kernel's taps, ``(3**d, in * out)``, instead of elementwise sums per
    position: XLA fused those sums with whatever laid the kernel out (an input
    gradient's kernel has its in and out features swapped) and re-read it
    across its rows once per position (8 images of 14x14x256: input gradient
    17.2 ms against the forward's 10.5).
    """
    sp = corr.rhs_axes[2:]
    d = len(sp)
    k = jnp.transpose(rhs, (*sp, corr.rhs_axes[1], corr.rhs_axes[0]))  # (3, ..., in, out)
    coefficients = _kronecker(G, d)
    # HIGHEST: the coefficients are exact in any float, the kernel is not (TPUs
    # would otherwise round it to bfloat16 here).
    u = jnp.matmul(
        jnp.asarray(list(coefficients.values()), k.dtype),
        k.reshape(3**d, -1),
        precision=lax.Precision.HIGHEST,
    )
    return dict(zip(coefficients, u.reshape(4**d, *k.shape[d:]), strict=True))


def _transformed(view, rows, d):
    """``{r: sum_j prod_l rows[r_l][j_l] view(j)}`` over multi-indices ``r``, in row-major order.

    The per-dim transform applied in all ``d`` dims at once, as sums of the
    views its nonzero coefficients pick (4 of 16 for ``Bᵀ d B`` in 2-D): one
    elementwise pass, no per-dim intermediates.
    """
    out = {}
    columns = list(itertools.product(range(len(rows[0])), repeat=d))
    for r, coefficients in _kronecker(rows, d).items():
        total = None
        for j, c in zip(columns, coefficients, strict=True):
            if c == 0:
                continue
            v = view(j)
            term = v if c == 1 else -v if c == -1 else v * jnp.asarray(c, v.dtype)
            total = term if total is None else total + term
        out[r] = total
    return out


def _kronecker(rows, d):
    """The ``d``-fold Kronecker power of the matrix ``rows``: ``{r: [prod_l
    rows[r_l][j_l] for j]}``, rows ``r`` and columns ``j`` multi-indices in
    row-major order (the order of a row-major ``(n,) * d`` array's entries)."""
    columns = list(itertools.product(range(len(rows[0])), repeat=d))
    return {
        r: [math.prod(rows[rl][jl] for rl, jl in zip(r, j, strict=True)) for j in columns]
        for r in itertools.product(range(len(rows)), repeat=d)
    }


def _product(v, u, precision):
    """``v · u`` contracting ``v``'s last axis (the features): one position's matmul."""
    return jnp.einsum("...c,co->...o", v, u, precision=precision)


def _output_transform(m, corr: Correlation, outs):
    """``Aᵀ m A`` per tile (``m``: ``{p: products}``), tiles interleaved back into
    rows, cropped to ``outs``."""
    sp = corr.lhs_axes[2:]
    phases = _transformed(lambda j: m[j], A_T, len(sp))  # output 2t + r of each tile
    return laid_out(interleave(phases, sp, (2,) * len(sp), outs), corr.lhs_axes, corr)
