"""The whole LeNet's gradient through jconv equals jax.grad of the lax/jnp network."""

import jax
import jax.numpy as jnp
import pytest

from jconv import autodiff, models
from jconv.testing import assert_vjp_matches


@pytest.mark.parametrize("input_shape", [(8, 8, 1), (28, 28, 1), (12, 10, 3)])
def test_network_gradient_equals_autodiff(input_shape):
    key = jax.random.key(0)
    params = models.lenet_init(key, input_shape, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (16, *input_shape))
    y = jax.random.randint(jax.random.key(2), (16,), 0, 10)

    def loss(params, ops):
        return ops.softmax_cross_entropy(models.lenet_apply(params, x, ops=ops), y)

    report = assert_vjp_matches(
        lambda p: loss(p, models.JCONV_OPS), lambda p: loss(p, autodiff), params, rtol=2e-5
    )
    paths = {e.path for e in report.entries if e.what == "vjp"}
    leaves = ("bias", "kernel")
    assert paths == {f"p['{layer}']['{leaf}']" for layer in params for leaf in leaves}


def test_params_are_an_optax_pytree():
    params = models.lenet_init(jax.random.key(0), (8, 8, 1))
    assert set(params) == {"conv1", "conv2", "dense1", "dense2"}
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))
    assert params["dense1"]["kernel"].shape == (2 * 2 * 32, 128)
    logits = models.lenet_apply(params, jnp.zeros((3, 8, 8, 1)))
    assert logits.shape == (3, 10)


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="too small"):
        models.lenet_init(jax.random.key(0), (3, 3, 1))
