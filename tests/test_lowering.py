"""Which lowering runs where, and the benchmark's plumbing."""

import dataclasses
import importlib.util
import math
import re
import sys
from pathlib import Path

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Config
from test_equivalence import GRID

import jconv
from jconv import _bench, _chunks, _correlate, _fold, _im2col, _placed, _regions, _scatter, _taps
from jconv._correlation import Correlation
from jconv._spec import LOWERINGS


def _hlo(platform, groups, window, lowering="auto"):
    c = 8
    params = jconv.conv_init(jax.random.key(0), c, c, window, groups=groups)
    x = jnp.ones((2, 10, 10, c))

    def loss(p, x):
        z = jconv.conv_forward(p, x, groups=groups, padding="SAME", lowering=lowering)
        return z.sum()

    def grads(p, x):
        return jax.grad(loss, argnums=(0, 1))(p, x)

    text = jax.jit(grads).trace(params, x).lower(lowering_platforms=(platform,)).as_text()
    return text.count("stablehlo.convolution"), text.count("dot_general")


def test_depthwise_uses_taps_on_cpu_and_convolutions_on_gpu_and_tpu():
    # Depthwise terms are broadcast products: neither convolutions nor matmuls.
    assert _hlo("cpu", groups=8, window=(3, 3)) == (0, 0)
    for platform in ("cuda", "tpu"):
        convs, dots = _hlo(platform, groups=8, window=(3, 3))
        assert convs == 2 and dots == 0, platform  # dx and dk: cuDNN/XLA convolutions


def test_dense_3x3_kernel_gradient_is_a_matmul_on_cpu_only():
    # dx stays XLA's convolution; dk (9 positions, cache-sized images) is the
    # chunked im2col matmul on CPU and a convolution on GPU and TPU.
    convs, dots = _hlo("cpu", groups=1, window=(3, 3))
    assert convs == 1 and dots > 0
    for platform in ("cuda", "tpu"):
        assert _hlo(platform, groups=1, window=(3, 3)) == (2, 0), platform


def test_dense_kernel_gradient_of_large_images_stays_xla(monkeypatch):
    monkeypatch.setattr(_correlate, "MAX_ENTRY_BYTES", 10 * 10 * 8 * 4 - 1)  # < one image
    assert _hlo("cpu", groups=1, window=(3, 3)) == (2, 0)


def test_im2col_kernel_gradient_wider_than_its_operands_stays_xla():
    # 7x7 over 64 channels at 56x56: the stacks of one image would hold 38.6 MiB
    # (the operands are 3.2 and 0.8 MB), and dz placed on x's grid 9.8 MB; at
    # 3x3 the latter is 1.8 MB, and taps are kept.
    def kernel_gradient_convs(window):
        x = jax.ShapeDtypeStruct((4, 56, 56, 64), jnp.float32)
        dz = jax.ShapeDtypeStruct((4, 56, 56, 16), jnp.float32)
        fn = jax.jit(lambda x, dz: jconv.conv_grad_kernel(x, dz, (*window, 64, 16), padding="SAME"))
        return fn.trace(x, dz).lower(lowering_platforms=("cpu",)).as_text().count("convolution")

    assert kernel_gradient_convs((7, 7)) == 1
    assert kernel_gradient_convs((3, 3)) == 0


def test_1x1_kernel_gradient_is_a_matmul_on_cpu():
    # dk (one position) is a dot; dx (8 -> 8 features, not narrowing) stays
    # XLA's 1x1 convolution, a matmul in XLA already.
    assert _hlo("cpu", groups=1, window=(1, 1)) == (1, 1)
    assert _hlo("cuda", groups=1, window=(1, 1)) == (2, 0)


def test_strided_1x1_forward_slices_then_matmuls_on_cpu_only():
    # The strided grid sliced out, one matmul; a convolution on GPU and TPU.
    params = jconv.conv_init(jax.random.key(0), 8, 4, (1, 1))
    fn = jax.jit(lambda p, x: jconv.conv_forward(p, x, stride=2))
    traced = fn.trace(params, jnp.ones((2, 8, 8, 8)))
    cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    assert "stablehlo.convolution" not in cpu and cpu.count("dot_general") == 1
    for platform in ("cuda", "tpu"):
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        assert text.count("stablehlo.convolution") == 1 and "dot_general" not in text, platform


def test_strided_1x1_forward_stays_xla_where_untimed():
    # bfloat16 (no clear win when timed) and padded lhs (not timed) keep XLA's.
    params = jconv.conv_init(jax.random.key(0), 8, 4, (1, 1), dtype=jnp.bfloat16)
    for x, padding in ((jnp.ones((2, 8, 8, 8), jnp.bfloat16), 0), (jnp.ones((2, 8, 8, 8)), 1)):
        fn = jax.jit(
            lambda p, x, padding=padding: jconv.conv_forward(p, x, stride=2, padding=padding)
        )
        cpu = fn.trace(params, x).lower(lowering_platforms=("cpu",)).as_text()
        assert cpu.count("stablehlo.convolution") == 1 and "dot_general" not in cpu


# A single strided tap slices its lhs in batch chunks once the slice outgrows
# ``SLICE_BYTES``; with a budget of a byte every chunk is one batch entry.
SLICED_IN_CHUNKS = [
    Config(5, (7, 6), (1, 1), 6, 4, stride=2),  # prime N, odd sizes
    Config(4, (9,), (1,), 4, 6, stride=3, layout="channels_first"),
    Config(3, (5, 4, 6), (1, 1, 1), 2, 3, stride=(2, 1, 3), lowering="taps"),
    Config(4, (8, 8), (1, 1), 4, 4, groups=2, stride=2, layout="channels_first"),
]


@pytest.mark.parametrize("config", SLICED_IN_CHUNKS, ids=str)
def test_strided_1x1_sliced_in_batch_chunks_matches_lax(config, monkeypatch):
    monkeypatch.setattr(_taps, "SLICE_BYTES", 1)
    _check_chunked(config, jnp.float32, "forward")


def test_strided_1x1_forward_slices_large_inputs_a_chunk_at_a_time(monkeypatch):
    # 8 images of 16x16x64 at stride 2: a 131 KB slice whole, 33 KB a chunk of 2.
    monkeypatch.setattr(_taps, "SLICE_BYTES", 40_000)
    params = jconv.conv_init(jax.random.key(0), 64, 32, (1, 1))
    x = jnp.ones((8, 16, 16, 64))
    fn = jax.jit(lambda p, x: jconv.conv_forward(p, x, stride=2))
    jaxpr = str(jax.make_jaxpr(fn)(params, x))
    assert "while" in jaxpr or "scan" in jaxpr
    stats = fn.lower(params, x).compile().memory_analysis()
    assert stats.temp_size_in_bytes < 0.5 * (8 * 8 * 8 * 64 * 4)


# Kernel gradients whose input outgrows CHUNK_BYTES are summed over batch chunks in
# a loop; shrink the budget so small configurations take that path.
CHUNKED = [
    Config(6, (7, 6), (3, 3), 4, 6, padding="SAME", lowering="taps"),  # stacked im2col
    Config(6, (6, 6), (3, 3), 1, 3, lowering="taps"),  # one channel: per position
    Config(5, (9,), (3,), 4, 4, groups=4, stride=2, padding=1, lowering="taps"),  # prime N
    Config(
        4,
        (5, 6),
        (2, 3),
        6,
        4,
        groups=2,
        dilation=(2, 1),
        layout="channels_first",
        lowering="taps",
    ),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("config", CHUNKED, ids=str)
def test_chunked_kernel_gradient_matches_lax(config, dtype, monkeypatch):
    per_image = math.prod(config.x_shape[1:]) * jnp.dtype(dtype).itemsize
    monkeypatch.setattr(_taps, "CHUNK_BYTES", 2 * per_image)
    monkeypatch.setattr(_fold, "FOLD_TERMS", 1)  # (folding replaces the loop where it applies)
    _check_chunked(config, dtype, "kernel")


def _check_chunked(config, dtype, gradient):
    """``config`` matches lax, and its ``gradient`` pass really runs a chunk loop.

    Called with a chunk budget patched small; compiles afresh under it.
    """
    params, x, _ = config.arrays(dtype)
    kw = dict(config.kwargs, lowering=config.lowering)
    z = jconv.conv_forward(params, x, **kw)
    kernel = params["kernel"]
    if gradient == "kernel":
        jaxpr = jax.make_jaxpr(lambda x, dz: jconv.conv_grad_kernel(x, dz, kernel.shape, **kw))
        jaxpr = str(jaxpr(x, z))
    elif gradient == "forward":
        jaxpr = str(jax.make_jaxpr(lambda p, x: jconv.conv_forward(p, x, **kw))(params, x))
    else:
        jaxpr = jax.make_jaxpr(lambda dz, k: jconv.conv_grad_input(dz, k, x.shape, **kw))
        jaxpr = str(jaxpr(z, kernel))
    assert "while" in jaxpr or "scan" in jaxpr  # the chunk loop is really there
    helpers.check_against_lax_afresh(config, dtype)


def test_row_bands_worked_cases():
    # 3x3@56 SAME over 64 channels, one image a chunk: 7.2 MB of stacks, two
    # bands of 28 dz rows (the docstring's case).
    x = (8, 56, 56, 64)
    same = helpers.dk_correlation(((1, 1), (1, 1)))
    bands = _taps.row_bands(x, x, same, "positions", 1, 4)
    got = [(lhs_rows, rhs_rows, banded.padding[0]) for lhs_rows, rhs_rows, banded in bands]
    assert got == [((0, 29), (0, 28), (1, 0)), ((27, 56), (28, 56), (0, 1))]
    # The stem's (7x7, stride 2, padding 3 and 2: 112 dz rows): padded rows 0 to
    # 117 and 112 to 229 of 224 + 3 + 2.
    x, dz = (8, 224, 224, 3), (8, 112, 112, 64)
    corr = helpers.dk_correlation(((3, 2), (3, 2)), stride=(2, 2))
    bands = _taps.row_bands(x, dz, corr, "positions", 1, 4)
    got = [(lhs_rows, rhs_rows, banded.padding[0]) for lhs_rows, rhs_rows, banded in bands]
    assert got == [((0, 114), (0, 56), (3, 0)), ((109, 224), (56, 112), (0, 2))]
    # 53 dz rows (a prime): two bands, of 27 and 26 rows, not 53 of one.
    x = (8, 53, 53, 64)
    bands = _taps.row_bands(x, x, same, "positions", 1, 4)
    got = [(lhs_rows, rhs_rows, banded.padding[0]) for lhs_rows, rhs_rows, banded in bands]
    assert got == [((0, 28), (0, 27), (1, 0)), ((26, 53), (27, 53), (0, 1))]
    # Stacks within the budget, other modes: one band.
    small = (8, 28, 28, 64)
    assert _taps.row_bands(small, small, same, "positions", 1, 4) == [None]
    assert _taps.row_bands(x, dz, corr, "placed", 1, 4) == [None]


# Kernel gradients whose im2col stacks outgrow BAND_STACK_BYTES are summed over
# bands of dz rows, each with its own padding: strides, dilation, asymmetric
# and more-than-SAME padding, both layouts, 1-D and 3-D.
BANDED = [
    Config(2, (9, 7), (3, 3), 4, 5, padding="SAME"),
    Config(2, (10, 6), (3, 2), 3, 4, stride=2, padding=((2, 1), (0, 1))),
    Config(3, (11, 5), (2, 3), 3, 3, dilation=(2, 1)),
    Config(2, (8, 6), (3, 3), 4, 4, padding=((0, 3), (1, 1)), layout="channels_first"),
    Config(2, (12,), (3,), 4, 6, stride=3, padding=2),
    Config(2, (6, 5, 4), (3, 2, 2), 3, 3, padding="SAME"),
    Config(2, (8,), (3,), 3, 2, padding=((0, 4),)),  # the last dz rows read only padding
]


@pytest.mark.parametrize(
    "config, rows", [(c, "one") for c in BANDED] + [(c, "few") for c in BANDED[:2]], ids=str
)
def test_banded_kernel_gradient_matches_lax(config, rows, monkeypatch):
    config = dataclasses.replace(config, lowering="taps")
    per_image = math.prod(config.x_shape[1:]) * 4
    monkeypatch.setattr(_taps, "CHUNK_BYTES", per_image)  # one image a chunk
    monkeypatch.setattr(_fold, "FOLD_TERMS", 1)  # (folding replaces the loop where it applies)
    params, x, _ = config.arrays()
    z = jconv.conv_forward(params, x, **config.kwargs)
    spatial = z.shape[1:-1] if config.layout == "channels_last" else z.shape[2:]
    stacks = math.prod(config.window) * config.c_in * math.prod(spatial) * 4  # of one image
    budget = 1 if rows == "one" else stacks // 2  # bands of one dz row, or of about half
    monkeypatch.setattr(_taps, "BAND_STACK_BYTES", budget)
    monkeypatch.setattr(_im2col, "STACK_BYTES", max(1, budget // 2))
    kernel_shape = params["kernel"].shape
    dk = jax.make_jaxpr(
        lambda x, dz: jconv.conv_grad_kernel(x, dz, kernel_shape, lowering="taps", **config.kwargs)
    )
    jaxpr = str(dk(x, z))
    assert jaxpr.count("scan[") + jaxpr.count("while[") >= 2  # a chunk loop per band
    _check_chunked(config, jnp.float32, "kernel")


# Kernel gradients whose terms only reduce are folded (``_fold``): slabs of the
# batch and of the output rows, edges where slabs or whole positions only meet
# padding, strides, dilation, a channel multiplier, both layouts, 1-D and 3-D.
FOLDED = [
    Config(4, (9, 6), (3, 3), 4, 4, groups=4, padding="SAME"),  # batch and row slabs
    Config(6, (6, 6), (3, 3), 1, 3, lowering="taps"),  # one input channel
    Config(3, (9, 8), (3, 2), 3, 6, groups=3, stride=2, padding=((2, 1), (0, 1))),
    Config(2, (11,), (3,), 2, 2, groups=2, dilation=3, padding=4, layout="channels_first"),
    Config(6, (1,), (2,), 2, 2, groups=2, stride=3, padding=4),  # a position in padding only
    Config(6, (6, 3, 5), (2, 2, 3), 2, 2, groups=2, padding="SAME"),
    # half precision sums in float32: twice the slabs per position
    Config(8, (6, 5), (2, 2), 3, 3, groups=3, padding="SAME"),
    Config(8, (12,), (2,), 4, 8, groups=4, padding=((0, 1),), layout="channels_first"),
]


@pytest.mark.parametrize(
    "config, dtype",
    [(c, jnp.float32) for c in FOLDED[:-2]] + [(c, jnp.bfloat16) for c in FOLDED[-2:]],
    ids=str,
)
def test_folded_kernel_gradient_matches_lax(config, dtype):
    config = dataclasses.replace(config, lowering="taps")
    assert _takes(config, "folded_positions", dtype=dtype)
    helpers.check_against_lax_afresh(config, dtype)


def test_grouped_forward_in_positions_mode_is_not_folded():
    # A depthwise forward whose output (1x1x1) is smaller than its window is in
    # positions mode too, but its lhs feature axis is the grouped channels.
    config = Config(
        3,
        (5, 5, 2),
        (3, 3, 1),
        4,
        4,
        groups=4,
        stride=(1, 3, 2),
        dilation=(2, 2, 2),
        layout="channels_first",
        lowering="taps",
    )
    calls = []
    real = _fold.folded_positions
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_taps, "folded_positions", lambda *a: calls.append(a) or real(*a))
        helpers.check_against_lax_afresh(config, jnp.float32)
    assert not calls


def test_fold_keeps_its_loop_output_within_the_input():
    # LeNet's first layer: 6 outputs per input channel and 25 positions. Folded,
    # the loop's output would be 6 * 25 / F times x, so positions mode is kept.
    assert not _takes(Config(64, (28, 28), (5, 5), 1, 6), "folded_positions")
    assert _takes(Config(8, (28, 28), (3, 3), 8, 8, groups=8, padding="SAME"), "folded_positions")
    # ... and within FOLD_BYTES: 32 images of 28x28x256 would need 13.8 MiB
    assert not _takes(
        Config(32, (28, 28), (3, 3), 256, 256, groups=256, padding="SAME"), "folded_positions"
    )


def _takes(config, path: str, lowering: str = "taps", dtype=jnp.float32) -> bool:
    """Whether tracing ``config``'s kernel gradient calls ``_taps``'s ``path``."""
    return helpers.kernel_gradient_calls(config, _taps, path, lowering=lowering, dtype=dtype)[0]


# Unit-stride kernel gradients with fewer output than input channels place the
# shifted dz on x's grid (``_placed``); the channel floor is lowered so that small
# configurations take that path, and the copies' budget so that some chunk.
PLACED = [
    Config(3, (7, 6), (3, 3), 5, 2, padding="SAME"),
    Config(2, (9,), (3,), 4, 3, dilation=3, padding=((4, 1),), layout="channels_first"),
    Config(2, (5, 4), (2, 3), 3, 2, padding=((3, 0), (0, 4))),  # padding past the kernel
    Config(4, (4, 3, 5), (2, 2, 3), 3, 2, padding="SAME", dilation=(1, 2, 1)),
]


@pytest.mark.parametrize(
    "config, dtype, budget",
    [(c, jnp.float32, "whole") for c in PLACED]
    + [(PLACED[0], jnp.bfloat16, "whole"), (PLACED[0], jnp.bfloat16, "chunked")]
    + [(c, jnp.float32, "chunked") for c in PLACED[1:3]],
    ids=str,
)
def test_placed_kernel_gradient_matches_lax(config, dtype, budget, monkeypatch):
    monkeypatch.setattr(_placed, "PLACED_CHANNELS", 1)
    if budget == "chunked":  # one batch entry's copies: the chunk loop runs
        per_entry = math.prod(config.spatial) * config.c_out * jnp.dtype(dtype).itemsize
        monkeypatch.setattr(_placed, "PLACED_BYTES", per_entry * math.prod(config.window))
    config = dataclasses.replace(config, lowering="taps")
    assert _takes(config, "placed_positions", dtype=dtype)
    if budget == "chunked":
        _check_chunked(config, dtype, "kernel")
    else:
        helpers.check_against_lax_afresh(config, dtype)


def test_auto_places_googlenet_kernel_gradient_only():
    googlenet = Config(8, (28, 28), (5, 5), 192, 32, padding="SAME")
    assert _takes(googlenet, "placed_positions", "auto")
    # the mirror (dz the wider operand), a strided one, one with too few channels
    for other in [
        dataclasses.replace(googlenet, c_in=32, c_out=192),
        dataclasses.replace(googlenet, stride=2),
        dataclasses.replace(googlenet, c_in=48, c_out=16),
    ]:
        assert not _takes(other, "placed_positions", "auto")


def test_auto_unstacked_kernel_gradients_only_over_large_images():
    # At 128 input channels the positions' matmuls go unstacked: faster than
    # XLA's kernel gradient over 28x28 images, twice as slow over 14x14.
    small = Config(8, (14, 14), (3, 3), 128, 128, padding="SAME")
    assert not _takes(small, "taps_correlate", "auto")
    assert _takes(dataclasses.replace(small, spatial=(28, 28)), "taps_correlate", "auto")
    stacked = dataclasses.replace(small, c_in=96, c_out=96)
    assert _takes(stacked, "taps_correlate", "auto")


@pytest.mark.parametrize("gradient", ["kernel", "input"])
def test_half_precision_chunks_are_converted_one_at_a_time(gradient, monkeypatch):
    # XLA:CPU slices half-precision arrays in float32; a chunk loop over
    # dynamic slices of an operand must not make a float32 copy of it whole.
    # The kernel gradient's batch-chunk loop (depthwise, made too wide to
    # fold), and the scatter loop of a thin input gradient.
    monkeypatch.setattr(_fold, "FOLD_BYTES", 0)
    big = jax.ShapeDtypeStruct((16, 32, 32, 64), jnp.bfloat16)
    if gradient == "kernel":
        fn = jax.jit(
            lambda x, dz: jconv.conv_grad_kernel(
                x, dz, (3, 3, 1, 64), padding="SAME", groups=64, lowering="taps"
            )
        )
        args = (big, big)
    else:
        fn = jax.jit(
            lambda dz, k: jconv.conv_grad_input(
                dz, k, (16, 32, 32, 1), padding="SAME", lowering="taps"
            )
        )
        args = (big, jax.ShapeDtypeStruct((5, 5, 1, 64), jnp.bfloat16))
    assert "scan" in str(jax.make_jaxpr(fn)(*args))  # the chunk loop
    hlo = fn.lower(*args).compile().as_text()
    assert "bf16[16,32,32,64]" in hlo and "f32[16,32,32,64]" not in hlo


# Scatter mode computes its products a batch chunk at a time in a loop; with a
# budget of one byte every chunk is a single batch entry. Every pass is forced
# to scatter: tap-major products with one shifted sum (3x3) or separable ones
# (5x5, 3x3x3; strided and dilated windows in the forward), and side by side
# (wide lhs, or dilated: the strided input gradients).
NCHW = "channels_first"
SCATTERED = [
    Config(5, (6, 7), (3, 3), 6, 2, padding="SAME", lowering="taps"),  # prime N
    Config(2, (6, 7), (3, 3), 32, 1, padding="SAME", lowering="taps"),  # wide lhs: side by side
    Config(4, (9,), (3,), 6, 2, stride=2, padding=1, layout="channels_first", lowering="taps"),
    Config(3, (9, 8), (5, 5), 1, 6, padding="VALID", lowering="taps"),  # LeNet-like
    Config(2, (9, 11), (5, 4), 3, 2, stride=(2, 1), padding=((2, 1), (0, 3)), lowering="taps"),
    Config(2, (8, 9), (4, 5), 2, 3, dilation=(2, 1), padding="SAME", layout=NCHW, lowering="taps"),
    Config(2, (5, 6, 4), (3, 3, 3), 2, 1, padding="SAME", lowering="taps"),
]


@pytest.mark.parametrize("config", SCATTERED, ids=str)
def test_chunked_scatter_matches_lax(config, monkeypatch):
    monkeypatch.setattr(_taps, "choose_mode", lambda *shapes_and_corr: "scatter")
    monkeypatch.setattr(_scatter, "SCATTER_BYTES", 1)
    monkeypatch.setattr(_scatter, "TAP_MAJOR_BYTES", 1)
    _check_chunked(config, jnp.float32, "input")


def test_lenet_input_gradient_sums_tap_major_products_one_axis_at_a_time(monkeypatch):
    # The products' matmul accumulates in float32 for a bfloat16 dz, and the
    # 5x5 window is summed one axis at a time; a 3x3 one at once.
    calls = []
    separable = _scatter._separable_sum
    monkeypatch.setattr(
        _scatter, "_separable_sum", lambda *args: calls.append(args[0].shape) or separable(*args)
    )
    dz, kernel = jnp.ones((4, 24, 24, 6), jnp.bfloat16), jnp.ones((5, 5, 1, 6), jnp.bfloat16)
    jaxpr = str(
        jax.make_jaxpr(lambda dz, k: jconv.conv_grad_input(dz, k, (4, 28, 28, 1), padding="VALID"))(
            dz, kernel
        )
    )
    assert calls and calls[0][:2] == (5, 5)  # (window, then the output's axes)
    assert re.search(r"f32\[25,[0-9,]*\] = dot_general", jaxpr)  # 25 taps' products
    calls.clear()
    jax.make_jaxpr(lambda dz, k: jconv.conv_grad_input(dz, k, (4, 26, 26, 1), padding="VALID"))(
        dz[:, :, :, :6], kernel[:3, :3]
    )
    assert not calls


def _dx_correlation(padding):
    """The input gradient's correlation of an NHWC forward (dz as the lhs)."""
    return Correlation(
        lhs_axes=(0, 3, 1, 2),
        rhs_axes=(2, 3, 0, 1),
        out_axes=(0, 3, 1, 2),
        window_strides=(1, 1),
        padding=padding,
        lhs_dilation=(1, 1),
        rhs_dilation=(1, 1),
    )


def test_tap_major_products_where_the_lhs_is_thinner():
    # LeNet's input gradient: dz has 6 features, the products 25 taps x 1.
    corr = _dx_correlation(((4, 4), (4, 4)))
    assert _scatter._tap_major((64, 24, 24, 6), 25 * 1, corr)
    assert not _scatter._tap_major((8, 64, 64, 32), 9 * 1, corr)  # 3x3, 32 -> 1
    strided = dataclasses.replace(corr, lhs_dilation=(2, 2))  # the phased sum's
    assert not _scatter._tap_major((64, 24, 24, 6), 25 * 1, strided)


def test_thin_input_gradients_scatter_while_an_image_fits_a_chunk():
    # The input gradient of an NHWC forward from 3 features to 64, 3x3 SAME:
    # dz is the lhs (64 features), the output has 3.
    corr = _dx_correlation(((1, 1), (1, 1)))
    rhs = (3, 3, 3, 64)
    # 56x56: 56 * 56 * 27 products (339 KB in float32) within SCATTER_BYTES.
    assert _taps.choose_mode((8, 56, 56, 64), rhs, corr) == "scatter"
    # 224x224 (5.4 MB an image): XLA's convolution, as fast and holding nothing.
    assert _taps.choose_mode((2, 224, 224, 64), rhs, corr) == "taps"
    assert not _correlate._taps_pays_on_cpu((2, 224, 224, 64), rhs, corr, 4)
    # A strided forward's input gradient (dilated lhs) is phased at any size.
    strided = dataclasses.replace(corr, lhs_dilation=(2, 2))
    assert _taps.choose_mode((2, 112, 112, 64), rhs, strided) == "scatter"
    assert _correlate._taps_pays_on_cpu((2, 112, 112, 64), rhs, strided, 4)
    # Not thin: more output features than half the input's.
    assert _taps.choose_mode((8, 56, 56, 5), rhs, corr) == "taps"


def test_scatter_chunks_read_an_entry_parameter_in_place(monkeypatch):
    # A loss's cotangent is an entry parameter of the jitted gradient. Mapping
    # over a reshaped copy of it made XLA copy it whole; slicing it must not.
    monkeypatch.setattr(_taps, "choose_mode", lambda *shapes_and_corr: "scatter")
    monkeypatch.setattr(_scatter, "SCATTER_BYTES", 1)
    dz, kernel = jnp.ones((8, 32, 32, 64)), jnp.ones((5, 5, 1, 64))
    fn = jax.jit(
        lambda dz, k: jconv.conv_grad_input(dz, k, (8, 32, 32, 1), padding="SAME", lowering="taps")
    )
    assert "scan" in str(jax.make_jaxpr(fn)(dz, kernel))
    stats = fn.lower(dz, kernel).compile().memory_analysis()
    assert stats.temp_size_in_bytes < dz.nbytes // 2


# Taps mode pads its lhs in batch chunks once the padded copy outgrows
# ``PAD_BYTES``; with budgets of a byte every chunk is one batch entry.
PADDED_IN_CHUNKS = [
    Config(5, (7, 6), (3, 3), 4, 4, groups=4, stride=2, padding="SAME"),  # prime N
    Config(4, (9,), (3,), 6, 4, groups=2, dilation=2, padding=3, layout="channels_first"),
    Config(2, (5, 4, 3), (3, 2, 2), 3, 2, padding=((1, 2), (0, 1), (1, 1)), lowering="taps"),
]


@pytest.mark.parametrize("config", PADDED_IN_CHUNKS, ids=str)
def test_taps_padded_in_batch_chunks_match_lax(config, monkeypatch):
    monkeypatch.setattr(_regions, "TERMS_PER_TAP", 0)  # pad rather than cut regions
    monkeypatch.setattr(_taps, "PAD_BYTES", 0)
    monkeypatch.setattr(_taps, "PAD_CHUNK_BYTES", 1)
    _check_chunked(config, jnp.float32, "forward")


def test_taps_forward_pads_large_inputs_a_chunk_at_a_time(monkeypatch):
    # 4 images padded to 57x57x64 (stride 2, SAME): 3.3 MB at once, 1.7 MB a
    # chunk of 2 images (the output is the entry's own buffer).
    monkeypatch.setattr(_regions, "TERMS_PER_TAP", 0)  # pad rather than cut regions
    monkeypatch.setattr(_taps, "PAD_BYTES", 1 << 20)
    params = jconv.conv_init(jax.random.key(0), 64, 64, (3, 3), groups=64)
    x = jnp.ones((4, 56, 56, 64))
    fn = jax.jit(lambda p, x: jconv.conv_forward(p, x, groups=64, stride=2, padding="SAME"))
    stats = fn.lower(params, x).compile().memory_analysis()
    assert stats.temp_size_in_bytes < 0.6 * (4 * 57 * 57 * 64 * 4)


def test_region_pieces_worked_case():
    # The _regions docstring: n = 5, 3 taps, SAME.
    assert _regions.pieces(5, 5, 3, 1, 1, 1) == [(0, 1, [1, 2]), (1, 4, [0, 1, 2]), (4, 5, [0, 1])]
    # Stride 2, dilation 2, lo = 3 over 9 entries, 6 outputs: tap t reads 2o + 2t - 3.
    assert _regions.pieces(9, 6, 3, 2, 2, 3) == [
        (0, 1, [2]),
        (1, 2, [1, 2]),
        (2, 4, [0, 1, 2]),
        (4, 5, [0, 1]),
        (5, 6, [0]),
    ]


# Taps mode cuts its output into regions of constant in-bounds taps and reads
# the lhs unpadded: strides, dilation, asymmetric and wide padding, 1-D to 3-D.
REGIONS = [
    Config(3, (7, 6), (3, 3), 4, 4, groups=4, padding="SAME"),
    Config(2, (9, 8), (3, 2), 3, 6, groups=3, stride=2, padding=((2, 1), (0, 1))),
    Config(2, (11,), (3,), 2, 4, groups=2, dilation=3, padding=(4,), layout="channels_first"),
    Config(2, (5, 4, 6), (2, 3, 3), 2, 2, groups=2, padding="SAME", dilation=(1, 2, 1)),
    Config(2, (6, 5), (3, 3), 3, 2, padding=((2, 0), (1, 2)), lowering="taps"),
]


@pytest.mark.parametrize("config", REGIONS, ids=str)
def test_taps_regions_match_lax(config, monkeypatch):
    monkeypatch.setattr(_regions, "REGION_BYTES", 0)  # small inputs take regions too
    params, x, _ = config.arrays(jnp.float32)
    kw = dict(config.kwargs, lowering=config.lowering)
    jaxpr = str(jax.make_jaxpr(lambda p, x: jconv.conv_forward(p, x, **kw))(params, x))
    assert "pad" not in jaxpr.replace("padding", "")  # no padded copy of x
    helpers.check_against_lax_afresh(config, jnp.float32)


def test_regions_leave_outputs_that_read_only_padding_to_the_padded_lhs(monkeypatch):
    monkeypatch.setattr(_regions, "REGION_BYTES", 0)
    # Padding 4 past a 2-tap window: the first outputs read padding only.
    config = Config(1, (3,), (2,), 1, 2, padding=((4, 0),), lowering="taps")
    assert _regions.pieces(3, 6, 2, 1, 1, 4)[0] == (0, 3, [])
    helpers.check_against_lax_afresh(config, jnp.float32)


def test_taps_without_padding_are_not_chunked(monkeypatch):
    # Chunks exist to bound the padded copy; a VALID 1x1 input gradient makes none.
    monkeypatch.setattr(_taps, "PAD_BYTES", 0)
    monkeypatch.setattr(_taps, "PAD_CHUNK_BYTES", 1)
    fn = jax.jit(lambda dz, k: jconv.conv_grad_input(dz, k, (4, 6, 6, 8), lowering="taps"))
    jaxpr = str(jax.make_jaxpr(fn)(jnp.ones((4, 6, 6, 2)), jnp.ones((1, 1, 8, 2))))
    assert "while" not in jaxpr and "scan" not in jaxpr


def test_depthwise_training_step_needs_no_more_memory_than_autodiff():
    # The forward's and the input gradient's chunk loops write buffers of one
    # shape; started from one shared zeros buffer, XLA copied it for one loop
    # (15.7 MiB against autodiff's 14.5; 13.0 on their own buffers).
    shape = _bench.SUITE[6]
    assert shape.name == "mobilenet-dw-28"
    jconv_bytes, autodiff_bytes = helpers.bench_step_temp_bytes(shape)
    assert jconv_bytes <= autodiff_bytes


def test_network_step_needs_no_more_memory_than_autodiff():
    # Three 3x3 layers with ReLUs: a kernel gradient's first batch chunk summed
    # before its loop depended on the forward input alone, and XLA:CPU's
    # scheduler built its im2col stacks during the forward and held them
    # through the backward, one set per layer (59.8 MiB against autodiff's 49.0).
    keys = jax.random.split(jax.random.key(0), 4)
    params = [jconv.conv_init(k, 64, 64, (3, 3)) for k in keys[:3]]
    x = jax.random.normal(keys[3], (8, 56, 56, 64))

    def temp(forward):
        def loss(ps, x):
            for p in ps:
                x = jax.nn.relu(forward(p, x, padding="SAME"))
            return jnp.mean(x * x)

        return _bench._compile(jax.value_and_grad(loss), params, x)[2]

    assert temp(jconv.conv_forward) <= temp(jconv.autodiff.conv_forward)


def test_kernel_gradient_stacks_stay_chunk_sized():
    # im2col stacks of 512 KiB chunks held 7.3 MiB for four images of 28x28x64
    # (XLA's kernel gradient: 1.7 MiB); 256 KiB chunks hold 3.6.
    x, dz = jnp.ones((4, 28, 28, 64)), jnp.ones((4, 28, 28, 64))
    dk = jax.jit(lambda x, dz: jconv.conv_grad_kernel(x, dz, (3, 3, 64, 64), padding="SAME"))
    text = dk.lower(x, dz).as_text()
    assert "stablehlo.while" in text and "stablehlo.convolution" not in text  # taps' chunks
    assert dk.lower(x, dz).compile().memory_analysis().temp_size_in_bytes <= 4 << 20


def test_kernel_gradient_stacks_go_in_two_groups_at_least(monkeypatch):
    # One image of 28x28x64 a chunk: its nine positions' stack (1.8 MB) fits one
    # group, but one matmul over all nine was slower than two (8.2 vs 5.4 ms).
    x = jnp.ones((2, 28, 28, 64))

    def matmuls():  # (a fresh function: traced under the current MIN_GROUPS)
        dk = jax.jit(lambda x, dz: jconv.conv_grad_kernel(x, dz, (3, 3, 64, 64), padding="SAME"))
        return dk.lower(x, x).as_text().count("stablehlo.dot_general")

    assert matmuls() == 2
    monkeypatch.setattr(_im2col, "MIN_GROUPS", 1)
    assert matmuls() == 1


def test_taps_sum_keeps_float8_extremes_finite():
    # The reduce_precision that keeps a taps sum whole is the identity only for
    # IEEE-like dtypes; on float8_e4m3fn it turned 448 (its largest) into NaN.
    dtype = jnp.float8_e4m3fn
    params = {"kernel": jnp.zeros((3, 3, 1, 2), dtype).at[1, 1].set(1)}
    x = jnp.full((1, 4, 4, 2), 448, dtype)
    z = jconv.conv_forward(params, x, groups=2, padding="SAME", lowering="taps")
    np.testing.assert_array_equal(np.asarray(z, np.float32), 448)


def test_taps_forward_under_a_reduction_slices_in_place():
    # XLA:CPU fused the taps' sum into the loss's reduction, which cannot take
    # slices, and copied every tap's slice of x out first: 25 of f32[16,24,24,1].
    params = jconv.conv_init(jax.random.key(0), 1, 6, (5, 5))
    x, ct = jnp.ones((16, 28, 28, 1)), jnp.ones((16, 24, 24, 6))

    def loss(p, x, ct):
        return jnp.sum(jconv.conv_forward(p, x) * ct)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    hlo = step.lower(params, x, ct).compile().as_text()
    entry = hlo[hlo.index("\nENTRY") :]  # the buffers; fusions' insides come before
    assert "= f32[16,24,24,1]" not in entry


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_empty_batch_gives_zero_gradients_in_every_lowering(lowering):
    # An empty batch makes the kernel gradient's sums empty: the chunked taps
    # (and the Winograd tiles' chunk sizes) divided by zero before correlate
    # answered empty operands with zeros.
    params = jconv.conv_init(jax.random.key(0), 4, 5, (3, 3))
    x = jnp.ones((0, 6, 6, 4))

    def loss(p, x):
        return jnp.sum(jconv.conv_forward(p, x, padding="SAME", lowering=lowering))

    (gp, gx) = jax.grad(loss, argnums=(0, 1))(params, x)
    np.testing.assert_array_equal(gp["kernel"], np.zeros((3, 3, 4, 5)))
    np.testing.assert_array_equal(gp["bias"], np.zeros(5))
    assert gx.shape == x.shape


@pytest.mark.parametrize("lowering, expect_convs", [("xla", True), ("taps", False)])
def test_forced_lowerings(lowering, expect_convs):
    convs, dots = _hlo("cpu", groups=1, window=(3, 3), lowering=lowering)
    assert (convs > 0) == expect_convs and (dots > 0) != expect_convs


def test_unknown_lowering_is_refused():
    refusal = (
        r"lowering must be one of \('auto', 'xla', 'taps', 'winograd', 'measured'\), got 'fast'"
    )
    with pytest.raises(ValueError, match=refusal):
        jconv.conv_forward(
            {"kernel": jnp.ones((3, 3, 2, 2))}, jnp.ones((1, 5, 5, 2)), lowering="fast"
        )


def _suite_shape(name):
    return next(s for s in _bench.SUITE if s.name == name)


def test_torch_contender_is_optional(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    assert _bench._torch_runners(_suite_shape("lenet-5x5")) == {}


def test_torch_contender_runs_both_layouts_where_torch_can():
    pytest.importorskip("torch")
    runners = _bench._torch_runners(_suite_shape("lenet-5x5"))
    assert set(runners) == {"torch", "torch-channels-last"}
    assert all(run() > 0 for run in runners.values())
    strided_same = _bench._torch_runners(_suite_shape("mobilenet-dw-s2-112"))
    assert set(strided_same) == {"torch", "torch-channels-last"}


def test_torch_padding_keeps_the_output_size():
    # SAME with stride 2 over 112 rows pads (0, 1); torch's symmetric 1 gives 56 rows too.
    assert _bench._torch_padding(_suite_shape("mobilenet-dw-s2-112").config) == (1, 1)
    assert _bench._torch_padding(_suite_shape("resnet-stem-7x7-s2").config) == (3, 3)
    assert _bench._torch_padding(_suite_shape("1d-dilated-k3").config) == (4,)
    assert _bench._torch_padding(_suite_shape("lenet-5x5").config) == (0, 0)
    # Stride 2, window 3 over 5 rows padded (1, 2): 1 on both sides gives the
    # same 3 rows, and lax's windows.
    assert _bench._torch_padding(Config(1, (5,), (3,), 1, 1, stride=2, padding=((1, 2),))) == (1,)
    # A 2-tap SAME window over 5 pads (0, 1): symmetric 1 would give 6 outputs.
    assert _bench._torch_padding(Config(1, (5, 6), (2, 3), 1, 1, padding="SAME")) == [
        (0, 1),
        (1, 1),
    ]


TORCH_SHAPES = [s.config for s in _bench.SUITE if len(s.config.spatial) <= 2] + [
    Config(2, (5, 6), (2, 3), 3, 4, padding="SAME"),  # asymmetric: F.pad first
    Config(2, (9, 8), (3, 2), 4, 4, stride=2, padding=((2, 1), (0, 1)), groups=2),
]


def _channels_first(config, a):
    """An activation (``x``, ``z``, ``dz``) as torch lays it out: ``(N, C, *spatial)``."""
    return jnp.moveaxis(a, -1, 1) if config.layout == "channels_last" else a


def _out_in_window(config, kernel):
    """A kernel of ``config`` as torch lays it out, ``(O, I, *window)``."""
    return jnp.moveaxis(kernel, (-1, -2), (0, 1)) if config.layout == "channels_last" else kernel


@pytest.mark.parametrize("config", TORCH_SHAPES, ids=str)
def test_torch_contender_computes_the_same_output_shape(config):
    # (and the same values where it pads as lax does)
    torch = pytest.importorskip("torch")
    # One image and a few channels: the geometry is what torch might get wrong.
    groups = min(config.groups, 2)
    c_in, c_out = (2, 2) if groups > 1 else (min(config.c_in, 3), min(config.c_out, 4))
    small = dataclasses.replace(config, batch=1, c_in=c_in, c_out=c_out, groups=groups)
    params, x, _ = small.arrays()
    kernel, bias = params["kernel"], params["bias"]
    x, kernel = _channels_first(small, x), _out_in_window(small, kernel)
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}[len(small.spatial)]
    forward = _bench._torch_forward(small, conv, torch.nn.functional.pad)
    tensors = (torch.from_numpy(np.asarray(a)) for a in (x, kernel, bias))
    z_torch = forward(*tensors).numpy()
    z = _channels_first(small, jconv.conv_forward(params, small.arrays()[1], **small.kwargs))
    assert z_torch.shape == z.shape
    geom = jconv._geometry.geometry(
        small.x_shape, small.kernel_shape, **small.kwargs, precision=None, where="test"
    )
    if _bench._torch_padding(small) in (list(geom.padding), tuple(lo for lo, _ in geom.padding)):
        # (float32 sums of up to 4800 terms, in different orders)
        np.testing.assert_allclose(z_torch, z, rtol=1e-4, atol=1e-5 * float(np.abs(z).max()))


@pytest.mark.parametrize("lowering", ["auto", "winograd", "measured"])
def test_bench_smoke(tmp_path, lowering):
    report = _bench.run(
        ["lenet-5x5"], repeats=1, torch=False, progress=lambda s: None, lowering=lowering
    )
    (row,) = report["rows"]
    assert report["lowering"] == row["shape"]["lowering"] == lowering
    assert row["jconv_fwd_bwd_s"] > 0 and row["autodiff_fwd_bwd_s"] > 0
    assert row["ratio"] == pytest.approx(row["jconv_fwd_bwd_s"] / row["autodiff_fwd_bwd_s"])
    assert report["matmul_gflops"] > 0 and report["geomean_ratio"] == pytest.approx(row["ratio"])
    _bench.write(report, tmp_path)
    assert "| lenet-5x5 |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.json").exists() and (tmp_path / "bench.png").exists()


def test_bench_times_the_forward_too():
    # Under jax.grad alone the loss's forward is dead code: XLA drops it, and
    # only the backward's two convolutions would be timed, where torch runs three.
    shape = _bench.Shape("tiny", Config(2, (6, 6), (3, 3), 4, 4, padding="SAME"))
    params, x, ct = shape.config.arrays()
    step = jax.jit(_bench._grad_fn(jconv.autodiff.conv_forward, shape))
    assert step.lower(params, x, ct).compile().as_text().count("convolution(") == 3


# The taps and scatter modes forced on a spread of the core grid (in the grid
# itself "taps" picks one mode per correlation, so some would go unexercised;
# positions mode computes every kernel gradient there, so it needs no forcing).
def _strided(config) -> bool:
    return max(np.atleast_1d(config.stride)) > 1


def _first_of_each_kind(configs):
    """One 1-D or 2-D config per (spatial rank, grouped, strided); the main grid
    covers 3-D with every lowering, and 3-D configs are the slow ones to compile."""
    kinds = {}
    for c in (c for c in configs if len(c.spatial) <= 2):
        key = (
            len(c.spatial),
            c.groups > 1,
            _strided(c),
        )
        kinds.setdefault(key, c)
    return list(kinds.values())


MODE_GRID = [
    *_first_of_each_kind(GRID),
    Config(2, (7, 6), (3, 3), 4, 4, groups=4, stride=2, padding=1),  # depthwise, strided
]


def test_mode_grid_has_strided_configs():
    strided = [c for c in MODE_GRID if _strided(c)]
    # their input gradients are lhs-dilated: the phased scatter, dense and grouped
    assert {c.groups > 1 for c in strided} == {False, True}


@pytest.mark.parametrize("mode", ["taps", "scatter"])
@pytest.mark.parametrize("config", MODE_GRID, ids=str)
def test_every_taps_mode_matches_lax(config, mode, monkeypatch):
    monkeypatch.setattr(_taps, "choose_mode", lambda *shapes_and_corr: mode)
    helpers.check_against_lax_afresh(dataclasses.replace(config, lowering="taps"), jnp.float32)


def test_bench_chained_step_waits_for_the_forward(tmp_path):
    shape = _bench.Shape("tiny", Config(2, (6, 6), (3, 3), 4, 4, padding="SAME"))
    params, x, ct = shape.config.arrays()
    z = jconv.conv_forward(params, x, **shape.config.kwargs)
    (value, (gp, gx)) = _bench._grad_fn(jconv.conv_forward, shape, chained=True)(params, x, ct)
    helpers.assert_close(value, jnp.sum(z * ct) + 0.5 * jnp.sum(z * z))
    # The cotangent is ct + z: the bias gradient sums it.
    helpers.assert_close(gp["bias"], jnp.sum(ct + z, axis=(0, 1, 2)))
    report = _bench.run(
        ["lenet-5x5"], repeats=1, torch=False, progress=lambda s: None, chained=True
    )
    assert report["chained"] and report["rows"][0]["jconv_fwd_bwd_s"] > 0
    assert "chained step" in _bench.markdown(report)


@pytest.mark.parametrize("chunk", [1, 2, 3, 6])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=str)
def test_in_batch_chunks_place_interleaved_chunks_back(chunk, dtype):
    # The batch on lhs axis 1 and output axis 2 (neither major): chunk i holds
    # entries i, i + count, ... (_chunks.batch_chunk), and each entry's result
    # must land at its own index. f doubles its entries and adds their index.
    lhs = jnp.arange(4 * 6 * 5, dtype=jnp.float32).reshape(4, 6, 5).astype(dtype)
    corr = Correlation((1, 0, 2), (0, 1, 2), (2, 0, 1), (1,), ((0, 0),), (1,), (1,))

    def f(part):  # (4, chunk, 5) -> (5, 4, chunk)
        return jnp.transpose(2 * part + part[:1, :, :1], (2, 0, 1))

    out = _chunks.in_batch_chunks(f, lhs, chunk, corr)
    np.testing.assert_array_equal(out, f(lhs))
    count = 6 // chunk
    for i in range(count):  # and the chunks themselves, on the batch axis
        np.testing.assert_array_equal(_chunks.batch_chunk(lhs, i, count, 1), lhs[:, i::count])


def test_auto_keeps_xla_for_unit_stride_1d_kernel_gradients():
    # 1-D at unit stride XLA's kernel gradient is faster within a step; strided
    # ones keep the taps' im2col.
    audio = Config(16, (4000,), (5,), 32, 32, padding="SAME")
    assert not _takes(audio, "taps_correlate", "auto")
    assert _takes(dataclasses.replace(audio, stride=2, window=(7,)), "taps_correlate", "auto")


def _experiment(name):
    """A script of ``experiments/``, imported as a module."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "config",
    [
        Config(2, (9, 8), (3, 3), 4, 6, stride=2, padding=1, layout="channels_first"),
        Config(2, (7, 6), (5, 5), 4, 4, dilation=(1, 2), padding="SAME", groups=2),
        Config(3, (17,), (3,), 3, 5, dilation=4, padding="SAME"),
    ],
    ids=str,
)
def test_lowering_passes_torch_calls_compute_the_three_passes(config):
    # experiments/lowering_passes.py --torch times torch's passes: they must be
    # the forward and gradients of the same convolution (in both memory formats).
    torch = pytest.importorskip("torch")
    calls = _experiment("lowering_passes").torch_calls
    params, x, ct = config.arrays()
    kernel = params["kernel"]
    kw = config.kwargs
    want = {
        "fwd": _channels_first(config, jconv.conv_forward({"kernel": kernel}, x, **kw)),
        "dx": _channels_first(config, jconv.conv_grad_input(ct, kernel, x.shape, **kw)),
        "dk": _out_in_window(config, jconv.conv_grad_kernel(x, ct, kernel.shape, **kw)),
    }
    torch_layout = (
        _channels_first(config, x),
        _out_in_window(config, kernel),
        _channels_first(config, ct),
    )
    x, kernel, ct = (torch.from_numpy(np.array(a)) for a in torch_layout)
    passes = calls(config, x, kernel, ct)
    assert set(passes) == {"fwd", "dx", "dk"}
    for name, by_format in passes.items():
        assert set(by_format) == (
            {"nchw", "channels-last"} if len(config.spatial) == 2 else {"nchw"}
        )
        for call in by_format.values():
            helpers.assert_close(call().numpy(), want[name], err_msg=f"{config} {name}")


@pytest.mark.parametrize(
    "config",
    [
        Config(2, (9, 8), (3, 3), 4, 6, stride=2, padding="SAME"),
        Config(2, (7, 6), (3, 2), 4, 6, dilation=(2, 1), padding=(1, 2), groups=2),
        Config(2, (8, 7), (3, 3), 3, 4, padding="SAME", layout="channels_first"),
        Config(3, (17,), (3,), 3, 5, dilation=4, padding="SAME"),
        Config(2, (6, 6), (5, 5), 1, 3, padding="VALID"),
    ],
    ids=str,
)
def test_xla_ceilings_pass_dims_are_the_passes_im2col_matmuls(config):
    # experiments/xla_ceilings.py's floors time each pass as the matmul that
    # pass_dims names: check those are the passes (per group, x's patches
    # times the kernel; dz times the kernel's transpose, then the patches'
    # col2im; the patches contracted with dz), and that in_bounds_flops counts
    # the products on x's non-padding entries.
    ceilings = _experiment("xla_ceilings")
    params, x, ct = config.arrays()
    kernel = params["kernel"]
    geo = jconv._geometry.geometry(
        x.shape, kernel.shape, config.stride, config.padding, config.dilation,
        config.groups, config.layout, None, "test",
    )  # fmt: skip
    nd, g = len(config.spatial), config.groups
    last = config.layout == "channels_last"
    spec = ("N" + "DHW"[3 - nd :] + "C") if last else ("NC" + "DHW"[3 - nd :])
    kspec = ("DHW"[3 - nd :] + "IO") if last else ("OI" + "DHW"[3 - nd :])
    numbers = (spec, kspec, spec)

    def patches(x):  # (P, groups, A): features C-major, then the window
        cols = jax.lax.conv_general_dilated_patches(
            x, config.window, geo.spec.stride, geo.padding,
            rhs_dilation=geo.spec.dilation, dimension_numbers=numbers,
        )  # fmt: skip
        cols = cols if last else jnp.moveaxis(cols, 1, -1)
        return cols.reshape(-1, g, cols.shape[-1] // g)

    def per_group(a):  # activations (N, *spatial, C) or (N, C, *spatial) -> (P, groups, C / g)
        a = a if last else jnp.moveaxis(a, 1, -1)
        return a.reshape(-1, g, a.shape[-1] // g)

    cin_first = kernel if not last else jnp.moveaxis(kernel, (nd, nd + 1), (0, 1))
    # (C_in/g, C_out, *window) -> weights (A, groups, B), A = (C_in/g, *window) C-major
    w = jnp.moveaxis(cin_first if last else jnp.swapaxes(kernel, 0, 1), 1, -1)
    w = w.reshape(-1, g, config.c_out // g)
    cols, vjp = jax.vjp(patches, x)
    dz = per_group(ct)
    z = per_group(jconv.conv_forward({"kernel": kernel}, x, **config.kwargs))
    helpers.assert_close(jnp.einsum("pga,agb->pgb", cols, w), z)
    (dx,) = vjp(jnp.einsum("pgb,agb->pga", dz, w))
    helpers.assert_close(dx, jconv.conv_grad_input(ct, kernel, x.shape, **config.kwargs))
    dk = jconv.conv_grad_kernel(x, ct, kernel.shape, **config.kwargs)
    dk_first = jnp.moveaxis(dk, (nd, nd + 1), (0, 1)) if last else jnp.swapaxes(dk, 0, 1)
    want_dk = jnp.moveaxis(dk_first, 1, -1).reshape(-1, g, config.c_out // g)
    helpers.assert_close(jnp.einsum("pga,pgb->agb", cols, dz), want_dk)

    dims, groups = ceilings.pass_dims(config, ct.shape)
    p, a, b = cols.shape[0], cols.shape[2], dz.shape[2]
    assert groups == g
    assert dims == {"fwd": (p, a, b), "dx": (p, b, a), "dk": (a, p, b)}
    ones = patches(jnp.ones_like(x))  # 1 where a product reads x, 0 in the padding
    assert ceilings.in_bounds_flops(config) == 3 * 2 * b * int(jnp.sum(ones))


@pytest.mark.parametrize("layout", ["NN", "NT", "TN"])
def test_xla_ceilings_product_is_its_matmul_in_every_layout(layout):
    ceilings = _experiment("xla_ceilings")
    fn, (lhs, rhs) = ceilings.product(3, 4, 5, 2, layout, np.random.default_rng(0))
    lhs_t, rhs_t = ceilings.LAYOUTS[layout]
    a = np.swapaxes(np.asarray(lhs), 1, 2) if lhs_t else np.asarray(lhs)
    b = np.swapaxes(np.asarray(rhs), 1, 2) if rhs_t else np.asarray(rhs)
    assert a.shape == (2, 3, 4) and b.shape == (2, 4, 5)
    helpers.assert_close(fn(lhs, rhs), a @ b)
