"""A slow, obviously-correct NumPy float64 oracle for the convolution and its rules.

Every function here is a direct loop over the seed's element formulas, with no
JAX and no clever indexing, so that it can serve as a third, independent witness
next to jconv's rules and ``jax.grad`` of ``lax.conv_general_dilated``. The
seed's 3x3-input, 2x2-kernel case reads::

    Z_ij     = sum_mn X_(i+m)(j+n) K_mn + B
    dL/dK_mn = sum_ij dL/dZ_ij X_(i+m)(j+n)
    dL/dX_pq = sum_{ij, mn : i+m=p, j+n=q} dL/dZ_ij K_mn
    dL/dB    = sum_ij dL/dZ_ij

Generalised, every term is a *tap*: an output position ``i``, a kernel offset
``k`` and the input position ``j = i * stride + k * dilation - pad_low`` it reads
(per spatial dim). Taps that land on padding read zeros and are skipped. For each
tap and group, the sums over channels and batch are small matrix products; the
loops over taps are plain Python. Use it on small shapes only.

All functions take the same keyword arguments as their jconv counterparts
(``precision`` is accepted and ignored: everything is float64) and return NumPy
float64 arrays in the caller's layout.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ._spec import ConvSpec, make_spec

__all__ = [
    "avg_pool_grad_input",
    "conv_forward",
    "conv_grad_bias",
    "conv_grad_input",
    "conv_grad_kernel",
    "dense_forward",
    "max_pool_grad_input",
]


def _spec(ndim: int, kwargs: dict[str, Any], where: str) -> ConvSpec:
    return make_spec(ndim, **kwargs, where=f"reference.{where}")


def _to_channels_first(a: np.ndarray, layout: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a if layout == "channels_first" else np.moveaxis(a, -1, 1)


def _from_channels_first(a: np.ndarray, layout: str) -> np.ndarray:
    return a if layout == "channels_first" else np.moveaxis(a, 1, -1)


def _kernel_to_oiw(k: np.ndarray, layout: str) -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    return k if layout == "channels_first" else np.moveaxis(k, (-1, -2), (0, 1))


def _kernel_from_oiw(k: np.ndarray, layout: str) -> np.ndarray:
    return k if layout == "channels_first" else np.moveaxis(k, (0, 1), (-1, -2))


def _shape_to_channels_first(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    shape = tuple(shape)
    return shape if layout == "channels_first" else (shape[0], shape[-1], *shape[1:-1])


def _kernel_shape_to_oiw(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    shape = tuple(shape)
    return shape if layout == "channels_first" else (shape[-1], shape[-2], *shape[:-2])


def _pads(spec: ConvSpec, sizes, window) -> list[tuple[int, int]]:
    """Explicit padding; SAME makes ``ceil(I / s)`` outputs, odd pad high (LOWER: low)."""
    if spec.padding == "VALID":
        return [(0, 0)] * spec.ndim
    if not isinstance(spec.padding, str):
        return list(spec.padding)
    pads = []
    for i, w, s, d in zip(sizes, window, spec.stride, spec.dilation, strict=True):
        n_out = -(-i // s)
        total = max(0, (n_out - 1) * s + (w - 1) * d + 1 - i)
        half = total // 2
        pads.append((total - half, half) if spec.padding == "SAME_LOWER" else (half, total - half))
    return pads


def _out_sizes(spec: ConvSpec, sizes, window, pads) -> list[int]:
    """Counts window positions whose last tap still lies inside the padded input."""
    outs = []
    for i, w, s, d, (lo, hi) in zip(sizes, window, spec.stride, spec.dilation, pads, strict=True):
        n = 0
        while n * s + (w - 1) * d <= i + lo + hi - 1:
            n += 1
        if n == 0:
            raise ValueError("reference: kernel larger than the padded input")
        outs.append(n)
    return outs


def _taps(spec: ConvSpec, sizes, window, pads, outs) -> Iterator[tuple[tuple, tuple, tuple]]:
    """Yields ``(i, k, j)``: output position, kernel offset, input position read."""
    for i in itertools.product(*(range(o) for o in outs)):
        for k in itertools.product(*(range(w) for w in window)):
            j = tuple(
                ii * s + kk * d - lo
                for ii, kk, s, d, (lo, _) in zip(
                    i, k, spec.stride, spec.dilation, pads, strict=True
                )
            )
            if all(0 <= jj < n for jj, n in zip(j, sizes, strict=True)):
                yield i, k, j


def _group_slices(c_in: int, c_out: int, groups: int):
    cg, og = c_in // groups, c_out // groups
    for g in range(groups):
        yield slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)


def _setup(spec: ConvSpec, x_shape_cf, k_shape_oiw):
    sizes, window = x_shape_cf[2:], k_shape_oiw[2:]
    pads = _pads(spec, sizes, window)
    outs = _out_sizes(spec, sizes, window, pads)
    return list(_taps(spec, sizes, window, pads, outs)), outs


def conv_forward(params: Mapping[str, Any], x, **spec_kwargs) -> np.ndarray:
    """``Z[n, o, i] = sum_{c, k} X[n, c, i*s + k*d - lo] K[o, c, k] + B[o]`` by loops."""
    kernel = np.asarray(params["kernel"])
    spec = _spec(kernel.ndim - 2, spec_kwargs, "conv_forward")
    xc = _to_channels_first(x, spec.layout)
    k = _kernel_to_oiw(kernel, spec.layout)
    taps, outs = _setup(spec, xc.shape, k.shape)
    n, c_in, c_out = xc.shape[0], xc.shape[1], k.shape[0]
    z = np.zeros((n, c_out, *outs))
    for i, kk, j in taps:
        for cs, os in _group_slices(c_in, c_out, spec.groups):
            # Z_i += sum_c X_j K_k   (the seed's Z_ij = sum X K, one tap)
            z[(slice(None), os, *i)] += xc[(slice(None), cs, *j)] @ k[(os, slice(None), *kk)].T
    bias = params.get("bias")
    if bias is not None:
        z += np.asarray(bias, dtype=np.float64).reshape((1, c_out) + (1,) * len(outs))
    return _from_channels_first(z, spec.layout)


def conv_grad_kernel(x, dz, kernel_shape: Sequence[int], **spec_kwargs) -> np.ndarray:
    """``dL/dK[o, c, k] = sum_{n, i} dZ[n, o, i] X[n, c, i*s + k*d - lo]`` by loops."""
    spec = _spec(len(kernel_shape) - 2, spec_kwargs, "conv_grad_kernel")
    xc = _to_channels_first(x, spec.layout)
    dzc = _to_channels_first(dz, spec.layout)
    k_shape = _kernel_shape_to_oiw(kernel_shape, spec.layout)
    taps, _ = _setup(spec, xc.shape, k_shape)
    dk = np.zeros(k_shape)
    for i, kk, j in taps:
        for cs, os in _group_slices(xc.shape[1], k_shape[0], spec.groups):
            # dL/dK_k += sum_n dL/dZ_i X_j
            dk[(os, slice(None), *kk)] += dzc[(slice(None), os, *i)].T @ xc[(slice(None), cs, *j)]
    return _kernel_from_oiw(dk, spec.layout)


def conv_grad_input(dz, kernel, input_shape: Sequence[int], **spec_kwargs) -> np.ndarray:
    """``dL/dX[n, c, j] = sum_{(i, k) -> j} sum_o dZ[n, o, i] K[o, c, k]`` by loops.

    The seed's ``dL/dX_mn = sum_ij dL/dZ_ij dZ_ij/dX_mn``: every tap that read
    ``X_j`` sends back its ``dZ_i`` times the kernel entry it was multiplied by.
    """
    kernel = np.asarray(kernel)
    spec = _spec(kernel.ndim - 2, spec_kwargs, "conv_grad_input")
    dzc = _to_channels_first(dz, spec.layout)
    k = _kernel_to_oiw(kernel, spec.layout)
    x_shape = _shape_to_channels_first(input_shape, spec.layout)
    taps, _ = _setup(spec, x_shape, k.shape)
    dx = np.zeros(x_shape)
    for i, kk, j in taps:
        for cs, os in _group_slices(x_shape[1], k.shape[0], spec.groups):
            dx[(slice(None), cs, *j)] += dzc[(slice(None), os, *i)] @ k[(os, slice(None), *kk)]
    return _from_channels_first(dx, spec.layout)


def conv_grad_bias(dz, *, layout: str = "channels_last") -> np.ndarray:
    """``dL/dB[o] = sum_{n, i} dZ[n, o, i]`` by an explicit loop over positions."""
    dzc = _to_channels_first(dz, layout)
    db = np.zeros(dzc.shape[1])
    for n in range(dzc.shape[0]):
        for i in itertools.product(*(range(s) for s in dzc.shape[2:])):
            db += dzc[(n, slice(None), *i)]
    return db


def dense_forward(params: Mapping[str, Any], x) -> np.ndarray:
    """``Z[n, o] = sum_i X[n, i] W[i, o] + B[o]`` by an explicit loop over ``i``."""
    x = np.asarray(x, np.float64)
    w = np.asarray(params["kernel"], np.float64)
    z = np.zeros((*x.shape[:-1], w.shape[1]))
    for i in range(w.shape[0]):
        z += x[..., i : i + 1] * w[i]
    if params.get("bias") is not None:
        z += np.asarray(params["bias"], np.float64)
    return z


def _pool_windows(x_cf: np.ndarray, window, stride, padding):
    """Yields ``(output index, [input index or None for padding, ...])`` per window."""
    sizes = x_cf.shape[2:]
    outs = [
        (i + lo + hi - w) // s + 1
        for i, w, s, (lo, hi) in zip(sizes, window, stride, padding, strict=True)
    ]
    for o in itertools.product(*(range(n) for n in outs)):
        members = []
        for k in itertools.product(*(range(w) for w in window)):
            j = tuple(
                oo * s + kk - lo for oo, kk, s, (lo, _) in zip(o, k, stride, padding, strict=True)
            )
            inside = all(0 <= jj < n for jj, n in zip(j, sizes, strict=True))
            members.append(j if inside else None)
        yield o, members


def _pool_args(x_shape, window, stride, padding, layout, where):
    from ._pool import pool_geometry

    geom = pool_geometry(x_shape, window, stride, padding, layout, f"reference.{where}")
    return geom.window, geom.stride, geom.padding


def max_pool_grad_input(dz, x, window, *, stride=None, padding="VALID", layout="channels_last"):
    """Each window's ``dZ`` goes to its first maximal entry (row-major), by loops.

    Padding entries are ``-inf`` and only win a window that holds nothing larger.
    """
    x_cf, dz_cf = _to_channels_first(x, layout), _to_channels_first(dz, layout)
    window, stride, padding = _pool_args(np.shape(x), window, stride, padding, layout, "max_pool")
    dx = np.zeros(x_cf.shape)
    for o, members in _pool_windows(x_cf, window, stride, padding):
        for n in range(x_cf.shape[0]):
            for c in range(x_cf.shape[1]):
                best, where, chosen = -np.inf, None, False
                for j in members:
                    value = -np.inf if j is None else x_cf[(n, c, *j)]
                    if not chosen or value > best:
                        best, where, chosen = value, j, True
                if where is not None:  # a padding entry won: nothing to route
                    dx[(n, c, *where)] += dz_cf[(n, c, *o)]
    return _from_channels_first(dx, layout)


def avg_pool_grad_input(
    dz, input_shape, window, *, stride=None, padding="VALID", layout="channels_last"
):
    """Every window entry (padding included in the count) gets ``dZ / prod(window)``."""
    dz_cf = _to_channels_first(dz, layout)
    shape_cf = _shape_to_channels_first(input_shape, layout)
    window, stride, padding = _pool_args(
        tuple(input_shape), window, stride, padding, layout, "avg_pool"
    )
    dx = np.zeros(shape_cf)
    size = float(np.prod(window))
    for o, members in _pool_windows(np.zeros(shape_cf), window, stride, padding):
        for j in members:
            if j is not None:
                dx[(slice(None), slice(None), *j)] += dz_cf[(slice(None), slice(None), *o)] / size
    return _from_channels_first(dx, layout)
