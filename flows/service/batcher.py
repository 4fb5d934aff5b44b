"""The micro-batcher: concurrent requests are queued and served together by one worker thread
(one search at a time on the device); the event loop only parses and awaits."""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from flows.service.served import Query, ServedIndex, answer_batch


class MicroBatcher:
    """Queue of `Query`s served in micro-batches by one worker thread (see module docstring)."""

    def __init__(self, current: Callable[[], ServedIndex], max_batch: int, max_wait_ms: float):
        self._current = current  # callable -> the ServedIndex to use for the next batch
        self._max_batch, self._max_wait_ms = max_batch, max_wait_ms
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="grove-batcher", daemon=True)
        self.batches = 0
        self.histories = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker after the batch in hand; queries still queued fail (never hang)."""
        self._queue.put(None)
        self._thread.join(timeout=10)
        while True:
            try:
                q = self._queue.get_nowait()
            except queue.Empty:
                return
            if q is not None and not q.future.done():
                q.future.set_exception(RuntimeError("the retrieval service is stopping"))

    def submit(self, query: Query) -> Future:
        self._queue.put(query)
        return query.future

    def _collect(self, first: Query) -> tuple[list[Query], bool]:
        batch, n = [first], len(first.histories)
        deadline = time.monotonic() + self._max_wait_ms / 1000.0
        while n < self._max_batch:
            try:
                nxt = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0)) \
                    if deadline > time.monotonic() else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
            n += len(nxt.histories)
        return batch, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            served = self._current()  # one version for the whole batch
            try:
                answers = answer_batch(served, batch)
            except Exception as exc:  # the service keeps serving; these requests get the error
                for q in batch:
                    q.future.set_exception(exc)
            else:
                for q, a in zip(batch, answers):
                    q.future.set_result(a)
            self.batches += 1
            self.histories += sum(len(q.histories) for q in batch)
            if stop:
                return
