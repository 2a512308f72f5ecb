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


@pytest.mark.parametrize("chosen", ["auto", "xla"])
@pytest.mark.parametrize("config", MEASURED, ids=str)
def test_measured_matches_lax_whichever_it_chooses(config, chosen, monkeypatch):
    monkeypatch.setattr(_measured, "fastest", lambda runners: chosen)
    helpers.check_against_lax_afresh(config, jnp.float32)
    assert set(jconv.measured_choices().values()) <= {chosen, "auto"}  # auto: one program


@pytest.mark.parametrize("chosen, convolutions", [("xla", 1), ("auto", 0)])
def test_the_chosen_lowering_is_the_program(chosen, convolutions, monkeypatch):
    # A depthwise forward: auto's taps are broadcast products, XLA's a convolution.
    monkeypatch.setattr(_measured, "fastest", lambda runners: chosen)
    assert _forward_hlo(groups=8).count("stablehlo.convolution") == convolutions
    (choice,) = jconv.measured_choices().values()
    assert choice == chosen


def test_each_correlation_is_timed_once(monkeypatch):
    timed = []

    def fastest(runners):
        timed.append(sorted(runners))
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
    monkeypatch.setattr(_measured, "fastest", lambda runners: pytest.fail("timed"))
    params = jconv.conv_init(jax.random.key(0), 8, 8, (3,))
    z = jconv.conv_forward(params, jnp.ones((2, 16, 8)), lowering="measured")
    assert z.shape == (2, 14, 8)
    assert list(jconv.measured_choices().values()) == ["auto"]


def test_other_backends_are_not_measured(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(_measured, "fastest", lambda runners: pytest.fail("timed"))
    assert _forward_hlo(groups=8) == _forward_hlo(groups=8, lowering="auto")
    assert jconv.measured_choices() == {}


def _runners(seconds):
    """Runners returning ``seconds[name]`` in turn, and the log of who ran."""
    calls = []

    def runner(name, queue):
        def run():
            calls.append(name)
            return next(queue)

        return run

    return {name: runner(name, iter(values)) for name, values in seconds.items()}, calls


def test_fastest_takes_the_smaller_median(monkeypatch):
    # An untimed round, a timed one (2.0 is under 3 x 1.0: xla stays in), and
    # 5 more (3 s a round fits no more): xla's timed runs are faster.
    seconds = {
        "auto": [9.0, 1.0, 1.0, 1.2, 0.9, 1.1, 1.0],
        "xla": [9.0, 2.0, 0.8, 0.7, 5.0, 0.9, 0.8],
    }
    runners, calls = _runners(seconds)
    assert _measured.fastest(runners) == "xla"
    assert calls[:4] == ["auto", "xla", "auto", "xla"]  # in turns throughout
    assert len(calls) == 2 * (2 + _measured.ROUNDS)


def test_quick_correlations_are_timed_more_often():
    # 1 ms a run: a quarter of a second fits MAX_ROUNDS rounds.
    runners, calls = _runners({"auto": [1e-3] * 30, "xla": [1e-3] * 30})
    assert _measured.fastest(runners) == "auto"
    assert len(calls) == 2 * (2 + _measured.MAX_ROUNDS)


def test_fastest_stops_at_a_clear_first_round_and_keeps_the_first_within_the_margin():
    # A slow untimed round (a fresh executable's first call) decides nothing
    # below COLD_SECONDS ...
    runners, calls = _runners({"auto": [0.04, 1e-3], "xla": [1e-3, 3.5e-3]})
    assert _measured.fastest(runners) == "auto" and len(calls) == 4
    runners, calls = _runners({"auto": [1e-3, 3.5e-3], "xla": [0.04, 1e-3]})
    assert _measured.fastest(runners) == "xla" and len(calls) == 4
    # ... past it, a candidate 3 times slower is out without running again.
    runners, calls = _runners({"auto": [0.01], "xla": [3.3]})
    assert _measured.fastest(runners) == "auto" and calls == ["auto", "xla"]
    # 3 % faster is within the margin: the first keeps its place.
    runners, _ = _runners({"auto": [1.0] * 7, "xla": [0.97] * 7})
    assert _measured.fastest(runners) == "auto"
    runners, _ = _runners({"auto": [1.0] * 7, "xla": [0.9] * 7})
    assert _measured.fastest(runners) == "xla"


def test_measured_works_with_jit_disabled(monkeypatch):
    monkeypatch.setattr(_measured, "fastest", lambda runners: "xla")
    params = jconv.conv_init(jax.random.key(0), 4, 4, (3, 3), groups=4)
    x = jnp.ones((1, 6, 6, 4))
    with jax.disable_jit():
        z = jconv.conv_forward(params, x, groups=4, lowering="measured")
    want = jconv.conv_forward(params, x, groups=4, lowering="xla")
    np.testing.assert_allclose(z, want, rtol=1e-6)
    assert list(jconv.measured_choices().values()) == ["xla"]


def test_several_processes_are_not_measured(monkeypatch):
    # Processes timing apart could compile different programs for one computation.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(_measured, "fastest", lambda runners: pytest.fail("timed"))
    assert _forward_hlo(groups=8) == _forward_hlo(groups=8, lowering="auto")
    assert jconv.measured_choices() == {}


def test_measured_choices_describe_the_correlation(monkeypatch):
    monkeypatch.setattr(_measured, "fastest", lambda runners: "xla")
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
    report = json.loads(out.read_text())
    assert report["meta"]["lowering"] == "auto" and report["meta"]["versus"] == "measured"
    (row,) = report["rows"]
    for kind in ("step", "chained"):
        ms, reference = row[f"{kind}_jconv_measured_ms"], row[f"{kind}_autodiff_ms"]
        assert ms > 0 and f"{kind}_jconv_measured_temp_mib" in row
        assert row[f"{kind}_jconv_measured_ratio"] == pytest.approx(ms / reference, rel=1e-2)
    assert jconv.measured_choices()  # the second contender really was "measured"
