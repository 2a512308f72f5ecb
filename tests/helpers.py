"""Shared test helpers: tolerances, random configurations and the lax oracle."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv
from jconv import _bench
from jconv._correlation import Correlation
from jconv.testing import ConvConfig

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


Config = ConvConfig  # the project's tests use the public configuration type


def value_and_grads(forward, config, params, x, ct, precision="highest"):
    """``z`` and the gradients of ``sum(z * ct)`` w.r.t. params and x, jitted."""
    return _compiled(forward, config, precision)(params, x, ct)


@functools.lru_cache(maxsize=64)
def _compiled(forward, config, precision):
    def loss(p, x, ct):
        z = forward(p, x, **config.kwargs, precision=precision)
        return jnp.sum(z * ct), z

    grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)

    def run(p, x, ct):
        (_, z), g = grads(p, x, ct)
        return z, g

    return jax.jit(run)


# jconv's forward with each lowering forced (module-level: cache keys by identity).
JCONV = {
    lowering: functools.partial(jconv.conv_forward, lowering=lowering)
    for lowering in ("auto", "xla", "taps", "winograd", "measured")
}


def lax_oracle(params, x, **kwargs):
    """``jax.grad``-able lax convolution, steering clear of openxla/xla#48713."""
    return jconv.autodiff.conv_forward(params, x, **kwargs, pre_pad="auto")


def check_against_lax(config, dtype):
    """jconv's values and gradients vs ``jax.grad`` of lax, elementwise.

    Each entry of ``z``, ``dx`` and ``dkernel`` is a sum of products, so its
    rounding error is bounded by a multiple of the same sum over the products'
    absolute values; that sum (the same computation on ``|x|``, ``|kernel|`` and
    ``|ct|``) is the scale the relative tolerance applies to. Cancellation in a
    small entry then cannot fail a correct rule, while a wrong rule is off by
    O(1) of that scale.
    """
    params, x, ct = config.arrays(dtype)
    z, (gp, gx) = value_and_grads(JCONV[config.lowering], config, params, x, ct)
    # The oracle ignores the lowering: one compiled oracle serves them all.
    oracle = dataclasses.replace(config, lowering="auto")
    z_ref, (gp_ref, gx_ref) = value_and_grads(lax_oracle, oracle, params, x, ct)
    abs_params = jax.tree.map(jnp.abs, params)
    abs_x, abs_ct = jnp.abs(x), jnp.abs(ct)
    z_abs, (gp_abs, gx_abs) = value_and_grads(lax_oracle, oracle, abs_params, abs_x, abs_ct)
    checks = [
        ("z", z, z_ref, z_abs),
        ("dx", gx, gx_ref, gx_abs),
        ("dkernel", gp["kernel"], gp_ref["kernel"], gp_abs["kernel"]),
    ]
    if config.bias:
        checks.append(("dbias", gp["bias"], gp_ref["bias"], gp_abs["bias"]))
    tol = TOL[jnp.dtype(dtype)]
    for name, a, b, bound in checks:
        assert a.dtype == jnp.dtype(dtype), (name, a.dtype)
        a, b, bound = (np.asarray(v, np.float64) for v in (a, b, bound))
        assert a.shape == b.shape, (name, a.shape, b.shape)
        if config.lowering == "winograd" and name != "dbias":
            bound = _neighbourhood_bound(bound, config, name)
        err = np.abs(a - b)
        limit = tol * (bound + np.finfo(np.float32).tiny)
        worst = np.unravel_index(np.argmax(err / limit), err.shape) if err.size else None
        assert np.all(err <= limit), (
            f"{name} for {config}: worst entry {worst}: {a[worst]} vs {b[worst]}, "
            f"error {err[worst]:.3g} > {tol:g} x sum|terms| {bound[worst]:.3g}"
        )


def check_against_lax_afresh(config, dtype):
    """:func:`check_against_lax`, compiled afresh: for a lowering patched by the
    test (compiled programs are cached by configuration alone)."""
    _compiled.cache_clear()
    try:
        check_against_lax(config, dtype)
    finally:
        _compiled.cache_clear()


def _neighbourhood_bound(bound, config, name):
    """Winograd's bound: each entry's ``sum |terms|`` replaced by the largest over
    its spatial axes (per image and channel; per channel pair for the kernel).

    Winograd's transforms add a tile's products, its neighbours' terms among
    them, and let them cancel (``jconv/_winograd.py``), so an output's rounding
    error scales with the terms around it; an entry much smaller than its
    neighbours fails a bound of its own terms alone while correct. A wrong
    transform is still off by O(1) of that scale.
    """
    d = len(config.spatial)
    if name == "dkernel":
        axes = range(d) if config.layout == "channels_last" else range(2, 2 + d)
    else:
        axes = range(1, 1 + d) if config.layout == "channels_last" else range(2, 2 + d)
    return np.broadcast_to(np.max(bound, axis=tuple(axes), keepdims=True), bound.shape)


def dk_correlation(padding, stride=(1, 1), dilation=(1, 1)):
    """The kernel gradient's correlation of an NHWC forward (as ``_rules.grad_kernel``)."""
    return Correlation(
        lhs_axes=(3, 0, 1, 2),
        rhs_axes=(3, 0, 1, 2),
        out_axes=(2, 3, 0, 1),
        window_strides=dilation,
        padding=padding,
        lhs_dilation=(1, 1),
        rhs_dilation=stride,
    )


def bench_step_temp_bytes(shape) -> tuple[int, int]:
    """Compiled temporary bytes of ``jconv bench``'s step (``_bench._grad_fn``) of
    ``shape``: jconv's and autodiff's."""
    params, x, ct = shape.config.arrays()
    forwards = (jconv.conv_forward, jconv.autodiff.conv_forward)
    return tuple(_bench._compile(_bench._grad_fn(f, shape), params, x, ct)[2] for f in forwards)


def kernel_gradient_calls(config, module, name, *, lowering=None, dtype=jnp.float32, platform=None):
    """Whether tracing ``config``'s kernel gradient calls ``module.name``, and its
    lowering for ``platform`` (StableHLO text; ``None`` without a platform).

    ``lowering`` defaults to ``config.lowering``. Every branch of a
    ``lax.platform_dependent`` is traced, so a call says the lowering was
    considered; the text says what the platform keeps.
    """
    calls = []
    real = getattr(module, name)
    params, x, _ = config.arrays(dtype)
    kw = dict(config.kwargs, lowering=lowering or config.lowering)
    z = jax.eval_shape(lambda p, x: jconv.conv_forward(p, x, **kw), params, x)
    fn = jax.jit(lambda x, dz: jconv.conv_grad_kernel(x, dz, params["kernel"].shape, **kw))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, name, lambda *a, **k: calls.append(a) or real(*a, **k))
        traced = fn.trace(x, z)
        text = None if platform is None else traced.lower(lowering_platforms=(platform,)).as_text()
    return bool(calls), text
