"""``lowering="measured"``: each correlation timed once, the faster of auto and XLA kept."""

import importlib
import json
from pathlib import Path

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Config

import jconv
from jconv import _measured


@pytest.fixture(autouse=True)
def fresh_choices():
    """Each test starts and ends with no choices made."""
    jconv.clear_measured_choices()
    yield
    jconv.clear_measured_choices()


def _forward_hlo(groups, lowering="measured"):
    params = jconv.conv_init(jax.random.key(0), 8, 8, (3, 3), groups=groups)
    fn = jax.jit(lambda p, x: jconv.conv_forward(p, x, groups=groups, lowering=lowering))
    return fn.lower(params, jnp.ones((2, 9, 9, 8))).as_text()


MEASURED = [
    Config(2, (9, 8), (3, 3), 4, 6, padding="SAME", lowering="measured"),
    Config(3, (11, 10), (3, 3), 6, 6, groups=6, stride=2, padding=1, lowering="measured"),
    Config(2, (13,), (3,), 4, 4, dilation=2, layout="channels_first", lowering="measured"),
    Config(2, (8, 8), (1, 1), 4, 6, stride=2, groups=2, lowering="measured"),
]


@pytest.mark.parametrize("config", MEASURED, ids=str)
def test_measured_matches_lax(config):
    helpers.check_against_lax_afresh(config, jnp.float32)
    assert jconv.measured_choices()  # something was timed, or found to be one program


@pytest.mark.parametrize("chosen, convolutions", [("xla", 1), ("auto", 0)])
def test_the_chosen_lowering_is_the_program(chosen, convolutions, monkeypatch):
    # A depthwise forward: auto's taps are broadcast products, XLA's a convolution.
    monkeypatch.setattr(_measured, "fastest", lambda runs: chosen)
    assert _forward_hlo(groups=8).count("stablehlo.convolution") == convolutions
    (choice,) = jconv.measured_choices().values()
    assert choice == chosen


def test_each_correlation_is_timed_once(monkeypatch):
    timed = []

    def fastest(runs):
        timed.append(sorted(runs))
        return "auto"

    monkeypatch.setattr(_measured, "fastest", fastest)
    params = jconv.conv_init(jax.random.key(0), 6, 6, (3, 3), groups=6)
    x = jnp.ones((2, 7, 7, 6))

    def loss(p, x):
        return jnp.sum(jconv.conv_forward(p, x, groups=6, lowering="measured") ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
    grads(params, x)
    first = len(timed)
    assert first >= 2 and timed[0] == ["auto", "xla"]  # at least forward and kernel gradient
    grads(params, x * 2)  # cached executable
    jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)  # a new trace, the same correlations
    assert len(timed) == first
    assert len(jconv.measured_choices()) == first


def test_a_correlation_auto_leaves_to_xla_is_not_timed(monkeypatch):
    # A dense 1-D forward: auto's program is XLA's convolution already.
    monkeypatch.setattr(_measured, "fastest", lambda runs: pytest.fail("timed"))
    params = jconv.conv_init(jax.random.key(0), 8, 8, (3,))
    z = jconv.conv_forward(params, jnp.ones((2, 16, 8)), lowering="measured")
    assert z.shape == (2, 14, 8)
    assert list(jconv.measured_choices().values()) == ["auto"]


def test_other_backends_are_not_measured(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(_measured, "fastest", lambda runs: pytest.fail("timed"))
    assert _forward_hlo(groups=8) == _forward_hlo(groups=8, lowering="auto")
    assert jconv.measured_choices() == {}


def _fake_clock(seconds, monkeypatch):
    """``_measured._seconds`` returning ``seconds[name]`` in turn; returns the calls."""
    calls = []
    queues = {name: iter(values) for name, values in seconds.items()}

    def timed(run):
        calls.append(run())
        return next(queues[calls[-1]])

    monkeypatch.setattr(_measured, "_seconds", timed)
    return calls


def test_fastest_takes_the_smaller_median(monkeypatch):
    # xla's warm-up is slow, but its timed runs are faster: the median decides.
    # Warm-ups of 1 + 2 s: the budget fits no more than the least rounds.
    monkeypatch.setattr(_measured, "ROUNDS", 5)
    seconds = {"auto": [1.0, 1.0, 1.2, 0.9, 1.1, 1.0], "xla": [2.0, 0.8, 0.7, 5.0, 0.9, 0.8]}
    calls = _fake_clock(seconds, monkeypatch)
    runs = {name: (lambda name=name: name) for name in seconds}
    assert _measured.fastest(runs) == "xla"
    assert calls[:2] == ["auto", "xla"] and calls[2:6] == ["auto", "xla", "auto", "xla"]
    assert len(calls) == 2 * (1 + _measured.ROUNDS)


def test_quick_correlations_are_timed_more_often(monkeypatch):
    # Warm-ups of 1 ms each: a quarter of a second fits MAX_ROUNDS rounds.
    calls = _fake_clock({"auto": [1e-3] * 30, "xla": [1e-3] * 30}, monkeypatch)
    runs = {name: (lambda name=name: name) for name in ("auto", "xla")}
    assert _measured.fastest(runs) == "auto"
    assert len(calls) == 2 * (1 + _measured.MAX_ROUNDS)


def test_fastest_stops_at_a_clear_warm_up_and_keeps_the_first_within_the_margin(monkeypatch):
    runs = {name: (lambda name=name: name) for name in ("auto", "xla")}
    calls = _fake_clock({"auto": [1.0], "xla": [3.5]}, monkeypatch)
    assert _measured.fastest(runs) == "auto" and calls == ["auto", "xla"]
    calls = _fake_clock({"auto": [3.5], "xla": [1.0]}, monkeypatch)
    assert _measured.fastest(runs) == "xla" and calls == ["auto", "xla"]
    # 3 % faster is within the margin: the first keeps its place.
    _fake_clock({"auto": [1.0] * 6, "xla": [0.97] * 6}, monkeypatch)
    assert _measured.fastest(runs) == "auto"
    _fake_clock({"auto": [1.0] * 6, "xla": [0.9] * 6}, monkeypatch)
    assert _measured.fastest(runs) == "xla"


def test_measured_choices_describe_the_correlation(monkeypatch):
    monkeypatch.setattr(_measured, "fastest", lambda runs: "xla")
    _forward_hlo(groups=8)
    (description,) = jconv.measured_choices()
    assert "lhs float32[2, 9, 9, 8]" in description and "feature_group_count=8" in description


def test_measured_really_times_both_on_this_machine():
    # No patches: a depthwise kernel gradient, where XLA:CPU's convolution is
    # about 8 times slower than auto's taps here (5.5 vs 0.7 ms), goes to auto.
    x = dz = jnp.ones((8, 28, 28, 64))
    dk = jconv.conv_grad_kernel(
        x, dz, (3, 3, 1, 64), padding="SAME", groups=64, lowering="measured"
    )
    np.testing.assert_allclose(dk[1, 1, 0], 8 * 28 * 28)
    assert list(jconv.measured_choices().values()) == ["auto"]


def test_layer_sweep_times_a_second_lowering_in_the_same_turns(tmp_path, monkeypatch):
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    monkeypatch.syspath_prepend(str(experiments))
    sweep = importlib.import_module("layer_sweep")
    out = tmp_path / "sweep.json"
    argv = ["--layers", "cifar-3x3-s2-32x16", "--repeats", "1", "--versus", "measured"]
    sweep.main([*argv, "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    for kind in ("step", "chained"):
        ms, reference = row[f"{kind}_jconv_measured_ms"], row[f"{kind}_autodiff_ms"]
        assert row[f"{kind}_jconv_measured_ratio"] == pytest.approx(ms / reference, rel=1e-2)
        assert row[f"{kind}_jconv_measured_temp_mib"] >= 0
    assert jconv.measured_choices()  # the second contender really was "measured"
