"""A convolution resolved against its shapes: explicit padding, output shape, and
which axis is which.

:func:`resolve` turns a :class:`~jconv._spec.ConvSpec` and the input and kernel
shapes into a frozen :class:`ConvGeometry` (:func:`geometry` takes the public
functions' raw arguments and does both steps), which the forward pass and all three
backward rules share. Shape problems (a kernel that does not match the input's
channels, an empty output, a ``dz`` of the wrong shape) raise ``ValueError`` here,
at trace time, naming jconv's argument and the offending value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

from ._spec import ConvSpec, Pads, Shape, data_axes, kernel_axes, make_spec


def same_padding(
    size: int, window: int, stride: int, dilation: int, lower: bool
) -> tuple[int, int]:
    """``(low, high)`` padding so that the output has ``ceil(size / stride)`` entries.

    The total ``max((out - 1) * stride + (window - 1) * dilation + 1 - size, 0)`` is
    split with the odd element on the high side (``SAME``) or the low side
    (``SAME_LOWER``), as in ``lax.conv_general_dilated``.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (window - 1) * dilation + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def output_size(size: int, window: int, stride: int, dilation: int, pad: tuple) -> int:
    """Number of window positions: ``floor((I + lo + hi - (W-1)*d - 1) / s) + 1``."""
    return (size + pad[0] + pad[1] - (window - 1) * dilation - 1) // stride + 1


class DimGeometry(NamedTuple):
    """One spatial dim of a resolved convolution (the notation of ``_rules.py``)."""

    size: int  # I
    window: int  # W
    out: int  # O
    stride: int  # s
    dilation: int  # d
    lo: int
    hi: int


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """A :class:`ConvSpec` resolved against concrete input and kernel shapes.

    Attributes:
        spec: the validated static arguments.
        input_shape: shape of ``x``.
        kernel_shape: shape of the kernel.
        output_shape: shape of ``z``.
        padding: explicit per-dim ``(low, high)`` padding.
    """

    spec: ConvSpec
    input_shape: Shape
    kernel_shape: Shape
    output_shape: Shape
    padding: Pads

    @property
    def x_axes(self) -> tuple[int, int, Shape]:
        return data_axes(self.spec.layout, self.spec.ndim)

    @property
    def kernel_axes(self) -> tuple[int, int, Shape]:
        return kernel_axes(self.spec.layout, self.spec.ndim)

    @property
    def in_spatial(self) -> Shape:
        return tuple(self.input_shape[a] for a in self.x_axes[2])

    @property
    def out_spatial(self) -> Shape:
        return tuple(self.output_shape[a] for a in self.x_axes[2])

    @property
    def window(self) -> Shape:
        return tuple(self.kernel_shape[a] for a in self.kernel_axes[2])

    def dims(self) -> tuple[DimGeometry, ...]:
        """Per spatial dim: ``(I, W, O, s, d, lo, hi)``."""
        spec = self.spec
        return tuple(
            DimGeometry(i, w, o, s, d, lo, hi)
            for i, w, o, s, d, (lo, hi) in zip(
                self.in_spatial,
                self.window,
                self.out_spatial,
                spec.stride,
                spec.dilation,
                self.padding,
                strict=True,
            )
        )

    @property
    def channels(self) -> tuple[int, int]:
        """``(C_in, C_out)``."""
        return (
            self.input_shape[self.x_axes[1]],
            self.kernel_shape[self.kernel_axes[0]],
        )


def resolve(
    spec: ConvSpec, input_shape: Sequence[int], kernel_shape: Sequence[int], where: str
) -> ConvGeometry:
    """Checks that ``input_shape`` and ``kernel_shape`` fit ``spec``; resolves padding."""
    input_shape, kernel_shape = tuple(input_shape), tuple(kernel_shape)
    nd = spec.ndim
    if len(kernel_shape) != nd + 2:
        raise ValueError(
            f"{where}: kernel must have rank {nd + 2} for {nd} spatial dims, got shape "
            f"{kernel_shape}"
        )
    if len(input_shape) != nd + 2:
        xdesc = "(N, *spatial, C_in)" if spec.layout == "channels_last" else "(N, C_in, *spatial)"
        raise ValueError(
            f"{where}: x must have rank {nd + 2} {xdesc} to match a kernel of rank "
            f"{nd + 2} ({nd} spatial dims), got x of shape {input_shape}"
        )
    if any(s < 1 for s in kernel_shape):
        raise ValueError(f"{where}: kernel shape {kernel_shape} has an empty dim")
    _, x_ch, x_sp = data_axes(spec.layout, nd)
    k_out, k_in, k_sp = kernel_axes(spec.layout, nd)
    c_in, c_out, c_per_group = input_shape[x_ch], kernel_shape[k_out], kernel_shape[k_in]
    g = spec.groups
    if c_in % g:
        raise ValueError(
            f"{where}: groups={g} does not divide the input channels C_in={c_in} "
            f"(x of shape {input_shape}, layout={spec.layout!r})"
        )
    if c_out % g:
        raise ValueError(
            f"{where}: groups={g} does not divide the output channels C_out={c_out} "
            f"(kernel of shape {kernel_shape}, layout={spec.layout!r})"
        )
    if c_per_group * g != c_in:
        raise ValueError(
            f"{where}: channel mismatch: x has C_in={c_in} channels but the kernel of "
            f"shape {kernel_shape} has {c_per_group} input channels per group, and "
            f"groups={g} needs C_in // groups = {c_in // g} (layout={spec.layout!r})"
        )
    sizes = tuple(input_shape[a] for a in x_sp)
    window = tuple(kernel_shape[a] for a in k_sp)
    if spec.padding == "VALID":
        pads: Pads = ((0, 0),) * nd
    elif isinstance(spec.padding, str):
        lower = spec.padding == "SAME_LOWER"
        pads = tuple(
            same_padding(i, w, s, d, lower)
            for i, w, s, d in zip(sizes, window, spec.stride, spec.dilation, strict=True)
        )
    else:
        pads = spec.padding
    out_sizes = []
    for dim, (i, w, s, d, p) in enumerate(
        zip(sizes, window, spec.stride, spec.dilation, pads, strict=True)
    ):
        if i + p[0] + p[1] < (w - 1) * d + 1:
            raise ValueError(
                f"{where}: kernel larger than the padded input in spatial dim {dim}: "
                f"window {w} with dilation {d} spans {(w - 1) * d + 1}, but the input "
                f"has size {i} + padding {p} = {i + p[0] + p[1]}"
            )
        out_sizes.append(output_size(i, w, s, d, p))
    out_shape = list(input_shape)
    out_shape[x_ch] = c_out
    for a, o in zip(x_sp, out_sizes, strict=True):
        out_shape[a] = o
    return ConvGeometry(spec, input_shape, kernel_shape, tuple(out_shape), pads)


def geometry(
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    layout: Any,
    precision: Any,
    where: str,
    lowering: Any = "auto",
) -> ConvGeometry:
    """:func:`make_spec` then :func:`resolve`: the public functions' one entry."""
    spec = make_spec(
        len(kernel_shape) - 2,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        layout=layout,
        precision=precision,
        lowering=lowering,
        where=where,
    )
    return resolve(spec, input_shape, kernel_shape, where)


def check_output_shape(geom: ConvGeometry, dz_shape: Sequence[int], where: str) -> None:
    """Refuses a ``dz`` that no forward of ``geom`` could have produced."""
    if tuple(dz_shape) != geom.output_shape:
        raise ValueError(
            f"{where}: dz has shape {tuple(dz_shape)}, but a convolution of an input of "
            f"shape {geom.input_shape} with a kernel of shape {geom.kernel_shape} "
            f"(stride={geom.spec.stride}, padding={geom.spec.padding!r}, "
            f"dilation={geom.spec.dilation}, groups={geom.spec.groups}, "
            f"layout={geom.spec.layout!r}) produces {geom.output_shape}"
        )
