"""Random configurations in one lowering's domain, against lax autodiff.

``jconv verify`` and the hypothesis tests draw from every configuration, which
rarely lands where some code paths apply. This draws only from one domain:

- ``winograd``: dense, unit-stride, undilated 3-tap windows (``lowering="winograd"``),
  1-D to 3-D, both layouts, every padding form (including padding past the
  kernel, which the input gradient crops), bias or not, 1-5 images and
  channels, half of them with one image per batch chunk; the kernel gradient's
  F(3, 2) pieces are forced on these narrow features
  (``_winograd.GRADIENT_FEATURES = 1``; the run reports how many took them);
- ``regions``: the package's general sampler (``jconv.testing``), lowerings
  ``taps`` and ``auto``, with taps mode's regions forced on inputs of any size
  (``_regions.REGION_BYTES = 0``; by default only padded copies over 256 KiB
  take them, which the small sampled shapes never are);
- ``cpu_xla``: ``lowering="auto"`` on dense, channels-last, unit-stride 2-D
  convolutions of 17-40 input channels, windows 1-4, every padding form
  (including padding past the kernel), 1-5 images, half of them with one image
  per batch chunk: the forwards and input gradients that ``_cpu_xla`` routes
  (the run reports how many compiled programs took the route);
- ``bands``: ``lowering="taps"`` on dense 1-D to 3-D convolutions of 2-6 input
  channels, strides 1-3, dilations 1-2, every padding form, both layouts, one
  image per batch chunk and the kernel gradient's row bands forced
  (``_taps.BAND_STACK_BYTES`` of 1 byte, i.e. one dz row a band, or a random
  few KiB; the run reports how many kernel gradients took bands);
- ``scatter``: ``lowering="taps"`` with every pass forced to scatter mode
  (``_taps.choose_mode``), on 1-D to 3-D convolutions of 1-6 channels, grouped
  or not, strides 1-3, dilations 1-2, every padding form, both layouts, half of
  them one image per batch chunk: tap-major products summed at once or one
  window axis at a time, and side by side (wide lhs, or dilated: the phased
  sums). The run reports how many correlations took tap-major products and how
  many of those the separable sum;
- ``rows``: ``lowering="auto"`` on one-input-channel 1-D to 3-D convolutions of
  1-6 output features, strides 1-3, dilations 1-2, every padding form, both
  layouts, with the kernel gradient's rows form forced (``_rows``' bounds
  lifted), half of them one image per batch chunk. The run reports how many
  kernel gradients took it (those in positions mode);
- ``groups``: ``lowering="auto"`` on grouped 1-D to 3-D convolutions of 2-6
  groups of 2-9 input features, strides 1-3, dilations 1-2, every padding form,
  both layouts, with half of them split by groups (``_groups.by_groups``; the
  unrolling bound lowered to one feature) and half of those unrolled where the
  taps lowering computes them (``_terms.term``). The run reports how many
  correlations were split;
- ``rows_as_batch``: ``lowering="auto"`` on dense 1-D to 3-D convolutions of
  2-6 input channels, strides 1-3, dilations 1-2, every padding form, both
  layouts, with every kernel gradient whose rows have a divisor computed over
  bands of a random divisor of them stacked on the batch (``_bands.py``; the
  rule's bounds lifted, 1-D included). The run reports how many kernel
  gradients took bands.

Each is checked with the test suite's ``check_against_lax`` (values and all
gradients, elementwise, scaled tolerance)::

    python experiments/random_checks.py --domain winograd --configs 120 --seed 11 --dtype float64
    python experiments/random_checks.py --domain regions --configs 150 --seed 21 --dtype float64
    python experiments/random_checks.py --domain cpu_xla --configs 150 --seed 31 --dtype float64
    python experiments/random_checks.py --domain bands --configs 150 --seed 41 --dtype float64
    python experiments/random_checks.py --domain scatter --configs 150 --seed 51 --dtype float64
    python experiments/random_checks.py --domain rows --configs 150 --seed 61 --dtype float64
    python experiments/random_checks.py --domain groups --configs 150 --seed 71 --dtype float64
    python experiments/random_checks.py --domain rows_as_batch --configs 150 --seed 81 \
        --dtype float64
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import Config, _compiled, check_against_lax  # noqa: E402

from jconv import (  # noqa: E402
    _bands,
    _correlate,
    _cpu_xla,
    _fold,
    _groups,
    _im2col,
    _regions,
    _rows,
    _scatter,
    _taps,
    _terms,
    _winograd,
)
from jconv.testing._config import sample_config  # noqa: E402

SIZES = {1: 13, 2: 9, 3: 6}  # exclusive upper bound of a spatial size


def draw_regions(rng) -> Config:
    return sample_config(
        lambda lo, hi: int(rng.integers(lo, hi + 1)),
        lambda seq: seq[int(rng.integers(len(seq)))],
        lowerings=("taps", "auto"),
    )


def draw_winograd(rng) -> Config:
    nd = int(rng.integers(1, 4))
    padding, pads = _padding(rng, nd)
    spatial = _sizes(rng, (3,) * nd, pads, SIZES[nd])
    return Config(
        int(rng.integers(1, 6)),
        spatial,
        (3,) * nd,
        int(rng.integers(1, 6)),
        int(rng.integers(1, 6)),
        padding=padding,
        layout=str(rng.choice(["channels_last", "channels_first"])),
        bias=bool(rng.integers(0, 2)),
        lowering="winograd",
    )


def _sizes(rng, window, pads, end, dilation=1):
    """Spatial sizes below ``end``, each at least what its dilated window needs
    beside its ``(lo, hi)`` padding (and at least 1)."""
    return tuple(
        int(rng.integers(max(1, (w - 1) * dilation + 1 - lo - hi), end))
        for w, (lo, hi) in zip(window, pads, strict=True)
    )


def _padding(rng, nd):
    """A padding argument of a random form, and its (lo, hi) pairs (zeros for strings)."""
    form = str(rng.choice(["VALID", "SAME", "SAME_LOWER", "int", "pairs"]))
    if form == "int":
        padding = int(rng.integers(0, 5))
        return padding, [(padding, padding)] * nd
    if form == "pairs":
        padding = tuple((int(rng.integers(0, 5)), int(rng.integers(0, 5))) for _ in range(nd))
        return padding, list(padding)
    return form, [(0, 0)] * nd


def draw_cpu_xla(rng) -> Config:
    padding, pads = _padding(rng, 2)
    window = tuple(int(rng.integers(1, 5)) for _ in range(2))
    spatial = _sizes(rng, window, pads, 13)
    return Config(
        int(rng.integers(1, 6)),
        spatial,
        window,
        int(rng.integers(17, 41)),
        int(rng.integers(1, 41)),
        padding=padding,
        bias=bool(rng.integers(0, 2)),
        lowering="auto",
    )


def draw_scatter(rng) -> Config:
    def channels():
        groups = int(rng.choice([1, 1, 2]))
        return groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4)), groups

    return _taps_config(rng, (6, 6, 4), lambda window: 2 * max(window), channels)


def draw_bands(rng) -> Config:
    def channels():
        return int(rng.integers(2, 7)), int(rng.integers(1, 6)), 1

    return _taps_config(rng, (4, 4, 4), lambda window: 3, channels)


def draw_rows(rng) -> Config:
    def channels():
        return 1, int(rng.integers(1, 7)), 1

    config = _taps_config(rng, (6, 5, 4), lambda window: 2 * max(window), channels)
    return dataclasses.replace(config, lowering="auto")


def draw_groups(rng) -> Config:
    def channels():
        groups = int(rng.integers(2, 7))
        return groups * int(rng.integers(2, 10)), groups * int(rng.integers(1, 4)), groups

    config = _taps_config(rng, (5, 4, 3), lambda window: 2, channels)
    return dataclasses.replace(config, lowering="auto")


def draw_rows_as_batch(rng) -> Config:
    def channels():
        return int(rng.integers(2, 7)), int(rng.integers(1, 6)), 1

    config = _taps_config(rng, (5, 4, 3), lambda window: 2 * max(window), channels)
    return dataclasses.replace(config, lowering="auto")


def _force_rows_as_batch(rng, counted: set) -> None:
    """Every dense positions-mode correlation whose rows have a divisor giving
    two bands or more goes over bands of a random such divisor (``_bands``)."""
    real_taps_pays, real_rows_as_batch = _correlate._taps_pays_on_cpu, _bands.rows_as_batch

    def divisors(lhs_shape, rhs_shape, corr):
        positions = _taps.choose_mode(lhs_shape, rhs_shape, corr) == "positions"
        if not positions or not _terms.dense(corr) or corr.lhs_dilation[0] != 1:
            return []
        rows = rhs_shape[corr.rhs_axes[2]]
        return [b for b in range(1, rows // 2 + 1) if rows % b == 0]

    def band_rows(lhs_shape, rhs_shape, corr, *_):
        found = divisors(lhs_shape, rhs_shape, corr)
        return int(rng.choice(found)) if found else None

    def taps_pays_on_cpu(lhs_shape, rhs_shape, corr, itemsize):
        banded = bool(divisors(lhs_shape, rhs_shape, corr))
        return not banded and real_taps_pays(lhs_shape, rhs_shape, corr, itemsize)

    def rows_as_batch(lhs, rhs, corr, b):
        counted.add((lhs.shape, rhs.shape, corr, b))
        return real_rows_as_batch(lhs, rhs, corr, b)

    _bands.band_rows, _bands.rows_as_batch = band_rows, rows_as_batch
    _correlate._taps_pays_on_cpu = taps_pays_on_cpu


def _taps_config(rng, window_end, extra, channels) -> Config:
    """A ``lowering="taps"`` config: 1-D to 3-D, windows below ``window_end[nd -
    1]``, strides 1-3, dilations 1-2, sizes below ``SIZES[nd] + extra(window)``,
    every padding form, both layouts; ``channels()`` draws ``(c_in, c_out,
    groups)``."""
    nd = int(rng.integers(1, 4))
    padding, pads = _padding(rng, nd)
    window = tuple(int(rng.integers(1, window_end[nd - 1])) for _ in range(nd))
    stride, dilation = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    spatial = _sizes(rng, window, pads, SIZES[nd] + extra(window), dilation)
    batch = int(rng.integers(1, 5))
    c_in, c_out, groups = channels()
    return Config(
        batch,
        spatial,
        window,
        c_in,
        c_out,
        groups=groups,
        stride=stride,
        padding=padding,
        dilation=dilation,
        layout=str(rng.choice(["channels_last", "channels_first"])),
        bias=bool(rng.integers(0, 2)),
        lowering="taps",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--domain",
        choices=[
            "winograd",
            "regions",
            "cpu_xla",
            "bands",
            "scatter",
            "rows",
            "groups",
            "rows_as_batch",
        ],
        default="winograd",
    )
    parser.add_argument("--configs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    budget, failed = (_winograd.WINOGRAD_BYTES, _winograd.GRADIENT_BYTES), 0
    pieces, pieces_correlate = set(), _winograd._pieces_correlate

    def counted_pieces(lhs, rhs, corr, *args):
        pieces.add((lhs.shape, rhs.shape, corr))
        return pieces_correlate(lhs, rhs, corr, *args)

    _winograd._pieces_correlate = counted_pieces
    pieces_count = 0
    routed, route = [0], _cpu_xla.cpu_xla_correlate

    def counted(*args, **kwargs):
        routed[0] += 1
        return route(*args, **kwargs)

    _cpu_xla.cpu_xla_correlate = counted  # traced once per compile: counts configs
    banded, bands = [0], _taps.row_bands

    def counted_bands(*args, **kwargs):
        out = bands(*args, **kwargs)
        banded[0] += len(out) > 1
        return out

    _taps.row_bands = counted_bands
    # Distinct correlations of the config (a chunk loop traces its body twice).
    tap_major, separable = (set(), set()), (_scatter._tap_major_products, _scatter._separable_sum)

    def counted_tap_major(lhs, rhs, corr, *args):
        tap_major[0].add((lhs.shape, rhs.shape, corr))
        return separable[0](lhs, rhs, corr, *args)

    def counted_separable(products, corr, outs):
        tap_major[1].add((products.shape, corr))
        return separable[1](products, corr, outs)

    _scatter._tap_major_products, _scatter._separable_sum = counted_tap_major, counted_separable
    tap_major_counts = [0, 0]
    scatter_bytes = _scatter.TAP_MAJOR_BYTES, _scatter.SCATTER_BYTES
    chunk_bytes = _cpu_xla.CHUNK_BYTES
    rows, rows_correlate, rows_bytes = set(), _rows.rows_correlate, _rows.ROWS_BYTES

    def counted_rows(lhs, rhs, corr, *args, **kwargs):
        rows.add((lhs.shape, rhs.shape, corr))
        return rows_correlate(lhs, rhs, corr, *args, **kwargs)

    _rows.rows_correlate = counted_rows
    rows_count = 0
    split, by_groups = [0], _groups.by_groups

    def counted_groups(*args, **kwargs):
        split[0] += 1
        return by_groups(*args, **kwargs)

    _groups.by_groups = counted_groups
    unrolled_features, looped_well = _terms.UNROLLED_FEATURES, _correlate._looped_well
    if args.domain == "regions":
        _regions.REGION_BYTES = 0  # regions on inputs of any size
    stacked, stacked_count = set(), 0
    if args.domain == "rows_as_batch":
        _force_rows_as_batch(rng, stacked)
    if args.domain == "rows":  # the rows form wherever it can run
        _rows.ROWS_WASTE, _rows.ROWS_MIN_ROWS, _rows.ROWS_FEATURES = 10**6, 0, 10**6
    for _ in range(args.configs):
        if args.domain == "winograd":
            config = draw_winograd(rng)
            _winograd.GRADIENT_FEATURES = 1  # the kernel gradient's pieces on narrow features
            one_each = bool(rng.integers(0, 2))  # one image a chunk
            _winograd.WINOGRAD_BYTES = 1 if one_each else budget[0]
            _winograd.GRADIENT_BYTES = 1 if one_each else budget[1]
        elif args.domain == "cpu_xla":
            config = draw_cpu_xla(rng)
            _cpu_xla.CHUNK_BYTES = 1 if rng.integers(0, 2) else chunk_bytes  # one image a chunk
        elif args.domain == "bands":
            config = draw_bands(rng)
            _taps.CHUNK_BYTES = 1  # one image a chunk
            _fold.FOLD_TERMS = 1  # (folding replaces the chunk loop where it applies)
            _taps.BAND_STACK_BYTES = 1 if rng.integers(0, 2) else int(rng.integers(2, 8192))
            _im2col.STACK_BYTES = max(1, _taps.BAND_STACK_BYTES // 2)
        elif args.domain == "scatter":
            config = draw_scatter(rng)
            _taps.choose_mode = lambda *shapes_and_corr: "scatter"
            one_each = bool(rng.integers(0, 2))  # one image a chunk
            _scatter.TAP_MAJOR_BYTES = 1 if one_each else scatter_bytes[0]
            _scatter.SCATTER_BYTES = 1 if one_each else scatter_bytes[1]
        elif args.domain == "groups":
            config = draw_groups(rng)
            forced = bool(rng.integers(0, 2))  # split by groups wherever it can be
            _terms.UNROLLED_FEATURES = 1 if forced else unrolled_features
            _correlate._looped_well = (lambda itemsize: lambda *a: True) if forced else looped_well
        elif args.domain == "rows_as_batch":
            config = draw_rows_as_batch(rng)
        elif args.domain == "rows":
            config = draw_rows(rng)
            _rows.ROWS_BYTES = 1 if rng.integers(0, 2) else rows_bytes  # one image a chunk
        else:
            config = draw_regions(rng)
        _compiled.cache_clear()  # compile afresh under this budget
        try:
            with jax.enable_x64(args.dtype == "float64"):
                check_against_lax(config, jnp.dtype(args.dtype))
        except AssertionError as err:
            failed += 1
            print("FAIL", config, str(err)[:300])
        for i in (0, 1):
            tap_major_counts[i] += len(tap_major[i])
            tap_major[i].clear()
        pieces_count += len(pieces)
        pieces.clear()
        rows_count += len(rows)
        rows.clear()
        stacked_count += len(stacked)
        stacked.clear()
    what = f"{args.domain}, {args.dtype}, seed {args.seed}"
    took = f"; {routed[0]} compiled programs took the cpu_xla route" if routed[0] else ""
    took += f"; {banded[0]} kernel gradients took row bands" if banded[0] else ""
    took += f"; {pieces_count} kernel gradients took F(3, 2) pieces" if pieces_count else ""
    took += f"; {rows_count} kernel gradients took the rows form" if rows_count else ""
    took += f"; {split[0]} correlations were split by groups" if split[0] else ""
    took += f"; {stacked_count} kernel gradients took bands as batch" if stacked_count else ""
    if tap_major_counts[0]:
        took += f"; {tap_major_counts[0]} correlations took tap-major products"
        took += f", {tap_major_counts[1]} of them the separable sum"
    print(f"{args.configs - failed}/{args.configs} passed ({what}{took})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
