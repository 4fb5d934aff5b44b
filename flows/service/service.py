"""The retrieval service: the served version, its micro-batcher and its alias watcher, and the
knobs of all three (`ServiceConfig`)."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from grove.flows.service.batcher import MicroBatcher
from grove.flows.service.served import Answer, Query, ServedIndex, load_served
from grove.flows.service.watcher import AliasWatcher, Watched
from grove.indexstore.errors import GroveError
from grove.indexstore.store import Store
from grove.models.precision import check_compile_mode, precision_dtype

log = logging.getLogger("grove.service")


@dataclass(frozen=True)
class ServiceConfig:
    """Knobs of the service (query-time; the index's build knobs live in its version)."""

    max_batch: int = 256  # histories per micro-batch (one retrieve call per group)
    max_wait_ms: float = 2.0  # how long the batcher waits for more requests
    max_request: int = 1024  # histories per request; more -> 413
    max_k: int = 1000
    max_beam: int = 4096
    # a request's cost is histories x beam x k: above max_cost -> 413 (default: the largest
    # request the other caps allow); it is served in slices of at most slice_cost, interleaved
    # with other requests (`grove.flows.service.batcher`)
    max_cost: int = 1024 * 4096 * 1000
    slice_cost: int = 1 << 22
    max_body_bytes: int = 4 << 20  # request body; more -> 413 before parsing
    poll_seconds: float = 2.0  # alias watcher period
    max_backoff: float = 30.0  # longest wait after failed polls
    precision: str | None = None  # compute precision of the searches (`grove.models.precision`; None: fp32)
    compile: str | None = None  # torch.compile 'level' or 'search' (TDM and JTM), None: eager

    def __post_init__(self):
        sizes = (
            self.max_batch,
            self.max_request,
            self.max_k,
            self.max_beam,
            self.max_cost,
            self.slice_cost,
            self.max_body_bytes,
        )
        if self.precision is not None:
            precision_dtype(self.precision)  # GroveError naming the choices
        check_compile_mode(self.compile)
        if min(sizes) <= 0:
            raise GroveError(
                "max_batch, max_request, max_k, max_beam, max_cost, slice_cost and max_body_bytes must be positive"
            )
        if self.max_wait_ms < 0 or self.poll_seconds <= 0 or self.max_backoff <= 0:
            raise GroveError("max_wait_ms must be >= 0, poll_seconds and max_backoff > 0")


class RetrievalService:
    """The served index, its batcher and its alias watcher. `open` loads before any port binds."""

    def __init__(self, url: str, index: str, alias: str, device: str, served: ServedIndex, config: ServiceConfig):
        self.url, self.index, self.alias, self.device = url, index, alias, device
        self.config = config
        self._served = served
        self._swap_lock = threading.Lock()
        self.swaps = 0
        self.batcher = MicroBatcher(lambda: self._served, config.max_batch, config.max_wait_ms, config.slice_cost)
        self.watcher = AliasWatcher(
            Watched(
                url,
                index,
                alias,
                device,
                lambda: self._served,
                self.swap,
                config.poll_seconds,
                config.max_backoff,
                config.precision,
                config.compile,
            )
        )

    @classmethod
    def open(
        cls,
        url: str | None,
        index: str,
        alias: str = "production",
        device: str = "auto",
        config: ServiceConfig | None = None,
    ) -> RetrievalService:
        """Resolve and load the alias's version now (NotFoundError for an unknown index/alias)."""
        store = Store.open(url)  # schema checked once here
        store.resolve(index, alias=alias)
        config = config or ServiceConfig()
        served = load_served(
            store.url, index, alias=alias, device=device, precision=config.precision, compile=config.compile
        )
        return cls(store.url, index, alias, device, served, config)

    @property
    def current(self) -> ServedIndex:
        return self._served

    def swap(self, served: ServedIndex) -> None:
        """Replace the served version (a single reference assignment: atomic for readers)."""
        with self._swap_lock:
            old, self._served = self._served, served
            self.swaps += 1
        log.info("now serving version %d (was %d)", served.version, old.version)

    def start(self, watch: bool = True) -> None:
        self.batcher.start()
        if watch:
            self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop() if self.watcher._thread.is_alive() else None
        self.batcher.stop()

    async def retrieve(self, histories: list[list[str]], k: int, beam: int, exclude_seen: bool) -> Answer:
        return await asyncio.wrap_future(self.batcher.submit(Query(histories, k, beam, exclude_seen)))

    def quality(self) -> dict:
        """The served version and its stored evaluation rows (``GET /quality``)."""
        s = self._served
        return {"index": self.index, "version": s.version, "metrics": s.metrics}

    def health(self) -> dict:
        s = self._served
        return {
            "status": "ok",
            "index": self.index,
            "alias": self.alias,
            "version": s.version,
            "method": s.retriever.version.method,
            "dataset": s.retriever.version.dataset,
            "device": str(s.retriever.device),
            "precision": s.retriever.searcher.precision,
            "compile": self.config.compile,
            "n_items": s.retriever.n_items,
            "load_seconds": round(s.retriever.load_seconds, 4),
            "loaded_at": s.loaded_at,
            "swaps": self.swaps,
            "batches": self.batcher.batches,
            "last_poll": self.watcher.last_poll,
            "last_poll_error": self.watcher.last_error,
        }
