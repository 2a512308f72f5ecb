"""A convolution configuration: shapes plus the static arguments of ``conv_forward``."""

from __future__ import annotations

import dataclasses
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
