"""How fast could any lowering onto XLA:CPU's matmuls be? Two floors per suite shape.

Every pass of a dense or grouped convolution is at least one matmul of known
dimensions (per group; ``P`` the output positions over the batch, ``A =
C_in / groups * prod(window)``, ``B = C_out / groups``):

- forward: ``(P, A) @ (A, B)`` (im2col);
- input gradient: ``(P, B) @ (B, A)`` (the im2col form's transpose, before its
  col2im sum);
- kernel gradient: ``(A, P) @ (P, B)`` (im2col, contracted over positions).

Every lowering jconv's rules can choose (XLA's convolution, taps, im2col;
Winograd aside) computes at least these FLOPs, ``3 * 2 P A B * groups`` for a
training step. Two floors follow:

- **peak floor**: those FLOPs at XLA:CPU's best float32 matmul rate seen in
  the run (square matmuls of :data:`PEAK_SIZES`, or any of the products below if faster). Where
  torch's whole step runs faster than that rate, no lowering onto XLA:CPU's
  matmuls can beat torch on this machine, whatever its layouts or copies; only
  fewer FLOPs (Winograd, whose transforms are memory-bound loops on XLA:CPU)
  or faster kernels could.
- **im2col floor**: one program holding each pass's matmul above as a single
  ``dot_general``, in the fastest of three operand layouts (row-major, either
  operand stored transposed) with nothing paid to build the operands, the
  three independent as in ``jconv bench``'s step (so XLA may overlap them).
  It is not a bound (a sum of per-tap matmuls has other shapes), but it shows
  how close a step is to what the im2col matmuls alone cost.

Depthwise layers (one input channel per group) are not matmuls but sums of
products bound by memory. Their row's **streaming floor** is the step of the
same layer with a one-entry window, written as a product (``x[::stride] * k +
b``) under ``jax.value_and_grad``: each pass reads its operands and writes its
result once, fused, which every lowering of the real window must do too. The
real window's extra cost is the taps' shifted reuse of ``x`` and ``dz``, which
a kernel keeps in cache and registers in one pass.

Times are taken as ``jconv bench`` takes them: jconv's step and the products in
turns, torch's step in blocks.

    python experiments/xla_ceilings.py [--shapes a,b] [--repeats 11] [--out results/...json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jconv
from jconv import _bench
from jconv._bench import SUITE

# Square matmuls whose best rate is the machine's XLA:CPU peak (with the passes' own).
PEAK_SIZES = (1024, 2048, 3072)
# Operand layouts tried per pass: (lhs stored transposed, rhs stored transposed).
LAYOUTS = {"NN": (False, False), "NT": (False, True), "TN": (True, False)}


def pass_dims(shape, z_shape):
    """``{pass: (M, K, N)}`` of each pass's matmul per group, and the group count."""
    c = shape.config
    out_spatial = z_shape[1:-1] if c.layout == "channels_last" else z_shape[2:]
    p = c.batch * math.prod(out_spatial)
    a = c.c_in // c.groups * math.prod(c.window)
    b = c.c_out // c.groups
    return {"fwd": (p, a, b), "dx": (p, b, a), "dk": (a, p, b)}, c.groups


def _product(m, k, n, groups, layout, rng):
    """A jitted ``(M, K) @ (K, N)`` per group on random operands stored as ``layout`` says."""
    lhs_t, rhs_t = LAYOUTS[layout]
    lhs = rng.standard_normal((groups, k, m) if lhs_t else (groups, m, k), np.float32)
    rhs = rng.standard_normal((groups, n, k) if rhs_t else (groups, k, n), np.float32)
    dims = (((1 if lhs_t else 2,), (2 if rhs_t else 1,)), ((0,), (0,)))

    def product(lhs, rhs):
        return lax.dot_general(lhs, rhs, dims, preferred_element_type=jnp.float32)

    return product, (jnp.asarray(lhs), jnp.asarray(rhs))


def floor_shape(shape, repeats: int, torch: bool, peak: float) -> dict:
    """One row: jconv's and torch's steps and the floors (module docstring)."""
    params, x, ct = shape.config.arrays()
    dims, groups = pass_dims(shape, ct.shape)
    row = {"shape": shape.name, "groups": groups, "dims": dims}
    grad = jax.jit(_bench._grad_fn(jconv.conv_forward, shape))
    runners = {"jconv": _bench._timer(grad, params, x, ct)}
    depthwise = 1 < shape.config.groups == shape.config.c_in
    rng = np.random.default_rng(0)
    products = {}
    if depthwise:
        runners["streaming"] = _streaming_step(shape)
    else:
        for name, (m, k, n) in dims.items():
            for layout in LAYOUTS:
                products[name, layout] = _product(m, k, n, groups, layout, rng)
                fn, args = products[name, layout]
                runners[f"{name}:{layout}"] = _bench._timer(jax.jit(fn), *args)
    torch_runners = _bench._torch_runners(shape) if torch else {}
    times = _bench._in_blocks([runners, torch_runners], repeats, _bench.BLOCKS)
    if not depthwise:
        best = {p: min(LAYOUTS, key=lambda lay, p=p: times[f"{p}:{lay}"]) for p in dims}
        chosen = [products[p, best[p]] for p in dims]

        def step(*args):  # the three passes' fastest matmuls, independent, in one program
            return [fn(args[2 * i], args[2 * i + 1]) for i, (fn, _) in enumerate(chosen)]

        operands = [a for _, args in chosen for a in args]
        floor = _bench._in_blocks(
            [{"floor": _bench._timer(jax.jit(step), *operands), "jconv": runners["jconv"]}],
            repeats,
            _bench.BLOCKS,
        )
        rates = [2 * math.prod(dims[p]) * groups / times[f"{p}:{best[p]}"] for p in dims]
        row["matmul_peak_gflops"] = max(peak, *rates) / 1e9
        row["peak_floor_s"] = (
            3 * 2 * math.prod(dims["fwd"]) * groups / (row["matmul_peak_gflops"] * 1e9)
        )
        row["best_layouts"] = best
        row["pass_floor_s"] = {p: times[f"{p}:{best[p]}"] for p in dims}
        row["im2col_floor_s"] = floor["floor"]
        row["jconv_again_s"] = floor["jconv"]
    else:
        row["streaming_floor_s"] = times["streaming"]
    row["jconv_s"] = times["jconv"]
    row["torch_s"] = min((times[k] for k in torch_runners), default=None)
    row["flops"] = 3 * shape.forward_flops(ct.shape)
    return row


def _streaming_step(shape):
    """A runner of the layer's step with a one-entry window, as a product (module docstring)."""
    c = shape.config
    assert c.layout == "channels_last" and c.c_out == c.c_in  # (the suite's depthwise layers)
    _, x, _ = c.arrays()
    params = {"kernel": jnp.full((c.c_in,), 0.1, x.dtype), "bias": jnp.zeros((c.c_in,), x.dtype)}
    strides = (c.stride,) * len(c.spatial) if isinstance(c.stride, int) else c.stride
    taken = (slice(None), *(slice(None, None, s) for s in strides), slice(None))
    ct = jnp.ones_like(x[taken])

    def forward(p, x):
        return x[taken] * p["kernel"] + p["bias"]

    def loss(p, x, ct):
        return jnp.sum(forward(p, x) * ct)

    return _bench._timer(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), params, x, ct)


def _line(row) -> str:
    def ms(s):
        return f"{s * 1e3:7.2f}" if s is not None else "      -"

    text = f"{row['shape']:<22} jconv {ms(row['jconv_s'])}  torch {ms(row['torch_s'])}"
    if "peak_floor_s" not in row:
        return text + f"  streaming floor {ms(row['streaming_floor_s'])} (depthwise)"
    passes = " ".join(
        f"{p} {ms(s)} {row['best_layouts'][p]}" for p, s in row["pass_floor_s"].items()
    )
    text += f"  peak floor {ms(row['peak_floor_s'])} ({row['matmul_peak_gflops']:.0f} GFLOP/s)"
    if row["torch_s"] is not None:
        torch_rate = row["flops"] / row["torch_s"] / 1e9
        beaten = torch_rate > row["matmul_peak_gflops"]
        text += f"  torch {torch_rate:.0f} GFLOP/s{' > peak' if beaten else ''}"
    return f"{text}  im2col floor {ms(row['im2col_floor_s'])} ({passes})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=None)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    names = args.shapes.split(",") if args.shapes else None
    peak = max(_bench.matmul_gflops(n, repeats=9) for n in PEAK_SIZES)
    print(f"float32 matmul {peak:.1f} GFLOP/s, {platform.processor() or platform.machine()}")
    rows = []
    for shape in SUITE:
        if names is None or shape.name in names:
            rows.append(floor_shape(shape, args.repeats, not args.no_torch, peak * 1e9))
            print(_line(rows[-1]), flush=True)
    if args.out:
        meta = {"jax": jax.__version__, "matmul_gflops": peak, "repeats": args.repeats}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
