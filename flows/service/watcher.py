"""The alias watcher: a thread polls the alias on a short read-only connection and, when it
moved, loads the new version in the background and swaps it in; failed polls back off."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from grove.flows.service.served import ServedIndex, load_served
from grove.indexstore.store import Store

log = logging.getLogger("grove.service")


@dataclass(frozen=True)
class Watched:
    """What the watcher follows and how it hands a new version over: the store URL, index,
    alias and device; ``current()`` the version served now, ``swap(served)`` replaces it; the
    poll period and the longest back-off (seconds); the precision and compilation of the searches."""

    url: str
    index: str
    alias: str
    device: str
    current: Callable[[], ServedIndex]
    swap: Callable[[ServedIndex], None]
    poll_seconds: float
    max_backoff: float
    precision: str | None = None
    compile: str | None = None


class AliasWatcher:
    """Polls ``(index, alias)`` and swaps in the version it points to when it moved."""

    def __init__(self, watched: Watched):
        self._w = watched
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grove-alias-watcher", daemon=True)
        self.last_poll: float | None = None
        self.last_error: str | None = None
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def read_alias(self) -> int | None:
        """The version the alias points to now (`Store.alias_target`: a short read-only
        connection), None if unset."""
        w = self._w
        return Store.open(w.url, check=False).alias_target(w.index, w.alias)

    def poll_once(self) -> bool:
        """One poll; returns True when a new version was loaded and swapped in."""
        target = self.read_alias()
        self.last_poll = time.time()
        if target is None or target == self._w.current().version:
            return False
        w = self._w
        w.swap(load_served(w.url, w.index, version=target, device=w.device, precision=w.precision, compile=w.compile))
        return True

    def _run(self) -> None:
        cfg = self._w
        delay = cfg.poll_seconds
        while not self._stop.wait(delay):
            try:
                self.poll_once()
                self.last_error, self.failures, delay = None, 0, cfg.poll_seconds
            except Exception as exc:  # lock held by a writer, store gone, load failed: back off
                self.failures += 1
                self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                delay = min(cfg.poll_seconds * 2**self.failures, cfg.max_backoff)
                delay *= 0.75 + 0.5 * np.random.default_rng().random()  # jitter: no lockstep
                log.warning("alias poll failed (%s); retrying in %.1f s", self.last_error, delay)
