"""The rows form of one-channel kernel gradients (``_rows.py``) against lax."""

from __future__ import annotations

import dataclasses

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv
from jconv import _rows
from jconv._correlation import Correlation
from jconv.testing import ConvConfig as Config

# One input channel, every padding form, strides and dilations, 1-D to 3-D,
# both layouts. The rules' bounds are lifted (``_forced``) so that these small
# configurations take the rows form.
ROWS = [
    Config(3, (9, 8), (3, 3), 1, 2, padding="SAME"),
    Config(2, (12, 10), (3, 3), 1, 4, stride=2, padding="SAME", layout="channels_first"),
    Config(2, (12, 10), (3, 2), 1, 3, dilation=2, padding=((2, 1), (0, 3))),
    Config(3, (20,), (4,), 1, 5, stride=3, padding="SAME"),
    Config(2, (6, 7, 8), (2, 3, 2), 1, 2, stride=(1, 2, 1), dilation=(1, 1, 2), padding="SAME"),
    Config(5, (9, 9), (3, 3), 1, 2, padding=((3, 3), (3, 3))),  # padding past the kernel
    Config(2, (11, 13), (2, 4), 1, 3, stride=(2, 3), padding="VALID", layout="channels_first"),
]

LENET = Config(64, (28, 28), (5, 5), 1, 6, padding="VALID")


def _forced(monkeypatch):
    monkeypatch.setattr(_rows, "ROWS_WASTE", 10**6)
    monkeypatch.setattr(_rows, "ROWS_MIN_ROWS", 0)
    monkeypatch.setattr(_rows, "ROWS_FEATURES", 10**6)


def _takes_rows(config, dtype=jnp.float32, platform="cpu") -> bool:
    """Whether lowering ``config``'s kernel gradient for ``platform`` computes the rows form."""
    called, text = helpers.kernel_gradient_calls(
        config, _rows, "rows_correlate", dtype=dtype, platform=platform
    )
    # Traced for every platform (``lax.platform_dependent``); lowered where no
    # convolution is left.
    return called and "convolution" not in text


def _check(config, dtype, monkeypatch):
    _forced(monkeypatch)
    assert _takes_rows(config, dtype)
    helpers.check_against_lax_afresh(config, dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=str)
@pytest.mark.parametrize("config", ROWS, ids=str)
def test_rows_kernel_gradient_matches_lax(config, dtype, monkeypatch):
    _check(config, dtype, monkeypatch)


@pytest.mark.parametrize("config", ROWS, ids=str)
def test_rows_kernel_gradient_matches_lax_in_float64(config, x64, monkeypatch):
    _check(config, jnp.float64, monkeypatch)


@pytest.mark.parametrize("config", ROWS[:3] + ROWS[4:5], ids=str)
def test_rows_in_batch_chunks_match_lax(config, monkeypatch):
    # The stacked rows of one image fill the budget: a chunk loop of one image
    # each, whose sums must read each chunk's own images of x and dz.
    monkeypatch.setattr(_rows, "ROWS_BYTES", 1)
    loops = []
    real = _rows.sum_of_chunks
    monkeypatch.setattr(_rows, "sum_of_chunks", lambda *a: loops.append(a[1]) or real(*a))
    _check(config, jnp.float32, monkeypatch)
    assert loops and all(count == config.batch for count in loops), loops


def test_worked_case_of_the_docstring():
    # One row x = (1, 2, 3) against dz = (1, -1), two taps: M's rows are
    # x[v] * dz, and tap j sums the diagonal v = w + j.
    corr = Correlation((0, 1, 2), (0, 1, 2), (0, 1, 2), (1,), ((0, 0),), (1,), (1,))
    x = jnp.array([[[1.0, 2.0, 3.0]]])
    dz = jnp.array([[[1.0, -1.0]]])
    m = _rows._crossed(x, dz, corr, None, None)
    np.testing.assert_array_equal(m.reshape(3, 2), [[1, -1], [2, -2], [3, -3]])
    np.testing.assert_array_equal(_rows.rows_correlate(x, dz, corr).reshape(2), [-1.0, -1.0])


def test_auto_takes_rows_for_lenet_kernel_gradient_on_cpu_only():
    assert _takes_rows(LENET)
    for platform in ("cuda", "tpu"):
        assert not _takes_rows(LENET, platform=platform), platform
    # Where XLA's kernel gradient is as fast or the taps take it: 3x3 windows
    # (waste 9.3), 16 features, 20x20 images (100 rows of M), two channels.
    for other in [
        dataclasses.replace(LENET, window=(3, 3)),
        dataclasses.replace(LENET, c_out=16),
        dataclasses.replace(LENET, spatial=(20, 20)),
        dataclasses.replace(LENET, c_in=2),
    ]:
        assert not _takes_rows(other), other
    # and the forced lowerings never take it
    for lowering in ("xla", "taps"):
        assert not _takes_rows(dataclasses.replace(LENET, lowering=lowering)), lowering


def test_lenet_step_holds_less_memory_than_autodiff():
    # The rows form reads dz in place: XLA's kernel gradient transposes it
    # (0.9 MB) next to the forward's output.
    params, x, ct = LENET.arrays()

    def temp(forward):
        def loss(p, x, ct):
            return jnp.sum(forward(p, x, **LENET.kwargs) * ct)

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return step.lower(params, x, ct).compile().memory_analysis().temp_size_in_bytes

    assert temp(jconv.conv_forward) < temp(jconv.autodiff.conv_forward)
