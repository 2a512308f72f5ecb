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
from ._config import ConvConfig

__all__ = ["conv_arrays", "conv_configs"]

_MAX_SIZE = {1: 12, 2: 8, 3: 5}


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
    """Draws a valid convolution configuration.

    Args:
        ranks: numbers of spatial dims to choose from.
        layouts: layouts to choose from.
        max_groups: largest group count (and depthwise channel count).
        max_window, max_stride, max_dilation, max_padding, max_batch: bounds.
        bias: force a bias (``True``), none (``False``), or draw (``None``).
        lowerings: jconv lowerings to choose from.
    """
    nd = draw(st.sampled_from(ranks))
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise", "depthwise_multiplier"]))
    if kind == "dense" or max_groups < 2:
        groups, c_in, c_out = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "grouped":
        groups = draw(st.integers(2, max_groups))
        c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    else:
        groups = c_in = draw(st.integers(1, max_groups))
        c_out = c_in * (1 if kind == "depthwise" else draw(st.integers(2, 3)))

    def per_dim(hi):
        return tuple(draw(st.lists(st.integers(1, hi), min_size=nd, max_size=nd)))

    window, stride, dilation = per_dim(max_window), per_dim(max_stride), per_dim(max_dilation)
    form = draw(st.sampled_from(["VALID", "SAME", "SAME_LOWER", "int", "ints", "pairs"]))
    pad = st.integers(0, max_padding)
    if form == "int":
        padding: Any = draw(pad)
        pads = [(padding, padding)] * nd
    elif form == "ints":
        padding = tuple(draw(st.lists(pad, min_size=nd, max_size=nd)))
        pads = [(p, p) for p in padding]
    elif form == "pairs":
        padding = tuple((draw(pad), draw(pad)) for _ in range(nd))
        pads = list(padding)
    else:
        padding, pads = form, [(0, 0)] * nd
    spatial = []
    for w, d, (lo, hi) in zip(window, dilation, pads, strict=True):
        smallest = max(1, (w - 1) * d + 1 - lo - hi)
        spatial.append(draw(st.integers(smallest, max(smallest, _MAX_SIZE.get(nd, 4)))))
    return ConvConfig(
        batch=draw(st.integers(1, max_batch)),
        spatial=tuple(spatial),
        window=window,
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        stride=stride,
        padding=padding,
        dilation=dilation,
        layout=draw(st.sampled_from(layouts)),
        bias=draw(st.booleans()) if bias is None else bias,
        lowering=draw(st.sampled_from(lowerings)),
    )


@st.composite
def conv_arrays(draw, config: ConvConfig, dtype: Any = jnp.float32):
    """Draws ``(params, x)`` for ``config`` (standard normal, from a drawn seed)."""
    params, x, _ = config.arrays(dtype, seed=draw(st.integers(0, 2**31 - 1)))
    return params, x
