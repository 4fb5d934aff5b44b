"""Timing helper shared by the benchmarks: medians of timed calls (the rules of issue 7)."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` (after one untimed call if ``warmup``).
    CUDA callers synchronise inside ``fn``."""
    if warmup:
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
