"""Progress for long work (training, tree learning, evaluation): one line to stderr at most
every ``interval`` seconds, with the rate and an estimate of the time left. Quiet when
GROVE_QUIET=1. Parallel workers set GROVE_PROGRESS_PREFIX (a tag in front of every line, e.g.
"[ml-1m-subset seed 1] ") and GROVE_PROGRESS_INTERVAL (seconds, a floor on ``interval``) so that
their interleaved lines stay readable. Among data-parallel workers only rank 0 reports."""

from __future__ import annotations

import os
import sys
import time

from models.distributed import is_main


class Progress:
    """``with Progress("training", total=n_batches, unit="batch") as p: p.update(1)``."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", interval: float = 2.0):
        floor = float(os.environ.get("GROVE_PROGRESS_INTERVAL", "0") or 0)
        self.desc, self.total, self.unit, self.interval = desc, total, unit, max(interval, floor)
        self.prefix = os.environ.get("GROVE_PROGRESS_PREFIX", "")
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.quiet = os.environ.get("GROVE_QUIET") == "1" or not is_main()  # one line per run
        self.postfix = ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._emit(final=True)

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.done += n
        if postfix:
            self.postfix = postfix
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._emit()

    def _emit(self, final: bool = False) -> None:
        if self.quiet:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            pct = 100.0 * self.done / self.total
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            head = f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%)"
            tail = f"{rate:,.1f} {self.unit}/s, {elapsed:.1f}s" + ("" if final else f", ~{left:.0f}s left")
        else:
            head = f"{self.desc}: {self.done} {self.unit}"
            tail = f"{rate:,.1f} {self.unit}/s, {elapsed:.1f}s"
        extra = f" [{self.postfix}]" if self.postfix else ""
        print(f"{self.prefix}{head} {tail}{extra}", file=sys.stderr, flush=True)
