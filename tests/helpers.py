"""Shared test helpers: tolerances, random configurations and the lax oracle."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import jconv
from jconv._spec import data_axes, make_spec

# Relative tolerances (scaled by the largest magnitude of the expected array).
TOL = {
    jnp.dtype(jnp.float64): 1e-12,
    jnp.dtype(jnp.float32): 1e-5,
    jnp.dtype(jnp.float16): 2e-2,
    jnp.dtype(jnp.bfloat16): 5e-2,
}


def assert_close(actual, desired, dtype=None, err_msg=""):
    desired = np.asarray(desired, dtype=np.float64)
    actual = np.asarray(actual).astype(np.float64)
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.dtype(jnp.float32)
    tol = TOL[dtype]
    scale = float(np.max(np.abs(desired), initial=0.0)) or 1.0
    assert actual.shape == desired.shape, (actual.shape, desired.shape, err_msg)
    np.testing.assert_allclose(actual, desired, rtol=tol, atol=tol * scale, err_msg=err_msg)


@dataclasses.dataclass(frozen=True)
class Config:
    """One convolution: shapes and the static arguments of ``conv_forward``."""

    batch: int
    spatial: tuple[int, ...]
    window: tuple[int, ...]
    c_in: int
    c_out: int
    groups: int = 1
    stride: object = 1
    padding: object = "VALID"
    dilation: object = 1
    layout: str = "channels_last"
    bias: bool = True

    @property
    def kwargs(self):
        return dict(
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            layout=self.layout,
        )

    @property
    def x_shape(self):
        if self.layout == "channels_last":
            return (self.batch, *self.spatial, self.c_in)
        return (self.batch, self.c_in, *self.spatial)

    @property
    def kernel_shape(self):
        if self.layout == "channels_last":
            return (*self.window, self.c_in // self.groups, self.c_out)
        return (self.c_out, self.c_in // self.groups, *self.window)

    def arrays(self, dtype=jnp.float32, seed=0):
        """``(params, x, ct)`` with ``ct`` a random cotangent of ``z``'s shape."""
        rng = np.random.default_rng(seed)
        params = {"kernel": jnp.asarray(rng.normal(size=self.kernel_shape), dtype)}
        if self.bias:
            params["bias"] = jnp.asarray(rng.normal(size=(self.c_out,)), dtype)
        x = jnp.asarray(rng.normal(size=self.x_shape), dtype)
        z_shape = jax.eval_shape(lambda p, x: jconv.autodiff.conv_forward(p, x, **self.kwargs), params, x).shape
        ct = jnp.asarray(rng.normal(size=z_shape), dtype)
        return params, x, ct


def value_and_grads(forward, config, params, x, ct, precision="highest"):
    """``z`` and the gradients of ``sum(z * ct)`` w.r.t. params and x, jitted."""

    def loss(p, x):
        z = forward(p, x, **config.kwargs, precision=precision)
        return jnp.sum(z * ct), z

    (_, z), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return z, grads


def hits_xla_cpu_padding_bug(config):
    """Whether ``jax.grad`` of lax's conv meets openxla/xla#48713 on XLA:CPU.

    Its input-gradient convolution then has negative low and positive high
    padding, which XLA:CPU computes wrongly (out-of-bounds reads): that happens
    when an explicit low padding exceeds the dilated kernel's extent.
    """
    if isinstance(config.padding, str):
        return False
    spec = make_spec(len(config.window), **config.kwargs)
    return any(
        lo > (w - 1) * d for (lo, _), w, d in zip(spec.padding, config.window, spec.dilation, strict=True)
    )


def lax_oracle(config):
    """``jax.grad``-able lax convolution for ``config``.

    Where lax would hit openxla/xla#48713 on this backend, the same convolution is
    written as ``lax.conv_general_dilated(jnp.pad(x), VALID)``, whose autodiff
    never asks XLA for negative padding.
    """
    if not (hits_xla_cpu_padding_bug(config) and jax.default_backend() == "cpu"):
        return jconv.autodiff.conv_forward
    spec = make_spec(len(config.window), **config.kwargs)
    _, _, spatial = data_axes(spec.layout, spec.ndim)

    def prepadded(params, x, **kwargs):
        widths = [(0, 0)] * x.ndim
        for axis, pad in zip(spatial, spec.padding, strict=True):
            widths[axis] = pad
        return jconv.autodiff.conv_forward(params, jnp.pad(x, widths), **{**kwargs, "padding": "VALID"})

    return prepadded


def check_against_lax(config, dtype):
    params, x, ct = config.arrays(dtype)
    z, (gp, gx) = value_and_grads(jconv.conv_forward, config, params, x, ct)
    z_ref, (gp_ref, gx_ref) = value_and_grads(lax_oracle(config), config, params, x, ct)
    for name, a, b in [("z", z, z_ref), ("dx", gx, gx_ref), ("dkernel", gp["kernel"], gp_ref["kernel"])] + (
        [("dbias", gp["bias"], gp_ref["bias"])] if config.bias else []
    ):
        assert a.dtype == jnp.dtype(dtype), (name, a.dtype)
        assert_close(a, b, dtype, err_msg=f"{name} for {config}")
