"""jconv.testing: it passes correct rules, and it catches (and locates) wrong ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jconv
from jconv import autodiff
from jconv._correlate import correlate
from jconv._correlation import Correlation
from jconv.testing import assert_vjp_matches, vjp_report
from jconv.testing.strategies import conv_arrays, conv_configs

SPEC = dict(stride=2, padding="SAME", groups=2)
G, C_IN, C_OUT = 2, 4, 6


def _args(seed=0):
    params = jconv.conv_init(jax.random.key(seed), C_IN, C_OUT, (3, 3), groups=G)
    params["bias"] = jax.random.normal(jax.random.key(seed + 1), (C_OUT,))
    x = jax.random.normal(jax.random.key(seed + 2), (2, 7, 8, C_IN))
    return params, x


def reference(params, x):
    return autodiff.conv_forward(params, x, **SPEC, precision="highest")


def correct_dx(dz, k, x):
    return jconv.conv_grad_input(dz, k, x.shape, **SPEC)


def correct_dk(dz, k, x):
    return jconv.conv_grad_kernel(x, dz, k.shape, **SPEC)


def correct_db(dz):
    return jconv.conv_grad_bias(dz)


def hand_rolled(dx_rule=correct_dx, dk_rule=correct_dk, db_rule=correct_db):
    """A user's custom_vjp conv with pluggable (possibly wrong) rules."""

    @jax.custom_vjp
    def conv(params, x):
        return jconv.conv_forward(params, x, **SPEC)

    def fwd(params, x):
        return conv(params, x), (params["kernel"], x)

    def bwd(res, dz):
        k, x = res
        return {"kernel": dk_rule(dz, k, x), "bias": db_rule(dz)}, dx_rule(dz, k, x)

    conv.defvjp(fwd, bwd)
    return conv


def dx_kernel_not_rotated(dz, k, x):
    return correct_dx(dz, k[::-1, ::-1], x)  # undoes the rule's own rot180


def db_missing_sum(dz):
    return jnp.sum(dz[0], axis=(0, 1))  # forgot to sum over the batch


def dk_stride_off_by_one(dz, k, x):
    # dL/dK as a correlation whose dz dilation is stride + 1 instead of stride.
    geom = jconv._geometry.geometry(
        x.shape, k.shape, **SPEC, dilation=1, layout="channels_last", precision=None, where="t"
    )
    pads = tuple(
        (m.lo, (m.window - 1) * m.dilation + (m.out - 1) * (m.stride + 1) + 1 - m.size - m.lo)
        for m in geom.dims()
    )
    corr = Correlation(
        lhs_axes=(3, 0, 1, 2),
        rhs_axes=(3, 0, 1, 2),
        out_axes=(2, 3, 0, 1),
        window_strides=(1, 1),
        padding=pads,
        lhs_dilation=(1, 1),
        rhs_dilation=tuple(s + 1 for s in geom.spec.stride),
        batch_group_count=G,
    )
    return correlate(x, dz, corr)


def dx_wrong_group_order(dz, k, x):
    # Output channels read group-interleaved instead of group-contiguous.
    return correct_dx(
        dz, k.reshape(3, 3, C_IN // G, G, C_OUT // G).swapaxes(-1, -2).reshape(k.shape), x
    )


def test_correct_rules_pass_and_report():
    report = assert_vjp_matches(hand_rolled(), reference, *_args())
    assert report.ok and len(report.entries) == 1 + 3 * 3  # output + 3 cotangents x 3 leaves
    text = str(report)
    assert "vjp: params['kernel']" in text and "vjp: x" in text and "FAIL" not in text
    assert all(v < 1e-5 for v in report.worst().values())


@pytest.mark.parametrize(
    "rules, path",
    [
        (dict(dx_rule=dx_kernel_not_rotated), "vjp of x"),
        (dict(db_rule=db_missing_sum), "vjp of params['bias']"),
        (dict(dk_rule=dk_stride_off_by_one), "vjp of params['kernel']"),
        (dict(dx_rule=dx_wrong_group_order), "vjp of x"),
    ],
    ids=["kernel-not-rotated", "missing-bias-sum", "stride-off-by-one", "wrong-group-order"],
)
def test_wrong_rules_are_caught_and_located(rules, path):
    with pytest.raises(AssertionError) as info:
        assert_vjp_matches(hand_rolled(**rules), reference, *_args(), seed=7)
    message = str(info.value)
    assert path in message
    assert "worst element at index (" in message and "actual" in message and "expected" in message
    assert "ULP" in message and "cotangent seed 7" in message
    # Only the broken rule is blamed.
    others = {"vjp of x", "vjp of params['bias']", "vjp of params['kernel']"} - {path}
    assert not any(other + " (" in message for other in others)


def test_failure_reproduces_from_its_seed():
    report = vjp_report(hand_rolled(db_rule=db_missing_sum), reference, *_args(), seed=3)
    seeds = {e.cotangent_seed for e in report.failures}
    assert seeds == {3, 4, 5}
    again = vjp_report(
        hand_rolled(db_rule=db_missing_sum), reference, *_args(), seed=4, num_cotangents=1
    )
    (bias,) = [e for e in again.failures]
    (same,) = [e for e in report.failures if e.cotangent_seed == 4]
    assert bias.max_abs == same.max_abs and bias.index == same.index
    # The reported element is the worst one.
    assert abs(bias.actual - bias.expected) == pytest.approx(bias.max_abs)


def clip_identity(x):
    return jnp.clip(x, -1.0, 1.0)


@jax.custom_vjp
def clipped(x):
    return jnp.clip(x, -1.0, 1.0)


clipped.defvjp(lambda x: (clipped(x), x), lambda x, g: (jnp.where(jnp.abs(x) < 1.0, g, 0.0),))


@jax.custom_vjp
def clipped_wrong(x):
    return jnp.clip(x, -1.0, 1.0)


clipped_wrong.defvjp(lambda x: (clipped_wrong(x), x), lambda x, g: (g,))  # passes everything


def test_non_convolution_custom_vjp_and_jit():
    x = jnp.linspace(-2.3, 2.3, 11)
    assert assert_vjp_matches(jax.jit(clipped), clip_identity, x).ok
    assert assert_vjp_matches(clipped, clip_identity, x, jit=False).ok
    with pytest.raises(
        AssertionError, match=r"vjp of x .* worst element at index \(\d+,\): .* expected -?0\.0"
    ):
        assert_vjp_matches(clipped_wrong, clip_identity, x)


def test_pytrees_argnums_and_order_two(x64):
    params, x = _args()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)

    def mine(params, x):
        return jnp.tanh(jconv.conv_forward(params, x, **SPEC))

    def theirs(params, x):
        return jnp.tanh(reference(params, x))

    report = assert_vjp_matches(mine, theirs, params, x, argnums=0, order=2, num_cotangents=2)
    whats = {(e.what, e.path) for e in report.entries}
    assert ("grad-of-grad", "params['kernel']") in whats and ("vjp", "params['bias']") in whats
    assert not any(path == "x" for _, path in whats)  # argnums=0 only
    assert max(e.max_rel for e in report.entries) < 1e-10


def test_dtype_default_tolerances():
    x = jnp.linspace(-2.3, 2.3, 11, dtype=jnp.bfloat16)
    report = assert_vjp_matches(clipped, clip_identity, x)
    assert {e.rtol for e in report.entries} == {5e-2}


@settings(max_examples=10, deadline=None)
@given(
    conv_configs(ranks=(1, 2), max_groups=3).flatmap(lambda c: conv_arrays(c).map(lambda a: (c, a)))
)
def test_strategies_draw_valid_configurations(drawn):
    config, (params, x) = drawn
    assert x.shape == config.x_shape and params["kernel"].shape == config.kernel_shape
    # Traced, not run (each drawn configuration would compile op by op eagerly).
    z = jax.eval_shape(lambda p, x: jconv.conv_forward(p, x, **config.kwargs), params, x)
    want = jax.eval_shape(lambda p, x: autodiff.conv_forward(p, x, **config.kwargs), params, x)
    np.testing.assert_array_equal(z.shape, want.shape)
