"""Winograd tiles (``lowering="winograd"``) against lax, and where they apply: F(2, 3)
for the forward and input gradient, F(3, 2) for the kernel gradient."""

import dataclasses

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Config, check_against_lax

import jconv
from jconv import _winograd
from jconv._correlation import Correlation

# 3-tap windows at unit stride: the forward and the input gradient take the
# F(2, 3) tiles, the kernel gradient F(3, 2) pieces (over wide features only;
# the grid's tests lower that bound to 1). Odd and even outputs (a cropped last
# tile), every padding kind, padding past the kernel (cropped before the tiles),
# both layouts, 1-D to 3-D, a single image, bias or not.
WINOGRAD = [
    Config(3, (7, 6), (3, 3), 4, 5, padding="SAME"),
    Config(2, (8, 5), (3, 3), 3, 2, padding="VALID", bias=False),
    Config(1, (6, 9), (3, 3), 2, 3, padding="SAME_LOWER", layout="channels_first"),
    Config(2, (5, 4), (3, 3), 3, 2, padding=((4, 0), (1, 3))),
    Config(3, (11,), (3,), 3, 4, padding=((0, 2),), layout="channels_first"),
    Config(2, (4, 5, 3), (3, 3, 3), 2, 3, padding="SAME"),
]


def _check_with_pieces(config, dtype, monkeypatch):
    """``check_against_lax`` under ``winograd`` with the kernel gradient's F(3, 2)
    pieces forced (the channel bound lowered to 1), asserting they were taken."""
    monkeypatch.setattr(_winograd, "GRADIENT_FEATURES", 1)
    calls = _counting_pieces(monkeypatch)
    helpers.check_against_lax_afresh(dataclasses.replace(config, lowering="winograd"), dtype)
    assert calls, "the kernel gradient did not take the F(3, 2) pieces"


@pytest.mark.parametrize("config", WINOGRAD, ids=str)
def test_winograd_matches_lax(config, monkeypatch):
    _check_with_pieces(config, jnp.float32, monkeypatch)


@pytest.mark.parametrize("config", WINOGRAD[:3], ids=str)
def test_winograd_matches_lax_in_float64(config, x64, monkeypatch):
    _check_with_pieces(config, jnp.float64, monkeypatch)


def test_winograd_in_bfloat16_matches_lax(monkeypatch):
    _check_with_pieces(WINOGRAD[0], jnp.bfloat16, monkeypatch)


def test_winograd_batch_chunks_match_lax(monkeypatch):
    monkeypatch.setattr(_winograd, "WINOGRAD_BYTES", 1)  # one image per chunk
    config = Config(5, (6, 7), (3, 3), 3, 4, padding="SAME", lowering="winograd")
    params, x, _ = config.arrays(jnp.float32)
    jaxpr = str(
        jax.make_jaxpr(
            lambda p, x: jconv.conv_forward(p, x, **config.kwargs, lowering=config.lowering)
        )(params, x)
    )
    assert "while" in jaxpr or "scan" in jaxpr
    helpers.check_against_lax_afresh(config, jnp.float32)


def test_worked_case_of_the_docstring():
    # d = (1, 2, 3, 4), k = (1, 0, -1): y = (1 - 3, 2 - 4).
    corr = Correlation((0, 1, 2), (0, 1, 2), (0, 1, 2), (1,), ((0, 0),), (1,), (1,))
    d = jnp.arange(1.0, 5.0).reshape(1, 1, 4)
    k = jnp.array([1.0, 0.0, -1.0]).reshape(1, 1, 3)
    np.testing.assert_array_equal(_winograd.winograd_correlate(d, k, corr), [[[-2.0, -2.0]]])


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("layout", ["out-in-window", "in-out-window", "window-in-out"])
def test_kernel_transform_is_g_k_gt_per_feature_pair(d, layout, x64):
    # The matmul form of G k Gᵀ against the per-dim definition, for a kernel laid
    # out OIHW-like, with its in/out roles swapped (an input gradient's), and
    # HWIO-like (spatial axes first).
    rng = np.random.default_rng(d)
    rhs = rng.standard_normal((5, 4, *(3,) * d))
    window = tuple(range(2, d + 2))
    rhs_axes = {
        "out-in-window": (0, 1, *window),
        "in-out-window": (1, 0, *window),
        "window-in-out": (d + 1, d, *range(d)),
    }[layout]
    if layout == "window-in-out":
        rhs = np.transpose(rhs, (*window, 1, 0))
    axes = tuple(range(d + 2))
    corr = Correlation(axes, rhs_axes, axes, (1,) * d, ((0, 0),) * d, (1,) * d, (1,) * d)
    u = _winograd._kernel_transform(jnp.asarray(rhs), corr)
    g = np.asarray(_winograd.G)
    expected = np.transpose(rhs, rhs_axes)  # (out, in, *window) by role
    for axis in range(2, d + 2):  # G along each window axis: (out, in, *4s)
        expected = np.moveaxis(np.tensordot(expected, g, axes=([axis], [1])), -1, axis)
    assert sorted(u) == sorted(np.ndindex(*(4,) * d))
    for p, u_p in u.items():  # {p: (in, out)}
        assert u_p.dtype == jnp.float64
        np.testing.assert_allclose(
            u_p, expected[(slice(None), slice(None), *p)].T, rtol=1e-12, atol=1e-12
        )


def _applies(config):
    params, x, _ = config.arrays(jnp.float32)
    calls = []
    real = _winograd.winograd_correlate
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            _winograd, "winograd_correlate", lambda *a, **k: calls.append(a) or real(*a, **k)
        )
        jax.make_jaxpr(
            lambda p, x: jconv.conv_forward(p, x, **config.kwargs, lowering=config.lowering)
        )(params, x)
    return bool(calls)


@pytest.mark.parametrize(
    "config, tiles",
    [
        (Config(2, (6, 6), (3, 3), 4, 4, padding="SAME"), True),
        (Config(2, (6, 6), (3, 3), 4, 4, stride=2, padding="SAME"), False),
        (Config(2, (6, 6), (3, 3), 4, 4, dilation=2, padding="SAME"), False),
        (Config(2, (6, 6), (3, 3), 4, 4, groups=2, padding="SAME"), False),
        (Config(2, (6, 6), (3, 2), 4, 4, padding="SAME"), False),
    ],
    ids=str,
)
def test_forced_winograd_takes_tiles_only_where_they_apply(config, tiles):
    config = dataclasses.replace(config, lowering="winograd")
    assert _applies(config) == tiles
    if not tiles:
        check_against_lax(config, jnp.float32)


def test_auto_never_takes_the_tiles(monkeypatch):
    # The tiles are faster on CPU but hold more memory than autodiff's training
    # step (experiments/README.md), so they are opt-in; so are the pieces.
    assert not _applies(Config(2, (8, 8), (3, 3), 16, 16, padding="SAME"))
    calls = _counting_pieces(monkeypatch)
    x, dz = jnp.ones((1, 4, 4, 128)), jnp.ones((1, 4, 4, 128))
    jax.make_jaxpr(lambda x, dz: jconv.conv_grad_kernel(x, dz, (3, 3, 128, 128), padding="SAME"))(
        x, dz
    )
    assert not calls
    jax.make_jaxpr(
        lambda x, dz: jconv.conv_grad_kernel(
            x, dz, (3, 3, 128, 128), padding="SAME", lowering="winograd"
        )
    )(x, dz)
    assert calls


def test_kernel_gradient_worked_case_of_the_docstring():
    # d = (1, 2, 3, 4), h = (1, -1): y_t = d[t] - d[t + 1] = (-1, -1, -1).
    corr = Correlation((0, 1, 2), (0, 1, 2), (0, 1, 2), (1,), ((0, 0),), (1,), (1,))
    d = jnp.arange(1.0, 5.0).reshape(1, 1, 4)
    h = jnp.array([1.0, -1.0]).reshape(1, 1, 2)
    np.testing.assert_array_equal(_winograd.winograd_correlate(d, h, corr), [[[-1.0, -1.0, -1.0]]])


def _counting_pieces(monkeypatch):
    calls = []
    real = _winograd._pieces_correlate
    monkeypatch.setattr(
        _winograd, "_pieces_correlate", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k)
    )
    return calls


@pytest.mark.parametrize("config", WINOGRAD[:2] + WINOGRAD[4:5], ids=str)
def test_kernel_gradient_pieces_in_one_image_chunks_match_lax(config, monkeypatch):
    # Three configs of the grid (2-D, and 1-D channels-first) with the pieces
    # one forward image a chunk, summed in the loop.
    monkeypatch.setattr(_winograd, "GRADIENT_BYTES", 1)
    _check_with_pieces(config, jnp.float32, monkeypatch)


@pytest.mark.parametrize(
    "spatial, channels, pieces",
    [
        ((4, 5), (128, 128), True),
        ((4, 5), (128, 64), False),  # 64x64 matmuls: no faster than the taps'
        ((4, 5), (64, 128), False),
        ((2, 5), (128, 128), False),  # a 2-tap window: one piece, padded
    ],
    ids=str,
)
def test_kernel_gradient_takes_pieces_over_wide_features_and_windows_only(
    spatial, channels, pieces, monkeypatch
):
    calls = _counting_pieces(monkeypatch)
    config = Config(1, spatial, (3, 3), *channels, padding="SAME", lowering="winograd")
    params, x, ct = config.arrays(jnp.float32)
    dk = jconv.conv_grad_kernel(x, ct, params["kernel"].shape, **config.kwargs, lowering="winograd")
    assert bool(calls) == pieces
    if pieces:
        check_against_lax(config, jnp.float32)
    else:
        ref = jconv.conv_grad_kernel(x, ct, params["kernel"].shape, **config.kwargs, lowering="xla")
        helpers.assert_close(dk, ref)


def test_kernel_gradient_pieces_skip_outputs_that_read_only_padding(monkeypatch):
    # One row padded by 3 above: the kernel's first row only ever meets the
    # padding, so its gradient is exactly zero; the pieces would leave their
    # neighbours' rounding there, so that kernel gradient keeps the taps.
    monkeypatch.setattr(_winograd, "GRADIENT_FEATURES", 1)
    calls = _counting_pieces(monkeypatch)
    config = Config(3, (1, 5), (3, 3), 2, 3, padding=((3, 1), (1, 1)), lowering="winograd")
    params, x, ct = config.arrays(jnp.float32)
    dk = jconv.conv_grad_kernel(x, ct, params["kernel"].shape, **config.kwargs, lowering="winograd")
    assert not calls
    np.testing.assert_array_equal(dk[0], 0.0)
    lower = dataclasses.replace(config, padding=((2, 2), (1, 1)))  # every row meets x
    params, x, ct = lower.arrays(jnp.float32)
    jconv.conv_grad_kernel(x, ct, params["kernel"].shape, **lower.kwargs, lowering="winograd")
    assert calls


def test_kernel_gradient_chunks_start_at_their_own_images(monkeypatch):
    # Two images a chunk, two chunks: each chunk must read its own images.
    monkeypatch.setattr(_winograd, "GRADIENT_FEATURES", 1)
    # One image's transformed x: 16 positions x (4 x 3 pieces) x 4 channels x 4 bytes.
    monkeypatch.setattr(_winograd, "GRADIENT_BYTES", 2 * 16 * 12 * 4 * 4)
    calls = _counting_pieces(monkeypatch)
    config = Config(4, (7, 6), (3, 3), 4, 5, padding="SAME", lowering="winograd")
    params, x, _ = config.arrays(jnp.float32)
    ct = jnp.ones(config.x_shape[:-1] + (5,))
    jaxpr = str(
        jax.make_jaxpr(
            lambda x, ct: jconv.conv_grad_kernel(
                x, ct, params["kernel"].shape, **config.kwargs, lowering="winograd"
            )
        )(x, ct)
    )
    assert "while" in jaxpr or "scan" in jaxpr
    helpers.check_against_lax_afresh(config, jnp.float32)
    assert calls
