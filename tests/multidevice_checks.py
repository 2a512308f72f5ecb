"""Checks that need several devices; ``test_multidevice.py`` runs this file in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag
must be set before JAX starts, so it cannot share the main pytest process).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jconv
from jconv import _train, models

pytestmark = pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (host) devices")


def _batch(n=16, shape=(8, 8, 1)):
    x = jax.random.normal(jax.random.key(1), (n, *shape))
    y = jax.random.randint(jax.random.key(2), (n,), 0, 10)
    return np.asarray(x), np.asarray(y)


def _close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def test_data_parallel_train_step_equals_single_device():
    params = models.lenet_init(jax.random.key(0), (8, 8, 1))
    x, y = _batch()
    optimizer = optax.sgd(0.1, momentum=0.9)
    step, grads_fn, _ = _train.make_functions(optimizer, models.JCONV_OPS)
    single = jax.tree.map(
        np.asarray, step(jax.tree.map(jnp.copy, params), optimizer.init(params), x, y)
    )
    dp = _train.DataParallel(4)
    assert dp.n == 4
    xs, ys = dp.shard(x), dp.shard(y)
    assert xs.sharding.spec == P("data")
    assert {s.data.shape for s in xs.addressable_shards} == {(4, 8, 8, 1)}
    state = dp.replicate({"p": params, "o": optimizer.init(params)})
    sharded = step(state["p"], state["o"], xs, ys)
    new_params, _, loss, grads = sharded
    _close(loss, single[2])
    _close(grads, single[3])
    _close(new_params, single[0])
    assert len(new_params["conv1"]["kernel"].sharding.device_set) == 4  # replicated


def test_data_parallel_step_gathers_no_batch():
    # The kernel gradients' batch-chunk loops take interleaved chunks
    # (``_chunks.batch_chunk``), which the batch's sharding does not split: each
    # device loops over its own images. Contiguous chunks made XLA's SPMD
    # partitioner gather the whole batch onto every device (two all-gathers of
    # 64 images here), so that each computed every image's gradient.
    params = models.lenet_init(jax.random.key(0), (28, 28, 1))
    optimizer = optax.sgd(0.1)
    step, _, _ = _train.make_functions(optimizer, models.JCONV_OPS)
    x, y = _batch(64, (28, 28, 1))
    single = jax.tree.map(
        np.asarray, step(jax.tree.map(jnp.copy, params), optimizer.init(params), x, y)
    )
    dp = _train.DataParallel(4)
    state = dp.replicate({"p": params, "o": optimizer.init(params)})
    xs, ys = dp.shard(x), dp.shard(y)
    text = step.lower(state["p"], state["o"], xs, ys).compile().as_text()
    assert " while(" in text  # a chunk loop is there
    for collective in ("all-gather(", "all-to-all(", "collective-permute("):
        assert collective not in text, collective
    _close(step(state["p"], state["o"], xs, ys)[3], single[3], rtol=1e-4)  # the gradients


def test_shard_map_with_explicit_pmean_equals_single_device():
    params = models.lenet_init(jax.random.key(0), (8, 8, 1))
    x, y = _batch()

    def loss_fn(p, x, y):
        return jconv.softmax_cross_entropy(models.lenet_apply(p, x), y)

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))  # Auto axes

    def local(p, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        return lax.pmean(loss, "data"), lax.pmean(grads, "data")

    # check_vma=False: per-device gradients stay local until the explicit pmean
    # (jconv's custom_vjp rules do not yet carry shard_map's varying-axis types).
    sharded = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P("data"), P("data")),
            out_specs=(P(), P()),
            check_vma=False,
        )
    )
    split = NamedSharding(mesh, P("data"))
    replicated = jax.device_put(params, NamedSharding(mesh, P()))
    loss, grads = sharded(replicated, jax.device_put(x, split), jax.device_put(y, split))
    want_loss, want_grads = jax.jit(jax.value_and_grad(loss_fn))(params, x, y)
    _close(loss, want_loss)
    _close(grads, want_grads)


def test_conv_with_output_channels_sharded_is_partitioned():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))  # Auto axes
    params = jconv.conv_init(jax.random.key(0), 6, 16, (3, 3))
    params["bias"] = jax.random.normal(jax.random.key(3), (16,))
    x = jax.random.normal(jax.random.key(1), (2, 9, 9, 6))
    ct = jax.random.normal(jax.random.key(2), (2, 9, 9, 16))
    shard_c_out = {
        "kernel": NamedSharding(mesh, P(None, None, None, "data")),
        "bias": NamedSharding(mesh, P("data")),
    }
    sharded_params = jax.device_put(params, shard_c_out)

    def loss(p, x, ct):
        return jnp.sum(jconv.conv_forward(p, x, padding="SAME") * ct)

    forward = jax.jit(lambda p, x: jconv.conv_forward(p, x, padding="SAME"))
    z = forward(sharded_params, x)
    replicated = NamedSharding(mesh, P())
    ct_sharded = jax.device_put(ct, NamedSharding(mesh, P(None, None, None, "data")))
    grads_fn = jax.jit(jax.grad(loss, argnums=(0, 1)), out_shardings=(shard_c_out, replicated))
    (gp, gx) = grads_fn(sharded_params, x, ct_sharded)
    # Values equal the unsharded computation.
    _close(z, forward(params, x))
    want = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x, ct)
    _close((gp, gx), want, rtol=1e-5, atol=1e-5)
    # And the program really is partitioned: each device holds a quarter of the
    # output channels of z and of the kernel gradient, and nothing is gathered.
    assert {s.data.shape for s in z.addressable_shards} == {(2, 9, 9, 4)}
    assert {s.data.shape for s in gp["kernel"].addressable_shards} == {(3, 3, 6, 4)}
    assert {s.data.shape for s in gp["bias"].addressable_shards} == {(4,)}
    hlo = grads_fn.lower(sharded_params, x, ct_sharded).compile().as_text()
    assert "all-gather" not in hlo
    assert "f32[3,3,6,4]" in hlo  # per-device kernel shards in the partitioned program


def test_train_command_splits_the_batch(tmp_path, capsys):
    from jconv import _cli

    assert _cli.main(["train", "-q", "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "[cpu x 4]" in out
    assert _cli.main(["train", "-q", "--batch-size", "30", "--out", str(tmp_path / "s")]) == 2
    assert "not divisible by the 4 devices" in capsys.readouterr().err
