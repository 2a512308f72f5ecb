"""What a correlation is: :class:`Correlation`, shared by every lowering."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ._spec import Pads, Shape

# Half-precision operands are multiplied in their own dtype but accumulated in
# float32, then rounded once to the operand dtype.
HALF_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def accumulation_dtype(dtype) -> jnp.dtype | None:
    """float32 for float16/bfloat16 operands, else ``None`` (the operand dtype)."""
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype) in HALF_DTYPES else None


@dataclasses.dataclass(frozen=True)
class Correlation:
    """A grouped N-D correlation, described by axis roles rather than a layout.

    With one spatial dim, ``lhs~`` the lhs with ``lhs_dilation - 1`` zeros inserted
    between neighbours and then zero-padded by ``padding``, and ``G`` the feature
    group count, the output is::

        out[b, f, i] = sum_{c, k} lhs~[b, g(f) * C + c, i * window_stride
                                      + k * rhs_dilation] * rhs[f, c, k]

    where ``C`` is the rhs in-feature size and ``g(f)`` the group of output
    feature ``f`` (contiguous blocks). ``batch_group_count = G'`` instead splits
    the lhs *batch* into ``G'`` contiguous blocks, output feature block ``g``
    seeing only lhs batch block ``g``; the kernel gradient of a grouped
    convolution uses it. Axes are given as ``(batch, feature, *spatial)`` for lhs
    and output and ``(out_feature, in_feature, *spatial)`` for rhs, so any layout
    of any operand is expressed without moving data.
    """

    lhs_axes: Shape
    rhs_axes: Shape
    out_axes: Shape
    window_strides: Shape
    padding: Pads
    lhs_dilation: Shape
    rhs_dilation: Shape
    feature_group_count: int = 1
    batch_group_count: int = 1
