"""The every-core route of XLA:CPU's convolution (``jconv/_cpu_xla.py``)."""

import dataclasses
import re

import helpers
import jax
import jax.numpy as jnp
import pytest
from helpers import Config

import jconv
from jconv import _bench, _cpu_xla
from jconv._correlation import Correlation

NHWC = (0, 3, 1, 2)  # (batch, feature, *spatial) of a channels-last array
HWIO = (3, 2, 0, 1)  # (out feature, in feature, *spatial) of an HWIO kernel


def _corr(padding=((1, 1), (1, 1)), **kwargs):
    return Correlation(
        lhs_axes=NHWC,
        rhs_axes=HWIO,
        out_axes=NHWC,
        window_strides=(1, 1),
        padding=padding,
        lhs_dilation=(1, 1),
        rhs_dilation=(1, 1),
        **kwargs,
    )


def test_extra_rows_worked_cases():
    lhs, rhs = (8, 56, 56, 64), (3, 3, 64, 64)
    # SAME: 56 rows out of 56, one more makes 57 > 56.
    assert _cpu_xla.extra_rows(lhs, rhs, _corr()) == 1
    # VALID: 54 rows, three more make 57; 3 <= 54 / 8.
    assert _cpu_xla.extra_rows(lhs, rhs, _corr(padding=((0, 0), (0, 0)))) == 3
    # VALID over 16 rows: 14 rows, 3 more would be over an eighth of them.
    assert _cpu_xla.extra_rows((8, 16, 16, 64), rhs, _corr(padding=((0, 0), (0, 0)))) == 0
    # From 16 input and output features (MIN_FEATURES) on; an RGB image's 3 stay off.
    assert _cpu_xla.extra_rows((8, 56, 56, 16), (3, 3, 16, 64), _corr()) == 1
    # A 1x1 window is a matmul, which YNNPACK spreads itself: not routed.
    assert _cpu_xla.extra_rows(lhs, (1, 1, 64, 64), _corr(padding=((0, 0), (0, 0)))) == 0
    # A 1x3 window over SAME columns: one more row.
    assert _cpu_xla.extra_rows(lhs, (1, 3, 64, 64), _corr(padding=((0, 0), (1, 1)))) == 1
    # Already wider than the input (58 > 56 columns), or a window wider than
    # it: YNNPACK refuses the plain correlation, nothing to route.
    assert _cpu_xla.extra_rows(lhs, rhs, _corr(padding=((1, 1), (2, 2)))) == 0
    assert _cpu_xla.extra_rows((8, 56, 2, 64), rhs, _corr(padding=((1, 1), (1, 1)))) == 0


@pytest.mark.parametrize(
    "lhs, rhs, change",
    [
        ((8, 56, 56, 64), (3, 3, 64, 256), {}),  # YNNPACK spreads 256 outputs itself
        ((8, 56, 56, 16), (3, 3, 16, 16), {}),  # YNNPACK refuses 16 features anyway
        ((2, 224, 224, 3), (3, 3, 3, 64), {}),  # an RGB stem: Eigen no faster there
        ((8, 56, 56, 8), (3, 3, 8, 64), {}),
        ((2, 224, 224, 64), (3, 3, 64, 3), {}),  # its input gradient
        ((8, 56, 56, 64), (3, 3, 64, 64), {"window_strides": (2, 2)}),
        ((8, 56, 56, 64), (3, 3, 64, 64), {"lhs_dilation": (2, 2)}),
        ((8, 56, 56, 64), (3, 3, 64, 64), {"rhs_dilation": (2, 2)}),
        ((8, 56, 56, 64), (3, 3, 32, 64), {"feature_group_count": 2}),
        ((8, 64, 56, 56), (3, 3, 64, 64), {"lhs_axes": (0, 1, 2, 3), "out_axes": (0, 1, 2, 3)}),
        ((8, 5, 5, 64), (5, 5, 64, 64), {"padding": ((0, 0), (0, 0))}),  # positions
        ((0, 56, 56, 64), (3, 3, 64, 64), {}),  # no batch
    ],
)
def test_route_is_not_taken(lhs, rhs, change):
    corr = dataclasses.replace(_corr(), **change)
    assert _cpu_xla.extra_rows(lhs, rhs, corr) == 0


def test_half_precision_stays_off_the_route():
    # YNNPACK takes no half-precision convolution, so there is nothing to escape.
    lhs, rhs = jnp.zeros((2, 12, 12, 24), jnp.bfloat16), jnp.zeros((3, 3, 24, 24), jnp.bfloat16)
    assert not _cpu_xla.applies(lhs, rhs, _corr())
    assert _cpu_xla.applies(lhs.astype(jnp.float32), rhs.astype(jnp.float32), _corr())


ROUTED = [
    Config(2, (12, 12), (3, 3), 24, 20, padding="SAME"),
    Config(3, (10, 9), (3, 2), 20, 24, padding=((2, 0), (1, 1))),
    # The forward pads more than SAME: the input gradient is a VALID correlation
    # of 26 dz rows, three extra rows.
    Config(2, (24, 12), (3, 3), 20, 24, padding=((2, 2), (1, 1))),
    Config(2, (9, 9), (1, 3), 20, 18, padding=((0, 0), (1, 1)), bias=False),
]


def _pads(lowered):
    return re.findall(r"pad = (\[\[.*?\]\])", lowered.as_text())


def _dx_lowered(config, lowering="auto", platform="cpu"):
    params, x, _ = config.arrays()
    z = jax.eval_shape(lambda p, x: jconv.conv_forward(p, x, **config.kwargs), params, x)
    dz = jnp.ones(z.shape)

    def dx(dz, kernel):
        return jconv.conv_grad_input(dz, kernel, x.shape, **config.kwargs, lowering=lowering)

    return jax.jit(dx).trace(dz, params["kernel"]).lower(lowering_platforms=(platform,))


@pytest.mark.parametrize("config", ROUTED, ids=str)
def test_routed_input_gradients_match_lax(config):
    # The grid's small shapes have too few features for the route; these have more.
    routed, plain = _pads(_dx_lowered(config)), _pads(_dx_lowered(config, "xla"))
    assert len(routed) == len(plain) == 1 and routed != plain  # taller: the route
    assert "stablehlo.while" not in _dx_lowered(config).as_text()  # one chunk
    helpers.check_against_lax(config, jnp.float32)


def test_routed_input_gradient_in_batch_chunks(monkeypatch):
    config = Config(4, (11, 11), (3, 3), 20, 24, padding="SAME")
    monkeypatch.setattr(_cpu_xla, "CHUNK_BYTES", 2 * 11 * 11 * 20 * 4)  # two images a chunk
    assert "stablehlo.while" in _dx_lowered(config).as_text()
    params, x, ct = config.arrays()
    dx = jconv.conv_grad_input(ct, params["kernel"], x.shape, **config.kwargs)
    want = jconv.conv_grad_input(ct, params["kernel"], x.shape, **config.kwargs, lowering="xla")
    helpers.assert_close(dx, want)


def test_routed_float64(x64):
    config = Config(2, (10, 10), (3, 3), 20, 24, padding="SAME")
    helpers.check_against_lax(config, jnp.float64)


def _fwd_lowered(config, platform="cpu"):
    params, x, _ = config.arrays()
    fwd = jax.jit(lambda p, x: jconv.conv_forward(p, x, **config.kwargs))
    return fwd.trace(params, x).lower(lowering_platforms=(platform,))


def test_route_is_cpu_only():
    config = ROUTED[0]
    for platform in ("cuda", "tpu"):
        for lowered in (_dx_lowered(config, platform=platform), _fwd_lowered(config, platform)):
            text = lowered.as_text()
            assert "pad = [[1, 1], [1, 1]]" in text, platform
            assert "pad = [[1, 2], [1, 1]]" not in text, platform
    assert "pad = [[1, 2], [1, 1]]" in _dx_lowered(config).as_text()
    assert "pad = [[1, 2], [1, 1]]" not in _dx_lowered(config, "xla").as_text()


def test_route_takes_forwards():
    config = ROUTED[0]
    assert "pad = [[1, 2], [1, 1]]" in _fwd_lowered(config).as_text()
    params, x, _ = config.arrays()
    z = jax.jit(lambda p, x: jconv.conv_forward(p, x, **config.kwargs))(params, x)
    want = jax.jit(lambda p, x: jconv.conv_forward(p, x, **config.kwargs, lowering="xla"))
    helpers.assert_close(z, want(params, x))


@pytest.mark.parametrize("platform", ["cpu", "cuda"])
def test_symbolic_batch_exports_without_the_route(platform):
    # The route's chunks need a known batch; platform_dependent traces the CPU
    # branch for every platform, so a symbolic batch must keep it off.
    config = ROUTED[0]
    params, x, _ = config.arrays()
    (batch,) = jax.export.symbolic_shape("b")
    x_spec = jax.ShapeDtypeStruct((batch, *x.shape[1:]), x.dtype)
    fwd = jax.jit(lambda p, x: jconv.conv_forward(p, x, **config.kwargs))
    exported = jax.export.export(fwd, platforms=(platform,))(params, x_spec)
    if platform == "cpu":
        helpers.assert_close(exported.call(params, x), fwd(params, x))


def test_routed_forward_step_needs_no_more_memory_than_autodiff():
    # Routed, the forward's output is stored even where the loss reduces it
    # (YNNPACK fuses that reduction); the kernel gradient's row bands (_taps.py)
    # make room for it: 3x3@56's step 8.5 -> 14.7 MiB without them, autodiff's
    # 12.4, 10.7 with them.
    shape = _bench.SUITE[0]
    assert shape.name == "resnet50-3x3-56"
    jconv_bytes, autodiff_bytes = helpers.bench_step_temp_bytes(shape)
    assert jconv_bytes <= autodiff_bytes


def test_route_leaves_ynnpack():
    # What the route is for: where this XLA hands the plain convolution to
    # YNNPACK (one thread), the routed one must go elsewhere (Eigen, every core).
    config = Config(2, (12, 12), (3, 3), 24, 20, padding="SAME")
    plain = _dx_lowered(config, "xla").compile().as_text()
    if "__ynn_fusion" not in plain:
        pytest.skip("this XLA:CPU does not give convolutions to YNNPACK")
    routed = _dx_lowered(config).compile().as_text()
    assert "convolution(" in routed and "__ynn_fusion" not in routed
