"""Property-based equivalence: random valid configurations against lax autodiff.

The quick "ci" profile runs by default; ``JCONV_HYPOTHESIS_PROFILE=deep`` runs
1000 examples per test (see ``conftest.py``).
"""

import jax.numpy as jnp
from helpers import check_against_lax
from hypothesis import given

from jconv.testing.strategies import conv_configs


def configs():
    return conv_configs(lowerings=("auto", "xla", "taps", "winograd"))


@given(configs())
def test_random_configs_float32(config):
    check_against_lax(config, jnp.float32)


@given(configs())
def test_random_configs_float64(config):
    import jax

    with jax.enable_x64(True):
        check_against_lax(config, jnp.float64)
