"""One term of a correlation: the taps lowering's products.

A term contracts one strided slice of the (padded, dilated) lhs with the rhs
over the feature axis within each group. :func:`term` does that as an einsum (a
matmul for dense correlations, a batched matmul for grouped ones) or, where there
is nothing to contract (depthwise), as a broadcast product that XLA fuses with
the surrounding terms into one loop. Every array keeps its own layout: groups are
split off in place, which is free, so no operand is transposed or copied. The
slices a term reads are cut by ``_slicing.py``.
"""

from __future__ import annotations

import dataclasses
import math
import string

import jax.numpy as jnp
from jax import lax

from ._correlation import Correlation


def _split_shape(shape, axis: int, groups: int) -> tuple[int, ...]:
    """``shape`` with ``axis`` split into ``(groups, size // groups)`` (in place: free)."""
    return (*shape[:axis], groups, shape[axis] // groups, *shape[axis + 1 :])


class _Letters:
    """Hands out einsum letters for named roles."""

    def __init__(self):
        self.free = iter(string.ascii_letters)
        self.named: dict[str, str] = {}

    def __getitem__(self, role: str) -> str:
        if role not in self.named:
            self.named[role] = next(self.free)
        return self.named[role]


def dense(corr: Correlation) -> bool:
    return corr.feature_group_count == corr.batch_group_count == 1


# A feature-grouped term contracting at most this many features per group, in a
# correlation of at most this many products per output (taps x features), is
# computed as that many broadcast products, each of one feature of every group
# (a ResNeXt 3x3 of 32 groups of 4 features over 8 images of 56x56x128: forward
# 130 ms as batched matmuls, 6-9 ms unrolled, 24 ms followed by a bias and a
# ReLU; XLA's convolution 151 ms; 46 ms one group at a time, ``_groups.py``).
# At 8 features the unrolled forward fused with a bias and a ReLU (the taps'
# regions are then computed inside that loop) took 66 ms, against 9.5 one
# group at a time; past about 100 products XLA stops fusing them at all (3x3
# over 16 features: 167 ms; 5x5 over 8: 59 ms, against 7.1 by groups).
UNROLLED_FEATURES = 4
UNROLLED_PRODUCTS = 100


def unrolls(rhs_shape, corr: Correlation) -> bool:
    """Whether the taps-mode terms of ``corr`` (``rhs_shape``: the whole rhs, with
    its spatial axes) are unrolled into broadcast products (:func:`term`)."""
    if not corr.batch_group_count == 1 < corr.feature_group_count:
        return False
    features = rhs_shape[corr.rhs_axes[1]]
    taps = math.prod(rhs_shape[a] for a in corr.rhs_axes[2:])
    return 1 < features <= UNROLLED_FEATURES and taps * features <= UNROLLED_PRODUCTS


def term(piece, rhs, corr: Correlation, summed_spatial, precision, acc, unroll: bool = False):
    """One term, laid out in ``corr.out_axes`` order (spatial axes dropped when summed).

    ``piece`` has the lhs layout; ``rhs`` has the rhs layout, without its spatial
    axes unless ``summed_spatial`` lists them (positions mode: summed against the
    piece's spatial axes).

    With ``unroll`` (:func:`unrolls`), a grouped term that contracts ``C > 1``
    features per group is the sum over ``c < C`` of the terms of lhs features
    ``g C + c`` (one per group ``g``: a slice of stride ``C``) with rhs
    in-feature ``c``: each has one feature per group, nothing to contract, and
    is a broadcast product that XLA fuses with the others (and with the other
    taps' terms) into one loop, where a batched matmul of ``C``-feature products
    is slow.
    """
    plan = Plan.of(piece, rhs, corr, summed_spatial)
    order = plan.broadcast_order(piece.shape, rhs.shape)
    if order is None and unroll and not summed_spatial:
        ri = int(corr.rhs_axes[1] > corr.rhs_axes[0])  # (the rhs's two axes: out, in)
        features, lf = rhs.shape[ri], corr.lhs_axes[1]
        return sum(
            term(
                lax.slice_in_dim(piece, c, piece.shape[lf], features, axis=lf),
                lax.slice_in_dim(rhs, c, c + 1, axis=ri),
                corr,
                summed_spatial,
                precision,
                acc,
            )
            for c in range(features)
        )
    if order is None:
        out = jnp.einsum(
            f"{plan.x_spec},{plan.w_spec}->{plan.out_spec}",
            plan.lhs(piece),
            plan.rhs(rhs),
            precision=precision,
            preferred_element_type=acc,
        )
    else:
        out = _unit_free_product(plan, piece, rhs, order, acc or piece.dtype)
    return plan.merge(out)


def _unit_free_product(plan: Plan, piece, rhs, order, dtype):
    """``plan.reduce(plan.product(piece, rhs, order, dtype), order)``, computed
    without the size-1 axes, which are put back by a reshape.

    XLA:CPU (jax 0.10.2) fuses such a product and its sum into a YNNPACK
    reduction, which returned garbage (NaN, 1e31) for some shapes with a unit
    axis: ``sum(h * j, axis=3)`` of ``h: (4, 6, 1, 6, 3, 3, 5)`` and ``j: (1, 6,
    1, 6, 1, 1, 1)`` (a grouped 1x1x1 convolution in NCHW, 36 -> 6 features in
    6 groups; ``random_checks.py --domain groups`` found it). The same sum
    over ``(4, 6, 6, 3, 3, 5)`` is right. ``_fold`` builds its slab products
    with their unit axes still (no random run has failed there).
    """
    x, w = plan.lhs_shape(piece.shape), plan.rhs_shape(rhs.shape)
    sizes = dict(zip(plan.x_spec, x, strict=True)) | dict(zip(plan.w_spec, w, strict=True))
    big = [c for c in order if sizes[c] > 1]
    return plan.reduce(plan.product(piece, rhs, big, dtype), big)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How :func:`term` lays out one term: einsum letters for both operands and the output.

    ``split_lhs`` / ``split_rhs`` are the axes split into ``(groups, size //
    groups)`` in place (``None`` without a group axis); ``feature_at`` is where
    the output's (group, out) letters sit, merged back by :meth:`merge`.
    """

    x_spec: str
    w_spec: str
    out_spec: str
    groups: int
    split_lhs: int | None
    split_rhs: int | None
    feature_at: int
    spatial: str  # the letters of the spatial axes, in order

    @classmethod
    def of(cls, piece, rhs, corr: Correlation, summed_spatial) -> Plan:
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
        # In positions mode the lhs contracts its feature and spatial axes; if any
        # comes before its batch axis it is not a row-major (M, K) matmul operand.
        contracted_major = lf < lb or any(a < lb for a in ls)
        if groups == 1 and not (summed_spatial and contracted_major and piece.size > rhs.size):
            # No group axis. A size-1 one is a dot_general batch dimension, with
            # which XLA:CPU transposes the rhs operand (and the result) instead of
            # the lhs. In taps and scatter modes that is pure cost (the stem's input
            # gradient: 50 -> 26 ms without it). In positions mode, when both
            # operands have their contracted axes (batch, positions) major, one must
            # be transposed: the smaller (1x1 stride-2 kernel gradient, x larger:
            # 8.6 ms without the axis, 4.3 ms with it; 1x1 expand, x smaller: the
            # same time and 25 -> 6 MiB without it). A planar im2col stack
            # (``_im2col.stacked_positions``) has them minor: neither is transposed.
            split_lhs = split_rhs = None
        else:
            split_rhs = ro
        x_spec = _spec(lhs_roles, split_lhs, lhs_pair, letters)
        w_spec = _spec(rhs_roles, split_rhs, ("group", "out"), letters)
        grouped = split_rhs is not None
        out_roles = {ob: ["batch"], of: ["group", "out"] if grouped else ["out"]}
        if not summed_spatial:
            for i, a in enumerate(os_):
                out_roles[a] = [f"s{i}"]
        out_spec = "".join(letters[r] for a in sorted(out_roles) for r in out_roles[a])
        feature_at = sorted(out_roles).index(of)
        spatial = "".join(letters[lhs_roles[a]] for a in ls)
        return cls(x_spec, w_spec, out_spec, groups, split_lhs, split_rhs, feature_at, spatial)

    def lhs(self, piece):
        """``piece`` with its group axis split off (a free reshape), as ``x_spec``."""
        return piece.reshape(self.lhs_shape(piece.shape))

    def rhs(self, rhs):
        """``rhs`` with its group axis split off, as ``w_spec``."""
        return rhs.reshape(self.rhs_shape(rhs.shape))

    def lhs_shape(self, shape):
        """The shape of :meth:`lhs` of a piece of shape ``shape``."""
        return shape if self.split_lhs is None else _split_shape(shape, self.split_lhs, self.groups)

    def rhs_shape(self, shape):
        return shape if self.split_rhs is None else _split_shape(shape, self.split_rhs, self.groups)

    def broadcast_order(self, piece_shape, rhs_shape) -> list[str] | None:
        """The letter order of the term as a fused broadcast product; ``None``: an einsum."""
        x, w = self.lhs_shape(piece_shape), self.rhs_shape(rhs_shape)
        sizes = dict(zip(self.x_spec, x, strict=True)) | dict(zip(self.w_spec, w, strict=True))
        return _broadcast_order(self.x_spec, self.w_spec, self.out_spec, sizes)

    def product(self, piece, rhs, order, dtype):
        """The term's broadcast product in ``dtype``, its axes the letters ``order``."""
        x = _broadcast(self.lhs(piece), self.x_spec, order, dtype)
        return x * _broadcast(self.rhs(rhs), self.w_spec, order, dtype)

    def contracted(self) -> list[str]:
        return [c for c in self.x_spec if c in self.w_spec and c not in self.out_spec]

    def reduce(self, prod, order, lead: int = 0):
        """A broadcast product in ``order`` (after ``lead`` extra leading axes), summed
        over the contracted letters and laid out as ``out_spec``. Letters missing
        from ``order`` are of size 1: summed away already, or put back as unit axes."""
        contracted = [c for c in self.contracted() if c in order]
        summed = tuple(lead + order.index(c) for c in contracted)
        if summed:
            prod = jnp.sum(prod, axis=summed)
        kept = [c for c in order if c not in contracted]
        perm = list(range(lead)) + [lead + kept.index(c) for c in self.out_spec if c in kept]
        prod = jnp.transpose(prod, perm) if perm != sorted(perm) else prod
        if len(perm) - lead == len(self.out_spec):
            return prod
        dims = iter(prod.shape[lead:])
        units = [next(dims) if c in kept else 1 for c in self.out_spec]
        return prod.reshape(*prod.shape[:lead], *units)

    def merge(self, out, lead: int = 0):
        """``out`` with its (group, out) axes merged back into one feature axis."""
        if self.split_rhs is None:
            return out
        at = lead + self.feature_at
        return out.reshape(*out.shape[:at], -1, *out.shape[at + 2 :])


def _spec(roles, split_axis, pair, letters) -> str:
    spec = []
    for axis in sorted(roles):
        if axis == split_axis:
            spec += [letters[pair[0]], letters[pair[1]]]
        else:
            spec.append(letters[roles[axis]])
    return "".join(spec)


def _broadcast_order(x_spec, w_spec, out_spec, sizes) -> list[str] | None:
    """The letter order of a fused broadcast product, or ``None`` for an einsum.

    A matmul needs letters that only ``x`` has *and* letters that only ``w`` has
    (both of size > 1) besides the contracted ones. Without that (depthwise: one
    input channel per group, or a kernel gradient that only reduces) the term is
    a broadcast product summed over the contracted letters, which XLA fuses into
    one loop with no temporaries, provided both operands broadcast without a
    transpose; otherwise, and for real matmuls, ``jnp.einsum``.
    """
    only_x = [c for c in x_spec if c not in w_spec and sizes[c] > 1]
    only_w = [c for c in w_spec if c not in x_spec and sizes[c] > 1]
    contracted = [c for c in x_spec if c in w_spec and c not in out_spec]
    if only_x and only_w and any(sizes[c] > 1 for c in contracted):
        return None
    for candidate in (list(out_spec) + contracted, _merge(x_spec, w_spec)):
        if candidate and _monotone(x_spec, candidate) and _monotone(w_spec, candidate):
            return candidate
    # Else size-1 letters may sit anywhere, as reshaping moves them for free (an
    # unrolled grouped term's one feature, see ``term``): order the others.
    x_big, w_big = ("".join(c for c in s if sizes[c] > 1) for s in (x_spec, w_spec))
    for candidate in (list(out_spec) + contracted, _merge(x_big, w_big)):
        if candidate and _monotone(x_big, candidate) and _monotone(w_big, candidate):
            return candidate + [c for c in dict.fromkeys(x_spec + w_spec) if c not in candidate]
    return None


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


def _broadcast(a, spec, order, dtype):
    """``a`` in ``dtype``, reshaped (never transposed) to broadcast over the letters ``order``."""
    return a.reshape([a.shape[spec.index(c)] if c in spec else 1 for c in order]).astype(dtype)
