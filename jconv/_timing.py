"""Timing compiled programs in turns: what ``jconv bench`` and ``lowering="measured"`` share.

A 2-core box drifts and runs in phases, so contenders are never timed one after
the other in blocks but in turns (A B A B ...), after warm-up rounds that pay
for first-call costs (a fresh executable's first run was up to 41 times its
later ones).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def timer(fn, *args) -> Callable[[], float]:
    """A call that runs ``fn(*args)`` once, waits for its result and returns the seconds."""

    def run() -> float:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        return time.perf_counter() - start

    return run


def samples(
    runners: dict[str, Callable[[], float]], repeats: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per run of each runner, alternating A B A B ... after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(warmup + repeats):
        for name, run in runners.items():
            t = run()
            if i >= warmup:
                times[name].append(t)
    return times


def medians(runners: dict[str, Any], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per runner, alternating A B A B ... after ``warmup`` rounds."""
    return {k: statistics.median(v) for k, v in samples(runners, repeats, warmup).items()}
