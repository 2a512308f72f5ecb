"""``lowering="measured"``: auto's choice or XLA's convolution, whichever ran faster here.

``"auto"``'s rules were measured on a few 2-core boxes, and they do not all
carry over: on an AVX-512 Xeon, a batch-1 3x3 over 56x56x64 lost in all three
passes to XLA's convolution (1.61 vs 2.02, 1.54 vs 1.84, 2.07 vs 3.36 ms),
where the AMD boxes it was tuned on had it win (``experiments/README.md``,
session 15). Like ``torch.backends.cudnn.benchmark``, this lowering times the
candidates on the machine that runs them and keeps the faster.

For each correlation (shapes, dtypes, :class:`Correlation`, precision), the
first trace compiles ``"auto"``'s program and XLA's convolution on random
operands of the same shapes and dtypes, runs them in turns (A B A B ...)
after a warm-up (5 to 25 times each, about a quarter of a second), and keeps
``"auto"`` unless XLA's median is 5 % smaller. The choice is kept for the
process: later traces of the same correlation reuse
it, and :func:`measured_choices` lists them. Where ``"auto"`` already is
XLA's convolution (their jaxprs are equal) nothing is timed.

Only the CPU is measured: on another default backend (GPU, TPU), ``"auto"``
keeps XLA's convolutions already, and this lowering is ``"auto"``. Each
pass is timed alone, not inside the training step where XLA may overlap it
with others, and memory is not weighed: a pass that goes to XLA holds what
autodiff's would.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import numpy as np

from ._correlation import Correlation

CANDIDATES = ("auto", "xla")
# Timed runs per candidate after one warm-up run each: at least ROUNDS, more
# for quick correlations, as many as fit TIME_BUDGET seconds (by the warm-ups),
# up to MAX_ROUNDS. A 2-core box runs in phases: the strided 1x1 forward of
# ``experiments/README.md`` (session 15) took 3.6 ms instead of 2.2 in 2-7 of
# 41 runs, and in 2 of 3 processes the median of 5 picked XLA's 3.4 ms.
ROUNDS = 5
MAX_ROUNDS = 25
TIME_BUDGET = 0.25
# A candidate whose warm-up took this many times the other's is not timed further.
CLEAR_MARGIN = 3.0
# XLA's convolution replaces auto's choice only when its median is this much
# smaller: closer medians are noise on a 2-core box (identical programs compiled
# twice differed by up to 20 % there), and would make the choice differ from one
# process to the next.
MARGIN = 0.05

_CHOICES: dict[tuple, str] = {}


def measured_choices() -> dict[str, str]:
    """The lowerings ``lowering="measured"`` chose in this process, by correlation.

    Returns:
        ``{description: "auto" | "xla"}``, one entry per correlation measured,
        described by its operand shapes and dtypes and its correlation.
    """
    return {_describe(key): choice for key, choice in _CHOICES.items()}


def clear_measured_choices() -> None:
    """Forgets every choice: the next trace of each correlation times it again."""
    _CHOICES.clear()


def choose(lhs, rhs, corr: Correlation, precision, correlate) -> str:
    """``"auto"`` or ``"xla"`` for this correlation: the faster on this machine.

    Args:
        lhs, rhs: the operands (tracers or arrays; only shapes and dtypes are used).
        corr: the correlation.
        precision: passed to both candidates.
        correlate: ``_correlate.correlate`` (passed in to avoid an import cycle).
    """
    if jax.default_backend() != "cpu":
        return "auto"
    key = (lhs.shape, str(lhs.dtype), rhs.shape, str(rhs.dtype), corr, _hashable(precision))
    if key not in _CHOICES:
        # Outside any trace being built: the candidates run on concrete arrays.
        with jax.ensure_compile_time_eval():
            _CHOICES[key] = _measure(lhs, rhs, corr, precision, correlate)
    return _CHOICES[key]


def _measure(lhs, rhs, corr: Correlation, precision, correlate) -> str:
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (lhs, rhs)]
    programs = {
        c: functools.partial(correlate, corr=corr, precision=precision, lowering=c)
        for c in CANDIDATES
    }
    jaxprs = {c: str(jax.make_jaxpr(f)(*specs)) for c, f in programs.items()}
    if jaxprs["auto"] == jaxprs["xla"]:
        return "auto"  # the same program: nothing to choose
    operands = [_random(s, i) for i, s in enumerate(specs)]
    compiled = {c: jax.jit(f).lower(*specs).compile() for c, f in programs.items()}
    return fastest({c: functools.partial(fn, *operands) for c, fn in compiled.items()})


def fastest(runs: dict[str, callable]) -> str:
    """The key of ``runs`` (zero-argument calls) with the smallest median time.

    Every call runs once to warm up; if one warm-up took :data:`CLEAR_MARGIN`
    times another's, the quicker wins without more runs. Otherwise each runs
    :data:`ROUNDS` to :data:`MAX_ROUNDS` more times (as many as the warm-ups
    say fit :data:`TIME_BUDGET`), in turns, and the first key (``"auto"``)
    keeps its place unless another's median is :data:`MARGIN` smaller.
    """
    warm = {name: _seconds(run) for name, run in runs.items()}
    quickest = min(warm.values())
    contenders = {n: r for n, r in runs.items() if warm[n] < CLEAR_MARGIN * quickest}
    if len(contenders) == 1:
        return next(iter(contenders))
    times = {name: [] for name in contenders}
    each = sum(warm[name] for name in contenders)
    rounds = min(MAX_ROUNDS, max(ROUNDS, int(TIME_BUDGET / max(each, 1e-9))))
    for _ in range(rounds):
        for name, run in contenders.items():
            times[name].append(_seconds(run))
    medians = {name: statistics.median(t) for name, t in times.items()}
    best = min(medians, key=medians.get)
    first = next(iter(runs))
    if first in medians and medians[best] > (1 - MARGIN) * medians[first]:
        return first
    return best


def _seconds(run) -> float:
    start = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - start


def _random(spec, seed: int):
    values = np.random.default_rng(seed).standard_normal(spec.shape)
    return jax.device_put(values.astype(spec.dtype))


def _hashable(precision):
    return tuple(precision) if isinstance(precision, list) else precision


def _describe(key) -> str:
    lhs, lhs_dtype, rhs, rhs_dtype, corr, precision = key
    fields = ", ".join(f"{k}={v}" for k, v in vars(corr).items())
    text = f"lhs {lhs_dtype}{list(lhs)} rhs {rhs_dtype}{list(rhs)} ({fields})"
    return text if precision is None else f"{text} precision={precision}"
