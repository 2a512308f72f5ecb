"""Small array checks shared by every public layer function."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ._correlation import accumulation_dtype


def as_float_array(value: Any, name: str, where: str) -> jax.Array:
    """``jnp.asarray(value)``, refusing anything that is not floating point."""
    try:
        arr = jnp.asarray(value)
    except TypeError as e:
        raise TypeError(f"{where}: {name} must be an array, got {type(value).__name__}") from e
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"{where}: {name} must have a floating dtype (float16, bfloat16, float32, "
            f"float64), got {arr.dtype}"
        )
    return arr


def common_dtype(*arrays) -> list[jax.Array]:
    """Promotes arrays to their common dtype, as ``jnp`` arithmetic would."""
    dtype = jnp.result_type(*arrays)
    return [a.astype(dtype) for a in arrays]


def check_params(params: Any, where: str) -> tuple[jax.Array, jax.Array | None]:
    """``(kernel, bias or None)`` from a ``{"kernel", "bias"}`` mapping, validated."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"{where}: params must be a mapping {{'kernel': ..., 'bias': ...}}, got "
            f"{type(params).__name__}"
        )
    unknown = set(params) - {"kernel", "bias"}
    if unknown:
        raise ValueError(
            f"{where}: params has unknown keys {sorted(unknown)}; expected 'kernel' and "
            f"optionally 'bias'"
        )
    if params.get("kernel") is None:
        raise ValueError(f"{where}: params is missing the 'kernel' entry")
    kernel = as_float_array(params["kernel"], "params['kernel']", where)
    bias = params.get("bias")
    if bias is not None:
        bias = as_float_array(bias, "params['bias']", where)
    return kernel, bias


def check_shape(shape: Any, name: str, where: str) -> tuple[int, ...]:
    """A shape given as a sequence of non-negative ints (or symbolic dims, under
    ``jax.export``'s shape polymorphism)."""
    if not isinstance(shape, Sequence) or not all(
        jax.export.is_symbolic_dim(s) or (isinstance(s, int) and not isinstance(s, bool) and s >= 0)
        for s in shape
    ):
        raise TypeError(f"{where}: {name} must be a sequence of non-negative ints, got {shape!r}")
    return tuple(shape)


def accumulated_sum(a: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``sum(a, axes)`` accumulated like the correlations (float32 for half types)."""
    return jnp.sum(a, axis=axes, dtype=accumulation_dtype(a.dtype)).astype(a.dtype)
