"""The ``jconv`` command line."""

import subprocess
import sys

from jax import lax

import jconv
from jconv import _cli, _verify


def test_verify_passes_and_prints_a_table(capsys):
    assert _cli.main(["verify", "--configs", "4", "--seed", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "max rel dX" in out and "4 passed, 0 failed" in out


def test_verify_fails_on_a_wrong_rule_and_prints_a_pasteable_config(monkeypatch, capsys):
    def wrong(params, x, **kwargs):  # a forward whose kernel gradient is off by 10%
        k = params["kernel"]
        k = k + 0.1 * (k - lax.stop_gradient(k))  # same value, gradient scaled by 1.1
        return jconv.conv_forward({**params, "kernel": k}, x, **kwargs)

    monkeypatch.setattr(_verify, "conv_forward", wrong)
    assert _cli.main(["verify", "--configs", "2", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "FAILED: ConvConfig(" in out and "0 passed, 2 failed" in out


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "jconv", "verify", "--configs", "2", "--dtype", "float64", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "float64, tol 1e-12" in result.stdout


def test_verify_other_layers(capsys):
    args = ["verify", "--configs", "3", "--layers", "dense,max_pool,avg_pool", "-q"]
    assert _cli.main(args) == 0
    out = capsys.readouterr().out
    assert "fc layer" in out and "max_pool" in out and "avg_pool" in out
    assert "9 passed, 0 failed" in out


def test_verify_unknown_layer(capsys):
    assert _cli.main(["verify", "--layers", "conv,lstm", "-q"]) == 2
    assert "unknown --layers ['lstm']" in capsys.readouterr().err
