"""Progress for long work (training, tree learning, evaluation): on a terminal, a live bar on
stderr (rich) with the count, rate, time spent and left; otherwise (a log, a pipe, CI) one line
to stderr at most every ``interval`` seconds, with the rate and an estimate of the time left.
GROVE_PROGRESS=bar|plain chooses instead of the terminal test. Quiet when GROVE_QUIET=1.
Parallel workers set GROVE_PROGRESS_PREFIX (a tag in front of every line, e.g. "[ml-1m-subset
seed 1] ") and GROVE_PROGRESS_INTERVAL (seconds, a floor on ``interval``) so that their
interleaved lines stay readable, and get plain lines. Among data-parallel workers only rank 0
reports."""

from __future__ import annotations

import os
import sys
import time

from grove.models.distributed import is_main


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
        self.bar = None if self.quiet or not _wants_bar(self.prefix) else _LiveBar(desc, total, unit)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close(self.done, self.postfix)
        elif exc[0] is None:
            self._emit(final=True)

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.done += n
        if postfix:
            self.postfix = postfix
        if self.bar is not None:
            self.bar.show(self.done, self.postfix)
            return
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


def _wants_bar(prefix: str) -> bool:
    """A live bar for a person at a terminal; plain lines for logs, pipes and parallel workers."""
    mode = os.environ.get("GROVE_PROGRESS", "auto")
    if mode in ("bar", "plain"):
        return mode == "bar"
    return not prefix and sys.stderr.isatty()


class _LiveBar:
    """One rich progress bar on stderr; redrawn by rich's refresh thread, left on screen at the end."""

    def __init__(self, desc: str, total: int | None, unit: str):
        from rich.console import Console
        from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.unit = unit
        self.start = time.perf_counter()
        self.live = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.fields[of]} {task.fields[unit]}"),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[postfix]}"),
            console=Console(file=sys.stderr),
            refresh_per_second=4,
        )
        of = f"{total:,}" if total else "?"
        self.task = self.live.add_task(desc, total=total or None, of=of, unit=unit, rate="", postfix="")
        self.live.start()

    def show(self, done: int, postfix: str) -> None:
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        self.live.update(self.task, completed=done, rate=f"{rate:,.1f} {self.unit}/s", postfix=postfix)

    def close(self, done: int, postfix: str) -> None:
        self.show(done, postfix)
        self.live.stop()
