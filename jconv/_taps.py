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
    """The correlation ``corr`` as a sum over taps or over output positions.

    Args:
        lhs, rhs: operands laid out as ``corr`` says; paddings must be >= 0.
        corr: the correlation.
        precision: passed to the einsums.
        by: ``"taps"``, ``"positions"`` or ``None`` (whichever has fewer terms).
    """
    window, outs = term_counts(lhs.shape, rhs.shape, corr)
    if by is None:
        by = "taps" if math.prod(window) <= math.prod(outs) else "positions"
    chunk = _contraction_chunk(lhs, corr) if by == "positions" else None
    if chunk is None:
        out = _sum_of_terms(lhs, rhs, corr, precision, by, window, outs)
    else:
        out = _chunked_sum(lhs, rhs, corr, precision, by, window, outs, chunk)
    return out.astype(lhs.dtype)


# A positions-mode term reduces the whole lhs; past this many bytes the lhs is
# cut into chunks of about this size along its contracted feature axis, so that
# each chunk's strided slices stay in cache (and are never materialised whole).
CHUNK_BYTES = 1 << 19


def _contraction_chunk(lhs, corr: Correlation) -> int | None:
    """Chunk size along the lhs feature axis, or ``None`` to contract it in one go.

    Only ungrouped-feature correlations are cut (the kernel gradient: its lhs
    feature axis is the forward's batch), into the largest divisor of the axis
    whose chunk fits :data:`CHUNK_BYTES`.
    """
    if corr.feature_group_count != 1:
        return None
    size = lhs.shape[corr.lhs_axes[1]]
    per_entry = lhs.size // size * lhs.dtype.itemsize
    if size == 1 or lhs.size * lhs.dtype.itemsize <= CHUNK_BYTES:
        return None
    fits = max(1, CHUNK_BYTES // per_entry)
    return max(d for d in range(1, min(size, fits) + 1) if size % d == 0)


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
        # One matmul for all positions: the pieces side by side on the lhs batch
        # axis (im2col), then the positions split back off the output batch axis.
        lb, ob = corr.lhs_axes[0], corr.out_axes[0]
        term = _term(jnp.concatenate(pieces, axis=lb), rhs, corr, summed, precision, acc)
        axis = sorted(corr.out_axes[:2]).index(ob)
        term = term.reshape(*term.shape[:axis], len(pieces), -1, *term.shape[axis + 1 :])
        stacked = jnp.moveaxis(term, axis, -1)
    else:
        rows = [_term(piece, rhs, corr, summed, precision, acc) for piece in pieces]
        stacked = jnp.stack(rows, axis=-1)
    return _place_positions(stacked, outs, corr.out_axes)


def _stacks(xp, corr: Correlation, positions: int) -> bool:
    """Whether positions mode computes one im2col matmul rather than one per position.

    Stacking pays when each position's matmul is thin, i.e. few lhs batch entries
    (the kernel gradient's input channels; the stem's 3): measured on XLA:CPU, it
    halves the ResNet 3x3 kernel gradient (64 channels) but doubles GoogLeNet's
    (192), and with a single channel (LeNet) the stacked copy costs more than it
    saves. Dense correlations only: the stack would cut across the groups.
    """
    channels = xp.shape[corr.lhs_axes[0]]
    dense = corr.feature_group_count == corr.batch_group_count == 1
    return dense and positions > 1 and 1 < channels < 128


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
