"""The fully connected layer ``Z = X W + B`` and its hand-derived rules.

The seed updates ``W ← W − α·dL/dW`` next to the kernel and bias. For
``Z[..., o] = sum_i X[..., i] W[i, o] + B[o]`` the chain rule gives, with every
leading axis of ``X`` flattened into one batch axis ``n``::

    dL/dW[i, o] = sum_n X[n, i] dZ[n, o]       i.e.  dL/dW = Xᵀ · dL/dZ
    dL/dB[o]    = sum_n dZ[n, o]               i.e.  dL/dB = Σ dL/dZ
    dL/dX[n, i] = sum_o dZ[n, o] W[i, o]       i.e.  dL/dX = dL/dZ · Wᵀ

As for the convolution, the three maps are bilinear and each other's
transposes, so the two gradient rules are ``custom_vjp`` functions too and
grad-of-grad runs on these rules.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._arrays import accumulated_sum, as_float_array, check_params, common_dtype
from ._correlation import accumulation_dtype
from ._init import check_float_dtype, positive_int


def _matmul(a, b, contract_a: int, contract_b: int, precision):
    """``a`` and ``b`` contracted on one axis each, accumulated like the conv."""
    out = lax.dot_general(
        a,
        b,
        (((contract_a,), (contract_b,)), ((), ())),
        precision=precision,
        preferred_element_type=accumulation_dtype(a.dtype),
    )
    return out.astype(a.dtype)


def _flat(a):
    return a.reshape(-1, a.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _dense(x, kernel, bias, has_bias: bool, precision):
    z = _matmul(x, kernel, x.ndim - 1, 0, precision)
    return z + bias.reshape((1,) * (z.ndim - 1) + bias.shape) if has_bias else z


def _dense_fwd(x, kernel, bias, has_bias, precision):
    return _dense(x, kernel, bias, has_bias, precision), (x, kernel)


def _dense_bwd(has_bias, precision, residuals, dz):
    x, kernel = residuals
    dx = dense_grad_input(dz, kernel, precision=precision)
    dk = dense_grad_kernel(x, dz, precision=precision)
    return dx, dk, dense_grad_bias(dz) if has_bias else None


_dense.defvjp(_dense_fwd, _dense_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _grad_input(dz, kernel, precision):
    # dL/dX = dL/dZ · Wᵀ: contract dZ's last axis with W's output axis.
    return _matmul(dz, kernel, dz.ndim - 1, 1, precision)


def _grad_input_fwd(dz, kernel, precision):
    return _grad_input(dz, kernel, precision), (dz, kernel)


def _grad_input_bwd(precision, residuals, dx_bar):
    dz, kernel = residuals
    return _dense(dx_bar, kernel, None, False, precision), _grad_kernel(dx_bar, dz, precision)


_grad_input.defvjp(_grad_input_fwd, _grad_input_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _grad_kernel(x, dz, precision):
    # dL/dW = Xᵀ · dL/dZ over the flattened batch.
    return _matmul(_flat(x), _flat(dz), 0, 0, precision)


def _grad_kernel_fwd(x, dz, precision):
    return _grad_kernel(x, dz, precision), (x, dz)


def _grad_kernel_bwd(precision, residuals, dk_bar):
    x, dz = residuals
    return _grad_input(dz, dk_bar, precision), _dense(x, dk_bar, None, False, precision)


_grad_kernel.defvjp(_grad_kernel_fwd, _grad_kernel_bwd)


def dense_init(
    key: jax.Array,
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
) -> dict[str, jax.Array]:
    """Initial parameters for :func:`dense_forward`.

    The kernel is He normal (truncated at 2σ, variance ``2 / in_features``) for the
    same reason as :func:`jconv.conv_init`: these layers feed ReLUs. Bias is zero.

    Returns:
        ``{"kernel": (in_features, out_features), "bias": (out_features,)}``, without
        ``"bias"`` when ``use_bias=False``.
    """
    where = "dense_init"
    n_in = positive_int(in_features, "in_features", where)
    n_out = positive_int(out_features, "out_features", where)
    dtype = check_float_dtype(dtype, where)
    init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
    params = {"kernel": init(key, (n_in, n_out), dtype)}
    if use_bias:
        params["bias"] = jnp.zeros((n_out,), dtype)
    return params


def dense_forward(params: Mapping[str, Any], x, *, precision: Any = None) -> jax.Array:
    """``z = x @ kernel + bias`` with the hand-derived rules above.

    Args:
        params: ``{"kernel": (in, out), "bias": (out,)}`` (bias optional).
        x: input of shape ``(..., in)``.
        precision: passed to XLA.

    Returns:
        ``z`` of shape ``(..., out)``.
    """
    where = "dense_forward"
    kernel, bias = check_params(params, where)
    x = as_float_array(x, "x", where)
    if kernel.ndim != 2:
        raise ValueError(f"{where}: params['kernel'] must have shape (in, out), got {kernel.shape}")
    if x.ndim < 1 or x.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"{where}: x must have shape (..., {kernel.shape[0]}) to match the kernel of "
            f"shape {kernel.shape}, got {x.shape}"
        )
    if bias is None:
        x, kernel = common_dtype(x, kernel)
        return _dense(x, kernel, None, False, precision)
    if bias.shape != (kernel.shape[1],):
        raise ValueError(
            f"{where}: params['bias'] must have shape ({kernel.shape[1]},), got {bias.shape}"
        )
    x, kernel, bias = common_dtype(x, kernel, bias)
    return _dense(x, kernel, bias, True, precision)


def dense_grad_input(dz, kernel, *, precision: Any = None) -> jax.Array:
    """``dL/dX = dL/dZ · Wᵀ``: ``dz (..., out)``, ``kernel (in, out)`` → ``(..., in)``."""
    where = "dense_grad_input"
    dz, kernel = as_float_array(dz, "dz", where), as_float_array(kernel, "kernel", where)
    if kernel.ndim != 2 or dz.ndim < 1 or dz.shape[-1] != kernel.shape[1]:
        raise ValueError(
            f"{where}: dz of shape {dz.shape} does not fit a kernel of shape {kernel.shape}"
        )
    dz, kernel = common_dtype(dz, kernel)
    return _grad_input(dz, kernel, precision)


def dense_grad_kernel(x, dz, *, precision: Any = None) -> jax.Array:
    """``dL/dW = Xᵀ · dL/dZ`` summed over every leading axis → ``(in, out)``."""
    where = "dense_grad_kernel"
    x, dz = as_float_array(x, "x", where), as_float_array(dz, "dz", where)
    if x.ndim < 1 or x.shape[:-1] != dz.shape[:-1]:
        raise ValueError(
            f"{where}: x of shape {x.shape} and dz of shape {dz.shape} must share every "
            f"axis but the last"
        )
    x, dz = common_dtype(x, dz)
    return _grad_kernel(x, dz, precision)


def dense_grad_bias(dz) -> jax.Array:
    """``dL/dB = Σ dL/dZ`` over every leading axis → ``(out,)``."""
    dz = as_float_array(dz, "dz", "dense_grad_bias")
    return accumulated_sum(dz, tuple(range(dz.ndim - 1)))
