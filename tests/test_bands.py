"""Kernel gradients over bands of rows stacked on the batch (``jconv/_bands.py``)."""

from __future__ import annotations

import functools

import helpers
import jax.numpy as jnp
import numpy as np
import pytest

from jconv import _bands, _correlate, _taps
from jconv._correlation import Correlation
from jconv.testing import ConvConfig as Config

# 2-D and 3-D, both layouts, SAME / VALID / explicit and past-the-kernel
# padding, strides and dilations (the rows' window stride and rhs dilation),
# row counts the bands divide and ones they don't (zero rows of dz padded).
BANDED = [
    Config(2, (13, 9), (3, 3), 3, 4, padding="SAME"),
    Config(1, (12, 10), (3, 2), 4, 3, stride=2, padding="SAME", layout="channels_first"),
    Config(2, (14, 8), (3, 3), 2, 5, dilation=2, padding=((2, 1), (0, 3))),
    Config(2, (20, 7), (2, 3), 3, 2, stride=(3, 1), padding="VALID"),
    Config(1, (9, 6, 5), (3, 2, 2), 2, 3, padding="SAME"),
    Config(2, (10, 9), (3, 3), 3, 3, padding=((4, 4), (1, 1))),  # padding past the kernel
    Config(1, (30, 9), (5, 3), 2, 2, stride=2, dilation=(2, 1), layout="channels_first"),
]


def _forced(monkeypatch, rows: int):
    """Bands of ``rows`` dz rows wherever the rows are at least two bands."""

    def band_rows(lhs_shape, rhs_shape, corr, itemsize, taken):
        return rows if _banded(lhs_shape, rhs_shape, corr) else None

    def _banded(lhs_shape, rhs_shape, corr):
        positions = _taps.choose_mode(lhs_shape, rhs_shape, corr) == "positions"
        dense = corr.batch_group_count == corr.feature_group_count == 1
        return positions and dense and rhs_shape[corr.rhs_axes[2]] >= 2 * rows

    real = _correlate._taps_pays_on_cpu

    def taps_pays_on_cpu(lhs_shape, rhs_shape, corr, itemsize):
        return not _banded(lhs_shape, rhs_shape, corr) and real(
            lhs_shape, rhs_shape, corr, itemsize
        )

    monkeypatch.setattr(_bands, "band_rows", band_rows)
    monkeypatch.setattr(_correlate, "_taps_pays_on_cpu", taps_pays_on_cpu)


def _takes_bands(config, dtype=jnp.float32, platform=None):
    called, text = helpers.kernel_gradient_calls(
        config, _bands, "rows_as_batch", dtype=dtype, platform=platform
    )
    return called and (text is None or "convolution" not in text)


@pytest.mark.parametrize("config, rows", [(c, 2 + i % 2) for i, c in enumerate(BANDED)], ids=str)
def test_banded_kernel_gradient_matches_lax(config, rows, monkeypatch):
    _forced(monkeypatch, rows)
    assert _takes_bands(config)
    helpers.check_against_lax_afresh(config, jnp.float32)


@pytest.mark.parametrize("config", BANDED[:3] + BANDED[4:5], ids=str)
def test_banded_kernel_gradient_matches_lax_in_float64(config, x64, monkeypatch):
    _forced(monkeypatch, 2)
    helpers.check_against_lax_afresh(config, jnp.float64)


def test_banded_kernel_gradient_in_bfloat16(monkeypatch):
    _forced(monkeypatch, 3)
    helpers.check_against_lax_afresh(BANDED[0], jnp.bfloat16)


def test_worked_case_of_the_docstring():
    # SAME 3x3 over 56 rows, bands of 28: 2 bands of L = 30 rows, no extra padding.
    x = (8, 56, 56, 64)
    corr = helpers.dk_correlation(((1, 1), (1, 1)))
    assert _bands._geometry(x, x, corr, 28) == (2, 30, 0)
    lhs_b, rhs_b, corr_b = _bands.rows_as_batch_shapes(x, x, corr, 28)
    assert lhs_b == (16, 30, 56, 64) and rhs_b == (16, 28, 56, 64)
    assert corr_b.padding == ((0, 0), (1, 1))
    # Bands of 5 over 56 rows: 12 bands, dz padded to 60 rows; the last band
    # reads padded rows 55:62 of x~ (58 rows), four more zero rows.
    assert _bands._geometry(x, x, corr, 5) == (12, 7, 4)


def test_rows_as_batch_sums_the_same_products(x64):
    # One image, one channel each side: the bands' correlation, written out.
    rng = np.random.default_rng(0)
    x, dz = rng.normal(size=(1, 7, 4, 1)), rng.normal(size=(1, 7, 4, 1))
    corr = helpers.dk_correlation(((1, 1), (1, 1)))
    want = _correlate._xla_conv(jnp.asarray(x), jnp.asarray(dz), corr)
    lhs_b, rhs_b, corr_b = _bands.rows_as_batch(jnp.asarray(x), jnp.asarray(dz), corr, 3)
    assert lhs_b.shape == (3, 5, 4, 1) and rhs_b.shape == (3, 3, 4, 1)  # 7 rows -> 3 bands of 3
    np.testing.assert_allclose(rhs_b[2, 1:], 0)  # dz's two zero rows
    got = _correlate._xla_conv(lhs_b, rhs_b, corr_b)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _decision(x, dz, corr, itemsize=4):
    taken = functools.partial(_correlate._taps_pays_on_cpu, itemsize=itemsize)
    return _bands.band_rows(x, dz, corr, itemsize, taken)


def test_auto_bands_large_images_the_taps_refuse():
    same = helpers.dk_correlation(((1, 1), (1, 1)))
    # 2 images of 112x112x64 -> 128: 28.7 KB rows, bands of 8 (10 rows, 287 KB).
    assert _decision((2, 112, 112, 64), (2, 112, 112, 128), same) == 8
    # One image of 224x224x64: MIN_BAND_ROWS.
    assert _decision((1, 224, 224, 64), (1, 224, 224, 64), same) == 8
    # One or two images of 56x56x64: bands of 14 (16 rows, 229 KB).
    assert _decision((1, 56, 56, 64), (1, 56, 56, 64), same) == 14
    assert _decision((2, 56, 56, 64), (2, 56, 56, 64), same) == 14


def test_auto_leaves_what_the_taps_or_xla_keep():
    same = helpers.dk_correlation(((1, 1), (1, 1)))
    # The taps take 8 images of 56x56x64 unbanded (row bands of the window).
    assert _decision((8, 56, 56, 64), (8, 56, 56, 64), same) is None
    # 256 channels: XLA's matmuls are as good, banded or not.
    assert _decision((8, 14, 14, 256), (8, 14, 14, 256), same) is None
    # A 7x7 over 4 images of 56x56x64 -> 16: the bands' copy (14 rows for 8)
    # and stacks of 49 positions would hold 2.5 times XLA's memory.
    seven = helpers.dk_correlation(((3, 3), (3, 3)))
    assert _decision((4, 56, 56, 64), (4, 56, 56, 16), seven) is None
    # Too few rows for two bands of MIN_BAND_ROWS.
    assert _decision((1, 14, 14, 64), (1, 14, 14, 64), same) is None
    # Grouped (batch groups) and 1-D kernel gradients.
    grouped = Correlation(
        (3, 0, 1, 2),
        (3, 0, 1, 2),
        (2, 3, 0, 1),
        (1, 1),
        ((1, 1),) * 2,
        (1, 1),
        (1, 1),
        batch_group_count=4,
    )
    assert _decision((1, 112, 112, 64), (1, 112, 112, 64), grouped) is None
    one_d = Correlation((2, 0, 1), (2, 0, 1), (1, 2, 0), (1,), ((1, 1),), (1,), (1,))
    assert _decision((1, 8000, 64), (1, 8000, 64), one_d) is None


def test_bands_are_cpu_only():
    config = Config(1, (56, 56), (3, 3), 64, 64, padding="SAME")
    assert _takes_bands(config, platform="cpu")
    for platform in ("cuda", "tpu"):
        assert not _takes_bands(config, platform=platform), platform
