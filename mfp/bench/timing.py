"""Timing helpers shared by the benchmarks: methods interleaved call by call, so machine load hits all alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation), ``q`` in [0, 100]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def interleaved(fns: dict[str, Callable[[], object]], calls: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each function, timed round-robin (one call of each per round), after ``warmup`` calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times
