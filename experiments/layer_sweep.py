"""Times training steps of common layers *off* `jconv bench`'s suite, jconv
against autodiff: where `auto` chooses worse than XLA's own gradient.

The suite's twelve shapes are what `auto`'s rules were measured on; this sweep
checks that the rules hold on layers they were not tuned for (ResNet's strided
3x3s and bottleneck 1x1s, VGG, CIFAR ResNets, ResNeXt's grouped 3x3,
EfficientNet's 5x5 depthwise, DeepLab's dilated 3x3, 1-D audio and 3-D video
convolutions, batch 1, bfloat16). Each entry is `jconv bench`'s step (the loss
``sum(conv(x) * ct)`` and its gradients) and its chained form (the backward
waits for the forward, as in a network), jconv and autodiff interleaved after
a warm-up, medians, with XLA's compiled temporary memory.

    python experiments/layer_sweep.py [--layers a,b] [--repeats 7] [--out results/sweep.json]
        [--lowering auto] [--versus measured]

``--versus`` times a second jconv lowering in the same turns (A B C A B C ...),
with its own ratio to autodiff: an A/B of two lowerings in one process.
"""

from __future__ import annotations

import argparse
import functools
import math

import jax.numpy as jnp
from lowering_passes import write_rows

from jconv import _bench, autodiff, conv_forward
from jconv._bench import Shape, _shape
from jconv._spec import LOWERINGS


def _layers() -> list[tuple[Shape, str]]:
    """``(shape, dtype name)`` per layer; SAME padding unless given."""
    bf16 = "bfloat16"
    entries = [
        _shape("resnet-3x3-s2-56", 8, (56, 56), 128, 128, (3, 3), stride=2),
        _shape("resnet-3x3-28", 8, (28, 28), 128, 128, (3, 3)),
        _shape("resnet-3x3-7", 8, (7, 7), 512, 512, (3, 3)),
        _shape("resnet-1x1-reduce-56", 8, (56, 56), 256, 64, (1, 1), padding="VALID"),
        _shape("resnet-1x1-reduce-28", 8, (28, 28), 512, 128, (1, 1), padding="VALID"),
        _shape("resnet-1x1-expand-7", 8, (7, 7), 512, 2048, (1, 1), padding="VALID"),
        _shape("resnet-1x1-s2-down-28", 8, (28, 28), 512, 1024, (1, 1), stride=2),
        _shape("vgg-3x3-rgb-224", 2, (224, 224), 3, 64, (3, 3)),
        _shape("vgg-3x3-112", 2, (112, 112), 64, 128, (3, 3)),
        _shape("cifar-3x3-32x16", 64, (32, 32), 16, 16, (3, 3)),
        _shape("cifar-3x3-s2-32x16", 64, (32, 32), 16, 32, (3, 3), stride=2),
        _shape("cifar-3x3-8x64", 64, (8, 8), 64, 64, (3, 3)),
        _shape("resnext-3x3-g32-28", 8, (28, 28), 256, 256, (3, 3), groups=32),
        _shape("grouped-3x3-g4-28", 8, (28, 28), 128, 128, (3, 3), groups=4),
        _shape("mobilenet-pw-112", 4, (112, 112), 32, 64, (1, 1), padding="VALID"),
        _shape("mobilenet-dw-s2-56", 8, (56, 56), 128, 128, (3, 3), stride=2, groups=128),
        _shape("mobilenet-dw-7", 8, (7, 7), 1024, 1024, (3, 3), groups=1024),
        _shape("efficientnet-dw5x5-28", 8, (28, 28), 240, 240, (5, 5), groups=240),
        _shape("deeplab-3x3-d2-64", 4, (64, 64), 64, 64, (3, 3), dilation=2),
        _shape("conv-5x5-s2-valid-64", 16, (64, 64), 3, 32, (5, 5), stride=2, padding="VALID"),
        _shape("resnet-3x3-56-batch1", 1, (56, 56), 64, 64, (3, 3)),
        _shape("nchw-3x3-s2-56", 8, (56, 56), 64, 128, (3, 3), stride=2, layout="channels_first"),
        _shape("nchw-dw-28", 8, (28, 28), 128, 128, (3, 3), groups=128, layout="channels_first"),
        _shape("audio-1d-k5", 16, (4000,), 32, 32, (5,)),
        _shape("audio-1d-k7-s2", 16, (4000,), 32, 64, (7,), stride=2),
        _shape("video-3x3x3", 2, (8, 28, 28), 64, 64, (3, 3, 3)),
        _shape("video-dw-3x3x3", 2, (8, 28, 28), 64, 64, (3, 3, 3), groups=64),
    ]
    layers = [(s, "float32") for s in entries]
    halves = [
        _shape("bf16-resnet-3x3-28", 8, (28, 28), 128, 128, (3, 3)),
        _shape("bf16-mobilenet-dw-28", 8, (28, 28), 256, 256, (3, 3), groups=256),
        _shape("bf16-resnet-1x1-reduce-28", 8, (28, 28), 512, 128, (1, 1), padding="VALID"),
    ]
    return layers + [(s, bf16) for s in halves]


def _step(forward, shape: Shape, dtype, chained: bool):
    params, x, ct = shape.config.arrays(dtype)
    return _bench._grad_fn(forward, shape, chained), (params, x, ct)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    layers = _layers()
    parser.add_argument("--layers", default=",".join(s.name for s, _ in layers))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    parser.add_argument("--lowering", choices=LOWERINGS, default="auto")
    parser.add_argument("--versus", choices=LOWERINGS, default=None, help="a second lowering")
    args = parser.parse_args(argv)
    wanted = args.layers.split(",")
    contenders = {
        "jconv": functools.partial(conv_forward, lowering=args.lowering),
        "autodiff": autodiff.conv_forward,
    }
    versus = f"jconv_{args.versus}" if args.versus else None
    if versus:
        contenders[versus] = functools.partial(conv_forward, lowering=args.versus)
    rows = []
    for shape, dtype_name in (entry for entry in layers if entry[0].name in wanted):
        dtype = jnp.dtype(dtype_name)
        row = {"layer": shape.name, "dtype": dtype_name}
        for chained in (False, True):
            runners, temp = {}, {}
            for name, forward in contenders.items():
                fn, operands = _step(forward, shape, dtype, chained)
                compiled, seconds, temp_bytes = _bench._compile(fn, *operands)
                runners[name] = _bench._timer(compiled, *operands)
                temp[name] = temp_bytes
                if not chained:
                    row[f"{name}_compile_s"] = round(seconds, 2)
            medians = _bench._interleaved(runners, args.repeats)
            kind = "chained" if chained else "step"
            for name in contenders:
                row[f"{kind}_{name}_ms"] = round(medians[name] * 1e3, 3)
                row[f"{kind}_{name}_temp_mib"] = round(temp[name] / 2**20, 2)
            row[f"{kind}_ratio"] = round(medians["jconv"] / medians["autodiff"], 3)
            if versus:
                row[f"{kind}_{versus}_ratio"] = round(medians[versus] / medians["autodiff"], 3)
        rows.append(row)
        print(f"{shape.name:26s} {dtype_name:8s} " + _columns(row, versus), flush=True)
    if rows:
        for name in ("jconv", versus) if versus else ("jconv",):
            key = "ratio" if name == "jconv" else f"{name}_ratio"
            ratios = [r[f"{k}_{key}"] for r in rows for k in ("step", "chained")]
            mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
            print(f"geometric mean ratio {name}: {mean:.2f}")
    if args.out:
        write_rows(args.out, args.repeats, rows, lowering=args.lowering, versus=args.versus)


def _columns(row, versus) -> str:
    """``kind jconv/autodiff ms (ratio) MiB``, then ``versus``'s ms (ratio) MiB."""
    cells = []
    for kind in ("step", "chained"):
        cell = (
            f"{kind} {row[f'{kind}_jconv_ms']:8.2f}/{row[f'{kind}_autodiff_ms']:8.2f} ms "
            f"({row[f'{kind}_ratio']:.2f}) "
            f"{row[f'{kind}_jconv_temp_mib']:6.1f}/{row[f'{kind}_autodiff_temp_mib']:6.1f} MiB"
        )
        if versus:
            cell += (
                f" | {versus[len('jconv_') :]} {row[f'{kind}_{versus}_ms']:8.2f} ms "
                f"({row[f'{kind}_{versus}_ratio']:.2f}) {row[f'{kind}_{versus}_temp_mib']:6.1f} MiB"
            )
        cells.append(cell)
    return "  ".join(cells)


if __name__ == "__main__":
    main()
