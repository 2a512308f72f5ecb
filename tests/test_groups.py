"""Grouped correlations computed group by group (``_groups.py``), and grouped
terms unrolled into broadcast products (``_terms.term``), against lax."""

from __future__ import annotations

import dataclasses

import helpers
import jax
import jax.numpy as jnp
import pytest

import jconv
from jconv import _correlate, _groups, _terms, _winograd
from jconv.testing import ConvConfig as Config

# Explicit, SAME, VALID and past-the-kernel padding, strides and dilations, 1-D
# to 3-D, both layouts, 2-4 features per group. ``_forced`` lifts the rules'
# bounds so that these small configurations are split by groups.
GROUPED = [
    Config(3, (9, 8), (3, 3), 4, 6, groups=2, padding="SAME"),
    Config(2, (12, 10), (3, 3), 6, 6, groups=3, stride=2, padding="SAME", layout="channels_first"),
    Config(2, (12, 10), (3, 2), 8, 4, groups=2, dilation=2, padding=((2, 1), (0, 3))),
    Config(3, (20,), (4,), 6, 9, groups=3, stride=3, padding="SAME"),
    Config(2, (6, 7, 8), (2, 3, 2), 4, 4, groups=2, stride=(1, 2, 1), dilation=(1, 1, 2)),
    Config(2, (9, 9), (3, 3), 4, 8, groups=2, padding=((3, 3), (3, 3))),  # padding past the kernel
    Config(1, (11, 13), (2, 4), 9, 6, groups=3, stride=(2, 3), layout="channels_first"),
]


def _forced(monkeypatch):
    monkeypatch.setattr(_terms, "UNROLLED_FEATURES", 1)
    monkeypatch.setattr(_correlate, "_looped_well", lambda itemsize: lambda *a: True)


def _by_groups_calls(config, dtype=jnp.float32, platform=None, lowering="auto"):
    """How many correlations of ``config``'s training step ``auto`` splits by
    groups, and the step lowered for ``platform`` (text; ``None`` without one)."""
    calls = []
    real = _groups.by_groups
    params, x, ct = config.arrays(dtype)
    kw = dict(config.kwargs, lowering=lowering)

    def loss(p, x):
        return jnp.sum(jconv.conv_forward(p, x, **kw) * ct)

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_groups, "by_groups", lambda *a, **k: calls.append(a) or real(*a, **k))
        traced = step.trace(params, x)
        text = None if platform is None else traced.lower(lowering_platforms=(platform,)).as_text()
    return len(calls), text


def _check(config, dtype, monkeypatch):
    _forced(monkeypatch)
    # The forward and the input gradient; the kernel gradient's batch groups stay the taps'.
    assert _by_groups_calls(config, dtype)[0] == 2
    helpers.check_against_lax_afresh(config, dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=str)
@pytest.mark.parametrize("config", GROUPED, ids=str)
def test_grouped_by_groups_matches_lax(config, dtype, monkeypatch):
    _check(config, dtype, monkeypatch)


@pytest.mark.parametrize("config", GROUPED, ids=str)
def test_grouped_by_groups_matches_lax_in_float64(config, x64, monkeypatch):
    _check(config, jnp.float64, monkeypatch)


RESNEXT_14 = Config(8, (14, 14), (3, 3), 512, 512, groups=32, padding="SAME")  # 16 per group


@pytest.mark.parametrize(
    ("config", "split"),
    [
        (RESNEXT_14, True),
        (Config(8, (7, 7), (3, 3), 1024, 1024, groups=32, padding="SAME"), True),  # 32 per group
        (Config(8, (28, 28), (5, 5), 128, 128, groups=16, padding="SAME"), True),  # 200 products
        (Config(8, (56, 56), (3, 3), 128, 128, groups=32, padding="SAME"), False),  # unrolled
        (Config(8, (28, 28), (3, 3), 256, 256, groups=32, padding="SAME"), True),  # 8 per group
        (Config(8, (28, 28), (3, 3), 256, 256, groups=256, padding="SAME"), False),  # depthwise
        (Config(8, (28, 28), (1, 1), 240, 240, groups=3), False),  # one batched matmul
        (Config(8, (28, 28), (3, 3), 128, 128, groups=4, layout="channels_first"), False),
        (Config(8, (14, 14), (3, 3), 512, 32, groups=32, padding="SAME"), False),  # one output
    ],
    ids=str,
)
def test_auto_splits_grouped_convolutions_by_groups_on_cpu(config, split):
    calls, _ = _by_groups_calls(config)
    assert calls == (2 if split else 0)


def test_split_groups_stay_xla_convolutions_off_cpu():
    for platform in ("cuda", "tpu"):
        _, text = _by_groups_calls(RESNEXT_14, platform=platform)
        assert "feature_group_count = 32" in text, platform
        assert "stablehlo.while" not in text, platform
    _, text = _by_groups_calls(RESNEXT_14, platform="cpu")
    assert "stablehlo.while" in text


def test_few_features_per_group_are_unrolled_broadcast_products():
    # 4 features per group, 3x3: 36 broadcast products, no batched matmuls.
    def forward_jaxpr(config):
        params, x, _ = config.arrays()
        kw = dict(config.kwargs, lowering="taps")
        return str(jax.make_jaxpr(lambda p, x: jconv.conv_forward(p, x, **kw))(params, x))

    assert "dot_general" not in forward_jaxpr(Config(2, (8, 8), (3, 3), 16, 16, groups=4))
    # 16 per group, or 4 over a 7x7 window (196 products): batched matmuls
    assert "dot_general" in forward_jaxpr(Config(2, (8, 8), (3, 3), 32, 32, groups=2))
    wide_window = Config(2, (8, 8), (7, 7), 16, 16, groups=4, layout="channels_first")
    assert "dot_general" in forward_jaxpr(wide_window)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=str)
@pytest.mark.parametrize(
    "config",
    [
        Config(2, (7, 6), (3, 3), 16, 24, groups=4, padding="SAME"),  # 4 features, 6 outputs
        Config(3, (9,), (3,), 12, 12, groups=4, stride=2, layout="channels_first"),  # 3 features
    ],
    ids=str,
)
def test_unrolled_grouped_terms_match_lax(config, dtype):
    helpers.check_against_lax(dataclasses.replace(config, lowering="taps"), dtype)


def test_half_precision_grouped_matmuls_are_not_widened():
    # Grouped terms that are matmuls (80 features per group, 1x1) keep their
    # bfloat16 operands: no float32 copy of the input.
    config = Config(2, (8, 8), (1, 1), 48, 24, groups=3)
    params, x, _ = config.arrays(jnp.bfloat16)
    kw = dict(config.kwargs, lowering="taps")
    text = jax.jit(lambda p, x: jconv.conv_forward(p, x, **kw)).lower(params, x).as_text()
    assert "tensor<2x8x8x48xf32>" not in text


def test_forced_winograd_leaves_grouped_blocks_to_auto(monkeypatch):
    calls = []
    real = _winograd.winograd_correlate
    monkeypatch.setattr(
        _winograd, "winograd_correlate", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    config = Config(2, (6, 6), (3, 3), 32, 32, groups=2, padding="SAME", lowering="winograd")
    assert _by_groups_calls(config, lowering="winograd")[0] == 2
    assert not calls
    helpers.check_against_lax_afresh(config, jnp.float32)


@pytest.mark.parametrize("lowering", ["auto", "taps"])
def test_grouped_unit_axis_products_avoid_the_xla_reduction_bug(lowering):
    # XLA:CPU's YNNPACK reduction returned NaN and 1e31 for the 7-D product of
    # this grouped 1x1x1 forward, jitted alone (``_terms._unit_free_product``).
    config = Config(4, (3, 3, 5), (1, 1, 1), 36, 6, groups=6, layout="channels_first")
    params, x, _ = config.arrays()
    kw = dict(config.kwargs, lowering=lowering)
    z = jax.jit(lambda p, x: jconv.conv_forward(p, x, **kw))(params, x)
    expected = helpers.lax_oracle(params, x, **config.kwargs)
    helpers.assert_close(z, expected, jnp.float32)
