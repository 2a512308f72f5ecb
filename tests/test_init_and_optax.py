"""conv_init shapes and statistics, and optax training steps through jconv."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jconv


@pytest.mark.parametrize(
    "layout, kernel_size, groups, expected",
    [
        ("channels_last", (3, 5), 1, (3, 5, 8, 16)),
        ("channels_first", (3, 5), 1, (16, 8, 3, 5)),
        ("channels_last", 7, 4, (7, 2, 16)),
        ("channels_first", (2, 3, 4), 8, (16, 1, 2, 3, 4)),
    ],
)
def test_conv_init_shapes(layout, kernel_size, groups, expected):
    params = jconv.conv_init(jax.random.key(0), 8, 16, kernel_size, groups=groups, layout=layout)
    assert params["kernel"].shape == expected
    assert params["bias"].shape == (16,) and not np.any(np.asarray(params["bias"]))
    x_shape = (
        (2, 8, *([9] * (len(expected) - 2)))
        if layout == "channels_first"
        else (2, *([9] * (len(expected) - 2)), 8)
    )
    z = jax.eval_shape(
        lambda p, x: jconv.conv_forward(p, x, groups=groups, layout=layout, padding="SAME"),
        params,
        jax.ShapeDtypeStruct(x_shape, jnp.float32),
    )
    assert z.shape[0] == 2


def test_conv_init_is_he_normal_and_respects_dtype_and_bias():
    params = jconv.conv_init(
        jax.random.key(1), 32, 256, (3, 3), groups=2, dtype=jnp.bfloat16, use_bias=False
    )
    assert set(params) == {"kernel"} and params["kernel"].dtype == jnp.bfloat16
    fan_in = (32 // 2) * 9
    std = float(np.std(np.asarray(params["kernel"], np.float32)))
    np.testing.assert_allclose(std, np.sqrt(2.0 / fan_in), rtol=0.05)
    # Truncated at 2 standard deviations of the underlying normal.
    assert float(jnp.max(jnp.abs(params["kernel"].astype(jnp.float32)))) < 2.5 * np.sqrt(
        2.0 / fan_in
    )


def test_different_keys_give_different_kernels():
    a = jconv.conv_init(jax.random.key(0), 3, 4, 3)["kernel"]
    b = jconv.conv_init(jax.random.key(1), 3, 4, 3)["kernel"]
    assert not np.allclose(a, b)


@pytest.mark.parametrize(
    "optimizer", [optax.sgd(0.05), optax.sgd(0.05, momentum=0.9), optax.adam(1e-2)]
)
def test_jitted_optax_training_matches_autodiff_and_learns(optimizer):
    """A few jitted value_and_grad + optax steps: same trajectory as lax autodiff."""
    key = jax.random.key(3)
    kx, kp, kt = jax.random.split(key, 3)
    x = jax.random.normal(kx, (8, 10, 10, 3))
    target = jax.random.normal(kt, (8, 5, 5, 4))
    params = jconv.conv_init(kp, 3, 4, (3, 3))

    def make_step(forward):
        def loss(p):
            return jnp.mean(
                (forward(p, x, stride=2, padding="SAME", precision="highest") - target) ** 2
            )

        @jax.jit
        def step(p, s):
            value, grads = jax.value_and_grad(loss)(p)
            updates, s = optimizer.update(grads, s, p)
            return optax.apply_updates(p, updates), s, value

        return step

    trajectories = []
    for forward in (jconv.conv_forward, jconv.autodiff.conv_forward):
        step, p, s, losses = make_step(forward), params, optimizer.init(params), []
        for _ in range(20):
            p, s, value = step(p, s)
            losses.append(float(value))
        trajectories.append((p, losses))
    (p1, l1), (p2, l2) = trajectories
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p2)
    assert l1[-1] < 0.9 * l1[0]
