"""The same layers written with plain ``lax``/``jnp`` and differentiated by JAX.

These are the baseline jconv is checked against and measured against: each
function takes exactly the arguments of its jconv counterpart, computes the
forward pass with ``lax.conv_general_dilated`` (string paddings are passed to lax
untouched, so lax's own SAME arithmetic is the one checked), and has no custom
rule, so ``jax.grad`` of it is XLA's autodiff.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._pool import pool_geometry
from ._spec import data_axes, kernel_axes, make_spec

__all__ = [
    "avg_pool",
    "conv_forward",
    "dense_forward",
    "max_pool",
    "relu",
    "softmax_cross_entropy",
]


def conv_forward(
    params: Mapping[str, Any],
    x,
    *,
    stride=1,
    padding="VALID",
    dilation=1,
    groups=1,
    layout="channels_last",
    precision=None,
    pre_pad: bool | str = False,
) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel) + bias``, differentiated by JAX.

    Arguments and shapes are those of :func:`jconv.conv_forward`, plus:

    Args:
        pre_pad: ``True`` applies the padding with ``jnp.pad`` and calls lax with
            ``VALID`` (the same function). ``"auto"`` does so only where
            ``jax.grad`` of lax's own padded convolution meets an XLA bug (see
            :func:`_xla_hazard`). ``False`` (the default) is plain lax, as a user
            would write it.
    """
    kernel = jnp.asarray(params["kernel"])
    spec = make_spec(
        kernel.ndim - 2,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
        precision=precision,
        where="autodiff.conv_forward",
    )
    xb, xc, xs = data_axes(spec.layout, spec.ndim)
    ko, ki, ks = kernel_axes(spec.layout, spec.ndim)
    padding = spec.padding
    if pre_pad == "auto":
        pre_pad = _xla_hazard(x.shape, kernel.shape, spec)
    if pre_pad:
        pads = padding
        if isinstance(pads, str):
            window = [kernel.shape[a] for a in ks]
            dilated = [(w - 1) * d + 1 for w, d in zip(window, spec.dilation, strict=True)]
            pads = lax.padtype_to_pads([x.shape[a] for a in xs], dilated, spec.stride, pads)
        widths = [(0, 0)] * x.ndim
        for axis, pad in zip(xs, pads, strict=True):
            widths[axis] = tuple(pad)
        x, padding = jnp.pad(x, widths), "VALID"
    z = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=spec.stride,
        padding=padding,
        rhs_dilation=spec.dilation,
        dimension_numbers=lax.ConvDimensionNumbers((xb, xc, *xs), (ko, ki, *ks), (xb, xc, *xs)),
        feature_group_count=spec.groups,
        precision=spec.precision,
    )
    bias = params.get("bias")
    if bias is not None:
        shape = [1] * z.ndim
        shape[xc] = -1
        z = z + jnp.reshape(bias, shape)
    return z


def dense_forward(params: Mapping[str, Any], x, *, precision=None) -> jax.Array:
    """``jnp.dot(x, kernel) + bias``."""
    z = jnp.dot(x, params["kernel"], precision=precision)
    bias = params.get("bias")
    return z if bias is None else z + jnp.reshape(bias, (1,) * (z.ndim - 1) + (-1,))


def _reduce_window(x, init, op, window, stride, padding, layout, where):
    geom = pool_geometry(x.shape, window, stride, padding, layout, where)
    return lax.reduce_window(
        x,
        init,
        op,
        geom.full(geom.window, 1),
        geom.full(geom.stride, 1),
        geom.full(geom.padding, (0, 0)),
    ), geom


def max_pool(x, window, *, stride=None, padding="VALID", layout="channels_last") -> jax.Array:
    """``lax.reduce_window(x, -inf, lax.max, ...)``."""
    z, _ = _reduce_window(x, -jnp.inf, lax.max, window, stride, padding, layout, "max_pool")
    return z


def avg_pool(x, window, *, stride=None, padding="VALID", layout="channels_last") -> jax.Array:
    """``lax.reduce_window(x, 0, lax.add, ...) / prod(window)`` (padding counts)."""
    z, geom = _reduce_window(x, 0.0, lax.add, window, stride, padding, layout, "avg_pool")
    size = 1
    for w in geom.window:
        size *= w
    return z / size


def relu(x) -> jax.Array:
    """``jax.nn.relu``."""
    return jax.nn.relu(x)


def softmax_cross_entropy(logits, labels) -> jax.Array:
    """``-mean(log_softmax(logits)[labels])`` with ``jax.nn.log_softmax``."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))


def _xla_hazard(x_shape, kernel_shape, spec) -> bool:
    """Whether ``jax.grad`` of lax's padded convolution meets a known XLA bug.

    - XLA:CPU computes a convolution with negative low and positive high padding
      wrongly (openxla/xla issue 48713); lax's input-gradient convolution has one
      when a low padding exceeds the dilated kernel's extent.
    - XLA's convolution operand swapper aborts the process on an lhs-dilated dim
      that looks like a "group" dim (see ``jconv._correlate._swapper_hazard``);
      lax's input gradient has one for a 2-wide, stride-2, undilated dim with
      low padding 1 and no high padding left over, in an ungrouped convolution.
    """
    from ._geometry import resolve

    geom = resolve(spec, x_shape, kernel_shape, "autodiff.conv_forward")
    for m in geom.dims():
        if m.lo > (m.window - 1) * m.dilation and jax.default_backend() == "cpu":
            return True
        high = m.size + m.lo - (m.out - 1) * m.stride - 1
        if spec.groups == 1 and m.window == m.stride == 2 and m.dilation == 1 and m.lo == 1:
            if high == 0:
                return True
    return False
