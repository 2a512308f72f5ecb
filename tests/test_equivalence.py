"""Values and gradients of jconv equal jax.grad of lax.conv_general_dilated (+ bias).

A deterministic grid crossing strides, paddings and group structures, with
layout, dilation, bias and batch size varied across it so that every value of
each appears with every stride and padding kind; float32 to 1e-5 under every
lowering, and every fifth configuration in float64 to 1e-12 (relative to each
entry's sum of absolute terms).
"""

import dataclasses
import itertools

import chex
import jax.numpy as jnp
import pytest
from helpers import JCONV, Config, check_against_lax, value_and_grads

# (c_in, c_out, groups): dense, grouped, depthwise, depthwise with multiplier 2.
GROUPINGS = {
    "dense": (3, 5, 1),
    "grouped": (4, 6, 2),
    "depthwise": (4, 4, 4),
    "depthwise_x2": (3, 6, 3),
}
# (The shorthand 0 is VALID's pairs: test_padding_shorthands_are_their_pairs.)
PADDINGS_2D = ["VALID", "SAME", "SAME_LOWER", ((2, 0), (1, 3)), (1, 2)]
STRIDES_2D = [(1, 1), (1, 2), (2, 1), (3, 3)]
DILATIONS_2D = [1, 2, (2, 1), (1, 2)]


def _grid_2d():
    for idx, (stride, padding, grouping) in enumerate(
        itertools.product(STRIDES_2D, PADDINGS_2D, GROUPINGS)
    ):
        c_in, c_out, groups = GROUPINGS[grouping]
        yield Config(
            batch=1 if idx % 4 == 0 else 3,
            spatial=(9, 7),
            window=(3, 2),
            c_in=c_in,
            c_out=c_out,
            groups=groups,
            stride=stride,
            padding=padding,
            dilation=DILATIONS_2D[(idx // 3) % 4],
            layout=("channels_last", "channels_first")[idx % 2],
            bias=idx % 3 != 1,
        )


def _grid_1d():
    for idx, (stride, padding, grouping) in enumerate(
        itertools.product(
            [1, 2, 3],
            ["VALID", "SAME", "SAME_LOWER", ((3, 1),)],
            ["dense", "grouped", "depthwise_x2"],
        )
    ):
        c_in, c_out, groups = GROUPINGS[grouping]
        yield Config(
            batch=2,
            spatial=(11,),
            window=(3,),
            c_in=c_in,
            c_out=c_out,
            groups=groups,
            stride=stride,
            padding=padding,
            dilation=1 + idx % 2,
            layout=("channels_last", "channels_first")[(idx // 2) % 2],
            bias=idx % 3 != 2,
        )


def _grid_3d():
    strides = [(1, 1, 1), (1, 2, 1), (2, 1, 3)]
    paddings = ["VALID", "SAME", "SAME_LOWER", ((1, 0), (0, 2), (1, 1))]
    for idx, (stride, padding) in enumerate(itertools.product(strides, paddings)):
        c_in, c_out, groups = GROUPINGS[list(GROUPINGS)[idx % 4]]
        yield Config(
            batch=1 + idx % 2,
            spatial=(5, 6, 4),
            window=(2, 3, 2),
            c_in=c_in,
            c_out=c_out,
            groups=groups,
            stride=stride,
            padding=padding,
            dilation=(1, 1, 1) if idx % 3 else (2, 1, 1),
            layout=("channels_last", "channels_first")[(idx // 2) % 2],
            bias=idx % 2 == 0,
        )


GRID = [*_grid_1d(), *_grid_2d(), *_grid_3d()]


def _id(c):
    return (
        f"{len(c.spatial)}d-s{c.stride}-p{c.padding}-d{c.dilation}-g{c.groups}:{c.c_in}>{c.c_out}"
        f"-{c.layout}-{'b' if c.bias else 'nb'}-n{c.batch}"
    ).replace(" ", "")


def test_grid_covers_the_required_cases():
    strides = {c.stride for c in GRID}
    assert {(1, 1), (1, 2), (2, 1), (3, 3)} <= strides
    paddings = {str(c.padding) for c in GRID}
    assert {"VALID", "SAME", "SAME_LOWER", "(1, 2)"} <= paddings
    assert any(
        isinstance(c.padding, tuple)
        and any(isinstance(p, tuple) and p[0] != p[1] for p in c.padding)
        for c in GRID
    )
    assert {1, 2} <= {
        d for c in GRID for d in ((c.dilation,) if isinstance(c.dilation, int) else c.dilation)
    }
    kinds = {(c.groups == 1, c.groups == c.c_in, c.c_out // c.c_in) for c in GRID}
    assert (True, False, 1) in {(k[0], k[1], 1) for k in kinds if k[0]}  # dense
    assert any(1 < c.groups < c.c_in for c in GRID)  # grouped
    assert any(c.groups == c.c_in == c.c_out for c in GRID)  # depthwise
    assert any(c.groups == c.c_in and c.c_out == 2 * c.c_in for c in GRID)  # multiplier 2
    assert {1, 2, 3} == {len(c.spatial) for c in GRID}
    for nd in (1, 2, 3):
        assert {"channels_last", "channels_first"} == {
            c.layout for c in GRID if len(c.spatial) == nd
        }
    assert {True, False} == {c.bias for c in GRID}
    assert {1} < {c.batch for c in GRID}


@pytest.mark.parametrize("lowering", ["auto", "xla", "taps"])
@pytest.mark.parametrize("config", GRID, ids=_id)
def test_float32_matches_lax_autodiff(config, lowering):
    """The whole grid once per lowering: speed can never cost correctness."""
    check_against_lax(dataclasses.replace(config, lowering=lowering), jnp.float32)


# Every fifth configuration in float64, from the second (5 is prime to the
# grid's cycles of 2, 3 and 4, so the sample still crosses every grouping,
# layout, bias, batch and dilation; the test below checks it): float64 checks
# the rules' exactness to 1e-12, while the float32 grid above checks every
# configuration under every lowering.
GRID_64 = GRID[1::5]


def test_float64_sample_covers_every_kind():
    assert {1, 2, 3} == {len(c.spatial) for c in GRID_64}
    assert {(c.c_in, c.c_out, c.groups) for c in GRID_64} == set(GROUPINGS.values())
    for nd in (1, 2, 3):
        assert {"channels_last", "channels_first"} == {
            c.layout for c in GRID_64 if len(c.spatial) == nd
        }
    assert {True, False} == {c.bias for c in GRID_64}
    assert {1} < {c.batch for c in GRID_64}
    assert len({(str(c.stride), str(c.padding)) for c in GRID_64 if len(c.spatial) == 2}) >= 16


@pytest.mark.parametrize("config", GRID_64, ids=_id)
def test_float64_matches_lax_autodiff(config, x64):
    check_against_lax(config, jnp.float64)


@pytest.mark.parametrize(
    "shorthand, pairs", [(0, ((0, 0), (0, 0))), (1, ((1, 1), (1, 1))), ((1, 2), ((1, 1), (2, 2)))]
)
def test_padding_shorthands_are_their_pairs(shorthand, pairs):
    """An int or per-dim ints pad both sides: the same values and gradients as the
    explicit pairs, which the grid checks against lax."""
    config = Config(
        2, (9, 7), (3, 2), 4, 6, groups=2, stride=(2, 1), dilation=(1, 2), padding=pairs
    )
    params, x, ct = config.arrays(jnp.float32)
    want = value_and_grads(JCONV["auto"], config, params, x, ct)
    short = dataclasses.replace(config, padding=shorthand)
    got = value_and_grads(JCONV["auto"], short, params, x, ct)
    chex.assert_trees_all_equal(got, want)
