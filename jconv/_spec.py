"""Argument normalisation for convolutions, in one place.

Every public function of jconv takes the same static arguments (``stride``,
``padding``, ``dilation``, ``groups``, ``layout``, ``precision``). They are parsed
and validated exactly once, here, into a frozen :class:`ConvSpec`; once the input
and kernel shapes are known the spec is resolved into a ``ConvGeometry``
(explicit padding, output shape, which axis is which) that the forward pass and
all three backward rules share (``_geometry.py``). Every problem of the
arguments themselves is raised here, and every problem of the shapes there, at
trace time, as a ``ValueError`` or ``TypeError`` whose message names jconv's own
argument and the offending value, so users never see a raw XLA error.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

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


LOWERINGS = ("auto", "xla", "taps", "winograd", "measured")


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
