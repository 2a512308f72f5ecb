"""The public rules agree with jconv.reference, the NumPy float64 loop oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Config, assert_close, lax_oracle

import jconv

SMALL = [
    Config(2, (5,), (3,), 2, 3),
    Config(1, (7,), (2,), 4, 4, groups=4, stride=2, padding="SAME", layout="channels_first"),
    Config(
        2, (6, 5), (3, 2), 4, 6, groups=2, stride=(2, 1), padding=((1, 2), (0, 1)), dilation=(1, 2)
    ),
    Config(
        3,
        (5, 6),
        (2, 3),
        3,
        6,
        groups=3,
        stride=(1, 3),
        padding="SAME_LOWER",
        layout="channels_first",
    ),
    Config(1, (7, 8), (3, 3), 2, 2, stride=3, padding="SAME", dilation=2, bias=False),
    Config(
        2,
        (4, 5, 3),
        (2, 3, 2),
        2,
        4,
        groups=2,
        stride=(2, 1, 1),
        padding=1,
        layout="channels_first",
    ),
    Config(1, (4, 3, 5), (1, 2, 3), 3, 2, padding="SAME", dilation=(1, 1, 2)),
    # Padding larger than the dilated kernel: the case XLA:CPU gets wrong (xla#48713).
    Config(2, (6, 5), (1, 2), 2, 3, padding=((3, 1), (2, 2))),
    Config(2, (9,), (3,), 2, 4, groups=2, stride=2, padding=((4, 5),), layout="channels_first"),
    # XLA's operand swapper aborts on lax's input gradient here (2-wide, stride 2,
    # low padding 1 next to a dim where the kernel outgrows dz).
    Config(1, (3, 3, 4), (2, 3, 2), 3, 2, stride=(2, 3, 2), padding=1),
    Config(2, (2, 2), (2, 3), 2, 3, stride=(2, 3), padding=1, layout="channels_first"),
    # Every input entry sits between two strided windows: dx is all zero in dim 1.
    Config(1, (1, 1), (1, 1), 1, 1, stride=(1, 2), padding=1),
]


@pytest.mark.parametrize("config", SMALL)
def test_public_rules_match_reference(config, x64):
    params, x, ct = config.arrays(jnp.float64, seed=3)
    kw = config.kwargs
    # Jitted: run eagerly, every operation of a lowering compiles on its own.
    k_shape = params["kernel"].shape
    assert_close(
        jax.jit(lambda p, x: jconv.conv_forward(p, x, **kw))(params, x),
        jconv.reference.conv_forward(params, x, **kw),
        jnp.float64,
    )
    assert_close(
        jax.jit(lambda ct, k: jconv.conv_grad_input(ct, k, x.shape, **kw))(ct, params["kernel"]),
        jconv.reference.conv_grad_input(ct, params["kernel"], x.shape, **kw),
        jnp.float64,
    )
    assert_close(
        jax.jit(lambda x, ct: jconv.conv_grad_kernel(x, ct, k_shape, **kw))(x, ct),
        jconv.reference.conv_grad_kernel(x, ct, params["kernel"].shape, **kw),
        jnp.float64,
    )
    assert_close(
        jconv.conv_grad_bias(ct, layout=config.layout),
        jconv.reference.conv_grad_bias(ct, layout=config.layout),
        jnp.float64,
    )


@pytest.mark.parametrize("config", SMALL)
def test_reference_matches_lax_autodiff(config, x64):
    """The two oracles agree with each other (so neither is a copy of jconv)."""
    params, x, ct = config.arrays(jnp.float64, seed=4)
    kw = config.kwargs
    z, vjp = jax.vjp(lambda p, x: lax_oracle(p, x, **kw, precision="highest"), params, x)
    gp, gx = vjp(ct)
    assert_close(jconv.reference.conv_forward(params, x, **kw), z, jnp.float64)
    assert_close(
        jconv.reference.conv_grad_input(ct, params["kernel"], x.shape, **kw), gx, jnp.float64
    )
    assert_close(
        jconv.reference.conv_grad_kernel(x, ct, params["kernel"].shape, **kw),
        gp["kernel"],
        jnp.float64,
    )


def test_padding_beyond_kernel_is_right_where_lax_autodiff_is_not(x64):
    """A 1x1 conv with padding 1: the input gradient crops the padding back off."""
    config = Config(2, (5, 6), (1, 1), 3, 4, padding=1)
    params, x, ct = config.arrays(jnp.float64, seed=5)
    gx = jax.grad(lambda x: jnp.sum(jconv.conv_forward(params, x, padding=1) * ct))(x)
    expected = jconv.reference.conv_grad_input(ct, params["kernel"], x.shape, padding=1)
    assert_close(gx, expected, jnp.float64)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_propagate_like_the_references(bad, x64):
    config = Config(2, (5, 6), (2, 3), 2, 3, stride=(1, 2), padding="SAME")
    params, x, ct = config.arrays(jnp.float64, seed=6)
    x = x.at[1, 2, 3, 0].set(bad).at[0, 0, 0, 1].set(-bad)
    kw = config.kwargs
    z, vjp = jax.vjp(lambda p, x: jconv.conv_forward(p, x, **kw), params, x)
    gp, gx = vjp(ct)
    z_lax, vjp_lax = jax.vjp(
        lambda p, x: jconv.autodiff.conv_forward(p, x, **kw, precision="highest"), params, x
    )
    gp_lax, gx_lax = vjp_lax(ct)
    ref = jconv.reference
    for actual, lax_value, ref_value in [
        (z, z_lax, ref.conv_forward(params, x, **kw)),
        (gp["kernel"], gp_lax["kernel"], ref.conv_grad_kernel(x, ct, params["kernel"].shape, **kw)),
        (gx, gx_lax, ref.conv_grad_input(ct, params["kernel"], x.shape, **kw)),
    ]:
        actual, lax_value = np.asarray(actual), np.asarray(lax_value)
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(ref_value))
        np.testing.assert_array_equal(np.isinf(actual), np.isinf(ref_value))
        np.testing.assert_array_equal(np.isnan(actual), np.isnan(lax_value))
        np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(lax_value))
        finite = np.isfinite(ref_value)
        np.testing.assert_allclose(actual[finite], ref_value[finite], rtol=1e-12)
    assert np.isnan(np.asarray(gp["kernel"])).any() or np.isinf(np.asarray(gp["kernel"])).any()
