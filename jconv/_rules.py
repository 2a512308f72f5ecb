"""The forward pass and the three hand-derived rules, as correlations.

The seed derives, for a single-channel 2-D "valid" convolution
``Z = X ⊛ K + B`` (a cross-correlation) of a 3x3 input with a 2x2 kernel::

    Z_ij   = sum_mn X_(i+m)(j+n) K_mn + B
    dL/dK  = conv(X, dL/dZ)                        dL/dK_mn = sum_ij dL/dZ_ij X_(i+m)(j+n)
    dL/dB  = sum(dL/dZ)
    dL/dX  = conv(padded(dL/dZ), rot180(K))        (a "full" correlation)

Each function below states the seed's formula, its generalisation to batch,
channels, groups, any number of spatial dims, stride ``s``, kernel dilation
``d`` and padding ``(lo, hi)``, and the padding arithmetic, worked on a small
case. Everything is written for one spatial dim; the rules act on each spatial
dim independently, so N-D is the same formula per dim.

Notation (per spatial dim): input size ``I``, window ``W``, output size
``O = floor((I + lo + hi - (W-1)d - 1) / s) + 1``; ``Xp`` is ``X`` zero-padded by
``(lo, hi)``; with ``G`` groups, ``C = C_in / G`` input and ``C' = C_out / G``
output channels per group, and output channel ``o`` belongs to group
``g(o) = o // C'``. The forward pass is::

    Z[n, o, i] = sum_{c < C} sum_{k < W} Xp[n, g(o) C + c, i s + k d] K[o, c, k] + B[o]

None of these functions differentiates anything: they only choose which
:class:`~jconv._correlate.Correlation` to compute.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ._arrays import accumulated_sum
from ._correlate import correlate
from ._correlation import Correlation
from ._geometry import ConvGeometry
from ._spec import data_axes


def forward(x, kernel, geom: ConvGeometry):
    """``Z = X ⊛ K`` without bias: the correlation of the docstring above.

    Args:
        x: input of shape ``(N, *spatial, C_in)`` (channels_last) or
            ``(N, C_in, *spatial)`` (channels_first).
        kernel: ``(*window, C_in // G, C_out)`` or ``(C_out, C_in // G, *window)``.
        geom: the resolved geometry.

    Returns:
        ``z`` of shape ``geom.output_shape``.
    """
    spec = geom.spec
    nd = spec.ndim
    corr = Correlation(
        lhs_axes=_roles(geom.x_axes),
        rhs_axes=_roles(geom.kernel_axes),
        out_axes=_roles(geom.x_axes),
        window_strides=spec.stride,
        padding=geom.padding,
        lhs_dilation=(1,) * nd,
        rhs_dilation=spec.dilation,
        feature_group_count=spec.groups,
    )
    return correlate(x, kernel, corr, spec.precision, spec.lowering)


def grad_kernel(x, dz, geom: ConvGeometry):
    """``dL/dK``: the correlation of the input with the output gradient.

    Seed: ``dL/dK = conv(X, dL/dZ)``, i.e. ``dL/dK_mn = sum_ij dL/dZ_ij X_(i+m)(j+n)``.

    Generalised: differentiate the forward formula by ``K[o, c, k]``::

        dL/dK[o, c, k] = sum_n sum_{i < O} dZ[n, o, i] Xp[n, g(o) C + c, k d + i s]

    This is again a correlation, with the roles moved: the output position is
    the kernel tap ``k``, the window runs over the output positions ``i``, so the
    forward's *dilation* ``d`` becomes the window stride and the forward's
    *stride* ``s`` becomes the dilation of the window (``dZ``). The batch ``n``
    is summed (it plays the in-feature role), the input channel plays the batch
    role, and output channel ``o`` only meets input channels of its own group:
    ``batch_group_count = G``. The result comes out directly in the kernel layout.

    Padding: the low side keeps the forward's ``lo`` (same ``Xp``). The high side
    must give exactly ``W`` outputs, so the padded length must be
    ``(W-1) d + (O-1) s + 1``::

        hi' = (W-1) d + (O-1) s + 1 - I - lo  =  hi - r,
        r   = (I + lo + hi - (W-1) d - 1) mod s

    where ``r`` counts trailing input entries the forward's stride never reached
    (a negative ``hi'`` crops them). Worked cases: the seed (``I=3, W=2, s=d=1``,
    VALID) has ``O=2, hi'=0``: a valid 2x2 correlation of the 3x3 ``X`` with the
    2x2 ``dZ``. ``I=5, W=2, s=2``, VALID gives ``O=2`` and ``hi' = 1+2+1-5 = -1``:
    ``X[4]`` never touched ``Z``, so it is cropped.

    Args:
        x: the forward input, shape ``geom.input_shape``.
        dz: the output gradient, shape ``geom.output_shape``.
        geom: the resolved geometry.

    Returns:
        ``dk`` of shape ``geom.kernel_shape``.
    """
    spec = geom.spec
    x_n, x_c, x_sp = geom.x_axes
    k_o, k_i, k_sp = geom.kernel_axes
    padding = tuple(
        (m.lo, (m.window - 1) * m.dilation + (m.out - 1) * m.stride + 1 - m.size - m.lo)
        for m in geom.dims()
    )
    corr = Correlation(
        lhs_axes=(x_c, x_n, *x_sp),  # X: channel as batch, batch as feature
        rhs_axes=(x_c, x_n, *x_sp),  # dZ (same layout as X): channel out, batch in
        out_axes=(k_i, k_o, *k_sp),  # dK in the kernel's own layout
        window_strides=spec.dilation,
        padding=padding,
        lhs_dilation=(1,) * spec.ndim,
        rhs_dilation=spec.stride,
        batch_group_count=spec.groups,
    )
    return correlate(x, dz, corr, spec.precision, spec.lowering)


def grad_input(dz, kernel, geom: ConvGeometry):
    """``dL/dX``: a full correlation of the padded, stride-dilated ``dZ`` with rot180(K).

    Seed: ``dL/dX = conv(padded(dL/dZ), rot180(K))``; e.g. for the 3x3 input,
    ``dL/dX22 = dZ11 K22 + dZ12 K21 + dZ21 K12 + dZ22 K11``.

    Generalised: differentiate the forward formula by ``Xp[n, g C + c, p]``::

        dL/dXp[n, g C + c, p] = sum_{o in g} sum_{i, k : i s + k d = p} dZ[n, o, i] K[o, c, k]

    Let ``D`` be ``dZ`` with ``s - 1`` zeros between neighbours (``D[i s] =
    dZ[i]``, the stride becomes a *dilation of dZ*). Then the constraint
    disappears: ``dL/dXp[p] = sum_k sum_o D[p - k d] K[o, c, k]``. Substituting
    ``k -> W-1-k`` turns the convolution into a correlation with the rotated
    kernel::

        dL/dXp[p] = sum_k sum_o D[p - (W-1) d + k d] K[o, c, W-1-k]

    i.e. a stride-1 correlation of ``D`` zero-padded by ``(W-1) d`` on the low
    side with ``rot180(K)`` dilated by ``d``. The sum runs over the output
    channels of the group and yields its input channels, so within each group the
    kernel's in/out channels are swapped (:func:`swap_group_channels`) and the
    correlation has ``feature_group_count = G``.

    Padding: ``dL/dX[j] = dL/dXp[j + lo]``, so the padded low side ``(W-1) d``
    loses ``lo``, and the high side is whatever makes exactly ``I`` outputs::

        lo' = (W-1) d - lo
        hi' = I + lo - (O-1) s - 1  =  (W-1) d - hi + r

    with ``r`` as in :func:`grad_kernel` (input entries beyond the last window get
    gradient 0). Worked cases: the seed (``I=3, W=2, s=d=1``, VALID, ``O=2``)
    gives ``lo' = hi' = 1``: one ring of zeros round the 2x2 ``dZ``, exactly the
    seed's picture. ``I=5, W=3, s=2, lo=hi=1`` gives ``O=3``, ``D = [z0 0 z1 0 z2]``,
    ``lo' = 1, hi' = 1``: ``7 - 3 + 1 = 5 = I`` outputs.

    Args:
        dz: the output gradient, shape ``geom.output_shape``.
        kernel: the forward kernel, shape ``geom.kernel_shape``.
        geom: the resolved geometry.

    Returns:
        ``dx`` of shape ``geom.input_shape``.
    """
    spec = geom.spec
    padding = tuple(
        ((m.window - 1) * m.dilation - m.lo, m.size + m.lo - (m.out - 1) * m.stride - 1)
        for m in geom.dims()
    )
    rotated = lax.rev(swap_group_channels(kernel, geom), geom.kernel_axes[2])
    corr = Correlation(
        lhs_axes=_roles(geom.x_axes),
        rhs_axes=_roles(geom.kernel_axes),
        out_axes=_roles(geom.x_axes),
        window_strides=(1,) * spec.ndim,
        padding=padding,
        lhs_dilation=spec.stride,
        rhs_dilation=spec.dilation,
        feature_group_count=spec.groups,
    )
    return correlate(dz, rotated, corr, spec.precision, spec.lowering)


def grad_bias(dz, layout: str):
    """``dL/dB = sum(dL/dZ)``: the seed's rule, summed over every axis but channels.

    ``B[o]`` is added to every ``Z[n, o, i]``, so ``dL/dB[o] = sum_{n, i} dZ[n, o, i]``
    (the seed's ``dZ11 + dZ12 + dZ21 + dZ22`` for one channel and one example).
    Half-precision ``dz`` is summed in float32.

    Args:
        dz: output gradient ``(N, *spatial, C_out)`` or ``(N, C_out, *spatial)``.
        layout: ``"channels_last"`` or ``"channels_first"``.

    Returns:
        ``db`` of shape ``(C_out,)`` and the dtype of ``dz``.
    """
    _, ch, _ = data_axes(layout, dz.ndim - 2)
    return accumulated_sum(dz, tuple(a for a in range(dz.ndim) if a != ch))


def swap_group_channels(kernel, geom: ConvGeometry):
    """Swaps a kernel's in/out channels within each group, keeping its layout.

    A kernel with ``C_out = G C'`` outputs and ``C`` inputs per group is, per
    group ``g``, a ``C' x C`` block. The input-gradient correlation consumes the
    ``C'`` output channels of the group and produces its ``C`` input channels, so
    it needs each block transposed: the result has ``G C`` "outputs" (group-major)
    and ``C'`` "inputs", stored in the same axes. With ``G = 1`` this is the
    plain swap; for depthwise (``C = 1``) it is a reshape.
    """
    g = geom.spec.groups
    k_o, k_i, _ = geom.kernel_axes
    k = jnp.moveaxis(kernel, (k_o, k_i), (0, 1))
    c_out, c_in_g, *window = k.shape
    k = k.reshape(g, c_out // g, c_in_g, *window)
    k = jnp.swapaxes(k, 1, 2).reshape(g * c_in_g, c_out // g, *window)
    return jnp.moveaxis(k, (0, 1), (k_o, k_i))


def _roles(axes):
    """Flattens ``(a, b, spatial)`` into the ``(a, b, *spatial)`` role tuple."""
    first, second, spatial = axes
    return (first, second, *spatial)
