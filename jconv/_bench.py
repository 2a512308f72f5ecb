"""``jconv bench``: jconv's fwd+bwd against autodiff of lax (and PyTorch), per shape.

For each shape of :data:`SUITE`, times a jit-compiled training step's convolution
work: the value of ``sum(conv(x) * ct)`` and its gradient w.r.t. x, kernel and
bias (``jax.value_and_grad``, so the forward is computed, as in torch's runner)
for jconv (``lowering="auto"`` unless told) and for ``lax.conv_general_dilated``
+ bias under autodiff, interleaved (A B A B ...) after a warm-up, and reports
medians, the ratio jconv / autodiff, forward-only times, compile times, achieved
GFLOP/s next to the machine's float32 matmul GFLOP/s measured in the same
process, the compiled programs' temporary memory, and PyTorch CPU's fwd+bwd
(best of NCHW and channels_last) when torch imports."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import autodiff
from ._conv import conv_forward
from ._geometry import geometry, output_size
from ._timing import medians as _interleaved
from ._timing import samples as _samples
from ._timing import timer as _timer
from .testing._config import ConvConfig


@dataclasses.dataclass(frozen=True)
class Shape:
    """A named benchmark convolution."""

    name: str
    config: ConvConfig

    def forward_flops(self, z_shape) -> float:
        """``2 N prod(out) C_out (C_in / groups) prod(window)``."""
        c = self.config
        out_spatial = z_shape[1:-1] if c.layout == "channels_last" else z_shape[2:]
        return (
            2.0
            * c.batch
            * math.prod(out_spatial)
            * c.c_out
            * (c.c_in // c.groups)
            * math.prod(c.window)
        )


def _shape(name, batch, spatial, c_in, c_out, window, **kwargs) -> Shape:
    kwargs.setdefault("padding", "SAME")
    return Shape(name, ConvConfig(batch, spatial, window, c_in, c_out, **kwargs))


SUITE = [
    _shape("resnet50-3x3-56", 8, (56, 56), 64, 64, (3, 3)),
    _shape("resnet50-1x1-expand", 8, (56, 56), 64, 256, (1, 1), padding="VALID"),
    _shape("resnet50-1x1-stride2", 8, (56, 56), 256, 128, (1, 1), stride=2, padding="VALID"),
    _shape("resnet50-3x3-14", 8, (14, 14), 256, 256, (3, 3)),
    _shape("resnet-stem-7x7-s2", 8, (224, 224), 3, 64, (7, 7), stride=2, padding=3),
    _shape("googlenet-5x5", 8, (28, 28), 192, 32, (5, 5)),
    _shape("mobilenet-dw-28", 8, (28, 28), 256, 256, (3, 3), groups=256),
    _shape("mobilenet-dw-14", 8, (14, 14), 512, 512, (3, 3), groups=512),
    _shape("mobilenet-dw-s2-112", 4, (112, 112), 64, 64, (3, 3), stride=2, groups=64),
    _shape("lenet-5x5", 64, (28, 28), 1, 6, (5, 5), padding="VALID"),
    _shape("1d-dilated-k3", 8, (8000,), 64, 64, (3,), dilation=4),
    _shape("nchw-3x3-28", 8, (28, 28), 128, 128, (3, 3), layout="channels_first"),
]


def _in_blocks(families: list[dict[str, Any]], repeats: int, blocks: int) -> dict[str, float]:
    """Median seconds per runner: each family interleaved within itself, families in turn.

    Runners of one framework alternate run by run; the frameworks take turns in
    ``blocks`` blocks (each after a warm-up round), so that the host's drift
    over the measurement reaches every framework, while no run pays for waking
    a thread pool that fell asleep while the other framework ran.
    """
    pooled: dict[str, list[float]] = {}
    per_block = -(-repeats // blocks)
    for _ in range(blocks):
        for runners in families:
            for name, times in _samples(runners, per_block, warmup=1).items():
                pooled.setdefault(name, []).extend(times)
    return {k: statistics.median(v) for k, v in pooled.items()}


def square_matmul(n: int = 2048):
    """A runner of one jitted ``n``-cube float32 matmul (:func:`_timer`), and its FLOPs."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    return _timer(jax.jit(lambda a, b: a @ b), a, a), 2.0 * n**3


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matmul throughput, measured here."""
    run, flops = square_matmul(n)
    return flops / _interleaved({"mm": run}, repeats)["mm"] / 1e9


def _compile(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - t0
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        temp = None
    return compiled, seconds, temp


def _grad_fn(forward, shape: Shape, chained: bool = False):
    """The loss ``sum(conv(x) * ct)`` and its gradients; ``ct`` is an argument, as in a real step.

    The loss is returned with the gradients: it is linear in ``conv(x)``, so under
    ``jax.grad`` alone XLA drops the forward convolution as dead code and would
    time the backward pass only, where torch's runner (and a training step, whose
    next layer reads ``conv(x)``) computes the forward as well.

    With that loss the three passes are independent (the cotangent is ``ct``),
    and XLA may run them at once. ``chained`` adds ``sum(conv(x) ** 2) / 2``, so
    that the cotangent is ``ct + conv(x)`` and the backward waits for the
    forward, as in a network.
    """

    def loss(p, x, ct):
        z = forward(p, x, **shape.config.kwargs)
        value = jnp.sum(z * ct)
        return value + 0.5 * jnp.sum(z * z) if chained else value

    return jax.value_and_grad(loss, argnums=(0, 1))


def _torch_runners(named: Shape, chained: bool = False) -> dict[str, Any]:
    """PyTorch CPU forward + backward of the shape, one runner per memory format.

    The cotangent is ones, or ``1 + z`` when ``chained`` (see :func:`_grad_fn`).

    Empty when torch is not installed or cannot express the shape (more than 2
    spatial dims). Torch has no SAME for strided convolutions; there it gets
    a symmetric padding that gives SAME's output size and work, as torch
    models write it (MobileNet's stride-2 3x3 over 112 rows: SAME pads
    ``(0, 1)``, torch ``padding=1``; both give 56 rows), or else SAME's pads
    applied with ``F.pad`` inside the timed step (:func:`_torch_padding`).
    """
    try:
        import torch
    except ImportError:
        return {}
    torch.manual_seed(0)
    shape = named.config
    nd = len(shape.spatial)
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}.get(nd)
    if conv is None:
        return {}
    forward = _torch_forward(shape, conv, torch.nn.functional.pad)
    x = torch.randn(shape.batch, shape.c_in, *shape.spatial)
    w = torch.randn(shape.c_out, shape.c_in // shape.groups, *shape.window) * 0.1
    b = torch.randn(shape.c_out)
    formats = {"torch": torch.contiguous_format}
    if nd == 2:
        formats["torch-channels-last"] = torch.channels_last
    runners = {}
    for name, fmt in formats.items():
        xf = x.contiguous(memory_format=fmt).requires_grad_(True)
        wf = w.contiguous(memory_format=fmt).requires_grad_(True)
        bf = b.clone().requires_grad_(True)

        def run(xf=xf, wf=wf, bf=bf):
            xf.grad = wf.grad = bf.grad = None  # fresh gradients, as jax computes them
            t0 = time.perf_counter()
            z = forward(xf, wf, bf)
            z.backward(torch.ones_like(z) + z.detach() if chained else torch.ones_like(z))
            return time.perf_counter() - t0

        runners[name] = run
    return runners


def _torch_forward(shape: ConvConfig, conv, pad_fn):
    """``(x, w, b) -> z``: torch's ``conv`` (``F.conv1d``/``conv2d``) with ``shape``'s
    arguments, the input padded first by ``pad_fn`` (``F.pad``) where the
    padding is asymmetric (:func:`_torch_padding`)."""
    padding = _torch_padding(shape)
    kwargs = dict(stride=shape.stride, dilation=shape.dilation, groups=shape.groups)
    if isinstance(padding, tuple):
        return lambda x, w, b: conv(x, w, b, padding=padding, **kwargs)
    pre = [p for pair in reversed(padding) for p in pair]  # (last dim's lo, hi, ...)
    return lambda x, w, b: conv(pad_fn(x, pre), w, b, padding=0, **kwargs)


def _torch_padding(shape: ConvConfig):
    """``shape``'s padding as torch's ``padding=`` (per-dim ints), or as lax's
    ``[(lo, hi), ...]`` where neither ``lo`` nor ``hi`` on both sides gives the
    same output size. ``lo`` is tried first: with it, the windows are lax's
    (and so are the values)."""
    geom = geometry(
        shape.x_shape, shape.kernel_shape, **shape.kwargs, precision=None, where="bench"
    )
    symmetric = []
    for dim in geom.dims():
        fits = [
            pad
            for pad in (dim.lo, dim.hi)
            if output_size(dim.size, dim.window, dim.stride, dim.dilation, (pad, pad)) == dim.out
        ]
        if not fits:
            return [(d.lo, d.hi) for d in geom.dims()]
        symmetric.append(fits[0])
    return tuple(symmetric)


# Blocks in which jax and torch take turns (see _in_blocks).
BLOCKS = 3


def bench_shape(
    shape: Shape, repeats: int, torch: bool, peak: float, chained: bool = False
) -> dict[str, Any]:
    params, x, ct = shape.config.arrays()
    z_shape = ct.shape
    contenders = {
        "jconv": functools.partial(conv_forward, lowering=shape.config.lowering),
        "autodiff": autodiff.conv_forward,
    }
    result: dict[str, Any] = {"shape": {"name": shape.name, **dataclasses.asdict(shape.config)}}
    grad_runners, fwd_runners = {}, {}
    for name, forward in contenders.items():
        g, compile_s, temp = _compile(_grad_fn(forward, shape, chained), params, x, ct)
        f, _, _ = _compile(
            lambda p, x, forward=forward: forward(p, x, **shape.config.kwargs), params, x
        )
        grad_runners[name] = _timer(g, params, x, ct)
        fwd_runners[name] = _timer(f, params, x)
        result[f"{name}_compile_s"] = compile_s
        result[f"{name}_temp_bytes"] = temp
    # torch (when installed, in its faster memory format) takes turns with the
    # jax contenders in blocks rather than run by run: alternating with torch
    # run by run, each framework's thread pool falls asleep while the other
    # runs and every run pays its wake-up (LeNet: jconv 2.6 ms back to back,
    # 3.3 ms alternating with torch, 4.8 ms after a 20 ms sleep).
    torch_runners = _torch_runners(shape, chained) if torch else {}
    grad = _in_blocks([grad_runners, torch_runners], repeats, BLOCKS)
    fwd = _interleaved(fwd_runners, repeats)
    flops = 3 * shape.forward_flops(z_shape)
    for name in contenders:
        result[f"{name}_fwd_bwd_s"] = grad[name]
        result[f"{name}_fwd_s"] = fwd[name]
        result[f"{name}_gflops"] = flops / grad[name] / 1e9
        result[f"{name}_fraction_of_matmul"] = result[f"{name}_gflops"] / peak
    result["ratio"] = grad["jconv"] / grad["autodiff"]
    result["fwd_ratio"] = fwd["jconv"] / fwd["autodiff"]
    result["torch_fwd_bwd_s"] = min((grad[k] for k in torch_runners), default=None)
    return result


def run(
    names: list[str] | None = None,
    repeats: int = 5,
    torch: bool = True,
    progress=print,
    lowering: str = "auto",
    chained: bool = False,
) -> dict[str, Any]:
    """Runs the suite (or the named shapes), jconv with ``lowering``; returns the report dict.

    ``chained`` times the step whose backward waits for the forward (:func:`_grad_fn`).
    """
    shapes = [
        dataclasses.replace(s, config=dataclasses.replace(s.config, lowering=lowering))
        for s in SUITE
        if names is None or s.name in names
    ]
    peak = matmul_gflops()
    progress(f"float32 matmul: {peak:.1f} GFLOP/s on {jax.devices()[0].device_kind}")
    rows = []
    for shape in shapes:
        row = bench_shape(shape, repeats, torch, peak, chained)
        rows.append(row)
        progress(
            f"{shape.name:<22} jconv {row['jconv_fwd_bwd_s'] * 1e3:9.2f} ms  autodiff "
            f"{row['autodiff_fwd_bwd_s'] * 1e3:9.2f} ms  ratio {row['ratio']:.2f}"
            + (f"  torch {row['torch_fwd_bwd_s'] * 1e3:9.2f} ms" if row["torch_fwd_bwd_s"] else "")
        )
    ratios = [r["ratio"] for r in rows]
    return {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax_version": jax.__version__,
        "lowering": lowering,
        "chained": chained,
        "repeats": repeats,
        "matmul_gflops": peak,
        "geomean_ratio": math.exp(statistics.fmean(math.log(r) for r in ratios)),
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table."""
    lines = [
        f"backend {report['backend']} ({report['device']}), jax {report['jax_version']}, "
        f"jconv lowering {report.get('lowering', 'auto')!r}, "
        + ("chained step (cotangent ct + conv(x)), " if report.get("chained") else "")
        + f"medians of >= {report['repeats']} interleaved runs (fwd+bwd: jax and torch "
        f"in turns of {BLOCKS} blocks); float32 matmul "
        f"{report['matmul_gflops']:.1f} GFLOP/s",
        "",
        "| shape | jconv fwd+bwd ms | autodiff ms | ratio | fwd ratio | torch ms | jconv GFLOP/s "
        "(% matmul) | compile s jconv/autodiff | temp MiB jconv/autodiff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def mib(v):
        return "-" if v is None else f"{v / 2**20:.1f}"

    for r in report["rows"]:
        torch_ms = "-" if r["torch_fwd_bwd_s"] is None else f"{r['torch_fwd_bwd_s'] * 1e3:.2f}"
        lines.append(
            f"| {r['shape']['name']} | {r['jconv_fwd_bwd_s'] * 1e3:.2f} | "
            f"{r['autodiff_fwd_bwd_s'] * 1e3:.2f} | {r['ratio']:.2f} | {r['fwd_ratio']:.2f} | "
            f"{torch_ms} | {r['jconv_gflops']:.1f} ({r['jconv_fraction_of_matmul']:.0%}) | "
            f"{r['jconv_compile_s']:.2f}/{r['autodiff_compile_s']:.2f} | "
            f"{mib(r['jconv_temp_bytes'])}/{mib(r['autodiff_temp_bytes'])} |"
        )
    lines += ["", f"geometric mean ratio jconv / autodiff: {report['geomean_ratio']:.2f}"]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["shape"]["name"] for r in report["rows"]]
    ratios = [r["ratio"] for r in report["rows"]]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    colors = ["tab:green" if r <= 1.05 else "tab:red" for r in ratios]
    ax.bar(range(len(names)), ratios, color=colors)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("fwd+bwd time, jconv / jax.grad(lax)")
    ax.set_title(f"jconv vs autodiff on {report['device']} (geomean {report['geomean_ratio']:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1))
    (out_dir / "bench.md").write_text(markdown(report) + "\n")
    try:
        plot(report, out_dir / "bench.png")
    except ImportError:
        pass
