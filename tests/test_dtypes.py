"""Outputs and gradients keep the input dtype; half precision accumulates in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Config, assert_close

import jconv

CONFIG = Config(2, (8, 7), (3, 3), 4, 6, groups=2, stride=(1, 2), padding="SAME")
DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_dtype_is_kept_and_values_are_accurate(dtype, x64):
    params, x, ct = CONFIG.arrays(dtype)
    kw = CONFIG.kwargs

    def loss(p, x):
        z = jconv.conv_forward(p, x, **kw)
        return jnp.sum(z.astype(jnp.float64) * ct.astype(jnp.float64)), z

    (_, z), (gp, gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    for name, value in [("z", z), ("dx", gx), ("dkernel", gp["kernel"]), ("dbias", gp["bias"])]:
        assert value.dtype == jnp.dtype(dtype), (name, value.dtype)
    # Compare with the float64 NumPy reference on the same (rounded) inputs.
    ref = jconv.reference
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x64_, ct64 = np.asarray(x, np.float64), np.asarray(ct.astype(dtype), np.float64)
    assert_close(z, ref.conv_forward(p64, x64_, **kw), dtype)
    assert_close(gx, ref.conv_grad_input(ct64, p64["kernel"], x.shape, **kw), dtype)
    assert_close(gp["kernel"], ref.conv_grad_kernel(x64_, ct64, p64["kernel"].shape, **kw), dtype)
    assert_close(gp["bias"], ref.conv_grad_bias(ct64), dtype)


def test_half_precision_accumulates_in_float32():
    # 4096 products of 1 * 1: float16 accumulation would stall at 2048.
    x = jnp.ones((1, 64, 64, 1), jnp.float16)
    z = jconv.conv_forward({"kernel": jnp.ones((64, 64, 1, 1), jnp.float16)}, x)
    assert z.dtype == jnp.float16
    assert float(z[0, 0, 0, 0]) == 4096.0
    dk = jconv.conv_grad_kernel(x, jnp.ones((1, 1, 1, 1), jnp.float16), (64, 64, 1, 1))
    db = jconv.conv_grad_bias(jnp.ones((1, 64, 64, 1), jnp.bfloat16))
    assert float(dk.sum()) == 4096.0 and float(db[0]) == 4096.0


def test_mixed_dtypes_promote_and_gradients_keep_each_dtype():
    params, x, ct = CONFIG.arrays(jnp.float32)
    params = {"kernel": params["kernel"].astype(jnp.bfloat16), "bias": params["bias"]}
    z = jconv.conv_forward(params, x, **CONFIG.kwargs)
    assert z.dtype == jnp.float32
    gp, gx = jax.grad(
        lambda p, x: jnp.sum(jconv.conv_forward(p, x, **CONFIG.kwargs) * ct), argnums=(0, 1)
    )(params, x)
    assert (
        gp["kernel"].dtype == jnp.bfloat16
        and gp["bias"].dtype == jnp.float32
        and gx.dtype == jnp.float32
    )


def test_integer_input_is_refused():
    params, _, _ = CONFIG.arrays()
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        jconv.conv_forward(params, jnp.ones(CONFIG.x_shape, jnp.int32), **CONFIG.kwargs)
