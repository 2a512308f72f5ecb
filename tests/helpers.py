"""Shared test helpers: tolerances, random configurations and the lax oracle."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import jconv

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
        z_shape = jax.eval_shape(
            lambda p, x: jconv.autodiff.conv_forward(p, x, **self.kwargs), params, x
        ).shape
        ct = jnp.asarray(rng.normal(size=z_shape), dtype)
        return params, x, ct


def value_and_grads(forward, config, params, x, ct, precision="highest"):
    """``z`` and the gradients of ``sum(z * ct)`` w.r.t. params and x, jitted."""

    def loss(p, x):
        z = forward(p, x, **config.kwargs, precision=precision)
        return jnp.sum(z * ct), z

    (_, z), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return z, grads


def lax_oracle(params, x, **kwargs):
    """``jax.grad``-able lax convolution, steering clear of openxla/xla#48713."""
    return jconv.autodiff.conv_forward(params, x, **kwargs, pre_pad="auto")


def check_against_lax(config, dtype):
    params, x, ct = config.arrays(dtype)
    z, (gp, gx) = value_and_grads(jconv.conv_forward, config, params, x, ct)
    z_ref, (gp_ref, gx_ref) = value_and_grads(lax_oracle, config, params, x, ct)
    for name, a, b in [
        ("z", z, z_ref),
        ("dx", gx, gx_ref),
        ("dkernel", gp["kernel"], gp_ref["kernel"]),
    ] + ([("dbias", gp["bias"], gp_ref["bias"])] if config.bias else []):
        assert a.dtype == jnp.dtype(dtype), (name, a.dtype)
        assert_close(a, b, dtype, err_msg=f"{name} for {config}")
