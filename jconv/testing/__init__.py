"""Gradient-equivalence testing for your own ``jax.custom_vjp`` rules.

:func:`assert_vjp_matches` compares the VJP of ``fn`` with the VJP of a
reference ``ref_fn`` (typically the same math written with plain ``jnp``/``lax``
so that ``jax.grad`` differentiates it) at given arguments, for several random
cotangents, plus the primal outputs and optionally grad-of-grad. Unlike
``jax.test_util.check_grads`` it needs no finite differences (so it works on
``custom_vjp`` functions and in float32/bfloat16), and on failure it says
*where*: the argument path, the worst element, both values, the absolute,
relative and ULP errors, and the seed of the cotangent that exposed it.

Hypothesis strategies for convolution configurations live in
:mod:`jconv.testing.strategies` (hypothesis is optional).
"""

from __future__ import annotations

from ._config import ConvConfig as ConvConfig
from ._vjp import ArgReport as ArgReport
from ._vjp import VjpReport as VjpReport
from ._vjp import assert_vjp_matches as assert_vjp_matches
from ._vjp import default_tolerance as default_tolerance
from ._vjp import vjp_report as vjp_report

__all__ = [
    "ArgReport",
    "ConvConfig",
    "VjpReport",
    "assert_vjp_matches",
    "default_tolerance",
    "vjp_report",
]
