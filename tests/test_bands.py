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
# padding, strides and dilations (the rows' window stride and rhs dilation);
# dz's rows: 12, 6, 14, 8, 9, 16, 12.
BANDED = [
    Config(2, (12, 9), (3, 3), 3, 4, padding="SAME"),
    Config(1, (12, 10), (3, 2), 4, 3, stride=2, padding="SAME", layout="channels_first"),
    Config(2, (15, 8), (3, 3), 2, 5, dilation=2, padding=((2, 1), (0, 3))),
    Config(2, (23, 7), (2, 3), 3, 2, stride=(3, 1), padding="VALID"),
    Config(1, (9, 6, 5), (3, 2, 2), 2, 3, padding="SAME"),
    Config(2, (10, 9), (3, 3), 3, 3, padding=((4, 4), (1, 1))),  # padding past the kernel
    Config(1, (31, 9), (5, 3), 2, 2, stride=2, dilation=(2, 1), layout="channels_first"),
]


def _forced(monkeypatch, smallest: int):
    """Bands of the fewest rows, at least ``smallest``, that divide dz's rows
    into two bands or more, wherever there are such."""

    def rows(lhs_shape, rhs_shape, corr):
        positions = _taps.choose_mode(lhs_shape, rhs_shape, corr) == "positions"
        if not positions or corr.batch_group_count != 1 or corr.feature_group_count != 1:
            return None
        window = rhs_shape[corr.rhs_axes[2]]
        return next((b for b in range(smallest, window // 2 + 1) if window % b == 0), None)

    real = _correlate._taps_pays_on_cpu

    def taps_pays_on_cpu(lhs_shape, rhs_shape, corr, itemsize):
        banded = rows(lhs_shape, rhs_shape, corr) is not None
        return not banded and real(lhs_shape, rhs_shape, corr, itemsize)

    monkeypatch.setattr(_bands, "band_rows", lambda lhs, rhs, corr, *_: rows(lhs, rhs, corr))
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
    assert _takes_bands(config, jnp.float64)
    helpers.check_against_lax_afresh(config, jnp.float64)


def test_banded_kernel_gradient_in_bfloat16(monkeypatch):
    _forced(monkeypatch, 3)
    assert _takes_bands(BANDED[0], jnp.bfloat16)
    helpers.check_against_lax_afresh(BANDED[0], jnp.bfloat16)


def test_worked_case_of_the_docstring():
    # SAME 3x3 over 56 rows, bands of 28: 2 bands of L = 30 rows.
    x = (8, 56, 56, 64)
    corr = helpers.dk_correlation(((1, 1), (1, 1)))
    assert _bands._geometry(x, x, corr, 28) == (2, 30)
    lhs_b, rhs_b, corr_b = _bands.rows_as_batch_shapes(x, x, corr, 28)
    assert lhs_b == (16, 30, 56, 64) and rhs_b == (16, 28, 56, 64)
    assert corr_b.padding == ((0, 0), (1, 1))
    # Bands must divide the rows (no zero rows of dz).
    with pytest.raises(ValueError, match="do not divide"):
        _bands._geometry(x, x, corr, 5)


def test_rows_as_batch_sums_the_same_products(x64):
    # Two images, one channel each side, 8 rows in bands of 4: the bands'
    # correlation, written out, pairs each image's bands on both sides.
    rng = np.random.default_rng(0)
    x, dz = (jnp.asarray(rng.normal(size=(2, 8, 4, 1))) for _ in range(2))
    corr = helpers.dk_correlation(((1, 1), (1, 1)))
    lhs_b, rhs_b, corr_b = _bands.rows_as_batch(x, dz, corr, 4)
    assert lhs_b.shape == (4, 6, 4, 1) and rhs_b.shape == (4, 4, 4, 1)
    np.testing.assert_array_equal(rhs_b[1], dz[0, 4:])  # image 0's second band
    np.testing.assert_array_equal(lhs_b[2, 1:], x[1, :5])  # image 1's first band, past the pad
    got = _correlate._xla_conv(lhs_b, rhs_b, corr_b)
    want = _correlate._xla_conv(x, dz, corr)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_bands_multiply_only_the_products_of_the_sum():
    # VALID, stride 2, 9 rows of x and 4 of dz: kernel row k reads x rows k,
    # k+2, k+4, k+6, so an infinite row 8 reaches row 2 only, banded or not.
    x = np.ones((1, 9, 3, 1), np.float32)
    x[0, 8] = np.inf
    dz = np.ones((1, 4, 1, 1), np.float32)
    corr = helpers.dk_correlation(((0, 0), (0, 0)), stride=(2, 1))
    want = _correlate._xla_conv(jnp.asarray(x), jnp.asarray(dz), corr)
    got = _correlate._xla_conv(*_bands.rows_as_batch(jnp.asarray(x), jnp.asarray(dz), corr, 2))
    assert np.isfinite(np.asarray(got)[:2]).all() and not np.isfinite(np.asarray(got)[2]).any()
    np.testing.assert_array_equal(got, want)


def _decision(x, dz, corr, itemsize=4):
    taken = functools.partial(_correlate._taps_pays_on_cpu, itemsize=itemsize)
    return _bands.band_rows(x, dz, corr, itemsize, taken)


def test_auto_bands_large_images_the_taps_refuse():
    same = helpers.dk_correlation(((1, 1), (1, 1)))
    # 2 images of 112x112x64 -> 128: 28.7 KB rows, bands of 8 (10 rows, 287 KB).
    assert _decision((2, 112, 112, 64), (2, 112, 112, 128), same) == 8
    # One image of 224x224x64: MIN_BAND_ROWS.
    assert _decision((1, 224, 224, 64), (1, 224, 224, 64), same) == 8
    # 44 rows: no divisor from 8 within the 256 KiB aim (7 rows), the smallest above.
    assert _decision((4, 44, 112, 64), (4, 44, 112, 64), same) == 11
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
    # Too few rows for two bands of MIN_BAND_ROWS, and a prime number of rows.
    assert _decision((1, 14, 14, 64), (1, 14, 14, 64), same) is None
    assert _decision((1, 113, 112, 64), (1, 113, 112, 64), same) is None
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
