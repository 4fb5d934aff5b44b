"""The micro-batcher: concurrent requests are queued and served together by one worker thread
(one search at a time on the device); the event loop only parses and awaits.

Fairness: a request is cut into slices of at most ``slice_cost`` (histories x beam x k) and
only one slice of it waits in the queue at a time; when a slice is answered the request's next
slice joins the BACK of the queue. A large request therefore alternates with everything that
arrived meanwhile, and a small request waits for at most one slice of a large one, not for all of
it. The slices of one request are all served by the version its first slice saw (an alias move
in between does not mix versions in one answer).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from grove.flows.service.served import Answer, Query, ServedIndex, answer_batch


@dataclass(eq=False)
class _Job:
    """One request in flight: the slices answered so far and the version serving it."""

    query: Query
    per_slice: int
    next: int = 0
    served: ServedIndex | None = None
    parts: list[Answer] = field(default_factory=list)

    def take(self) -> Query:
        """The next slice as a query of its own (histories next .. next + per_slice)."""
        q = self.query
        lo, self.next = self.next, min(self.next + self.per_slice, len(q.histories))
        return Query(q.histories[lo : self.next], q.k, q.beam, q.exclude_seen)

    @property
    def done(self) -> bool:
        return self.next >= len(self.query.histories)

    def answer(self) -> Answer:
        """The parts joined, in order."""
        version = self.parts[0].version if self.parts else (self.served.version if self.served else -1)
        return Answer(
            version,
            [r for p in self.parts for r in p.items],
            [r for p in self.parts for r in p.scores],
            sum(p.unknown for p in self.parts),
        )


class MicroBatcher:
    """Queue of request slices served in micro-batches by one worker thread (module docstring)."""

    def __init__(
        self, current: Callable[[], ServedIndex], max_batch: int, max_wait_ms: float, slice_cost: int = 1 << 22
    ):
        self._current = current  # callable -> the ServedIndex a new request is served by
        self._max_batch, self._max_wait_ms, self._slice_cost = max_batch, max_wait_ms, slice_cost
        self._queue: queue.Queue = queue.Queue()  # (job, slice query) pairs, or None to stop
        self._thread = threading.Thread(target=self._run, name="grove-batcher", daemon=True)
        self.batches = 0
        self.histories = 0
        self.batch_sizes: list[int] = []  # histories per batch (the last 1,000, for /metrics)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker after the batch in hand; requests still queued fail (never hang)."""
        self._queue.put(None)
        self._thread.join(timeout=10)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and not item[0].query.future.done():
                item[0].query.future.set_exception(RuntimeError("the retrieval service is stopping"))

    def submit(self, query: Query):
        per_slice = max(1, min(self._max_batch, self._slice_cost // max(1, query.k * query.beam)))
        job = _Job(query, per_slice)
        if not query.histories:
            job.served = self._current()
            query.future.set_result(job.answer())
        else:
            self._queue.put((job, job.take()))
        return query.future

    def _collect(self, first) -> tuple[list, bool]:
        batch, n = [first], len(first[1].histories)
        deadline = time.monotonic() + self._max_wait_ms / 1000.0
        while n < self._max_batch:
            try:
                nxt = (
                    self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
                    if deadline > time.monotonic()
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
            n += len(nxt[1].histories)
        return batch, False

    def _serve(self, batch: list) -> None:
        """Answer the slices of ``batch`` (grouped by the version serving their request)."""
        by_version: dict[int, list] = {}
        for job, part in batch:
            job.served = job.served or self._current()
            by_version.setdefault(id(job.served), []).append((job, part))
        for group in by_version.values():
            served = group[0][0].served
            try:
                answers = answer_batch(served, [part for _, part in group])
            except Exception as exc:  # the service keeps serving; these requests get the error
                for job, _ in group:
                    if not job.query.future.done():
                        job.query.future.set_exception(exc)
                    job.next = len(job.query.histories)
                continue
            for (job, _), ans in zip(group, answers):
                job.parts.append(ans)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            self._serve(batch)
            self.batches += 1
            size = sum(len(part.histories) for _, part in batch)
            self.histories += size
            self.batch_sizes = (self.batch_sizes + [size])[-1000:]
            for job, _ in batch:
                if job.query.future.done():
                    continue
                if job.done:
                    job.query.future.set_result(job.answer())
                else:
                    self._queue.put((job, job.take()))  # its next slice waits behind the others
            if stop:
                return
