"""Property-based equivalence: random valid configurations against lax autodiff.

The quick "ci" profile runs by default; ``JCONV_HYPOTHESIS_PROFILE=deep`` runs
1000 examples per test (see ``conftest.py``).
"""

import jax.numpy as jnp
from helpers import Config, check_against_lax
from hypothesis import given
from hypothesis import strategies as st


@st.composite
def configs(draw, max_rank=3):
    nd = draw(st.integers(1, max_rank))
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise", "depthwise_mult"]))
    if kind == "dense":
        groups, c_in, c_out = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    elif kind == "grouped":
        groups = draw(st.integers(2, 3))
        c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    else:
        groups = c_in = draw(st.integers(1, 4))
        c_out = c_in * (1 if kind == "depthwise" else draw(st.integers(2, 3)))
    window = tuple(draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd)))
    stride = tuple(draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd)))
    dilation = tuple(draw(st.lists(st.integers(1, 2), min_size=nd, max_size=nd)))
    padding_kind = draw(st.sampled_from(["VALID", "SAME", "SAME_LOWER", "int", "ints", "pairs"]))
    if padding_kind == "int":
        padding = draw(st.integers(0, 3))
        pads = [(padding, padding)] * nd
    elif padding_kind == "ints":
        padding = tuple(draw(st.lists(st.integers(0, 3), min_size=nd, max_size=nd)))
        pads = [(p, p) for p in padding]
    elif padding_kind == "pairs":
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd))
        pads = list(padding)
    else:
        padding = padding_kind
        pads = [(0, 0)] * nd
    max_size = {1: 12, 2: 8, 3: 5}[nd]
    spatial = []
    for w, d, (lo, hi) in zip(window, dilation, pads, strict=True):
        smallest = max(1, (w - 1) * d + 1 - lo - hi)
        spatial.append(draw(st.integers(smallest, max(smallest, max_size))))
    return Config(
        batch=draw(st.integers(1, 3)),
        spatial=tuple(spatial),
        window=window,
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        stride=stride,
        padding=padding,
        dilation=dilation,
        layout=draw(st.sampled_from(["channels_last", "channels_first"])),
        bias=draw(st.booleans()),
        lowering=draw(st.sampled_from(["auto", "xla", "taps"])),
    )


@given(configs())
def test_random_configs_float32(config):
    check_against_lax(config, jnp.float32)


@given(configs())
def test_random_configs_float64(config):
    import jax

    with jax.enable_x64(True):
        check_against_lax(config, jnp.float64)
