"""Times each pass of each suite shape (forward, input gradient, kernel gradient)
under two lowerings, interleaved as `jconv bench` does (same helpers), with XLA's
temporary memory: where a lowering wins or loses, pass by pass. `jconv bench`
times the whole gradient instead.

With ``--torch`` (and torch installed), PyTorch CPU's same pass is timed too:
``F.conv1d``/``conv2d`` for the forward, ``torch.nn.grad.conv*d_input`` and
``conv*d_weight`` for the input and kernel gradients, best of NCHW and
channels_last, in a block of its own after jax's runs (as `jconv bench` takes
turns): which pass a torch lead comes from.

    python experiments/lowering_passes.py [--shapes a,b] [--lowerings xla,auto]
        [--passes fwd,dx,dk] [--repeats 11] [--torch] [--out results/passes-cpu.json]
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


def _torch_passes(shape):
    """``{pass: {memory format: runner}}``: torch's three passes of ``shape`` on
    random operands, each runner timing one call (:func:`torch_calls`).

    Empty without torch or where :func:`torch_calls` cannot express the shape.
    """
    try:
        import torch
    except ImportError:
        return {}
    c = shape.config
    torch.manual_seed(0)
    x = torch.randn(c.batch, c.c_in, *c.spatial)
    w = torch.randn(c.c_out, c.c_in // c.groups, *c.window)
    calls = torch_calls(c, x, w, None)
    return {p: {f: _bench._timer(call) for f, call in by.items()} for p, by in calls.items()}


def torch_calls(c, x, w, dz):
    """``{pass: {memory format: call}}``: torch's forward (``F.conv1d``/``conv2d``),
    input gradient (``torch.nn.grad.conv*d_input``) and kernel gradient
    (``conv*d_weight``) of configuration ``c``, for torch tensors ``x``
    ``(N, C_in, *spatial)``, ``w`` ``(C_out, C_in / G, *window)`` and ``dz``
    (random where ``None``), in NCHW and, for 2-D, channels_last.

    Empty for more than 2 spatial dims, or where torch needs an asymmetric
    pre-padding (``_bench._torch_padding``), which its gradient functions
    cannot take. Each call is made once here, and its result's shape checked.
    """
    import torch

    nd = len(c.spatial)
    padding = _bench._torch_padding(c)
    if nd not in (1, 2) or not isinstance(padding, tuple):
        return {}
    grad = torch.nn.grad
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}[nd]
    conv_input = {1: grad.conv1d_input, 2: grad.conv2d_input}[nd]
    conv_weight = {1: grad.conv1d_weight, 2: grad.conv2d_weight}[nd]
    kw = dict(stride=c.stride, padding=padding, dilation=c.dilation, groups=c.groups)
    z_shape = conv(x, w, **kw).shape
    dz = torch.randn(z_shape) if dz is None else dz
    formats = {"nchw": torch.contiguous_format}
    if nd == 2:
        formats["channels-last"] = torch.channels_last
    calls = {"fwd": {}, "dx": {}, "dk": {}}
    for name, fmt in formats.items():
        xf, wf, dzf = (t.contiguous(memory_format=fmt) for t in (x, w, dz))
        by_pass = {
            "fwd": (lambda xf=xf, wf=wf: conv(xf, wf, **kw), z_shape),
            "dx": (lambda wf=wf, dzf=dzf: conv_input(x.shape, wf, dzf, **kw), x.shape),
            "dk": (lambda xf=xf, dzf=dzf: conv_weight(xf, w.shape, dzf, **kw), w.shape),
        }
        for p, (call, want) in by_pass.items():
            got = call().shape
            assert got == want, (c, p, name, got, want)
            calls[p][name] = call
    return calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(s.name for s in SUITE))
    parser.add_argument("--lowerings", default="xla,auto")
    parser.add_argument("--passes", default="fwd,dx,dk")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--torch", action="store_true", help="time torch's passes too")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    lowerings, passes = args.lowerings.split(","), args.passes.split(",")
    rows = []
    for shape in (s for s in SUITE if s.name in args.shapes.split(",")):
        torch_passes = _torch_passes(shape) if args.torch else {}
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
            if torch_passes:
                best = min(_bench._interleaved(torch_passes[name], args.repeats).values())
                row["torch_ms"] = round(best * 1e3, 3)
            rows.append(row)
            print(
                f"{shape.name:22s} {name:3s} "
                + "  ".join(
                    f"{lw} {row[f'{lw}_ms']:8.2f} ms {row[f'{lw}_temp_mib']:6.1f} MiB"
                    for lw in lowerings
                )
                + (f"  torch {row['torch_ms']:8.2f} ms" if "torch_ms" in row else ""),
                flush=True,
            )
    if args.out:
        write_rows(args.out, args.repeats, rows)


def write_rows(path, repeats, rows, **settings):
    """Writes an experiment's rows as JSON, with the machine's jax, backend and CPU
    and the run's ``settings`` (e.g. the lowerings compared)."""
    meta = {"jax": jax.__version__, "backend": jax.default_backend(), "cpu": platform.processor()}
    meta |= settings
    with open(path, "w") as f:
        json.dump({"meta": meta, "repeats": repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
