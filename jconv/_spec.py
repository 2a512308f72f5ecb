"""Argument normalisation for convolutions, in one place.

Every public function of jconv takes the same static arguments (``stride``,
``padding``, ``dilation``, ``groups``, ``layout``, ``precision``). They are parsed
and validated exactly once, here, into a frozen :class:`ConvSpec`; once the input
and kernel shapes are known the spec is resolved into a :class:`ConvGeometry`
(explicit padding, output shape, which axis is which) that the forward pass and
all three backward rules share. Every problem that can be seen at trace time is
raised here as a ``ValueError`` or ``TypeError`` whose message names jconv's own
argument and the offending value, so users never see a raw XLA error.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

from jax import lax

LAYOUTS = ("channels_last", "channels_first")
PADDING_STRINGS = ("VALID", "SAME", "SAME_LOWER")

Shape = tuple[int, ...]
Pads = tuple[tuple[int, int], ...]


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def check_layout(layout: Any, where: str) -> str:
    """Returns ``layout`` if it is one of :data:`LAYOUTS`, else raises."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"{where}: layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


LOWERINGS = ("auto", "xla", "taps", "winograd")


def check_lowering(lowering: Any, where: str) -> str:
    """Returns ``lowering`` if it names a correlation lowering, else raises."""
    if not isinstance(lowering, str) or lowering not in LOWERINGS:
        raise ValueError(f"{where}: lowering must be one of {LOWERINGS}, got {lowering!r}")
    return lowering


def ntuple(value: Any, n: int, name: str, where: str, *, minimum: int = 1) -> Shape:
    """Normalises an int or a length-``n`` sequence of ints to an ``n``-tuple.

    Raises ``TypeError`` for non-integers and ``ValueError`` for a wrong length or
    an element smaller than ``minimum``.
    """
    if _is_int(value):
        values = (operator.index(value),) * n
    elif _is_sequence(value):
        if len(value) != n:
            raise ValueError(
                f"{where}: {name} must be an int or a sequence of {n} ints (one per "
                f"spatial dim), got {value!r} of length {len(value)}"
            )
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{where}: {name} must contain only ints, got {value!r}")
        values = tuple(operator.index(v) for v in value)
    else:
        raise TypeError(
            f"{where}: {name} must be an int or a sequence of {n} ints, got "
            f"{value!r} of type {type(value).__name__}"
        )
    if any(v < minimum for v in values):
        raise ValueError(f"{where}: {name} must be >= {minimum} in every dim, got {value!r}")
    return values


def _pad_pair(item: Any, where: str, value: Any) -> tuple[int, int]:
    if _is_int(item):
        pair = (operator.index(item),) * 2
    elif _is_sequence(item) and len(item) == 2 and all(_is_int(v) for v in item):
        pair = (operator.index(item[0]), operator.index(item[1]))
    else:
        raise TypeError(
            f"{where}: each entry of padding must be an int or a (low, high) pair of "
            f"ints, got {item!r} in padding={value!r}"
        )
    if min(pair) < 0:
        raise ValueError(f"{where}: padding must be >= 0, got {value!r}")
    return pair


def normalise_padding(value: Any, n: int, where: str) -> str | Pads:
    """Parses ``padding`` into ``"VALID" | "SAME" | "SAME_LOWER"`` or ``n`` pairs."""
    if isinstance(value, str):
        upper = value.upper()
        if upper not in PADDING_STRINGS:
            raise ValueError(
                f"{where}: padding string must be one of {PADDING_STRINGS}, got {value!r}"
            )
        return upper
    if _is_int(value):
        return (_pad_pair(value, where, value),) * n
    if _is_sequence(value):
        if len(value) != n:
            hint = ""
            if n == 1 and len(value) == 2:
                hint = f"; for one (low, high) pair write padding=({tuple(value)!r},)"
            raise ValueError(
                f"{where}: padding must have one entry per spatial dim ({n}), got "
                f"{value!r} of length {len(value)}{hint}"
            )
        return tuple(_pad_pair(item, where, value) for item in value)
    raise TypeError(
        f"{where}: padding must be a string, an int or a sequence, got {value!r} of "
        f"type {type(value).__name__}"
    )


def _normalise_precision(value: Any, where: str) -> Any:
    if value is None or isinstance(value, lax.Precision):
        return value
    if isinstance(value, str):
        try:
            return lax.Precision(value)
        except ValueError:
            raise ValueError(f"{where}: unknown precision {value!r}") from None
    if _is_sequence(value) and len(value) == 2:
        return tuple(_normalise_precision(v, where) for v in value)
    raise TypeError(
        f"{where}: precision must be None, a lax.Precision, a string or a pair, got {value!r}"
    )


def data_axes(layout: str, ndim: int) -> tuple[int, int, Shape]:
    """``(batch, channel, spatial)`` axes of an activation of ``ndim`` spatial dims.

    ``channels_last`` is ``(N, *spatial, C)``; ``channels_first`` is
    ``(N, C, *spatial)``.
    """
    if layout == "channels_last":
        return 0, ndim + 1, tuple(range(1, ndim + 1))
    return 0, 1, tuple(range(2, ndim + 2))


def kernel_axes(layout: str, ndim: int) -> tuple[int, int, Shape]:
    """``(out_channel, in_channel, spatial)`` axes of a kernel.

    ``channels_last`` kernels are ``(*window, C_in // groups, C_out)``;
    ``channels_first`` kernels are ``(C_out, C_in // groups, *window)``.
    """
    if layout == "channels_last":
        return ndim + 1, ndim, tuple(range(ndim))
    return 0, 1, tuple(range(2, ndim + 2))


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """The static, shape-free arguments of a convolution, validated.

    Attributes:
        ndim: number of spatial dims.
        stride: per-dim window stride, each >= 1.
        padding: ``"VALID"``, ``"SAME"``, ``"SAME_LOWER"`` or per-dim
            ``(low, high)`` pairs.
        dilation: per-dim kernel (rhs) dilation, each >= 1.
        groups: number of feature groups.
        layout: ``"channels_last"`` or ``"channels_first"``.
        precision: passed to XLA (``None`` means JAX's default).
        lowering: how correlations are computed (one of :data:`LOWERINGS`).
    """

    ndim: int
    stride: Shape
    padding: str | Pads
    dilation: Shape
    groups: int
    layout: str
    precision: Any = None
    lowering: str = "auto"

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments that reproduce this spec in a public call."""
        return dict(
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            layout=self.layout,
            precision=self.precision,
            lowering=self.lowering,
        )


def make_spec(
    ndim: int,
    *,
    stride: Any = 1,
    padding: Any = "VALID",
    dilation: Any = 1,
    groups: Any = 1,
    layout: Any = "channels_last",
    precision: Any = None,
    lowering: Any = "auto",
    where: str = "jconv",
) -> ConvSpec:
    """Validates the static arguments of a convolution with ``ndim`` spatial dims."""
    if ndim < 1:
        raise ValueError(
            f"{where}: a convolution needs at least one spatial dim, so the kernel must "
            f"have rank >= 3; got {ndim + 2}"
        )
    if not _is_int(groups):
        raise TypeError(f"{where}: groups must be an int, got {groups!r}")
    if operator.index(groups) < 1:
        raise ValueError(f"{where}: groups must be >= 1, got {groups!r}")
    return ConvSpec(
        ndim=ndim,
        stride=ntuple(stride, ndim, "stride", where),
        padding=normalise_padding(padding, ndim, where),
        dilation=ntuple(dilation, ndim, "dilation", where),
        groups=operator.index(groups),
        layout=check_layout(layout, where),
        precision=_normalise_precision(precision, where),
        lowering=check_lowering(lowering, where),
    )


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
