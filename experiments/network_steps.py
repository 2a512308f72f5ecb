"""Training steps of small all-conv networks: jconv against autodiff of lax.

`jconv bench` times one convolution's step; in a network the layers' passes
are chained, each forward output is stored for the backward, and XLA schedules
the layers' kernel gradients among the rest. This times the jitted
`value_and_grad` of a stack of 3x3 SAME convolutions with ReLUs (loss: the mean
square of the last activation) and reports XLA's compiled temporary memory,
interleaving the contenders as `jconv bench` does.

    python experiments/network_steps.py [--configs 8x56x64x3,...] [--repeats 11]
        [--out results/network-cpu.json]

A config is ``NxHxCxL``: batch, image side, channels, layers.

``--models`` times whole LeNet-style classifiers (``jconv.models``: conv, relu,
max pool twice, then two dense layers, softmax cross-entropy on 28x28x1
images), every layer jconv's against every layer ``jconv.autodiff``'s:
``demo-N`` is the ``jconv train`` network (16 and 32 channels, hidden 128),
``lenet5-N`` the same with LeNet-5's widths (6 and 16 channels, hidden 120),
``N`` the batch.

    python experiments/network_steps.py --configs "" --models demo-128,lenet5-64
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp

import jconv
from jconv import _bench, models

DEFAULT = "8x56x64x3,8x28x128x3,8x28x64x3,4x28x64x3,16x28x32x4,8x14x96x3,8x14x128x3"
MODELS = {"demo": {}, "lenet5": {"channels": (6, 16), "hidden": 120}}


def _step(forward):
    def loss(params, x):
        for p in params:
            x = jax.nn.relu(forward(p, x, padding="SAME"))
        return jnp.mean(x * x)

    return jax.value_and_grad(loss)


def _model_step(ops):
    def loss(params, x, labels):
        return ops.softmax_cross_entropy(models.lenet_apply(params, x, ops=ops), labels)

    return jax.value_and_grad(loss)


def _contenders(config):
    """``(name -> (step, args))`` of both contenders for one config."""
    if "-" in config:  # a LeNet-style model, ``name-batch``
        name, batch = config.split("-")
        keys = jax.random.split(jax.random.key(0), 2)
        params = models.lenet_init(keys[0], (28, 28, 1), **MODELS[name])
        x = jax.random.normal(keys[1], (int(batch), 28, 28, 1))
        args = (params, x, jnp.arange(int(batch)) % 10)
        return {
            "jconv": (_model_step(models.JCONV_OPS), args),
            "autodiff": (_model_step(jconv.autodiff), args),
        }
    n, side, channels, layers = (int(v) for v in config.split("x"))
    keys = jax.random.split(jax.random.key(0), layers + 1)
    params = [jconv.conv_init(k, channels, channels, (3, 3)) for k in keys[:layers]]
    args = (params, jax.random.normal(keys[-1], (n, side, side, channels)))
    return {
        "jconv": (_step(jconv.conv_forward), args),
        "autodiff": (_step(jconv.autodiff.conv_forward), args),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT)
    parser.add_argument("--models", default="", help="e.g. demo-128,lenet5-64")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = []
    configs = [c for c in (*args.configs.split(","), *args.models.split(",")) if c]
    for config in configs:
        runners, temp = {}, {}
        for name, (step, step_args) in _contenders(config).items():
            compiled, _, temp_bytes = _bench._compile(step, *step_args)
            runners[name] = _bench._timer(compiled, *step_args)
            temp[name] = temp_bytes
        medians = _bench._interleaved(runners, args.repeats)
        row = {"config": config, **{f"{k}_ms": round(v * 1e3, 2) for k, v in medians.items()}}
        row.update({f"{k}_temp_mib": round(v / 2**20, 2) for k, v in temp.items()})
        rows.append(row)
        print(
            f"{config:14s} jconv {row['jconv_ms']:8.2f} ms {row['jconv_temp_mib']:6.2f} MiB   "
            f"autodiff {row['autodiff_ms']:8.2f} ms {row['autodiff_temp_mib']:6.2f} MiB",
            flush=True,
        )
    if args.out:
        report = {
            "machine": platform.processor() or platform.machine(),
            "backend": jax.default_backend(),
            "jax_version": jax.__version__,
            "repeats": args.repeats,
            "rows": rows,
        }
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
