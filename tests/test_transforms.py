"""jconv under JAX's transformations: jit, vmap, checkpoint, scan, grad-of-grad."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import Config, assert_close
from jax.ad_checkpoint import print_saved_residuals
from jax.test_util import check_grads

import jconv
from jconv import autodiff

CONFIG = Config(2, (7, 6), (3, 2), 4, 6, groups=2, stride=(2, 1), padding="SAME", dilation=(1, 2))


def _loss(forward, params, x, ct, **extra):
    return jnp.sum(forward(params, x, **CONFIG.kwargs, **extra) * ct)


def test_jit_traces_once_per_shape_and_spec():
    params, x, ct = CONFIG.arrays()

    @chex.assert_max_traces(n=1)
    def grads(p, x, ct):
        return jax.grad(_loss, argnums=(1, 2))(jconv.conv_forward, p, x, ct)

    chex.clear_trace_counter()
    step = jax.jit(grads)
    first = step(params, x, ct)
    for seed in (1, 2):  # new values, same shapes and spec: no retrace
        step(*CONFIG.arrays(seed=seed))
    with pytest.raises(AssertionError, match="traced > 1"):  # a new shape must retrace
        step(params, jnp.concatenate([x, x]), jnp.concatenate([ct, ct]))
    expected = jax.grad(_loss, argnums=(1, 2))(
        autodiff.conv_forward, params, x, ct, precision="highest"
    )
    chex.assert_trees_all_close(first, expected, rtol=1e-5, atol=1e-5)


def test_vmap_per_example_gradients_equal_a_python_loop():
    params, x, ct = CONFIG.arrays()

    def per_example(params, xi, cti):
        return jax.grad(_loss, argnums=1)(jconv.conv_forward, params, xi[None], cti[None])

    batched = jax.jit(jax.vmap(per_example, in_axes=(None, 0, 0)))(params, x, ct)
    looped = [jax.jit(per_example)(params, x[i], ct[i]) for i in range(x.shape[0])]
    chex.assert_trees_all_close(
        batched, jax.tree.map(lambda *a: jnp.stack(a), *looped), rtol=1e-5, atol=1e-6
    )


def test_vmap_over_kernels():
    params, x, ct = CONFIG.arrays()
    kernels = jnp.stack([params["kernel"], 2 * params["kernel"], -params["kernel"]])
    out = jax.vmap(lambda k: jconv.conv_forward({"kernel": k}, x, **CONFIG.kwargs))(kernels)
    for i, k in enumerate(kernels):
        assert_close(
            out[i], autodiff.conv_forward({"kernel": k}, x, **CONFIG.kwargs, precision="highest")
        )


def test_checkpoint_and_scan():
    params, x, _ = CONFIG.arrays()
    c = CONFIG.c_in
    square = Config(2, (7, 6), (3, 3), c, c, groups=2, padding="SAME")
    sq_params, _, _ = square.arrays(seed=7)

    def net(forward, wrap):
        def body(h, _):
            return wrap(lambda h: jnp.tanh(forward(sq_params, h, **square.kwargs)))(h), None

        def loss(p, x):
            h, _ = jax.lax.scan(body, x, None, length=3)
            return jnp.sum(forward(p, h, **CONFIG.kwargs) ** 2)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    got = net(jconv.conv_forward, jax.checkpoint)(params, x)
    want = net(lambda *a, **k: autodiff.conv_forward(*a, **k, precision="highest"), lambda f: f)(
        params, x
    )
    # Three tanh layers deep, an entry can be a sum that cancels to ~1e-3 of the
    # largest gradient: float32 rounding is judged against each leaf's largest entry.
    jax.tree.map(assert_close, got, want)


def test_check_grads_second_order_reverse(x64):
    params, x, _ = CONFIG.arrays(jnp.float64)
    f = jax.jit(lambda p, x: jnp.sum(jnp.sin(jconv.conv_forward(p, x, **CONFIG.kwargs))))
    check_grads(f, (params, x), order=2, modes=["rev"])


def test_public_rules_check_grads_second_order(x64):
    params, x, ct = CONFIG.arrays(jnp.float64)
    kw = CONFIG.kwargs
    k = params["kernel"]
    check_grads(
        jax.jit(lambda ct, k: jconv.conv_grad_input(ct, k, x.shape, **kw)),
        (ct, k),
        order=2,
        modes=["rev"],
    )
    check_grads(
        jax.jit(lambda x, ct: jconv.conv_grad_kernel(x, ct, k.shape, **kw)),
        (x, ct),
        order=2,
        modes=["rev"],
    )


def test_gradient_penalty_grad_of_grad_matches_lax(x64):
    """d/dparams of ||d loss / dx||^2 (a WGAN-GP style penalty)."""
    params, x, ct = CONFIG.arrays(jnp.float64)

    def penalty(forward, params):
        gx = jax.grad(lambda x: jnp.sum(jnp.tanh(forward(params, x, **CONFIG.kwargs)) * ct))(x)
        return jnp.sum(gx**2)

    grad = jax.jit(jax.grad(penalty, argnums=1), static_argnums=0)
    got, want = grad(jconv.conv_forward, params), grad(autodiff.conv_forward, params)
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)


def test_hessian_vector_product_reverse_over_reverse(x64):
    params, x, _ = CONFIG.arrays(jnp.float64)
    v = jax.tree.map(lambda a: jnp.ones_like(a) / a.size, params)

    def hvp(forward):
        loss = lambda p: jnp.sum(jnp.tanh(forward(p, x, **CONFIG.kwargs)) ** 2)  # noqa: E731
        # Reverse over reverse: grad of <grad(loss), v>.
        return jax.grad(lambda p: optax.tree.vdot(jax.grad(loss)(p), v))(params)

    hvp = jax.jit(hvp, static_argnums=0)
    chex.assert_trees_all_close(
        hvp(jconv.conv_forward), hvp(autodiff.conv_forward), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize(
    "transform",
    [
        lambda f, p, x: jax.jvp(lambda x: f(p, x), (x,), (jnp.ones_like(x),)),
        lambda f, p, x: jax.jacfwd(lambda x: f(p, x).sum())(x),
        lambda f, p, x: jax.hessian(lambda x: f(p, x).sum())(x),
        lambda f, p, x: jax.linearize(lambda x: f(p, x), x)[1](x),
    ],
    ids=["jvp", "jacfwd", "hessian", "linearize"],
)
def test_forward_mode_raises(transform):
    params, x, _ = CONFIG.arrays()
    f = lambda p, x: jconv.conv_forward(p, x, **CONFIG.kwargs)  # noqa: E731
    with pytest.raises(TypeError, match="custom_vjp"):
        transform(f, params, x)


def test_residuals_are_only_x_and_kernel():
    """The forward saves x and the kernel for the rules: no output-sized temporaries."""
    config = Config(2, (9, 8), (3, 3), 4, 7, padding="SAME")
    params, x, _ = config.arrays()
    z, vjp_fn = jax.vjp(lambda p, x: jconv.conv_forward(p, x, **config.kwargs), params, x)
    residuals = [leaf for leaf in jax.tree.leaves(vjp_fn) if hasattr(leaf, "shape")]
    shapes = sorted(tuple(r.shape) for r in residuals)
    assert shapes == sorted([x.shape, params["kernel"].shape]), shapes
    assert all(r.shape != z.shape for r in residuals)
    # And they are the very arrays we passed in.
    assert any(
        np.array_equal(np.asarray(r), np.asarray(x)) for r in residuals if r.shape == x.shape
    )


def test_saved_residuals_report_only_the_arguments(capsys):
    config = Config(2, (9, 8), (3, 3), 4, 7, padding="SAME")
    params, x, _ = config.arrays()
    f = lambda p, x: jnp.sum(jconv.conv_forward(p, x, **config.kwargs))  # noqa: E731
    print_saved_residuals(f, params, x)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert sorted(lines) == sorted(
        ["f32[3,3,4,7] from the argument p['kernel']", "f32[2,9,8,4] from the argument x"]
    ), lines


def test_export_with_a_symbolic_batch():
    # jax.export's shape polymorphism: the training step of jconv's LeNet
    # (convolutions, max pools, dense layers, the loss) exported once for any
    # batch, run for two. Correlations with a symbolic dim go to XLA's
    # convolution (the CPU lowerings choose and chunk from concrete shapes).
    params = jconv.models.lenet_init(jax.random.key(0), (28, 28, 1), channels=(6, 8))

    def loss(p, x, y):
        return jconv.softmax_cross_entropy(jconv.models.lenet_apply(p, x), y)

    step = jax.jit(jax.value_and_grad(loss))
    (b,) = jax.export.symbolic_shape("b")
    specs = (
        jax.ShapeDtypeStruct((b, 28, 28, 1), jnp.float32),
        jax.ShapeDtypeStruct((b,), jnp.int32),
    )
    exported = jax.export.export(step, platforms=("cpu",))(params, *specs)
    for n in (3, 5):
        x = jax.random.normal(jax.random.key(n), (n, 28, 28, 1))
        y = jnp.arange(n) % 10
        chex.assert_trees_all_close(
            exported.call(params, x, y), step(params, x, y), rtol=1e-4, atol=1e-6
        )
