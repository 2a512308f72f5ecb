"""Times each pass of each suite shape (forward, input gradient, kernel gradient)
under two lowerings, interleaved as `jconv bench` does (same helpers), with XLA's
temporary memory: where a lowering wins or loses, pass by pass. `jconv bench`
times the whole gradient instead.

    python experiments/lowering_passes.py [--shapes a,b] [--lowerings xla,auto]
        [--passes fwd,dx,dk] [--repeats 11] [--out results/passes-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform

import jax

import jconv
from jconv import _bench
from jconv._bench import SUITE


def _programs(shape, lowering):
    c = shape.config
    params, x, ct = c.arrays()
    kw = dict(c.kwargs, lowering=lowering)
    kernel = params["kernel"]
    return {
        "fwd": (lambda p, x: jconv.conv_forward(p, x, **kw), (params, x)),
        "dx": (lambda dz, k: jconv.conv_grad_input(dz, k, x.shape, **kw), (ct, kernel)),
        "dk": (lambda x, dz: jconv.conv_grad_kernel(x, dz, kernel.shape, **kw), (x, ct)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(s.name for s in SUITE))
    parser.add_argument("--lowerings", default="xla,auto")
    parser.add_argument("--passes", default="fwd,dx,dk")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    lowerings, passes = args.lowerings.split(","), args.passes.split(",")
    rows = []
    for shape in (s for s in SUITE if s.name in args.shapes.split(",")):
        for name in passes:
            runners, temp = {}, {}
            for lowering in lowerings:
                fn, operands = _programs(shape, lowering)[name]
                compiled, _, temp_bytes = _bench._compile(fn, *operands)
                runners[lowering] = _bench._timer(compiled, *operands)
                temp[lowering] = temp_bytes / 2**20
            medians = _bench._interleaved(runners, args.repeats)  # A B A B ... after warm-up
            row = {"shape": shape.name, "pass": name}
            for lowering in lowerings:
                row[f"{lowering}_ms"] = round(medians[lowering] * 1e3, 3)
                row[f"{lowering}_temp_mib"] = round(temp[lowering], 1)
            rows.append(row)
            print(
                f"{shape.name:22s} {name:3s} "
                + "  ".join(
                    f"{lw} {row[f'{lw}_ms']:8.2f} ms {row[f'{lw}_temp_mib']:6.1f} MiB"
                    for lw in lowerings
                ),
                flush=True,
            )
    if args.out:
        write_rows(args.out, args.repeats, rows)


def write_rows(path, repeats, rows):
    """Writes an experiment's rows as JSON, with the machine's jax, backend and CPU."""
    meta = {"jax": jax.__version__, "backend": jax.default_backend(), "cpu": platform.processor()}
    with open(path, "w") as f:
        json.dump({"meta": meta, "repeats": repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
