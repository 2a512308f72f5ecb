"""The "taps" lowering: a correlation as a short sum of strided slices times products.

A correlation ``out[k] = sum_i lhs~[k ws + i rd] rhs[i]`` (per spatial dim, ``lhs~``
the padded, dilated lhs) can be computed either

- **over window taps** ``i``: ``out = sum_i slice_i(lhs~) · rhs[i]``, where
  ``slice_i`` takes every ``ws``-th entry from ``i rd`` on (as many as there are
  outputs) — the seed's "slide the kernel" read literally, one term per kernel
  entry; or
- **over output positions** ``k``: ``out[k] = sum_i slice'_k(lhs~)[i] · rhs[i]``,
  where ``slice'_k`` takes every ``rd``-th entry from ``k ws`` on (as many as
  there are window taps) — one contraction per output position, the cheap way
  when the *output* is small (the kernel gradient, whose output is the kernel).

Each term contracts the feature axis within each group: an einsum (a matmul for
dense convolutions, a batched matmul for grouped ones), or, for depthwise ones
where there is nothing to contract, a broadcast multiply that XLA fuses with the
other terms into a single loop. Every array keeps its own layout (groups are
split off in place, which is free), so no operand is transposed or copied.
"""

from __future__ import annotations

import itertools
import math
import string

import jax.numpy as jnp
from jax import lax

from ._correlation import Correlation, accumulation_dtype


def term_counts(lhs_shape, rhs_shape, corr: Correlation):
    """``(window, outputs)``: the spatial sizes of the rhs and of the result."""
    window = tuple(rhs_shape[a] for a in corr.rhs_axes[2:])
    outs = []
    for axis, k, (lo, hi), d, rd, s in zip(
        corr.lhs_axes[2:],
        window,
        corr.padding,
        corr.lhs_dilation,
        corr.rhs_dilation,
        corr.window_strides,
        strict=True,
    ):
        dilated = (lhs_shape[axis] - 1) * d + 1 + lo + hi
        outs.append((dilated - (k - 1) * rd - 1) // s + 1)
    return window, tuple(outs)


def _pad(a, axes, corr: Correlation):
    """Edge and interior (dilation) padding of ``a`` on ``axes``, explicitly."""
    config = [(0, 0, 0)] * a.ndim
    for axis, (lo, hi), d in zip(axes, corr.padding, corr.lhs_dilation, strict=True):
        config[axis] = (lo, hi, d - 1)
    if all(c == (0, 0, 0) for c in config):
        return a
    return lax.pad(a, jnp.zeros((), a.dtype), config)


def _slice(a, axes, starts, counts, strides):
    begin, limit, step = [0] * a.ndim, list(a.shape), [1] * a.ndim
    for axis, s0, n, t in zip(axes, starts, counts, strides, strict=True):
        begin[axis], limit[axis], step[axis] = s0, s0 + (n - 1) * t + 1, t
    return lax.slice(a, begin, limit, step)


def _split(a, axis: int, groups: int):
    """``a`` with ``axis`` split into ``(groups, size // groups)`` in place (free)."""
    return a.reshape(*a.shape[:axis], groups, a.shape[axis] // groups, *a.shape[axis + 1 :])


class _Letters:
    """Hands out einsum letters for named roles."""

    def __init__(self):
        self.free = iter(string.ascii_letters)
        self.named: dict[str, str] = {}

    def __getitem__(self, role: str) -> str:
        if role not in self.named:
            self.named[role] = next(self.free)
        return self.named[role]


def taps_correlate(lhs, rhs, corr: Correlation, precision=None, by: str | None = None):
    """The correlation ``corr`` as a sum over taps, over output positions, or scattered.

    Args:
        lhs, rhs: operands laid out as ``corr`` says; paddings must be >= 0.
        corr: the correlation.
        precision: passed to the einsums.
        by: ``"taps"``, ``"positions"``, ``"scatter"`` or ``None`` (:func:`choose_mode`).
    """
    window, outs = term_counts(lhs.shape, rhs.shape, corr)
    by = by or choose_mode(lhs.shape, rhs.shape, corr)
    if by == "scatter" and any(d > 1 for d in corr.lhs_dilation):
        # The phases below assume unit window strides (true of every input gradient).
        by = "taps" if any(s > 1 for s in corr.window_strides) else by
    if by == "scatter":
        out = _scatter_sum(lhs, rhs, corr, precision, window, outs)
        return out.astype(lhs.dtype)
    chunk = _contraction_chunk(lhs, corr, math.prod(outs)) if by == "positions" else None
    if chunk is None:
        out = _sum_of_terms(lhs, rhs, corr, precision, by, window, outs)
    else:
        out = _chunked_sum(lhs, rhs, corr, precision, by, window, outs, chunk)
    return out.astype(lhs.dtype)


def choose_mode(lhs_shape, rhs_shape, corr: Correlation) -> str:
    """Which sum :func:`taps_correlate` computes.

    ``"positions"`` when the output has fewer positions than the window has taps
    (the kernel gradient); ``"scatter"`` for an ungrouped, unit-stride correlation
    with at most :data:`THIN` output features, at most half its input features
    (an image's channels: the input gradient of a stem or of LeNet's first layer),
    where one matmul per tap would be a thin product re-reading the whole lhs, and
    for a depthwise correlation with a dilated lhs (a strided depthwise input
    gradient), which then never multiplies the dilation's zeros; ``"taps"``
    otherwise.
    """
    window, outs = term_counts(lhs_shape, rhs_shape, corr)
    if math.prod(outs) < math.prod(window):
        return "positions"
    if math.prod(window) == 1 or any(s > 1 for s in corr.window_strides):
        return "taps"
    f_out, f_in = rhs_shape[corr.rhs_axes[0]], lhs_shape[corr.lhs_axes[1]]
    if _dense(corr) and f_out <= THIN and 2 * f_out <= f_in:
        return "scatter"
    if f_in == corr.feature_group_count and any(d > 1 for d in corr.lhs_dilation):
        return "scatter"  # depthwise, dilated: no products with the dilation's zeros
    return "taps"


# Output features up to which a correlation counts as thin (see choose_mode).
THIN = 4


def _scatter_sum(lhs, rhs, corr: Correlation, precision, window, outs):
    """``out = sum_i slice_i(pad(lhs · rhs[i]))``: multiply first, then shift and add.

    Padding, dilating and slicing act on spatial axes and the product contracts
    features, so they commute: ``slice_i(lhs~) · rhs[i] = slice_i((lhs · rhs[i])~)``.
    All taps' products come from one matmul of the (unpadded, undilated) lhs with
    the taps side by side on the out-feature axis, so the lhs is read once instead
    of once per tap; the shifted sum is one fused loop over the output. This is
    the col2im half of im2col, and what a transposed (strided) convolution is.
    """
    acc = accumulation_dtype(lhs.dtype)
    rhs_sp = corr.rhs_axes[2:]
    taps = list(itertools.product(*(range(k) for k in window)))
    kernels = [
        lax.squeeze(_slice(rhs, rhs_sp, t, [1] * len(t), [1] * len(t)), rhs_sp) for t in taps
    ]

    def place(per_tap):
        if all(d == 1 for d in corr.lhs_dilation):
            return _shifted_sum(per_tap, corr, outs)
        return _phased_sum(per_tap, corr, outs)

    if not _dense(corr):
        # Grouped: one term per tap (for depthwise, broadcast products that XLA
        # fuses into the loops of the sum, so none is materialised).
        return place(
            {t: _term(lhs, k, corr, (), precision, acc) for t, k in zip(taps, kernels, strict=True)}
        )
    ro = sorted(corr.rhs_axes[:2]).index(corr.rhs_axes[0])
    all_taps = jnp.concatenate(kernels, ro)
    features = rhs.shape[corr.rhs_axes[0]]

    def scatter(lhs):
        products = _term(lhs, all_taps, corr, (), precision, acc)
        of = corr.out_axes[1]
        return place(
            {
                tap: lax.slice_in_dim(products, i * features, (i + 1) * features, axis=of)
                for i, tap in enumerate(taps)
            }
        )

    # The products are len(taps) times the lhs's spatial size: computed and
    # consumed a batch chunk at a time they stay in cache and never exist whole.
    spatial = math.prod(lhs.shape[a] for a in corr.lhs_axes[2:])
    entry_bytes = spatial * all_taps.shape[ro] * jnp.dtype(acc or lhs.dtype).itemsize
    chunk = _divisor_within(lhs.shape[0], SCATTER_BYTES // entry_bytes)
    if corr.lhs_axes[0] != 0 or corr.out_axes[0] != 0 or chunk == lhs.shape[0]:
        return scatter(lhs)
    parts = lhs.reshape(lhs.shape[0] // chunk, chunk, *lhs.shape[1:])
    out = lax.map(scatter, parts)
    return out.reshape(-1, *out.shape[2:])


def _dense(corr: Correlation) -> bool:
    return corr.feature_group_count == corr.batch_group_count == 1


# The scatter mode's products are computed this many bytes (a batch chunk) at a time.
SCATTER_BYTES = 1 << 20


def _divisor_within(size: int, most: int) -> int:
    """The largest divisor of ``size`` that is at most ``most`` (at least 1)."""
    return max(d for d in range(1, max(1, min(size, most)) + 1) if size % d == 0)


def _shifted_sum(per_tap, corr: Correlation, outs):
    """``sum_i slice_i(pad(y_i))`` (no dilation): one fused loop over the output."""
    out_sp, total = corr.out_axes[2:], None
    for tap, y in per_tap.items():
        starts = [t * rd for t, rd in zip(tap, corr.rhs_dilation, strict=True)]
        term = _slice(_pad(y, out_sp, corr), out_sp, starts, outs, corr.window_strides)
        total = term if total is None else total + term
    return total


def _phased_sum(per_tap, corr: Correlation, outs):
    """:func:`_shifted_sum` with ``lhs_dilation`` d, split into d phases per dim.

    Output ``k`` reads the dilated, padded ``y_i`` at ``k + i rd - lo``, a real
    entry only when that is a multiple of d: entry ``(k + i rd - lo) / d``. For
    ``k = p + d m`` (phase ``p``) that is ``m + (p + i rd - lo) / d``: within a
    phase each contributing tap is a plain shift of ``y_i``, with no zeros
    multiplied or added. The phases are then interleaved (``k = p + d m``).
    Worked case (1-D, d = 2, rd = 1, lo = 1, 2 taps): phase 0 gets tap 1 at
    shift 0, phase 1 gets tap 0 at shift 0.
    """
    out_sp = corr.out_axes[2:]
    dil = corr.lhs_dilation
    counts = [-(-o // d) for o, d in zip(outs, dil, strict=True)]  # per phase, padded
    some = next(iter(per_tap.values()))
    phases = {}
    for phase in itertools.product(*(range(d) for d in dil)):
        total = None
        for tap, y in per_tap.items():
            shifts = []
            for p, t, rd, (lo, _), d in zip(
                phase, tap, corr.rhs_dilation, corr.padding, dil, strict=True
            ):
                offset = p + t * rd - lo
                if offset % d:
                    break
                shifts.append(offset // d)
            else:
                term = _shifted_window(y, out_sp, shifts, counts)
                total = term if total is None else total + term
        if total is None:  # no tap lands on this phase: zeros
            shape = list(some.shape)
            for a, n in zip(out_sp, counts, strict=True):
                shape[a] = n
            total = jnp.zeros(shape, some.dtype)
        phases[phase] = total
    return _interleave(phases, out_sp, dil, outs)


def _shifted_window(y, axes, shifts, counts):
    """``y[shift : shift + count]`` per axis, zero where that leaves ``y``."""
    config = [(0, 0, 0)] * y.ndim
    for a, s, n in zip(axes, shifts, counts, strict=True):
        config[a] = (-s, s + n - y.shape[a], 0)  # lax.pad crops on negative padding
    return lax.pad(y, jnp.zeros((), y.dtype), config)


def _interleave(phases, axes, dil, outs):
    """``out[p + d m] = phases[p][m]`` per axis, cropped to ``outs``."""
    arrays = dict(phases)
    for level in reversed(range(len(axes))):  # merge the last phase index first
        a, d = axes[level], dil[level]
        merged = {}
        for key in {k[:level] for k in arrays}:
            parts = [arrays[(*key, p)] for p in range(d)]
            stacked = jnp.stack(parts, axis=a + 1)
            shape = list(parts[0].shape)
            shape[a] *= d
            merged[key] = stacked.reshape(shape)
        arrays = merged
    out = arrays[()]
    return lax.slice(
        out,
        [0] * out.ndim,
        [outs[axes.index(a)] if a in axes else n for a, n in enumerate(out.shape)],
    )


# A positions-mode term reduces the whole lhs; past this many bytes the lhs is
# cut into chunks of about this size along its contracted feature axis, so that
# each chunk's strided slices stay in cache (and are never materialised whole).
CHUNK_BYTES = 1 << 19


def _contraction_chunk(lhs, corr: Correlation, positions: int) -> int | None:
    """Chunk size along the lhs feature axis, or ``None`` to contract it in one go.

    Only ungrouped-feature correlations are cut (the kernel gradient: its lhs
    feature axis is the forward's batch), into the largest divisor of the axis
    whose chunk fits :data:`CHUNK_BYTES`.
    """
    if corr.feature_group_count != 1:
        return None
    size = lhs.shape[corr.lhs_axes[1]]
    per_entry = lhs.size // size * lhs.dtype.itemsize
    if size == 1 or lhs.size * lhs.dtype.itemsize <= CHUNK_BYTES or positions == 1:
        return None  # (one position reads the lhs once: nothing to keep in cache)
    return _divisor_within(size, CHUNK_BYTES // per_entry)


def _chunked_sum(lhs, rhs, corr: Correlation, precision, by, window, outs, chunk):
    """``sum`` over chunks of the contracted lhs feature / rhs in-feature axes."""
    lf, ri = corr.lhs_axes[1], corr.rhs_axes[1]

    def body(i, acc):
        start = i * chunk
        lhs_part = lax.dynamic_slice_in_dim(lhs, start, chunk, lf)
        rhs_part = lax.dynamic_slice_in_dim(rhs, start, chunk, ri)
        return acc + _sum_of_terms(lhs_part, rhs_part, corr, precision, by, window, outs)

    first = _sum_of_terms(
        lax.slice_in_dim(lhs, 0, chunk, axis=lf),
        lax.slice_in_dim(rhs, 0, chunk, axis=ri),
        corr,
        precision,
        by,
        window,
        outs,
    )
    return lax.fori_loop(1, lhs.shape[lf] // chunk, body, first)


def _sum_of_terms(lhs, rhs, corr: Correlation, precision, by, window, outs):
    """The correlation in the accumulation dtype (``lhs``'s dtype for full precision)."""
    acc = accumulation_dtype(lhs.dtype)
    lhs_sp, rhs_sp = corr.lhs_axes[2:], corr.rhs_axes[2:]
    single = math.prod(window) == 1 and all(s == 1 for s in corr.window_strides)
    if single and any(d > 1 for d in corr.lhs_dilation):
        # One tap, unit stride: contract first, then place the result (dilate and
        # pad): no multiply-adds with the dilation's zeros.
        term = _term(lhs, lax.squeeze(rhs, rhs_sp), corr, (), precision, acc)
        return _pad(term, corr.out_axes[2:], corr)
    # Pad (and dilate) once: every term is then a plain strided slice, which XLA
    # fuses into its consumer with no per-element bounds checks.
    xp = _pad(lhs, lhs_sp, corr)
    if by == "taps":
        total = None
        for tap in itertools.product(*(range(k) for k in window)):
            starts = [t * rd for t, rd in zip(tap, corr.rhs_dilation, strict=True)]
            piece = _slice(xp, lhs_sp, starts, outs, corr.window_strides)
            rhs_tap = lax.squeeze(_slice(rhs, rhs_sp, tap, [1] * len(tap), [1] * len(tap)), rhs_sp)
            term = _term(piece, rhs_tap, corr, (), precision, acc)
            total = term if total is None else total + term
        return total
    pieces = []
    for pos in itertools.product(*(range(o) for o in outs)):
        starts = [p * s for p, s in zip(pos, corr.window_strides, strict=True)]
        pieces.append(_slice(xp, lhs_sp, starts, window, corr.rhs_dilation))
    summed = tuple(range(len(window)))
    if _stacks(xp, corr, len(pieces)):
        # Matmuls over many positions at once: the pieces side by side on the lhs
        # batch axis (im2col, in groups of at most STACK_BYTES), then the
        # positions split back off the output batch axis.
        lb, ob = corr.lhs_axes[0], corr.out_axes[0]
        axis = sorted(corr.out_axes[:2]).index(ob)
        size = pieces[0].size * pieces[0].dtype.itemsize
        per_group = max(1, STACK_BYTES // size)
        parts = []
        for first in range(0, len(pieces), per_group):
            group = pieces[first : first + per_group]
            term = _term(jnp.concatenate(group, axis=lb), rhs, corr, summed, precision, acc)
            term = term.reshape(*term.shape[:axis], len(group), -1, *term.shape[axis + 1 :])
            parts.append(jnp.moveaxis(term, axis, -1))
        stacked = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
    else:
        rows = [_term(piece, rhs, corr, summed, precision, acc) for piece in pieces]
        stacked = jnp.stack(rows, axis=-1)
    return _place_positions(stacked, outs, corr.out_axes)


# Positions mode stacks pieces for one matmul up to this many bytes at a time.
STACK_BYTES = 1 << 22


def _stacks(xp, corr: Correlation, positions: int) -> bool:
    """Whether positions mode computes one im2col matmul rather than one per position.

    Stacking pays when each position's matmul is thin, i.e. few lhs batch entries
    (the kernel gradient's input channels; the stem's 3): measured on XLA:CPU, it
    halves the ResNet 3x3 kernel gradient (64 channels) but doubles GoogLeNet's
    (192), and with a single channel (LeNet) the stacked copy costs more than it
    saves. Dense correlations only: the stack would cut across the groups.
    """
    channels = xp.shape[corr.lhs_axes[0]]
    return _dense(corr) and positions > 1 and 1 < channels < STACKED_CHANNELS


# Positions mode stacks (im2col) below this many lhs batch entries (see _stacks).
STACKED_CHANNELS = 128


def _term(piece, rhs, corr: Correlation, summed_spatial, precision, acc):
    """One term, laid out in ``corr.out_axes`` order (spatial axes dropped when summed).

    ``piece`` has the lhs layout; ``rhs`` has the rhs layout, without its spatial
    axes unless ``summed_spatial`` lists them (positions mode: summed against the
    piece's spatial axes).
    """
    gf, gb = corr.feature_group_count, corr.batch_group_count
    lb, lf, *ls = corr.lhs_axes
    ro, ri, *rs = corr.rhs_axes
    ob, of, *os_ = corr.out_axes
    if not summed_spatial:  # the rhs lost its spatial axes: renumber its roles
        ro, ri = sorted((ro, ri)).index(ro), sorted((ro, ri)).index(ri)
    letters = _Letters()
    lhs_roles = {lb: "batch", lf: "feature"}
    rhs_roles = {ro: "out", ri: "feature"}
    for i, (a, b) in enumerate(zip(ls, rs, strict=True)):
        lhs_roles[a] = f"s{i}" if not summed_spatial else f"w{i}"
        if summed_spatial:
            rhs_roles[b] = f"w{i}"
    # Groups, split in place: feature groups split lhs feature and rhs out;
    # batch groups split lhs batch and rhs out.
    if gb > 1:
        split_lhs, lhs_pair = lb, ("group", "batch")
    else:
        split_lhs, lhs_pair = lf, ("group", "feature")
    groups = max(gf, gb)
    x = _split(piece, split_lhs, groups)
    w = _split(rhs, ro, groups)
    x_spec = _spec(lhs_roles, x.ndim, split_lhs, lhs_pair, letters)
    w_spec = _spec(rhs_roles, w.ndim, ro, ("group", "out"), letters)
    out_roles = {ob: ["batch"], of: ["group", "out"]}
    if not summed_spatial:
        for i, a in enumerate(os_):
            out_roles[a] = [f"s{i}"]
    out_spec = "".join(letters[r] for a in sorted(out_roles) for r in out_roles[a])
    out = _product(x, w, x_spec, w_spec, out_spec, precision, acc)
    position = sorted(out_roles).index(of)
    return out.reshape(*out.shape[:position], -1, *out.shape[position + 2 :])


def _spec(roles, ndim, split_axis, pair, letters) -> str:
    spec = []
    for axis in sorted(roles):
        if axis == split_axis:
            spec += [letters[pair[0]], letters[pair[1]]]
        else:
            spec.append(letters[roles[axis]])
    assert len(spec) == ndim
    return "".join(spec)


def _product(x, w, x_spec, w_spec, out_spec, precision, acc):
    """``einsum(x_spec, w_spec -> out_spec)``; a fused broadcast multiply where it pays.

    A matmul needs letters that only ``x`` has *and* letters that only ``w`` has
    (both of size > 1) besides the contracted ones. Without that (depthwise: one
    input channel per group, or a kernel gradient that only reduces) the term is
    a broadcast product summed over the contracted letters, which XLA fuses into
    one loop with no temporaries, provided both operands broadcast without a
    transpose; otherwise, and for real matmuls, ``jnp.einsum``.
    """
    sizes = dict(zip(x_spec, x.shape, strict=True)) | dict(zip(w_spec, w.shape, strict=True))
    only_x = [c for c in x_spec if c not in w_spec and sizes[c] > 1]
    only_w = [c for c in w_spec if c not in x_spec and sizes[c] > 1]
    contracted = [c for c in x_spec if c in w_spec and c not in out_spec]
    order = None
    if not (only_x and only_w and any(sizes[c] > 1 for c in contracted)):
        for candidate in (list(out_spec) + contracted, _merge(x_spec, w_spec)):
            if candidate and _monotone(x_spec, candidate) and _monotone(w_spec, candidate):
                order = candidate
                break
    if order is None:
        return jnp.einsum(
            f"{x_spec},{w_spec}->{out_spec}", x, w, precision=precision, preferred_element_type=acc
        )
    dtype = acc or x.dtype
    prod = _broadcast(x, x_spec, order).astype(dtype) * _broadcast(w, w_spec, order).astype(dtype)
    summed = tuple(order.index(c) for c in contracted)
    if summed:
        prod = jnp.sum(prod, axis=summed)
    kept = [c for c in order if c not in contracted]
    perm = [kept.index(c) for c in out_spec]
    return jnp.transpose(prod, perm) if perm != sorted(perm) else prod


def _merge(a: str, b: str) -> list[str] | None:
    """A common supersequence of ``a`` and ``b`` keeping both orders, if one exists."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            out.append(a[i])
            i, j = i + 1, j + 1
        elif a[i] not in b:
            out.append(a[i])
            i += 1
        elif b[j] not in a:
            out.append(b[j])
            j += 1
        else:
            return None
    return out + list(a[i:]) + list(b[j:])


def _monotone(spec, order) -> bool:
    positions = [order.index(c) for c in spec]
    return positions == sorted(positions)


def _broadcast(a, spec, order):
    """``a`` reshaped (never transposed) to broadcast over the letters ``order``."""
    return a.reshape([a.shape[spec.index(c)] if c in spec else 1 for c in order])


def _place_positions(stacked, outs, out_axes):
    """The output from per-position results stacked on a trailing axis."""
    ob, of, *os_ = out_axes
    stacked = stacked.reshape(*stacked.shape[:-1], *outs)
    # stacked axes: the non-spatial out axes in increasing order, then spatial.
    current = sorted((ob, of)) + list(os_)
    perm = [current.index(a) for a in range(len(current))]
    return jnp.transpose(stacked, perm)
