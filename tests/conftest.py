"""Strict JAX settings for every test, and the hypothesis profiles."""

import os

# The tests compile hundreds of small programs and run each once: XLA's LLVM
# backend at -O0 compiles them about 30 % faster (the HLO passes, fusion and
# buffer assignment, which decide what the lowerings compute and how much
# memory they hold, are unchanged). Set before JAX starts its CPU backend.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402
import pytest
from hypothesis import HealthCheck, settings

# Equinox-style strictness: implicit rank promotion is a bug in library code.
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile(
    "deep",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("JCONV_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def x64():
    """Enables float64 for one test and restores the previous setting after it."""
    with jax.enable_x64(True):
        yield
