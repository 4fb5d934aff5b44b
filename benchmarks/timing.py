"""Timing helpers shared by the benchmarks: medians of timed calls (the rules of issue 7), and
the argparse type of their counts (runs, users, sizes)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


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


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse ``type=``: an integer >= ``minimum``. A bad value exits 2 with argparse's message,
    which names the flag (``argument --runs: must be >= 1, got 0``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse
