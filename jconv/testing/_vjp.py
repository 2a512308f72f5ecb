"""VJP comparison of a function against a reference, with located errors."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Relative tolerance per dtype; the default absolute tolerance is this times the
# largest magnitude of the expected leaf, so entries that cancel to near zero are
# judged on the scale of their leaf.
_RTOL = {
    jnp.dtype(jnp.float16): 1e-2,
    jnp.dtype(jnp.bfloat16): 5e-2,
    jnp.dtype(jnp.float32): 1e-5,
    jnp.dtype(jnp.float64): 1e-12,
}


def default_tolerance(dtype) -> float:
    """The default relative tolerance for ``dtype`` (float16 ... float64)."""
    return _RTOL.get(jnp.dtype(dtype), 1e-5)


@dataclasses.dataclass(frozen=True)
class ArgReport:
    """The comparison of one leaf (an output, or a gradient w.r.t. one input leaf).

    Attributes:
        what: ``"output"``, ``"vjp"`` or ``"grad-of-grad"``.
        path: e.g. ``params['kernel']``.
        cotangent_seed: the seed of the random cotangent (``None`` for outputs).
        max_abs, max_rel: worst absolute error, and it divided by the leaf's scale.
        ulp: the worst error in units in the last place of the leaf's dtype.
        index, actual, expected: where the worst error is, and the two values.
        ok: within tolerance everywhere.
    """

    what: str
    path: str
    cotangent_seed: int | None
    dtype: str
    max_abs: float
    max_rel: float
    ulp: float
    index: tuple[int, ...] | None
    actual: float | None
    expected: float | None
    rtol: float
    atol: float
    ok: bool

    def describe(self) -> str:
        where = "" if self.index is None else f" at index {self.index}"
        seed = "" if self.cotangent_seed is None else f" (cotangent seed {self.cotangent_seed})"
        return (
            f"{self.what} of {self.path}{seed}: worst element{where}: actual {self.actual!r}, "
            f"expected {self.expected!r}; abs error {self.max_abs:.3g}, rel error "
            f"{self.max_rel:.3g}, {self.ulp:.3g} ULP ({self.dtype}); rtol {self.rtol:g}, "
            f"atol {self.atol:.3g}"
        )


@dataclasses.dataclass(frozen=True)
class VjpReport:
    """All comparisons of one :func:`vjp_report` call."""

    entries: tuple[ArgReport, ...]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries)

    @property
    def failures(self) -> tuple[ArgReport, ...]:
        return tuple(e for e in self.entries if not e.ok)

    def worst(self) -> dict[str, float]:
        """Max relative error per ``what: path`` over all cotangents."""
        out: dict[str, float] = {}
        for e in self.entries:
            key = f"{e.what}: {e.path}"
            out[key] = max(out.get(key, 0.0), e.max_rel)
        return out

    def __str__(self) -> str:
        lines = [f"{'check':<48}{'max abs':>12}{'max rel':>12}{'ULP':>10}  result"]
        rows: dict[str, list[ArgReport]] = {}
        for e in self.entries:
            rows.setdefault(f"{e.what}: {e.path}", []).append(e)
        for key, group in rows.items():
            lines.append(
                f"{key:<48}{max(g.max_abs for g in group):12.3g}"
                f"{max(g.max_rel for g in group):12.3g}{max(g.ulp for g in group):10.3g}  "
                f"{'ok' if all(g.ok for g in group) else 'FAIL'}"
            )
        return "\n".join(lines)


def _arg_names(fn, n: int) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(n):
        if i < len(params) and params[i].kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            names.append(params[i].name)
        else:
            names.append(f"args[{i}]")
    return names


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _random_like(tree, key):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = [
        jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
        if _is_float(x)
        else np.zeros(jnp.shape(x), jax.dtypes.float0)
        for k, x in zip(keys, leaves, strict=False)
    ]
    return jax.tree.unflatten(treedef, out)


def _ulp_size(expected: np.ndarray, dtype) -> np.ndarray:
    info = jnp.finfo(dtype)
    mag = np.maximum(np.abs(expected), float(info.tiny))
    return np.exp2(np.floor(np.log2(mag))) * float(info.eps)


def _compare(what, path, seed, actual, expected, rtol, atol) -> ArgReport:
    dtype = jnp.result_type(expected)
    if not _is_float(expected):
        same = np.array_equal(np.asarray(actual), np.asarray(expected))
        return ArgReport(
            what,
            path,
            seed,
            str(dtype),
            0.0 if same else math.inf,
            0.0 if same else math.inf,
            0.0,
            None,
            None,
            None,
            0.0,
            0.0,
            same,
        )
    a = np.asarray(
        jnp.asarray(actual, jnp.float32) if dtype == jnp.bfloat16 else actual, np.float64
    )
    b = np.asarray(
        jnp.asarray(expected, jnp.float32) if dtype == jnp.bfloat16 else expected, np.float64
    )
    if a.shape != b.shape:
        return ArgReport(
            what,
            f"{path} (shape {a.shape} vs expected {b.shape})",
            seed,
            str(dtype),
            math.inf,
            math.inf,
            math.inf,
            None,
            None,
            None,
            0.0,
            0.0,
            False,
        )
    rtol = default_tolerance(dtype) if rtol is None else rtol
    scale = float(np.max(np.abs(b), initial=0.0))
    atol = rtol * scale if atol is None else atol
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    err = np.where(both_nan | same_inf, 0.0, np.abs(a - b))
    err = np.where(np.isnan(err), np.inf, err)
    bad = err > atol + rtol * np.abs(np.where(np.isfinite(b), b, 0.0))
    if a.size == 0:
        return ArgReport(
            what, path, seed, str(dtype), 0.0, 0.0, 0.0, None, None, None, rtol, atol, True
        )
    flat = int(np.argmax(np.where(bad, err, -1.0))) if bad.any() else int(np.argmax(err))
    index = tuple(int(i) for i in np.unravel_index(flat, a.shape))
    max_abs = float(err.max())
    ulp = float(np.max(err / _ulp_size(b, dtype)))
    return ArgReport(
        what,
        path,
        seed,
        str(dtype),
        max_abs,
        max_abs / scale if scale else max_abs,
        ulp,
        index,
        float(a[index]),
        float(b[index]),
        rtol,
        atol,
        not bool(bad.any()),
    )


def vjp_report(
    fn: Callable,
    ref_fn: Callable,
    *args: Any,
    argnums: int | Sequence[int] | None = None,
    num_cotangents: int = 3,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    order: int = 1,
    jit: bool = True,
) -> VjpReport:
    """Compares outputs, VJPs (and grad-of-grad for ``order=2``) without raising.

    Args:
        fn: the function under test (e.g. with a ``jax.custom_vjp`` rule).
        ref_fn: the reference with the same signature and outputs.
        *args: the arguments (any pytrees).
        argnums: which positional arguments to differentiate (default: all).
        num_cotangents: how many random cotangents to pull back.
        rtol, atol: tolerances; default by dtype (:func:`default_tolerance`), with
            ``atol = rtol * max|expected|`` of each leaf.
        seed: cotangent ``i`` is drawn with ``jax.random.key(seed + i)``.
        order: 1 compares VJPs; 2 also compares the gradient of
            ``<vjp(ct), w>`` for a random ``w`` (grad-of-grad).
        jit: compile the comparisons with ``jax.jit``.

    Returns:
        A :class:`VjpReport`; ``print`` it for a table.
    """
    if order not in (1, 2):
        raise ValueError(f"vjp_report: order must be 1 or 2, got {order!r}")
    if num_cotangents < 1:
        raise ValueError(f"vjp_report: num_cotangents must be >= 1, got {num_cotangents}")
    if argnums is None:
        argnums = tuple(range(len(args)))
    elif isinstance(argnums, int):
        argnums = (argnums,)
    argnums = tuple(argnums)
    names = _arg_names(fn, len(args))

    def pullback(f, ct, *diff):
        def g(*d):
            full = list(args)
            for i, v in zip(argnums, d, strict=True):
                full[i] = v
            return f(*full)

        out, vjp = jax.vjp(g, *diff)
        return out, vjp(ct)

    def second(f, ct, w, *diff):
        def inner(*d):
            grads = pullback(f, ct, *d)[1]
            return sum(
                jnp.vdot(gl, wl.astype(gl.dtype))
                for gl, wl in zip(jax.tree.leaves(grads), jax.tree.leaves(w), strict=True)
                if _is_float(gl)
            )

        return jax.grad(inner, argnums=tuple(range(len(diff))))(*diff)

    wrap = jax.jit if jit else (lambda f: f)
    diff = tuple(args[i] for i in argnums)
    entries: list[ArgReport] = []
    out = wrap(fn)(*args)
    ref_out = wrap(ref_fn)(*args)
    out_paths = jax.tree_util.tree_flatten_with_path(ref_out)[0]
    for (p, b), a in zip(out_paths, jax.tree.leaves(out), strict=False):
        entries.append(
            _compare("output", "output" + jax.tree_util.keystr(p), None, a, b, rtol, atol)
        )
    if len(jax.tree.leaves(out)) != len(out_paths):
        entries.append(
            _compare(
                "output",
                "output (tree structure differs)",
                None,
                np.zeros(1),
                np.ones(1),
                rtol,
                atol,
            )
        )
    paths = [
        (names[i] + jax.tree_util.keystr(p), i)
        for i in argnums
        for p, _ in jax.tree_util.tree_flatten_with_path(args[i])[0]
    ]
    mine_pb = wrap(functools.partial(pullback, fn))
    ref_pb = wrap(functools.partial(pullback, ref_fn))
    mine_2 = wrap(functools.partial(second, fn))
    ref_2 = wrap(functools.partial(second, ref_fn))
    for c in range(num_cotangents):
        key = jax.random.key(seed + c)
        ct = _random_like(ref_out, key)
        grads = jax.tree.leaves(mine_pb(ct, *diff)[1])
        ref_grads = jax.tree.leaves(ref_pb(ct, *diff)[1])
        for (path, _), a, b in zip(paths, grads, ref_grads, strict=True):
            entries.append(_compare("vjp", path, seed + c, a, b, rtol, atol))
        if order == 2:
            w = _random_like(ref_pb(ct, *diff)[1], jax.random.fold_in(key, 1))
            hh = jax.tree.leaves(mine_2(ct, w, *diff))
            ref_hh = jax.tree.leaves(ref_2(ct, w, *diff))
            for (path, _), a, b in zip(paths, hh, ref_hh, strict=True):
                entries.append(_compare("grad-of-grad", path, seed + c, a, b, rtol, atol))
    return VjpReport(tuple(entries))


def assert_vjp_matches(fn: Callable, ref_fn: Callable, *args: Any, **kwargs: Any) -> VjpReport:
    """Like :func:`vjp_report`, but raises ``AssertionError`` naming every failure.

    The message gives, for each failing leaf, the argument path (e.g.
    ``params['kernel']``), the worst element's index and both values, the
    absolute, relative and ULP errors, and the cotangent seed (pass it as
    ``seed=`` with ``num_cotangents=1`` to reproduce just that cotangent).

    Returns:
        The :class:`VjpReport` when everything matches.
    """
    report = vjp_report(fn, ref_fn, *args, **kwargs)
    if not report.ok:
        details = "\n".join("  " + e.describe() for e in report.failures)
        raise AssertionError(
            f"VJP mismatch in {len(report.failures)} of {len(report.entries)} checks:\n"
            f"{details}\n{report}"
        )
    return report
