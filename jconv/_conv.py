"""``conv_forward`` and its three public rules, wired with ``jax.custom_vjp``.

The backward pass of :func:`conv_forward` is exactly :func:`conv_grad_input`,
:func:`conv_grad_kernel` and :func:`conv_grad_bias`; nothing here asks JAX to
differentiate a convolution.

The two gradient rules are themselves differentiable with hand-derived rules,
because the three bilinear maps (forward ``F(x, k)``, input gradient
``Gx(dz, k)`` and kernel gradient ``Gk(x, dz)``) are each other's transposes::

    F(x, k):   x_bar = Gx(z_bar, k),   k_bar = Gk(x, z_bar)
    Gx(dz, k): dz_bar = F(dx_bar, k),  k_bar = Gk(dx_bar, dz)
    Gk(x, dz): x_bar = Gx(dz, dk_bar), dz_bar = F(x, dk_bar)

So grad-of-grad (gradient penalties, Hessian-vector products by
reverse-over-reverse) also runs through jconv's own rules, at every order.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from . import _rules
from ._arrays import as_float_array, check_params, check_shape, common_dtype
from ._geometry import ConvGeometry, check_output_shape, geometry
from ._spec import check_layout

Array = jax.Array

# --------------------------------------------------------------------------------
# Private custom_vjp operations (static geometry, validated arrays).
# --------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv(x, kernel, bias, geom: ConvGeometry, has_bias: bool):
    z = _rules.forward(x, kernel, geom)
    if has_bias:
        _, ch, _ = geom.x_axes
        shape = [1] * z.ndim
        shape[ch] = bias.shape[0]
        z = z + bias.reshape(shape)
    return z


def _conv_fwd(x, kernel, bias, geom, has_bias):
    # Residuals: only what the rules read (x for dK, the kernel for dX).
    return _conv(x, kernel, bias, geom, has_bias), (x, kernel)


def _conv_bwd(geom, has_bias, residuals, dz):
    x, kernel = residuals
    spec = geom.spec.kwargs()
    dx = conv_grad_input(dz, kernel, x.shape, **spec)
    dk = conv_grad_kernel(x, dz, kernel.shape, **spec)
    db = conv_grad_bias(dz, layout=geom.spec.layout) if has_bias else None
    return dx, dk, db


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _grad_input(dz, kernel, geom: ConvGeometry):
    return _rules.grad_input(dz, kernel, geom)


def _grad_input_fwd(dz, kernel, geom):
    return _grad_input(dz, kernel, geom), (dz, kernel)


def _grad_input_bwd(geom, residuals, dx_bar):
    dz, kernel = residuals
    return _conv(dx_bar, kernel, None, geom, False), _grad_kernel(dx_bar, dz, geom)


_grad_input.defvjp(_grad_input_fwd, _grad_input_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _grad_kernel(x, dz, geom: ConvGeometry):
    return _rules.grad_kernel(x, dz, geom)


def _grad_kernel_fwd(x, dz, geom):
    return _grad_kernel(x, dz, geom), (x, dz)


def _grad_kernel_bwd(geom, residuals, dk_bar):
    x, dz = residuals
    return _grad_input(dz, dk_bar, geom), _conv(x, dk_bar, None, geom, False)


_grad_kernel.defvjp(_grad_kernel_fwd, _grad_kernel_bwd)

# --------------------------------------------------------------------------------
# Public, validating wrappers.
# --------------------------------------------------------------------------------


def conv_forward(
    params: Mapping[str, Any],
    x,
    *,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence = "VALID",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    layout: str = "channels_last",
    precision: Any = None,
    lowering: str = "auto",
) -> Array:
    """N-D convolution (cross-correlation) plus bias, with hand-derived gradients.

    The values are those of ``lax.conv_general_dilated`` (+ bias); the backward
    pass is :func:`conv_grad_input`, :func:`conv_grad_kernel` and
    :func:`conv_grad_bias` through ``jax.custom_vjp`` (reverse mode only: use
    ``jax.grad``/``jax.vjp``; ``jax.jvp`` raises).

    Args:
        params: ``{"kernel": k, "bias": b}``; ``"bias"`` may be absent or ``None``.
            ``k`` has shape ``(*window, C_in // groups, C_out)`` for
            ``layout="channels_last"`` and ``(C_out, C_in // groups, *window)`` for
            ``"channels_first"``; ``b`` has shape ``(C_out,)``. The kernel's rank
            sets the number of spatial dims (``rank - 2``, at least 1).
        x: input of shape ``(N, *spatial, C_in)`` (channels_last) or
            ``(N, C_in, *spatial)`` (channels_first).
        stride: window stride, an int or one int per spatial dim, each >= 1.
        padding: ``"VALID"``, ``"SAME"``, ``"SAME_LOWER"`` (as in
            ``lax.conv_general_dilated``), an int (both sides of every dim), one int
            per dim, or one ``(low, high)`` pair per dim; all >= 0.
        dilation: kernel dilation, an int or one per spatial dim, each >= 1.
        groups: feature groups; ``groups == C_in`` is a depthwise convolution with
            channel multiplier ``C_out // C_in``.
        layout: ``"channels_last"`` (JAX/Flax) or ``"channels_first"`` (PyTorch).
        precision: ``lax.Precision`` (or name, or pair) for the correlations;
            ``None`` is JAX's default.
        lowering: how each correlation is computed: ``"auto"`` (default: per shape
            and platform), ``"xla"`` (always ``lax.conv_general_dilated``),
            ``"taps"`` (strided slices times einsums) or ``"winograd"`` (F(2, 3)
            tiles for 3-tap windows at unit stride, undilated and ungrouped: the
            forward and input gradient of a dense 3x3 convolution; F(3, 2)
            pieces for its kernel gradient over >= 128 input and output
            channels; as ``"auto"`` elsewhere, on every platform. Measured on
            CPU only: faster over 64 and 256 channels, at more memory than
            autodiff: opt-in) or ``"measured"`` (``"auto"`` or ``"xla"``,
            whichever ran faster on this machine for each correlation, timed
            once per process on the first trace, like
            ``torch.backends.cudnn.benchmark``; CPU only, ``"auto"``
            elsewhere; see :func:`jconv.measured_choices`). Values and the
            rules are the same; only speed and memory differ.

    Returns:
        ``z`` of shape ``(N, *spatial_out, C_out)`` or ``(N, C_out, *spatial_out)``
        where ``spatial_out = floor((I + lo + hi - (W - 1) * dilation - 1) / stride)
        + 1`` per dim. ``x``, kernel and bias are promoted to a common floating dtype,
        which is the dtype of ``z`` and of the gradients' computation; float16 and
        bfloat16 accumulate in float32.

    Raises:
        ValueError, TypeError: at trace time, for arguments no convolution accepts.
    """
    where = "conv_forward"
    kernel, bias = check_params(params, where)
    x = as_float_array(x, "x", where)
    geom = geometry(
        x.shape, kernel.shape, stride, padding, dilation, groups, layout, precision, where, lowering
    )
    if bias is None:
        x, kernel = common_dtype(x, kernel)
        return _conv(x, kernel, None, geom, False)
    c_out = geom.channels[1]
    if bias.shape != (c_out,):
        raise ValueError(
            f"{where}: params['bias'] must have shape (C_out,) = ({c_out},), got {bias.shape}"
        )
    x, kernel, bias = common_dtype(x, kernel, bias)
    return _conv(x, kernel, bias, geom, True)


def conv_grad_input(
    dz,
    kernel,
    input_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence = "VALID",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    layout: str = "channels_last",
    precision: Any = None,
    lowering: str = "auto",
) -> Array:
    """``dL/dX = conv(padded, stride-dilated dL/dZ, rot180(K))``, per group.

    The seed's full correlation, generalised; the derivation and the padding
    arithmetic are in ``jconv._rules.grad_input``. Because ``input_shape`` is given,
    a strided convolution has no "output padding" ambiguity. Differentiable (by
    jconv's own rules).

    Args:
        dz: output gradient, shape of the forward's ``z``.
        kernel: the forward kernel.
        input_shape: shape of the forward's ``x``.
        stride, padding, dilation, groups, layout, precision, lowering: the
            arguments of the :func:`conv_forward` call whose gradient this is.

    Returns:
        ``dx`` of shape ``input_shape``.
    """
    where = "conv_grad_input"
    kernel = as_float_array(kernel, "kernel", where)
    dz = as_float_array(dz, "dz", where)
    input_shape = check_shape(input_shape, "input_shape", where)
    geom = geometry(
        input_shape,
        kernel.shape,
        stride,
        padding,
        dilation,
        groups,
        layout,
        precision,
        where,
        lowering,
    )
    check_output_shape(geom, dz.shape, where)
    dz, kernel = common_dtype(dz, kernel)
    return _grad_input(dz, kernel, geom)


def conv_grad_kernel(
    x,
    dz,
    kernel_shape: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence = "VALID",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    layout: str = "channels_last",
    precision: Any = None,
    lowering: str = "auto",
) -> Array:
    """``dL/dK = conv(X, dL/dZ)``: the correlation of the input with ``dz``.

    The seed's rule, generalised (the forward's stride becomes the dilation of
    ``dz`` and its dilation the stride); the derivation and padding arithmetic are
    in ``jconv._rules.grad_kernel``. Differentiable (by jconv's own rules).

    Args:
        x: the forward input.
        dz: output gradient, shape of the forward's ``z``.
        kernel_shape: shape of the forward's kernel.
        stride, padding, dilation, groups, layout, precision, lowering: the
            arguments of the :func:`conv_forward` call whose gradient this is.

    Returns:
        ``dk`` of shape ``kernel_shape``.
    """
    where = "conv_grad_kernel"
    x = as_float_array(x, "x", where)
    dz = as_float_array(dz, "dz", where)
    kernel_shape = check_shape(kernel_shape, "kernel_shape", where)
    geom = geometry(
        x.shape, kernel_shape, stride, padding, dilation, groups, layout, precision, where, lowering
    )
    check_output_shape(geom, dz.shape, where)
    x, dz = common_dtype(x, dz)
    return _grad_kernel(x, dz, geom)


def conv_grad_bias(dz, *, layout: str = "channels_last") -> Array:
    """``dL/dB = sum(dL/dZ)`` over every axis but the channel axis.

    Args:
        dz: output gradient ``(N, *spatial, C_out)`` or ``(N, C_out, *spatial)``.
        layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
        ``db`` of shape ``(C_out,)``.
    """
    where = "conv_grad_bias"
    check_layout(layout, where)
    dz = as_float_array(dz, "dz", where)
    if dz.ndim < 3:
        raise ValueError(
            f"{where}: dz must have rank >= 3 (batch, at least one spatial dim, "
            f"channels), got shape {dz.shape}"
        )
    return _rules.grad_bias(dz, layout)
