"""``lowering="measured"``: auto's choice or XLA's convolution, whichever ran faster here.

``"auto"``'s rules were measured on a few 2-core boxes, and they do not all
carry over: on an AVX-512 Xeon, a batch-1 3x3 over 56x56x64 lost in all three
passes to XLA's convolution (1.61 vs 2.02, 1.54 vs 1.84, 2.07 vs 3.36 ms),
where the AMD boxes it was tuned on had it win (``experiments/README.md``,
session 15). Like ``torch.backends.cudnn.benchmark``, this lowering times the
candidates on the machine that runs them and keeps the faster.

For each correlation (shapes, dtypes, :class:`Correlation`, precision), the
first trace compiles ``"auto"``'s program and XLA's convolution on random
operands of the same shapes and dtypes and runs them in turns (A B A B ...):
one untimed round, one timed round (a candidate 3 times slower than the other
in either is out at once, in the untimed one only past 50 ms), then 5 to 25
timed rounds, as many as fit about a quarter of a second. ``"auto"`` is kept
unless XLA's median is 5 % smaller. The choice is kept for the process: later
traces of the same correlation reuse it, and :func:`measured_choices` lists
the choices. Where ``"auto"`` already is XLA's convolution (their jaxprs are
equal) nothing is timed.

What that means for a program:

- Only the CPU is measured. On another default backend (GPU, TPU) ``"auto"``
  keeps XLA's convolutions already, and this lowering is ``"auto"``; so it is
  under ``jax.distributed`` with several processes, where processes timing
  apart could choose, and compile, different programs.
- Tracing runs programs: ``jax.jit(...).lower``, ``jax.eval_shape`` and
  ``jax.export`` of a function with this lowering time the correlations they
  meet, on this host, and an exported program keeps this host's choices.
- What is timed is the correlation as traced: per example under ``vmap``, the
  global (unsharded) shape under sharding.
- Each pass is timed alone, not inside the training step where XLA may
  overlap it with others, and memory is not weighed: a pass that goes to XLA
  holds what autodiff's would.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable

import jax
import numpy as np

from . import _timing
from ._correlation import Correlation

CANDIDATES = ("auto", "xla")
# Timed rounds after the first: at least ROUNDS, more for quick correlations, as
# many as fit TIME_BUDGET seconds (by the first timed round), up to MAX_ROUNDS.
# A 2-core box runs in phases: the strided 1x1 forward of ``experiments/README.md``
# (session 15) took 3.6 ms instead of 2.2 in 2-7 of 41 runs, and in 2 of 3
# processes a median of 5 picked XLA's 3.4 ms.
ROUNDS = 5
MAX_ROUNDS = 25
TIME_BUDGET = 0.25
# A candidate whose first timed run took this many times the other's is out;
# so is one whose untimed run did, where that took over COLD_SECONDS (a fresh
# executable's first call is slow by milliseconds, not by a slow convolution's
# seconds: XLA:CPU's grouped kernel gradient over 32 groups takes 3.3 s a run).
CLEAR_MARGIN = 3.0
COLD_SECONDS = 0.05
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
    """Which lowering computes this correlation under ``lowering="measured"``.

    Args:
        lhs, rhs: the operands (tracers or arrays; only shapes and dtypes are used).
        corr: the correlation.
        precision: passed to both candidates.
        correlate: ``_correlate.correlate`` (passed in to avoid an import cycle).

    Returns:
        ``"auto"`` or ``"xla"``: the faster here, or ``"auto"`` where nothing
        is measured (see the module's docstring).
    """
    if jax.default_backend() != "cpu" or jax.process_count() > 1:
        return "auto"
    key = (lhs.shape, str(lhs.dtype), rhs.shape, str(rhs.dtype), corr, _hashable(precision))
    if key not in _CHOICES:
        # Outside the trace being built (the candidates run on concrete arrays),
        # and compiled even under ``jax.disable_jit()``.
        with jax.ensure_compile_time_eval(), jax.disable_jit(False):
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
    return fastest({c: _timing.timer(fn, *operands) for c, fn in compiled.items()})


def fastest(runners: dict[str, Callable[[], float]]) -> str:
    """The name of the fastest runner (a call that runs once and returns its seconds).

    One untimed round (a runner :data:`CLEAR_MARGIN` times slower than the
    quickest and over :data:`COLD_SECONDS` is out), one timed round (a runner
    :data:`CLEAR_MARGIN` times slower is out), then :data:`ROUNDS` to
    :data:`MAX_ROUNDS` timed rounds (as many as the first says fit
    :data:`TIME_BUDGET`), all in turns. The first runner (``"auto"``) keeps
    its place unless another's median is :data:`MARGIN` smaller.
    """
    contenders, _ = _clearly_slower_out(runners, COLD_SECONDS)  # the untimed round
    if len(contenders) == 1:
        return next(iter(contenders))
    contenders, first = _clearly_slower_out(contenders, 0.0)
    if len(contenders) == 1:
        return next(iter(contenders))
    each = sum(first[name] for name in contenders)
    rounds = min(MAX_ROUNDS, max(ROUNDS, int(TIME_BUDGET / max(each, 1e-9))))
    times = _timing.samples(contenders, rounds, warmup=0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    best = min(medians, key=medians.get)
    default = next(iter(runners))
    if default in medians and medians[best] > (1 - MARGIN) * medians[default]:
        return default
    return best


def _clearly_slower_out(runners, floor: float):
    """One round in turns: the runners that took under :data:`CLEAR_MARGIN` times
    the quickest (or under ``floor`` seconds), and the round's seconds."""
    seconds = {name: t[0] for name, t in _timing.samples(runners, 1, warmup=0).items()}
    bound = max(CLEAR_MARGIN * min(seconds.values()), floor)
    return {n: r for n, r in runners.items() if seconds[n] < bound}, seconds


def _random(spec, seed: int):
    values = np.random.default_rng(seed).standard_normal(spec.shape, dtype=np.float32)
    return jax.device_put(values.astype(spec.dtype))


def _hashable(precision):
    return tuple(precision) if isinstance(precision, list) else precision


def _describe(key) -> str:
    lhs, lhs_dtype, rhs, rhs_dtype, corr, precision = key
    fields = ", ".join(f"{k}={v}" for k, v in vars(corr).items())
    text = f"lhs {lhs_dtype}{list(lhs)} rhs {rhs_dtype}{list(rhs)} ({fields})"
    return text if precision is None else f"{text} precision={precision}"
