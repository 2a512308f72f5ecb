"""The kernel gradient's F(3, 2) pieces on and off, in one process: `jconv bench`'s
training step (and its chained form, where the backward waits for the forward)
under ``lowering="winograd"``, the pieces switched off by raising
``_winograd.GRADIENT_FEATURES`` past every shape's features, against ``auto``.
Interleaved (A B C A B C ...) as `jconv bench` does, with XLA's temporary memory.

    python experiments/winograd_pieces.py [--shapes a,b] [--repeats 11] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools

import jax
from lowering_passes import write_rows

import jconv
from jconv import _bench, _winograd
from jconv._bench import SUITE

VARIANTS = {  # name: (lowering, kernel-gradient pieces)
    "auto": ("auto", False),
    "winograd": ("winograd", True),
    "winograd-no-pieces": ("winograd", False),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="resnet50-3x3-14,nchw-3x3-28")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    bound, rows = _winograd.GRADIENT_FEATURES, []
    for shape in (s for s in SUITE if s.name in args.shapes.split(",")):
        params, x, ct = shape.config.arrays()
        for chained in (False, True):
            runners, temp = {}, {}
            for name, (lowering, pieces) in VARIANTS.items():
                _winograd.GRADIENT_FEATURES = bound if pieces else 1 << 30
                jax.clear_caches()  # trace afresh under this bound
                forward = functools.partial(jconv.conv_forward, lowering=lowering)
                step = _bench._grad_fn(forward, shape, chained=chained)
                compiled, _, temp_bytes = _bench._compile(step, params, x, ct)
                runners[name] = _bench._timer(compiled, params, x, ct)
                temp[name] = round(temp_bytes / 2**20, 1)
            _winograd.GRADIENT_FEATURES = bound
            medians = _bench._interleaved(runners, args.repeats)
            row = {"shape": shape.name, "chained": chained}
            for name in VARIANTS:
                row[f"{name}_ms"] = round(medians[name] * 1e3, 2)
                row[f"{name}_temp_mib"] = temp[name]
            rows.append(row)
            print(
                f"{shape.name:18s} {'chained' if chained else 'step':7s} "
                + "  ".join(f"{n} {row[f'{n}_ms']:6.2f} ms {temp[n]:5.1f} MiB" for n in VARIANTS),
                flush=True,
            )
    if args.out:
        write_rows(args.out, args.repeats, rows)


if __name__ == "__main__":
    main()
