"""Which lowering runs where, and the benchmark's plumbing."""

import jax
import jax.numpy as jnp
import pytest

import jconv
from jconv import _bench


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
    convs, dots = _hlo("cpu", groups=8, window=(3, 3))
    assert convs == 0 and dots > 0
    for platform in ("cuda", "tpu"):
        convs, dots = _hlo(platform, groups=8, window=(3, 3))
        assert convs == 2 and dots == 0, platform  # dx and dk: cuDNN/XLA convolutions


def test_dense_3x3_stays_xla_everywhere_and_1x1_is_a_matmul_on_cpu():
    assert _hlo("cpu", groups=1, window=(3, 3)) == (2, 0)
    convs, dots = _hlo("cpu", groups=1, window=(1, 1))
    assert convs == 0 and dots == 2
    assert _hlo("cuda", groups=1, window=(1, 1))[0] == 2


@pytest.mark.parametrize("lowering, expect_convs", [("xla", True), ("taps", False)])
def test_forced_lowerings(lowering, expect_convs):
    convs, dots = _hlo("cpu", groups=8, window=(3, 3), lowering=lowering)
    assert (convs > 0) == expect_convs and (dots > 0) != expect_convs


def test_unknown_lowering_is_refused():
    with pytest.raises(
        ValueError, match=r"lowering must be one of \('auto', 'xla', 'taps'\), got 'fast'"
    ):
        jconv.conv_forward(
            {"kernel": jnp.ones((3, 3, 2, 2))}, jnp.ones((1, 5, 5, 2)), lowering="fast"
        )


def test_bench_smoke(tmp_path):
    report = _bench.run(["lenet-5x5"], repeats=1, torch=False, progress=lambda s: None)
    (row,) = report["rows"]
    assert row["jconv_fwd_bwd_s"] > 0 and row["autodiff_fwd_bwd_s"] > 0
    assert row["ratio"] == pytest.approx(row["jconv_fwd_bwd_s"] / row["autodiff_fwd_bwd_s"])
    assert report["matmul_gflops"] > 0 and report["geomean_ratio"] == pytest.approx(row["ratio"])
    _bench.write(report, tmp_path)
    assert "| lenet-5x5 |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.json").exists() and (tmp_path / "bench.png").exists()
