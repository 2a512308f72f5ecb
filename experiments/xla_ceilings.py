"""How fast could any lowering onto XLA:CPU be? Floors on each suite shape's step time.

A floor on a step's time is a ceiling on its speed; the script reports three,
beside jconv's step and torch's (when installed), per suite shape.

Every pass of a dense or grouped convolution is, per group, one im2col matmul
(``P`` the output positions over the batch, ``A = C_in / groups *
prod(window)``, ``B = C_out / groups``):

- forward: ``(P, A) @ (A, B)`` (``x``'s patches times the kernel);
- input gradient: ``(P, B) @ (B, A)`` (the patches' gradient, before the
  col2im sum that scatters it onto ``x``);
- kernel gradient: ``(A, P) @ (P, B)`` (the patches contracted with ``dz``).

The floors:

- **peak floor**: the step's in-bounds multiply-adds (those products whose
  ``x`` entry is not padding: ``3 * 2 * N * C_out * C_in / groups`` times the
  in-bounds (output position, tap) pairs) at XLA:CPU's best float32 matmul
  rate seen anywhere in the run (square matmuls of :data:`PEAK_SIZES`, and
  every pass's own product). Every lowering jconv can choose does at least
  those multiply-adds, Winograd aside. Where torch's whole step runs near or
  past that rate, a lowering onto XLA:CPU's matmuls would need every pass, and
  every copy it makes, at XLA's best matmul rate to keep up.
- **im2col floor**: one program holding each pass's product above as a single
  ``dot_general``, in the fastest of three operand layouts (row-major, either
  operand stored transposed), the operands prebuilt and the three products
  independent of each other, as the passes of ``jconv bench``'s step are (so
  XLA may overlap them). It is not a bound (per-tap matmuls have other
  shapes), but it shows what the passes' matmuls alone cost.
- **streaming floor**, for depthwise layers (one input channel per group),
  which are sums of products bound by memory rather than matmuls: the same
  layer's step with a one-entry window, written as a product (``x[::stride] *
  k + b``) under ``jax.value_and_grad``. Each pass reads its operands and
  writes its result once, fused; the real window adds the taps' shifted reuse
  of ``x`` and ``dz``, which a one-pass kernel serves from cache. It bounds
  lowerings that read and write each operand once per pass; a strided layer's
  one-tap step pays XLA's strided slice and its scatter-shaped gradient, and
  need not be faster than a good 3x3 lowering.

A dense row is timed in two phases, contenders in turns as ``jconv bench``
takes them: first every product in every layout beside a square matmul (the
rates); then jconv's step and the floor's program in turns, with torch's step
in blocks, so that the floor, jconv and torch are compared under the same
conditions. A depthwise row has the second phase only. (A square matmul among
the second phase's turns evicted the small steps' operands from cache between
their runs: dw-28's step 4.9 ms instead of 3.4-3.8, in an unrecorded run.)

    python experiments/xla_ceilings.py [--shapes a,b] [--repeats 11] [--no-torch]
        [--out results/ceilings/...json]
"""

from __future__ import annotations

import argparse
import itertools
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
from jconv._geometry import geometry

# Sizes of the square float32 matmuls that measure XLA:CPU's matmul rate.
PEAK_SIZES = (1024, 2048, 3072)
# Operand layouts tried per pass: (lhs stored transposed, rhs stored transposed).
LAYOUTS = {"NN": (False, False), "NT": (False, True), "TN": (True, False)}
PASSES = ("fwd", "dx", "dk")


def pass_dims(config, z_shape) -> tuple[dict[str, tuple[int, int, int]], int]:
    """Each pass's im2col matmul.

    Args:
        config: a :class:`jconv.testing.ConvConfig`.
        z_shape: the forward output's shape.

    Returns:
        ``({pass: (M, K, N)}, groups)``: per group, the pass is an ``(M, K) @ (K,
        N)`` matmul (module docstring), for ``pass`` in ``fwd``, ``dx``, ``dk``.
    """
    out_spatial = z_shape[1:-1] if config.layout == "channels_last" else z_shape[2:]
    p = config.batch * math.prod(out_spatial)
    a = config.c_in // config.groups * math.prod(config.window)
    b = config.c_out // config.groups
    return {"fwd": (p, a, b), "dx": (p, b, a), "dk": (a, p, b)}, config.groups


def in_bounds_flops(config) -> int:
    """A step's FLOPs on in-bounds entries: ``3 * 2 * N * C_out * C_in / groups * pairs``.

    ``pairs`` counts the (output position, kernel tap) pairs whose ``x`` entry
    lies inside ``x`` (not in its padding), a product over the spatial dims.
    """
    geo = geometry(
        config.x_shape, config.kernel_shape, config.stride, config.padding,
        config.dilation, config.groups, config.layout, None, "xla_ceilings",
    )  # fmt: skip
    pairs = 1
    for dim in geo.dims():
        pairs *= sum(
            0 <= o * dim.stride + k * dim.dilation - dim.lo < dim.size
            for o, k in itertools.product(range(dim.out), range(dim.window))
        )
    per_pass = 2 * config.batch * config.c_out * (config.c_in // config.groups) * pairs
    return 3 * per_pass


def product(m, k, n, groups, layout, rng):
    """A per-group ``(M, K) @ (K, N)`` on random float32 operands stored as ``layout`` says.

    Returns:
        ``(fn, (lhs, rhs))``: ``fn(lhs, rhs)`` of shape ``(groups, M, N)``.
    """
    lhs_t, rhs_t = LAYOUTS[layout]
    lhs = rng.standard_normal((groups, k, m) if lhs_t else (groups, m, k), np.float32)
    rhs = rng.standard_normal((groups, n, k) if rhs_t else (groups, k, n), np.float32)
    dims = (((1 if lhs_t else 2,), (2 if rhs_t else 1,)), ((0,), (0,)))

    def fn(lhs, rhs):
        return lax.dot_general(lhs, rhs, dims, preferred_element_type=jnp.float32)

    return fn, (jnp.asarray(lhs), jnp.asarray(rhs))


def measure_row(shape, repeats: int, torch: bool, square_n: int) -> dict:
    """One suite shape's row: jconv's and torch's steps, the floors' programs (module docstring).

    Returns:
        A JSON-ready dict of seconds and rates; ``peak_floor_s`` is filled in by
        :func:`with_peak_floors` once the run's best matmul rate is known.
    """
    config = shape.config
    params, x, ct = config.arrays()
    dims, groups = pass_dims(config, ct.shape)
    row = {"shape": shape.name, "groups": groups, "dims": dims, "rates": []}
    depthwise = 1 < config.groups == config.c_in
    if depthwise:
        floor = _streaming_step(shape)
    else:
        square, square_flops = _bench.square_matmul(square_n)
        rng = np.random.default_rng(0)
        products = {
            (p, lay): product(*dims[p], groups, lay, rng) for p in PASSES for lay in LAYOUTS
        }
        runners = {
            f"{p}:{lay}": _bench._timer(jax.jit(fn), *args)
            for (p, lay), (fn, args) in products.items()
        }
        first = _bench._in_blocks([{**runners, "square": square}], repeats, _bench.BLOCKS)
        best = {p: min(LAYOUTS, key=lambda lay, p=p: first[f"{p}:{lay}"]) for p in PASSES}
        chosen = [products[p, best[p]] for p in PASSES]

        def step(*args):  # the passes' fastest products, independent, in one program
            return [fn(args[2 * i], args[2 * i + 1]) for i, (fn, _) in enumerate(chosen)]

        floor = _bench._timer(jax.jit(step), *(a for _, args in chosen for a in args))
        row["best_layouts"] = best
        row["pass_s"] = {p: first[f"{p}:{best[p]}"] for p in PASSES}
        rates = [2 * math.prod(dims[p]) * groups / first[f"{p}:{best[p]}"] for p in PASSES]
        row["rates"] = [square_flops / first["square"], *rates]
    grad = jax.jit(_bench._grad_fn(jconv.conv_forward, shape))
    ours = {"jconv": _bench._timer(grad, params, x, ct), "floor": floor}
    theirs = _bench._torch_runners(shape) if torch else {}
    times = _bench._in_blocks([ours, theirs], repeats, _bench.BLOCKS)
    row["streaming_floor_s" if depthwise else "im2col_floor_s"] = times["floor"]
    row["jconv_s"] = times["jconv"]
    row["torch_s"] = min((times[k] for k in theirs), default=None)
    row["flops"] = 3 * shape.forward_flops(ct.shape)
    row["in_bounds_flops"] = in_bounds_flops(config)
    return row


def with_peak_floors(rows: list[dict], square_rate: float) -> float:
    """Sets each dense row's peak floor at the run's best matmul rate, returned (FLOP/s).

    The rate is the best of ``square_rate`` (the square matmuls timed first)
    and the rows' own ``rates``.
    """
    peak = max(square_rate, *(rate for row in rows for rate in row["rates"]))
    for row in rows:
        if "im2col_floor_s" in row:
            row["peak_floor_s"] = row["in_bounds_flops"] / peak
    return peak


def _streaming_step(shape):
    """A runner of the layer's step with a one-entry window, as a product (module docstring)."""
    config = shape.config
    if config.layout != "channels_last" or config.c_out != config.c_in:
        raise ValueError(f"streaming floor: channels_last depthwise layers only, got {config}")
    _, x, _ = config.arrays()
    params = {
        "kernel": jnp.full((config.c_in,), 0.1, x.dtype),
        "bias": jnp.zeros((config.c_in,), x.dtype),
    }
    n = len(config.spatial)
    strides = (config.stride,) * n if isinstance(config.stride, int) else config.stride
    taken = (slice(None), *(slice(None, None, s) for s in strides), slice(None))
    ct = jnp.ones_like(x[taken])

    def forward(p, x, **_):  # (the layer's keyword arguments: the window is one entry)
        return x[taken] * p["kernel"] + p["bias"]

    grad = jax.jit(_bench._grad_fn(forward, shape))
    return _bench._timer(grad, params, x, ct)


def line(row, peak: float) -> str:
    """One row as text: times in ms, rates in GFLOP/s."""

    def ms(s):
        return f"{s * 1e3:7.2f}" if s is not None else "      -"

    text = f"{row['shape']:<22} jconv {ms(row['jconv_s'])}  torch {ms(row['torch_s'])}"
    if "im2col_floor_s" not in row:
        return text + f"  streaming floor {ms(row['streaming_floor_s'])} (depthwise)"
    if row["torch_s"] is not None:
        rate = row["in_bounds_flops"] / row["torch_s"]
        text += f" ({rate / 1e9:.0f} GFLOP/s in bounds, {100 * rate / peak:.0f} % of peak)"
    passes = " ".join(f"{p} {ms(row['pass_s'][p])} {row['best_layouts'][p]}" for p in PASSES)
    return (
        f"{text}  peak floor {ms(row['peak_floor_s'])}"
        f"  im2col floor {ms(row['im2col_floor_s'])} ({passes})"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=None, help="comma-separated subset of the suite")
    parser.add_argument("--repeats", type=int, default=11, help="timed runs per contender")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    args = parser.parse_args()
    names = args.shapes.split(",") if args.shapes else None
    if names and not set(names) <= {s.name for s in SUITE}:
        parser.error(f"--shapes: unknown {sorted(set(names) - {s.name for s in SUITE})}")
    sizes = {n: _bench.matmul_gflops(n, repeats=9) for n in PEAK_SIZES}
    square_n = max(sizes, key=sizes.get)
    print(f"{_cpu_model()}: float32 matmul GFLOP/s by size {sizes}", flush=True)
    rows = []
    for shape in SUITE:
        if names is None or shape.name in names:
            rows.append(measure_row(shape, args.repeats, not args.no_torch, square_n))
            print(f"{shape.name}: measured", flush=True)
    peak = with_peak_floors(rows, max(sizes.values()) * 1e9)
    print(f"best float32 matmul rate in the run: {peak / 1e9:.1f} GFLOP/s")
    for row in rows:
        print(line(row, peak))
    if args.out:
        meta = {
            "cpu": _cpu_model(),
            "jax": jax.__version__,
            "square_matmul_gflops": sizes,
            "peak_gflops": peak / 1e9,
            "repeats": args.repeats,
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
