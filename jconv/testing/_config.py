"""A convolution configuration: shapes plus the static arguments of ``conv_forward``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ConvConfig:
    """One convolution: what :func:`jconv.conv_forward` is called with.

    Attributes:
        batch, spatial, window, c_in, c_out: ``N``, input spatial sizes, kernel
            window, input and output channels.
        groups, stride, padding, dilation, layout: the keyword arguments.
        bias: whether ``params`` has a bias.
        lowering: jconv's lowering (the lax reference ignores it).
    """

    batch: int
    spatial: tuple[int, ...]
    window: tuple[int, ...]
    c_in: int
    c_out: int
    groups: int = 1
    stride: Any = 1
    padding: Any = "VALID"
    dilation: Any = 1
    layout: str = "channels_last"
    bias: bool = True
    lowering: str = "auto"

    @property
    def kwargs(self) -> dict[str, Any]:
        """``stride``, ``padding``, ``dilation``, ``groups``, ``layout``."""
        return dict(
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            layout=self.layout,
        )

    @property
    def x_shape(self) -> tuple[int, ...]:
        if self.layout == "channels_last":
            return (self.batch, *self.spatial, self.c_in)
        return (self.batch, self.c_in, *self.spatial)

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        if self.layout == "channels_last":
            return (*self.window, self.c_in // self.groups, self.c_out)
        return (self.c_out, self.c_in // self.groups, *self.window)

    def arrays(self, dtype: Any = jnp.float32, seed: int = 0):
        """``(params, x, ct)``: standard-normal arrays, ``ct`` shaped like ``z``."""
        from .. import autodiff

        rng = np.random.default_rng(seed)
        params = {"kernel": jnp.asarray(rng.normal(size=self.kernel_shape), dtype)}
        if self.bias:
            params["bias"] = jnp.asarray(rng.normal(size=(self.c_out,)), dtype)
        x = jnp.asarray(rng.normal(size=self.x_shape), dtype)
        z_shape = jax.eval_shape(
            lambda p, x: autodiff.conv_forward(p, x, **self.kwargs), params, x
        ).shape
        ct = jnp.asarray(rng.normal(size=z_shape), dtype)
        return params, x, ct


_MAX_SIZE = {1: 12, 2: 8, 3: 5}


def sample_config(
    integers: Callable[[int, int], int],
    choice: Callable[[Sequence[Any]], Any],
    *,
    ranks: Sequence[int] = (1, 2, 3),
    layouts: Sequence[str] = ("channels_last", "channels_first"),
    max_groups: int = 4,
    max_window: int = 3,
    max_stride: int = 3,
    max_dilation: int = 2,
    max_padding: int = 3,
    max_batch: int = 3,
    bias: bool | None = None,
    lowerings: Sequence[str] = ("auto",),
) -> ConvConfig:
    """Draws a valid configuration from ``integers(lo, hi)`` (inclusive) and ``choice``.

    The one sampler behind both the hypothesis strategy (draws from hypothesis) and
    ``jconv verify`` (draws from NumPy): every padding form, strides, dilations,
    dense, grouped, depthwise and depthwise-with-multiplier groupings, both
    layouts, spatial sizes small enough for loops and large enough for the
    (dilated) window.
    """
    nd = choice(ranks)
    kind = choice(["dense", "grouped", "depthwise", "depthwise_multiplier"])
    if kind == "dense" or max_groups < 2:
        groups, c_in, c_out = 1, integers(1, 4), integers(1, 4)
    elif kind == "grouped":
        groups = integers(2, max_groups)
        c_in, c_out = groups * integers(1, 2), groups * integers(1, 2)
    else:
        groups = c_in = integers(1, max_groups)
        c_out = c_in * (1 if kind == "depthwise" else integers(2, 3))

    def per_dim(hi):
        return tuple(integers(1, hi) for _ in range(nd))

    window, stride, dilation = per_dim(max_window), per_dim(max_stride), per_dim(max_dilation)
    form = choice(["VALID", "SAME", "SAME_LOWER", "int", "ints", "pairs"])
    if form == "int":
        padding: Any = integers(0, max_padding)
        pads = [(padding, padding)] * nd
    elif form == "ints":
        padding = tuple(integers(0, max_padding) for _ in range(nd))
        pads = [(p, p) for p in padding]
    elif form == "pairs":
        padding = tuple((integers(0, max_padding), integers(0, max_padding)) for _ in range(nd))
        pads = list(padding)
    else:
        padding, pads = form, [(0, 0)] * nd
    spatial = []
    for w, d, (lo, hi) in zip(window, dilation, pads, strict=True):
        smallest = max(1, (w - 1) * d + 1 - lo - hi)
        spatial.append(integers(smallest, max(smallest, _MAX_SIZE.get(nd, 4))))
    return ConvConfig(
        batch=integers(1, max_batch),
        spatial=tuple(spatial),
        window=window,
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        stride=stride,
        padding=padding,
        dilation=dilation,
        layout=choice(layouts),
        bias=bool(integers(0, 1)) if bias is None else bias,
        lowering=choice(lowerings),
    )
