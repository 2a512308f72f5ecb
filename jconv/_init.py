"""Parameter initialisers."""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp

from ._spec import check_layout, kernel_axes, ntuple


def positive_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be an int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}: {name} must be an int, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{where}: {name} must be >= 1, got {value}")
    return value


def check_float_dtype(dtype: Any, where: str) -> jnp.dtype:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{where}: dtype must be a floating dtype, got {dtype}")
    return dtype


def conv_init(
    key: jax.Array,
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, ...],
    *,
    groups: int = 1,
    use_bias: bool = True,
    layout: str = "channels_last",
    dtype: Any = jnp.float32,
) -> dict[str, jax.Array]:
    """Initial parameters for :func:`conv_forward`.

    The kernel is drawn from He (Kaiming) normal: a normal distribution truncated
    at two standard deviations and rescaled to variance ``2 / fan_in``, where
    ``fan_in = (in_channels // groups) * prod(kernel_size)`` is the number of
    inputs each output sums. jconv's layers are meant to be followed by ReLU,
    which zeroes half of its input on average; variance ``2 / fan_in`` keeps the
    activations' second moment constant from layer to layer (He et al., 2015), so
    deep stacks neither explode nor vanish at initialisation. The bias starts at
    zero, as in the seed's ``B`` before any update.

    Args:
        key: a PRNG key.
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: an int or a tuple of ints; its length sets the number of
            spatial dims (an int means one spatial dim).
        groups: feature groups; must divide both channel counts.
        use_bias: whether to include ``"bias"``.
        layout: ``"channels_last"`` gives a kernel of shape
            ``(*kernel_size, C_in // groups, C_out)``; ``"channels_first"`` gives
            ``(C_out, C_in // groups, *kernel_size)``.
        dtype: a floating dtype.

    Returns:
        ``{"kernel": kernel, "bias": zeros((C_out,))}``, without ``"bias"`` when
        ``use_bias=False``.
    """
    where = "conv_init"
    c_in = positive_int(in_channels, "in_channels", where)
    c_out = positive_int(out_channels, "out_channels", where)
    g = positive_int(groups, "groups", where)
    if c_in % g or c_out % g:
        raise ValueError(
            f"{where}: groups={g} must divide in_channels={c_in} and out_channels={c_out}"
        )
    if isinstance(kernel_size, int) and not isinstance(kernel_size, bool):
        window = (kernel_size,)
    else:
        window = ntuple(kernel_size, len(kernel_size), "kernel_size", where)
    if not window or any(w < 1 for w in window):
        raise ValueError(f"{where}: kernel_size must be positive ints, got {kernel_size!r}")
    layout = check_layout(layout, where)
    dtype = check_float_dtype(dtype, where)
    nd = len(window)
    k_out, k_in, k_sp = kernel_axes(layout, nd)
    shape = [0] * (nd + 2)
    shape[k_out], shape[k_in] = c_out, c_in // g
    for a, w in zip(k_sp, window, strict=True):
        shape[a] = w
    init = jax.nn.initializers.variance_scaling(
        2.0, "fan_in", "truncated_normal", in_axis=k_in, out_axis=k_out
    )
    params = {"kernel": init(key, tuple(shape), dtype)}
    if use_bias:
        params["bias"] = jnp.zeros((c_out,), dtype)
    return params
