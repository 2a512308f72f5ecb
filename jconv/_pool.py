"""Max and average pooling with hand-derived rules, N-D, both layouts.

Both pools look at the same windows as a convolution with a ``window``-sized
kernel: output position ``i`` (per spatial dim) reads the padded input at
``i s + k`` for the window offsets ``k < W``, i.e. the real input position
``j = i s + k - lo``. Each rule computes, for every window offset ``k``, the
gradient that each window sends to its ``k``-th entry, and scatters it back with
:func:`_scatter_offset` (a zero-interleaving ``lax.pad``: the adjoint of the
strided slice that read the entry)::

    dL/dX[j] = sum_k sum_{i : i s + k - lo = j} share_k[i]

- **max**: ``Z[i] = max_k Xp[i s + k]``, so ``dZ[i]`` goes, whole, to the entry
  that attained the maximum. *Tie rule*: when several entries of a window equal
  its maximum, the first one in row-major window order takes all of ``dZ[i]``
  (the others get nothing), which is also what XLA's select-and-scatter gives
  ``jax.grad`` of ``lax.reduce_window`` max. Padding is ``-inf`` and never wins
  unless a window holds only ``-inf``.
- **avg**: ``Z[i] = (1 / prod(W)) sum_k Xp[i s + k]`` with zero padding that
  *counts* in the divisor (``count_include_pad=True``: PyTorch's and Flax's
  default; the reference is ``lax.reduce_window(add) / prod(window)``), so every
  entry of the window gets ``dZ[i] / prod(W)``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._arrays import as_float_array, check_shape
from ._correlation import accumulation_dtype
from ._geometry import same_padding
from ._spec import Pads, Shape, check_layout, data_axes, normalise_padding, ntuple


@dataclasses.dataclass(frozen=True)
class PoolGeometry:
    """A resolved pooling: per spatial dim window, stride and padding."""

    input_shape: Shape
    output_shape: Shape
    spatial_axes: Shape
    window: Shape
    stride: Shape
    padding: Pads

    def full(self, per_spatial, fill):
        """Expands a per-spatial-dim tuple to every axis of ``x``."""
        out = [fill] * len(self.input_shape)
        for axis, value in zip(self.spatial_axes, per_spatial, strict=True):
            out[axis] = value
        return tuple(out)


def pool_geometry(x_shape, window, stride, padding, layout, where) -> PoolGeometry:
    """Validates pooling arguments against ``x_shape``."""
    layout = check_layout(layout, where)
    if len(x_shape) < 3:
        raise ValueError(
            f"{where}: x must have rank >= 3 (batch, spatial..., channels), got shape "
            f"{tuple(x_shape)}"
        )
    nd = len(x_shape) - 2
    window = ntuple(window, nd, "window", where)
    stride = window if stride is None else ntuple(stride, nd, "stride", where)
    padding = normalise_padding(padding, nd, where)
    _, _, spatial = data_axes(layout, nd)
    sizes = [x_shape[a] for a in spatial]
    if padding == "VALID":
        pads: Pads = ((0, 0),) * nd
    elif isinstance(padding, str):
        lower = padding == "SAME_LOWER"
        pads = tuple(
            same_padding(i, w, s, 1, lower) for i, w, s in zip(sizes, window, stride, strict=True)
        )
    else:
        pads = padding
    out = list(x_shape)
    for dim, (axis, i, w, s, (lo, hi)) in enumerate(
        zip(spatial, sizes, window, stride, pads, strict=True)
    ):
        if max(lo, hi) >= w:
            raise ValueError(
                f"{where}: padding {(lo, hi)} in spatial dim {dim} must be smaller than the "
                f"window {w}, so that every window sees an input entry"
            )
        if i + lo + hi < w:
            raise ValueError(
                f"{where}: window {w} larger than the padded input in spatial dim {dim} "
                f"(size {i} + padding {(lo, hi)})"
            )
        out[axis] = (i + lo + hi - w) // s + 1
    return PoolGeometry(tuple(x_shape), tuple(out), spatial, window, stride, pads)


def _offsets(geom: PoolGeometry):
    """The window offsets ``k``, in row-major order (the tie rule's order)."""
    return itertools.product(*(range(w) for w in geom.window))


def _offset_slices(xp, geom: PoolGeometry):
    """Yields ``(k, Xp[i s + k] for every output i)`` per window offset, row-major."""
    for k in _offsets(geom):
        starts, limits, strides = [0] * xp.ndim, list(xp.shape), [1] * xp.ndim
        for axis, kk, s in zip(geom.spatial_axes, k, geom.stride, strict=True):
            starts[axis], strides[axis] = kk, s
            limits[axis] = kk + (geom.output_shape[axis] - 1) * s + 1
        yield k, lax.slice(xp, starts, limits, strides)


def _scatter_offset(share, k, geom: PoolGeometry):
    """Places ``share[i]`` at input position ``i s + k - lo`` (zeros elsewhere).

    Per spatial dim: interleave ``s - 1`` zeros (interior padding), shift by
    ``k - lo`` (low padding, negative = crop) and pad/crop the high side to ``I``.
    """
    config = [(0, 0, 0)] * share.ndim
    for axis, kk, (lo, _), s in zip(geom.spatial_axes, k, geom.padding, geom.stride, strict=True):
        low = kk - lo
        span = (share.shape[axis] - 1) * s + 1
        config[axis] = (low, geom.input_shape[axis] - low - span, s - 1)
    return lax.pad(share, jnp.zeros((), share.dtype), config)


def _scatter_all(shares, geom: PoolGeometry):
    """``dX = sum_k scatter_k(share_k)``, summed in reverse offset order.

    For one input entry, reverse offset order means increasing window index, the
    order in which XLA's select-and-scatter accumulates, so overlapping windows
    round the same way as ``jax.grad`` of ``lax.reduce_window``.
    """
    dx = jnp.zeros(geom.input_shape, shares[0][1].dtype)
    for k, share in reversed(shares):
        dx = dx + _scatter_offset(share, k, geom)
    return dx


def _padded(x, geom: PoolGeometry, fill):
    config = [(0, 0, 0)] * x.ndim
    for axis, (lo, hi) in zip(geom.spatial_axes, geom.padding, strict=True):
        config[axis] = (lo, hi, 0)
    return lax.pad(x, jnp.asarray(fill, x.dtype), config)


def _reduce(x, geom: PoolGeometry, init, op):
    return lax.reduce_window(
        x,
        jnp.asarray(init, x.dtype),
        op,
        geom.full(geom.window, 1),
        geom.full(geom.stride, 1),
        geom.full(geom.padding, (0, 0)),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x, geom: PoolGeometry):
    return _reduce(x, geom, -jnp.inf, lax.max)


def _max_pool_fwd(x, geom):
    z = _max_pool(x, geom)
    return z, _first_maxima(x, z, geom)


def _max_pool_bwd(geom, first, dz):
    return (_max_rule(dz, first, geom),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _first_maxima(x, z, geom: PoolGeometry):
    """Per window, the row-major offset index of its first entry equal to its
    maximum ``z`` (``prod(window)``, matching no offset, where none is: a NaN).

    The rule's residual, computed with the forward: the backward then reads it
    and ``dz`` only. Reading ``x`` there instead made XLA recompute ``x``'s
    producer inside the backward's fusion, once for every window entry an input
    entry's share depends on (a taps convolution before the pool: the LeNet
    demo's training step 13-16 ms slower than with XLA's own pool gradient).
    """
    count = math.prod(geom.window)
    first = jnp.full(z.shape, count, jnp.uint8 if count < 256 else jnp.int32)
    slices = list(enumerate(_offset_slices(_padded(x, geom, -jnp.inf), geom)))
    for n, (_, values) in reversed(slices):  # the earliest match written last
        first = jnp.where(values == z, jnp.asarray(n, first.dtype), first)
    return first


def _max_rule(dz, first, geom: PoolGeometry):
    """The max rule: each window's ``dZ`` goes to its first maximal entry."""
    zero = jnp.zeros((), dz.dtype)
    shares = [(k, jnp.where(first == n, dz, zero)) for n, k in enumerate(_offsets(geom))]
    return _scatter_all(shares, geom)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _avg_pool(x, geom: PoolGeometry):
    acc = accumulation_dtype(x.dtype) or x.dtype
    total = _reduce(x.astype(acc), geom, 0, lax.add)
    return (total / math.prod(geom.window)).astype(x.dtype)


def _avg_pool_fwd(x, geom):
    return _avg_pool(x, geom), None


def _avg_pool_bwd(geom, _, dz):
    return (_avg_rule(dz, geom),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def _avg_rule(dz, geom: PoolGeometry):
    """The avg rule: every entry of a window gets ``dZ / prod(window)``."""
    share = dz / jnp.asarray(math.prod(geom.window), dz.dtype)
    return _scatter_all([(k, share) for k in _offsets(geom)], geom)


_POOL_ARGS = """
    Args:
        x: input of shape ``(N, *spatial, C)`` (channels_last) or ``(N, C, *spatial)``.
        window: window size, an int or one int per spatial dim.
        stride: an int or one per spatial dim; ``None`` (default) means ``window``.
        padding: ``"VALID"``, ``"SAME"``, ``"SAME_LOWER"``, an int, one int per dim or
            one ``(low, high)`` pair per dim; each side smaller than the window.
        layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
        Shape ``(N, *spatial_out, C)`` (or channels-first), with
        ``spatial_out = floor((I + lo + hi - W) / s) + 1``, the dtype of ``x``.
"""


def max_pool(
    x, window: Any, *, stride: Any = None, padding: Any = "VALID", layout: str = "channels_last"
) -> jax.Array:
    """N-D max pooling whose gradient is the hand-derived max rule (module docstring)."""
    x = as_float_array(x, "x", "max_pool")
    return _max_pool(x, pool_geometry(x.shape, window, stride, padding, layout, "max_pool"))


def avg_pool(
    x, window: Any, *, stride: Any = None, padding: Any = "VALID", layout: str = "channels_last"
) -> jax.Array:
    """N-D average pooling (padding counts in the divisor), hand-derived gradient."""
    x = as_float_array(x, "x", "avg_pool")
    return _avg_pool(x, pool_geometry(x.shape, window, stride, padding, layout, "avg_pool"))


def _check_dz(dz, geom: PoolGeometry, where: str):
    dz = as_float_array(dz, "dz", where)
    if dz.shape != geom.output_shape:
        raise ValueError(
            f"{where}: dz has shape {dz.shape}, but pooling an input of shape "
            f"{geom.input_shape} with window {geom.window}, stride {geom.stride} and "
            f"padding {geom.padding} produces {geom.output_shape}"
        )
    return dz


def max_pool_grad_input(
    dz, x, window: Any, *, stride: Any = None, padding: Any = "VALID", layout: str = "channels_last"
) -> jax.Array:
    """The max rule: ``dz`` routed to each window's first maximum of ``x``.

    Args:
        dz: gradient of the pooled output.
        x: the forward input.
        window, stride, padding, layout: the :func:`max_pool` arguments.

    Returns:
        ``dx`` of the shape of ``x``.
    """
    where = "max_pool_grad_input"
    x = as_float_array(x, "x", where)
    geom = pool_geometry(x.shape, window, stride, padding, layout, where)
    dz = _check_dz(dz, geom, where)
    return _max_rule(dz, _first_maxima(x, _max_pool(x, geom), geom), geom)


def avg_pool_grad_input(
    dz,
    input_shape,
    window: Any,
    *,
    stride: Any = None,
    padding: Any = "VALID",
    layout: str = "channels_last",
) -> jax.Array:
    """The avg rule: each window's ``dz / prod(window)`` spread over its entries.

    Args:
        dz: gradient of the pooled output.
        input_shape: shape of the forward input.
        window, stride, padding, layout: the :func:`avg_pool` arguments.

    Returns:
        ``dx`` of shape ``input_shape``.
    """
    where = "avg_pool_grad_input"
    shape = check_shape(input_shape, "input_shape", where)
    geom = pool_geometry(shape, window, stride, padding, layout, where)
    return _avg_rule(_check_dz(dz, geom, where), geom)


max_pool.__doc__ += _POOL_ARGS
avg_pool.__doc__ += _POOL_ARGS
