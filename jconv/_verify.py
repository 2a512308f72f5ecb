"""``jconv verify``: random convolutions, jconv's rules against ``jax.grad`` of lax.

Draws random valid configurations with NumPy (no hypothesis needed at run
time), computes values and gradients of ``sum(conv(x) * ct)`` both ways on the
current backend, and tabulates the worst relative errors per family.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import autodiff
from ._conv import conv_forward
from ._spec import LAYOUTS
from .testing._config import ConvConfig, sample_config
from .testing._vjp import default_tolerance


def conv_family(config: ConvConfig) -> tuple[str, ...]:
    """``(rank, layout, grouping, geometry)`` of a convolution, for the table."""
    nd = len(config.window)
    if config.groups == 1:
        grouping = "dense"
    elif config.groups == config.c_in:
        grouping = "depthwise"
    else:
        grouping = "grouped"
    strided = any(s > 1 for s in np.atleast_1d(config.stride))
    dilated = any(d > 1 for d in np.atleast_1d(config.dilation))
    geometry = {
        (False, False): "plain",
        (True, False): "strided",
        (False, True): "dilated",
        (True, True): "strided+dilated",
    }
    return (f"{nd}-D", config.layout, grouping, geometry[strided, dilated])


def sample_case(rng: np.random.Generator) -> ConvConfig:
    """One random convolution, from the sampler behind the hypothesis strategy."""
    return sample_config(
        lambda lo, hi: int(rng.integers(lo, hi + 1)),
        lambda seq: seq[int(rng.integers(len(seq)))],
    )


def _relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(expected), initial=0.0)) or 1.0
    both_nan = np.isnan(actual) & np.isnan(expected)
    diff = np.where(both_nan, 0.0, np.abs(actual - expected))
    return float(np.max(diff, initial=0.0)) / scale


def check_case(case: ConvConfig, dtype: str, seed: int) -> dict[str, float]:
    """Max relative error of ``z``, ``dx``, ``dkernel`` (and ``dbias``) vs lax autodiff."""
    params, x, ct = case.arrays(dtype, seed)

    def grads(forward, **extra):
        def loss(p, x):
            z = forward(p, x, **case.kwargs, precision="highest", **extra)
            return jnp.sum(z * ct), z

        fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        (_, z), (gp, gx) = jax.jit(fn)(params, x)
        out = {"z": z, "dx": gx, "dkernel": gp["kernel"]}
        if case.bias:
            out["dbias"] = gp["bias"]
        return out

    mine = grads(conv_forward, lowering=case.lowering)
    theirs = grads(autodiff.conv_forward, pre_pad="auto")
    return {name: _relative_error(mine[name], theirs[name]) for name in mine}


@dataclasses.dataclass(frozen=True)
class LayerCase:
    """A random dense or pooling layer, checked with :func:`jconv.testing.vjp_report`."""

    layer: str  # "dense", "max_pool" or "avg_pool"
    x_shape: tuple[int, ...]
    kwargs: dict[str, Any]

    @property
    def family(self) -> tuple[str, ...]:
        if self.layer == "dense":
            bias = "bias" if self.kwargs["bias"] else "no bias"
            return (f"{len(self.x_shape)}-D", "-", "fc layer", bias)
        strided = self.kwargs["stride"] is not None
        return (
            f"{len(self.x_shape) - 2}-D",
            self.kwargs["layout"],
            self.layer,
            "strided" if strided else "stride=window",
        )


def sample_layer_case(rng: np.random.Generator, layer: str) -> LayerCase:
    """Draws a random dense layer or pooling configuration."""
    if layer == "dense":
        lead = tuple(int(n) for n in rng.integers(1, 5, int(rng.integers(1, 3))))
        kwargs = dict(out=int(rng.integers(1, 9)), bias=bool(rng.integers(0, 2)))
        return LayerCase(layer, (*lead, int(rng.integers(1, 9))), kwargs)
    nd = int(rng.integers(1, 4))
    window = tuple(int(w) for w in rng.integers(1, 4, nd))
    stride = None if rng.integers(0, 2) else tuple(int(s) for s in rng.integers(1, 4, nd))
    padding: Any = str(rng.choice(["VALID", "SAME"]))
    if rng.integers(0, 3) == 0:
        padding = tuple((int(rng.integers(0, w)), int(rng.integers(0, w))) for w in window)
    spatial = tuple(int(w + rng.integers(0, 5)) for w in window)
    layout = str(rng.choice(LAYOUTS))
    c, n = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    x_shape = (n, *spatial, c) if layout == "channels_last" else (n, c, *spatial)
    kwargs = dict(window=window, stride=stride, padding=padding, layout=layout)
    return LayerCase(layer, x_shape, kwargs)


def check_layer_case(case: LayerCase, dtype: str, seed: int) -> dict[str, float]:
    """Max relative errors of jconv's layer against its ``jconv.autodiff`` twin."""
    from . import _dense, _pool
    from .testing import vjp_report

    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=case.x_shape), dtype)
    if case.layer == "dense":
        n_in, n_out = case.x_shape[-1], case.kwargs["out"]
        params = {"kernel": jnp.asarray(rng.normal(size=(n_in, n_out)), dtype)}
        if case.kwargs["bias"]:
            params["bias"] = jnp.asarray(rng.normal(size=(n_out,)), dtype)
        report = vjp_report(
            _dense.dense_forward,
            lambda p, x: autodiff.dense_forward(p, x, precision="highest"),
            params,
            x,
            seed=seed,
            num_cotangents=1,
        )
        names = {"x": "dx", "params['kernel']": "dkernel", "params['bias']": "dbias"}
    else:
        kw = case.kwargs
        window = kw["window"]
        ours = getattr(_pool, case.layer)
        theirs = getattr(autodiff, case.layer)
        report = vjp_report(
            lambda x: ours(x, window, **{k: v for k, v in kw.items() if k != "window"}),
            lambda x: theirs(x, window, **{k: v for k, v in kw.items() if k != "window"}),
            x,
            seed=seed,
            num_cotangents=1,
        )
        names = {"x": "dx"}
    errors = {"z": max(e.max_rel for e in report.entries if e.what == "output")}
    for e in report.entries:
        if e.what == "vjp":
            key = names.get(e.path, e.path)
            errors[key] = max(errors.get(key, 0.0), e.max_rel)
    return errors


LAYERS = ("conv", "dense", "max_pool", "avg_pool")


def run(
    configs: int,
    seed: int,
    dtype: str,
    progress: bool = True,
    layers: tuple[str, ...] = ("conv",),
) -> tuple[list[tuple[Any, dict[str, float], bool]], str]:
    """Checks ``configs`` random cases per layer; returns the results and a table."""
    tol = default_tolerance(dtype)
    rng = np.random.default_rng(seed)
    cases: list[Any] = []
    for layer in layers:
        if layer == "conv":
            cases += [sample_case(rng) for _ in range(configs)]
        else:
            cases += [sample_layer_case(rng, layer) for _ in range(configs)]
    iterator = cases
    if progress:
        try:
            from tqdm import tqdm

            iterator = tqdm(cases, desc=f"verify conv {dtype}", unit="config")
        except ImportError:  # tqdm is an optional extra
            pass
    results = []
    for i, case in enumerate(iterator):
        check = check_case if isinstance(case, ConvConfig) else check_layer_case
        errors = check(case, dtype, seed=seed * 100_003 + i)
        results.append((case, errors, all(e <= tol for e in errors.values())))
    return results, _table(results, dtype, tol)


def _table(results, dtype: str, tol: float) -> str:
    rows: dict[tuple, list] = defaultdict(list)
    for case, errors, ok in results:
        family = conv_family(case) if isinstance(case, ConvConfig) else case.family
        rows[family].append((errors, ok))
    header = (
        f"{'rank':<5}{'layout':<16}{'grouping':<11}{'geometry':<17}{'n':>4}"
        f"{'max rel dX':>12}{'max rel dK':>12}{'max rel dB':>12}  result"
    )
    lines = [f"jconv rules vs jax.grad of the lax/jnp layers, {dtype}, tol {tol:g}"]
    lines += [header, "-" * len(header)]
    for family in sorted(rows):
        entries = rows[family]

        def worst(name, entries=entries):
            values = [e[name] for e, _ in entries if name in e]
            return f"{max(values):12.2e}" if values else f"{'-':>12}"

        ok = all(o for _, o in entries)
        lines.append(
            f"{family[0]:<5}{family[1]:<16}{family[2]:<11}{family[3]:<17}{len(entries):>4}"
            f"{worst('dx')}{worst('dkernel')}{worst('dbias')}  {'pass' if ok else 'FAIL'}"
        )
    n_fail = sum(not ok for _, _, ok in results)
    lines.append(f"{len(results) - n_fail} passed, {n_fail} failed")
    return "\n".join(lines)
