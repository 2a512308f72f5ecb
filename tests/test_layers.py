"""Dense, pooling, ReLU and softmax cross-entropy: hand-derived rules vs JAX autodiff."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close
from jax import lax
from jax.test_util import check_grads

import jconv
from jconv import _pool, autodiff, reference

RNG = np.random.default_rng(0)


def _normal(*shape, dtype=jnp.float32):
    return jnp.asarray(RNG.normal(size=shape), dtype)


# ----------------------------------------------------------------------------- dense


@pytest.mark.parametrize("x_shape", [(5, 7), (2, 3, 7), (7,)])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_matches_autodiff_and_reference(x_shape, bias, x64):
    params = jconv.dense_init(jax.random.key(0), 7, 4, use_bias=bias, dtype=jnp.float64)
    if bias:
        params["bias"] = _normal(4, dtype=jnp.float64)
    x = _normal(*x_shape, dtype=jnp.float64)
    ct = _normal(*x_shape[:-1], 4, dtype=jnp.float64)
    z, vjp = jax.vjp(jconv.dense_forward, params, x)
    z_ref, vjp_ref = jax.vjp(
        lambda p, x: autodiff.dense_forward(p, x, precision="highest"), params, x
    )
    assert_close(z, z_ref, jnp.float64)
    assert_close(z, reference.dense_forward(params, x), jnp.float64)
    chex.assert_trees_all_close(vjp(ct), vjp_ref(ct), rtol=1e-12, atol=1e-12)
    # The public rules are the seed's: dW = xᵀ dZ, dB = Σ dZ, dX = dZ Wᵀ.
    flat_x, flat_ct = np.reshape(x, (-1, 7)), np.reshape(ct, (-1, 4))
    assert_close(jconv.dense_grad_kernel(x, ct), flat_x.T @ flat_ct, jnp.float64)
    assert_close(jconv.dense_grad_bias(ct), flat_ct.sum(0), jnp.float64)
    assert_close(
        jconv.dense_grad_input(ct, params["kernel"]),
        np.asarray(ct) @ np.asarray(params["kernel"]).T,
        jnp.float64,
    )


def test_dense_second_order_and_dtype(x64):
    params = {"kernel": _normal(6, 3, dtype=jnp.float64), "bias": _normal(3, dtype=jnp.float64)}
    x = _normal(4, 6, dtype=jnp.float64)
    check_grads(
        lambda p, x: jnp.sum(jnp.tanh(jconv.dense_forward(p, x))),
        (params, x),
        order=2,
        modes=["rev"],
    )
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    gx = jax.grad(lambda x: jconv.dense_forward(half, x).astype(jnp.float32).sum())(
        x.astype(jnp.bfloat16)
    )
    assert gx.dtype == jnp.bfloat16


def test_dense_init():
    p = jconv.dense_init(jax.random.key(0), 400, 300)
    assert p["kernel"].shape == (400, 300) and p["bias"].shape == (300,)
    np.testing.assert_allclose(np.std(p["kernel"]), np.sqrt(2 / 400), rtol=0.05)
    assert set(jconv.dense_init(jax.random.key(0), 2, 3, use_bias=False)) == {"kernel"}


# ----------------------------------------------------------------------------- pools

POOL_CASES = [
    # (x_shape, window, stride, padding, layout)
    ((2, 8, 9, 3), 2, None, "VALID", "channels_last"),
    ((2, 7, 9, 3), (2, 3), (1, 2), "SAME", "channels_last"),
    ((2, 3, 7, 9), (3, 2), 2, ((1, 0), (1, 1)), "channels_first"),
    ((3, 10, 4), 3, 2, 1, "channels_last"),  # 1-D
    ((1, 2, 5, 6, 4), (2, 2, 3), (2, 1, 2), "SAME_LOWER", "channels_first"),  # 3-D
]


def _lax_max(x, window, stride, padding, layout):
    return autodiff.max_pool(x, window, stride=stride, padding=padding, layout=layout)


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_equals_jax_grad_of_reduce_window_exactly(case):
    x_shape, window, stride, padding, layout = case
    x = _normal(*x_shape)  # continuous values: no ties
    kw = dict(stride=stride, padding=padding, layout=layout)

    @jax.jit
    def both(x, ct):
        z, vjp = jax.vjp(lambda x: jconv.max_pool(x, window, **kw), x)
        z_ref, vjp_ref = jax.vjp(lambda x: _lax_max(x, window, stride, padding, layout), x)
        return z, z_ref, vjp(ct)[0], vjp_ref(ct)[0]

    z_shape = jax.eval_shape(lambda x: jconv.max_pool(x, window, **kw), x).shape
    ct = _normal(*z_shape)
    z, z_ref, dx, dx_ref = both(x, ct)
    np.testing.assert_array_equal(z, z_ref)
    np.testing.assert_array_equal(dx, dx_ref)  # bit for bit
    assert_close(dx, reference.max_pool_grad_input(ct, x, window, **kw))


@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool_matches_autodiff_and_reference(case, x64):
    x_shape, window, stride, padding, layout = case
    x = _normal(*x_shape, dtype=jnp.float64)
    kw = dict(stride=stride, padding=padding, layout=layout)
    z, vjp = jax.vjp(lambda x: jconv.avg_pool(x, window, **kw), x)
    z_ref, vjp_ref = jax.vjp(lambda x: autodiff.avg_pool(x, window, **kw), x)
    ct = _normal(*z.shape, dtype=jnp.float64)
    assert_close(z, z_ref, jnp.float64)
    assert_close(vjp(ct)[0], vjp_ref(ct)[0], jnp.float64)
    assert_close(
        jconv.avg_pool_grad_input(ct, x.shape, window, **kw),
        reference.avg_pool_grad_input(ct, x.shape, window, **kw),
        jnp.float64,
    )


def test_max_pool_tie_rule_first_maximum_in_row_major_order():
    x = jnp.array(
        [[1.0, 1.0, 0.0, 2.0], [1.0, 0.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 0.0, 3.0]]
    )
    x = x.reshape(1, 4, 4, 1)
    g = jax.grad(lambda x: jnp.sum(jconv.max_pool(x, 2)))(x)[0, :, :, 0]
    # Each 2x2 window sends its whole gradient to its first maximum (row-major).
    expected = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(g, expected)
    # Overlapping windows (stride 1): every window picks its own first maximum.
    g1 = jax.grad(lambda x: jnp.sum(jconv.max_pool(x, 2, stride=1)))(x)[0, :, :, 0]
    np.testing.assert_array_equal(g1, [[1, 0, 0, 1], [0, 0, 1, 0], [2, 2, 2, 0], [0, 0, 0, 0]])
    # The same as jax.grad of lax.reduce_window's select-and-scatter, and the reference.
    for stride in (None, 1):
        ours = jax.grad(lambda x, s=stride: jnp.sum(jconv.max_pool(x, 2, stride=s)))(x)
        lax_g = jax.grad(lambda x, s=stride: jnp.sum(autodiff.max_pool(x, 2, stride=s)))(x)
        np.testing.assert_array_equal(ours, lax_g)
        ref = reference.max_pool_grad_input(
            np.ones(jconv.max_pool(x, 2, stride=stride).shape), x, 2, stride=stride
        )
        np.testing.assert_array_equal(ours, ref)


def test_max_pool_backward_keeps_only_the_first_maxima():
    # The rule's residual is each window's first-maximum offset, computed with
    # the forward: the backward reads it and dz, never x, so XLA cannot
    # recompute x's producer there. uint8 up to 255 window entries:
    x = _normal(2, 16, 18, 3)
    geom = _pool.pool_geometry(x.shape, (2, 3), None, "VALID", "channels_last", "test")
    z, residual = _pool._max_pool_fwd(x, geom)  # the custom_vjp's residual, whole
    assert isinstance(residual, jax.Array)
    assert (residual.shape, residual.dtype) == (z.shape, jnp.uint8)
    ct = _normal(*z.shape)
    ours = jax.vjp(lambda x: jconv.max_pool(x, (2, 3)), x)[1](ct)[0]
    np.testing.assert_array_equal(
        ours, jax.vjp(lambda x: autodiff.max_pool(x, (2, 3)), x)[1](ct)[0]
    )
    # int32 beyond: one window of 256 entries
    x = _normal(1, 300, 1)
    geom = _pool.pool_geometry(x.shape, 256, None, "VALID", "channels_last", "test")
    _, first = jax.jit(_pool._max_pool_fwd, static_argnums=1)(x, geom)
    assert first.dtype == jnp.int32 and int(first.ravel()[0]) == int(jnp.argmax(x[0, :256, 0]))


def test_max_pool_window_holding_nan_sends_no_gradient():
    # Its maximum is NaN, which no entry equals: no first maximum, no share.
    x = jnp.array([[1.0, jnp.nan, 0.0, 2.0], [0.5, 0.0, 3.0, 1.0]]).reshape(1, 2, 4, 1)
    geom = _pool.pool_geometry(x.shape, 2, None, "VALID", "channels_last", "test")
    np.testing.assert_array_equal(_pool._max_pool_fwd(x, geom)[1].ravel(), [4, 2])
    g = jax.vjp(lambda x: jconv.max_pool(x, 2), x)[1](jnp.ones((1, 1, 2, 1)))[0]
    np.testing.assert_array_equal(g[0, :, :, 0], [[0, 0, 0, 0], [0, 0, 1, 0]])


def test_pools_under_vmap_jit_and_second_order(x64):
    x = _normal(3, 2, 6, 6, 2, dtype=jnp.float64)
    per = jax.vmap(jax.grad(lambda x: jnp.sum(jconv.max_pool(x, 2) ** 2)))(x)
    loop = jnp.stack([jax.grad(lambda x: jnp.sum(jconv.max_pool(x, 2) ** 2))(xi) for xi in x])
    np.testing.assert_array_equal(per, loop)
    check_grads(
        lambda x: jnp.sum(jnp.sin(jconv.avg_pool(x[0], 3, stride=2, padding="SAME"))),
        (x,),
        order=2,
        modes=["rev"],
    )


def test_pool_dtypes_are_kept():
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
        x = _normal(1, 4, 4, 2, dtype=dtype)
        for pool in (jconv.max_pool, jconv.avg_pool):
            z, vjp = jax.vjp(lambda x, pool=pool: pool(x, 2), x)
            assert z.dtype == dtype and vjp(jnp.ones_like(z))[0].dtype == dtype


# ----------------------------------------------------------------------------- relu, loss


def test_relu_rule():
    x = jnp.array([-2.0, -0.0, 0.0, 0.5, 3.0])
    g = jax.grad(lambda x: jnp.sum(jconv.relu(x) * jnp.arange(1.0, 6.0)))(x)
    np.testing.assert_array_equal(g, [0, 0, 0, 4, 5])
    np.testing.assert_array_equal(
        g, jax.grad(lambda x: jnp.sum(jax.nn.relu(x) * jnp.arange(1.0, 6.0)))(x)
    )
    np.testing.assert_array_equal(jconv.relu_grad_input(jnp.ones(5), x), [0, 0, 0, 1, 1])


def test_softmax_cross_entropy_matches_log_softmax(x64):
    logits = _normal(6, 5, dtype=jnp.float64)
    labels = jnp.array([0, 4, 2, 2, 1, 3])
    loss, g = jax.value_and_grad(jconv.softmax_cross_entropy)(logits, labels)
    loss_ref, g_ref = jax.value_and_grad(autodiff.softmax_cross_entropy)(logits, labels)
    assert_close(loss, loss_ref, jnp.float64)
    assert_close(g, g_ref, jnp.float64)
    onehot = np.eye(5)[np.asarray(labels)]
    assert_close(
        jconv.softmax_cross_entropy_grad(logits, labels),
        (jax.nn.softmax(logits) - onehot) / 6,
        jnp.float64,
    )
    loss = lambda lg: jconv.softmax_cross_entropy(lg, labels)  # noqa: E731
    check_grads(loss, (logits,), order=2, modes=["rev"])


def test_softmax_cross_entropy_is_stable_for_large_logits():
    logits = jnp.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]], jnp.float32)
    labels = jnp.array([1, 1])
    loss, g = jax.value_and_grad(jconv.softmax_cross_entropy)(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    np.testing.assert_allclose(loss, 500.0, rtol=1e-6)  # (1000 + 0) / 2
    np.testing.assert_allclose(g, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-7)


def test_out_of_range_labels_under_jit_give_nan():
    loss = jax.jit(jconv.softmax_cross_entropy)(jnp.zeros((2, 3)), jnp.array([0, 3]))
    assert np.isnan(loss)


# ----------------------------------------------------------------------------- errors

ERRORS = {
    "dense x width": (
        lambda: jconv.dense_forward({"kernel": jnp.ones((3, 2))}, jnp.ones((4, 5))),
        ValueError,
        r"x must have shape \(\.\.\., 3\)",
    ),
    "dense bias": (
        lambda: jconv.dense_forward(
            {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(3)}, jnp.ones((4, 3))
        ),
        ValueError,
        r"params\['bias'\] must have shape \(2,\)",
    ),
    "dense kernel rank": (
        lambda: jconv.dense_forward({"kernel": jnp.ones((3, 2, 1))}, jnp.ones((4, 3))),
        ValueError,
        r"must have shape \(in, out\)",
    ),
    "dense init": (
        lambda: jconv.dense_init(jax.random.key(0), 0, 3),
        ValueError,
        r"in_features must be >= 1",
    ),
    "pool window length": (
        lambda: jconv.max_pool(jnp.ones((1, 4, 4, 1)), (2, 2, 2)),
        ValueError,
        r"window must be an int or a sequence of 2 ints",
    ),
    "pool stride": (
        lambda: jconv.avg_pool(jnp.ones((1, 4, 4, 1)), 2, stride=0),
        ValueError,
        r"stride must be >= 1",
    ),
    "pool rank": (
        lambda: jconv.max_pool(jnp.ones((4, 4)), 2),
        ValueError,
        r"x must have rank >= 3",
    ),
    "pool too big": (
        lambda: jconv.max_pool(jnp.ones((1, 3, 8, 1)), 4),
        ValueError,
        r"window 4 larger than the padded input in spatial dim 0",
    ),
    "pool padding": (
        lambda: jconv.max_pool(jnp.ones((1, 8, 8, 1)), 2, padding=2),
        ValueError,
        r"must be smaller than the window 2",
    ),
    "pool layout": (
        lambda: jconv.avg_pool(jnp.ones((1, 8, 8, 1)), 2, layout="NHWC"),
        ValueError,
        r"layout must be one of",
    ),
    "pool dz": (
        lambda: jconv.max_pool_grad_input(jnp.ones((1, 3, 4, 1)), jnp.ones((1, 8, 8, 1)), 2),
        ValueError,
        r"dz has shape \(1, 3, 4, 1\), but pooling .* produces \(1, 4, 4, 1\)",
    ),
    "labels float": (
        lambda: jconv.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0.0, 1.0])),
        TypeError,
        r"labels must have an integer dtype, got float32",
    ),
    "labels range": (
        lambda: jconv.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3])),
        ValueError,
        r"labels must lie in \[0, 3\), got \[3\] at positions \[1\]",
    ),
    "labels negative": (
        lambda: jconv.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([-1, 0])),
        ValueError,
        r"got \[-1\]",
    ),
    "labels shape": (
        lambda: jconv.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1, 2])),
        ValueError,
        r"labels must have shape \(2,\)",
    ),
    "logits rank": (
        lambda: jconv.softmax_cross_entropy(jnp.zeros((2, 3, 1)), jnp.array([0, 1])),
        ValueError,
        r"logits must have shape \(N, num_classes\)",
    ),
    "relu int": (
        lambda: jconv.relu(jnp.array([1, 2])),
        TypeError,
        r"relu: x must have a floating dtype",
    ),
}


@pytest.mark.parametrize("name", ERRORS, ids=list(ERRORS))
def test_layer_errors_name_the_argument(name):
    thunk, error, pattern = ERRORS[name]
    with pytest.raises(error, match=pattern):
        thunk()


def test_lax_reduce_window_reference_is_what_autodiff_uses():
    x = _normal(1, 6, 6, 1)
    np.testing.assert_array_equal(
        autodiff.max_pool(x, 2),
        lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"),
    )
