"""Hypothesis strategies for convolution configurations and their arrays.

``conv_configs`` draws valid :class:`~jconv.testing.ConvConfig` objects (every
padding form, strides, dilations, dense/grouped/depthwise/multiplier groupings,
both layouts, with and without bias); ``conv_arrays(config, dtype)`` draws
``(params, x)`` for one. Hypothesis is an optional dependency.
"""

from __future__ import annotations

from typing import Any

try:
    from hypothesis import strategies as st
except ImportError as e:  # pragma: no cover - exercised only without hypothesis
    raise ImportError(
        "jconv.testing.strategies needs hypothesis: pip install hypothesis "
        "(or pip install 'jconv[test]')"
    ) from e

import jax.numpy as jnp

from .._spec import LAYOUTS
from ._config import ConvConfig, sample_config

__all__ = ["conv_arrays", "conv_configs"]


@st.composite
def conv_configs(
    draw,
    ranks: tuple[int, ...] = (1, 2, 3),
    layouts: tuple[str, ...] = LAYOUTS,
    max_groups: int = 4,
    max_window: int = 3,
    max_stride: int = 3,
    max_dilation: int = 2,
    max_padding: int = 3,
    max_batch: int = 3,
    bias: bool | None = None,
    lowerings: tuple[str, ...] = ("auto",),
) -> ConvConfig:
    """Draws a valid convolution configuration (see ``ConvConfig``).

    Args:
        ranks: numbers of spatial dims to choose from.
        layouts: layouts to choose from.
        max_groups: largest group count (and depthwise channel count).
        max_window, max_stride, max_dilation, max_padding, max_batch: bounds.
        bias: force a bias (``True``), none (``False``), or draw (``None``).
        lowerings: jconv lowerings to choose from.
    """
    return sample_config(
        lambda lo, hi: draw(st.integers(lo, hi)),
        lambda seq: draw(st.sampled_from(list(seq))),
        ranks=ranks,
        layouts=layouts,
        max_groups=max_groups,
        max_window=max_window,
        max_stride=max_stride,
        max_dilation=max_dilation,
        max_padding=max_padding,
        max_batch=max_batch,
        bias=bias,
        lowerings=lowerings,
    )


@st.composite
def conv_arrays(draw, config: ConvConfig, dtype: Any = jnp.float32):
    """Draws ``(params, x)`` for ``config`` (standard normal, from a drawn seed)."""
    params, x, _ = config.arrays(dtype, seed=draw(st.integers(0, 2**31 - 1)))
    return params, x
