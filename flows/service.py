"""The retrieval service: ``grove serve INDEX --alias production``.

An HTTP JSON API (FastAPI, served by uvicorn):

* ``POST /retrieve`` ``{"histories": [[raw item ids, oldest first], ...], "k": 10, "beam": 50,
  "exclude_seen": false}`` -> ``{"version": V, "items": [[raw ids]], "scores": [[...]],
  "unknown": n}``. Lists are best first and trimmed of padding (a list is shorter than k only
  when the index found fewer items). Ids may be JSON strings or integers (compared as strings).
* ``GET /health`` -> the version served, its stored metrics, load time, alias, device, swaps.

Unknown item ids (choice): ignored and counted in ``unknown``, never an error -- a history whose
ids are all unknown is served like an empty one (the model's prior), because after a promotion to
a version built on a new data snapshot some ids legitimately vanish and a client should not
start failing. Bad requests get a JSON ``{"error": "<one line>"}``: malformed JSON body 400,
wrong field types / k or beam <= 0 or above the configured caps 422, more histories than
``max_request`` 413. The service keeps serving after any of them.

Three parts, one per class below (`ServedIndex`, `MicroBatcher`, `AliasWatcher`):

* the served version is one immutable `ServedIndex`; it is replaced by a single reference
  assignment, so a request sees either the old or the new version, never a half-loaded one;
* concurrent requests are queued and served together: a worker thread takes the first request,
  waits up to ``max_wait_ms`` for more (up to ``max_batch`` histories), maps every raw id of the
  batch in one vectorised lookup and runs one `Retriever.retrieve` per (beam, exclude_seen)
  group, on the version's device (CPU or CUDA). One worker means one search at a time on the
  device; the event loop only parses and awaits;
* a watcher thread polls the alias every ``poll_seconds`` on a short read-only connection
  (`Store.query`); the store is never held open while serving. When the alias moved it loads
  the new version in the background (short read connections) and swaps. A DuckDB lock held by a
  writer (`StoreBusyError`, "Conflicting lock") or any failed poll backs off exponentially
  (to ``max_backoff``) and tries again; the old version keeps serving meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from indexstore.errors import GroveError
from indexstore.store import Store
from models.retriever import MAX_BATCH, Retriever

log = logging.getLogger("grove.service")


@dataclass(frozen=True)
class ServiceConfig:
    """Knobs of the service (query-time; the index's build knobs live in its version)."""

    max_batch: int = 256  # histories per micro-batch (one retrieve call per group)
    max_wait_ms: float = 2.0  # how long the batcher waits for more requests
    max_request: int = 1024  # histories per request; more -> 413
    max_k: int = 1000
    max_beam: int = 4096
    poll_seconds: float = 2.0  # alias watcher period
    max_backoff: float = 30.0  # longest wait after failed polls

    def __post_init__(self):
        if min(self.max_batch, self.max_request, self.max_k, self.max_beam) <= 0:
            raise GroveError("max_batch, max_request, max_k and max_beam must be positive")
        if self.max_wait_ms < 0 or self.poll_seconds <= 0 or self.max_backoff <= 0:
            raise GroveError("max_wait_ms must be >= 0, poll_seconds and max_backoff > 0")


# ---------------------------------------------------------------------------- served index
@dataclass(frozen=True, eq=False)
class ServedIndex:
    """One loaded version, immutable: retriever + raw-id lookup + what /health reports.

    sorted_raw : (n_items,) str -- raw ids sorted; ``order[j]`` is the dense id of sorted_raw[j].
    """

    retriever: Retriever
    sorted_raw: np.ndarray
    order: np.ndarray
    metrics: list[dict]
    loaded_at: float

    @property
    def version(self) -> int:
        return int(self.retriever.version.id)

    def dense_ids(self, raw: np.ndarray) -> np.ndarray:
        """(n,) str raw ids -> (n,) int64 dense ids, -1 where unknown (one searchsorted)."""
        if raw.size == 0 or self.sorted_raw.size == 0:
            return np.full(raw.shape[0], -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.sorted_raw, raw), self.sorted_raw.size - 1)
        hit = self.sorted_raw[pos] == raw
        return np.where(hit, self.order[pos], -1).astype(np.int64)


def load_served(url: str, index: str, version: int | None = None, alias: str | None = None,
                device: str = "auto") -> ServedIndex:
    """Load a version (explicit, or the one ``alias`` points to) with its metrics."""
    store = Store.open(url, check=False)
    retriever = Retriever.load(store, index, version=version, alias=alias, device=device)
    metrics = [_metric_dict(r) for r in store.metrics(retriever.version.id)]
    raw = np.asarray(retriever.item_raw, dtype=str)
    order = np.argsort(raw, kind="stable")
    return ServedIndex(retriever, raw[order], order.astype(np.int64), metrics, time.time())


def _metric_dict(r) -> dict:
    return {"role": r.role, "name": r.name, "k": r.k, "beam": r.beam, "filtered": bool(r.filtered),
            "value": float(r.value)}


# ------------------------------------------------------------------------------ batching
@dataclass(eq=False)
class Query:
    """One request in the queue. histories: list of raw-id lists (strings)."""

    histories: list[list[str]]
    k: int
    beam: int
    exclude_seen: bool
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Answer:
    version: int
    items: list[list[str]]
    scores: list[list[float]]
    unknown: int


def answer_batch(served: ServedIndex, batch: list[Query]) -> list[Answer]:
    """Serve several queries on one version: one id lookup, one retrieve per (beam, seen) group."""
    lengths = [len(h) for q in batch for h in q.histories]  # per history
    flat = np.asarray([str(x) for q in batch for h in q.histories for x in h], dtype=str)
    dense = served.dense_ids(flat)  # (total ids,)
    ends = np.cumsum(lengths)
    rows = np.split(dense, ends[:-1]) if lengths else []  # one array per history
    per_query_rows, start = [], 0
    for q in batch:
        per_query_rows.append(rows[start:start + len(q.histories)])
        start += len(q.histories)
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(batch)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, q in enumerate(batch):
        groups.setdefault((q.beam, q.exclude_seen), []).append(i)
    for (beam, seen), members in groups.items():
        k = max(batch[i].k for i in members)
        hist = [r[r >= 0].tolist() for i in members for r in per_query_rows[i]]
        scores, items = _retrieve_chunked(served.retriever, hist, k, beam, seen)
        at = 0
        for i in members:
            n = len(batch[i].histories)
            results[i] = (scores[at:at + n, :batch[i].k], items[at:at + n, :batch[i].k])
            at += n
    out = []
    for q, qrows, (scores, items) in zip(batch, per_query_rows, results):
        unknown = int(sum(int((r < 0).sum()) for r in qrows))
        out.append(Answer(served.version, *_to_json_lists(served, scores, items), unknown))
    return out


def _retrieve_chunked(retriever: Retriever, hist: list, k: int, beam: int, seen: bool):
    """`Retriever.retrieve` in chunks of at most its MAX_BATCH histories -> (B, k) arrays."""
    parts = [retriever.retrieve(hist[lo:lo + MAX_BATCH], k, beam, exclude_seen=seen)
             for lo in range(0, len(hist), MAX_BATCH)]
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _to_json_lists(served: ServedIndex, scores: np.ndarray, items: np.ndarray):
    """(B, k) arrays -> lists of raw ids and float scores, padding (-1 / -inf) trimmed."""
    raw = served.retriever.item_raw
    valid = items >= 0  # (B, k); padding is always at the end of a row
    names = np.where(valid, raw[np.maximum(items, 0)], "")
    counts = valid.sum(axis=1).tolist()
    return ([row[:c] for row, c in zip(names.tolist(), counts)],
            [row[:c] for row, c in zip(scores.astype(float).tolist(), counts)])


class MicroBatcher:
    """Queue of `Query`s served in micro-batches by one worker thread (see module docstring)."""

    def __init__(self, current, config: ServiceConfig):
        self._current = current  # callable -> the ServedIndex to use for the next batch
        self._config = config
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
        deadline = time.monotonic() + self._config.max_wait_ms / 1000.0
        while n < self._config.max_batch:
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


# ------------------------------------------------------------------------------ watching
def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class AliasWatcher:
    """Polls ``(index, alias)`` and swaps in the version it points to when it moved."""

    def __init__(self, service: "RetrievalService"):
        self._service = service
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
        """The version the alias points to now (a short read-only connection), None if unset."""
        s = self._service
        _, rows = Store.open(s.url, check=False).query(
            f"SELECT version_id FROM aliases WHERE index_name = {_sql_str(s.index)} "
            f"AND alias = {_sql_str(s.alias)}")
        return int(rows[0][0]) if rows else None

    def poll_once(self) -> bool:
        """One poll; returns True when a new version was loaded and swapped in."""
        target = self.read_alias()
        self.last_poll = time.time()
        if target is None or target == self._service.current.version:
            return False
        served = load_served(self._service.url, self._service.index, version=target,
                             device=self._service.device)
        self._service.swap(served)
        return True

    def _run(self) -> None:
        cfg = self._service.config
        delay = cfg.poll_seconds
        while not self._stop.wait(delay):
            try:
                self.poll_once()
                self.last_error, self.failures, delay = None, 0, cfg.poll_seconds
            except Exception as exc:  # lock held by a writer, store gone, load failed: back off
                self.failures += 1
                self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                delay = min(cfg.poll_seconds * 2 ** self.failures, cfg.max_backoff)
                delay *= 0.75 + 0.5 * np.random.default_rng().random()  # jitter: no lockstep
                log.warning("alias poll failed (%s); retrying in %.1f s", self.last_error, delay)


# ------------------------------------------------------------------------------ service
class RetrievalService:
    """The served index, its batcher and its alias watcher. `open` loads before any port binds."""

    def __init__(self, url: str, index: str, alias: str, device: str, served: ServedIndex,
                 config: ServiceConfig):
        self.url, self.index, self.alias, self.device = url, index, alias, device
        self.config = config
        self._served = served
        self._swap_lock = threading.Lock()
        self.swaps = 0
        self.batcher = MicroBatcher(lambda: self._served, config)
        self.watcher = AliasWatcher(self)

    @classmethod
    def open(cls, url: str | None, index: str, alias: str = "production", device: str = "auto",
             config: ServiceConfig | None = None) -> "RetrievalService":
        """Resolve and load the alias's version now (NotFoundError for an unknown index/alias)."""
        store = Store.open(url)  # schema checked once here
        store.resolve(index, alias=alias)
        served = load_served(store.url, index, alias=alias, device=device)
        return cls(store.url, index, alias, device, served, config or ServiceConfig())

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

    async def retrieve(self, histories: list[list[str]], k: int, beam: int,
                       exclude_seen: bool) -> Answer:
        return await asyncio.wrap_future(self.batcher.submit(Query(histories, k, beam, exclude_seen)))

    def health(self) -> dict:
        s = self._served
        return {"status": "ok", "index": self.index, "alias": self.alias, "version": s.version,
                "method": s.retriever.version.method, "dataset": s.retriever.version.dataset,
                "device": str(s.retriever.device), "n_items": s.retriever.n_items,
                "load_seconds": round(s.retriever.load_seconds, 4), "loaded_at": s.loaded_at,
                "metrics": s.metrics, "swaps": self.swaps, "batches": self.batcher.batches,
                "last_poll": self.watcher.last_poll, "last_poll_error": self.watcher.last_error}


# ------------------------------------------------------------------------------ HTTP API
class RetrieveRequest(BaseModel):
    """Body of POST /retrieve (strict types: 2.5 is not a k, "10" is not a k)."""

    model_config = ConfigDict(extra="forbid")
    histories: list[list[StrictStr | StrictInt]]
    k: StrictInt = 10
    beam: StrictInt = 50
    exclude_seen: StrictBool = False


def create_app(service: RetrievalService, watch: bool = True):
    """The FastAPI app over ``service``; its lifespan starts/stops the batcher and watcher."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    cfg = service.config

    @asynccontextmanager
    async def lifespan(app):
        service.start(watch=watch)
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="grove retrieval", lifespan=lifespan)

    def error(status: int, message: str, **extra) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message, **extra})

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            ctx = errs[0].get("ctx", {})
            return error(400, f"malformed JSON body: {ctx.get('error', 'cannot parse')}")
        first = errs[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        value = first.get("input")
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        return error(422, f"{where or 'body'}: {first.get('msg')} (got {shown})")

    @app.post("/retrieve")
    async def retrieve(req: RetrieveRequest):
        if not 0 < req.k <= cfg.max_k:
            return error(422, f"k must be an integer in [1, {cfg.max_k}], got {req.k}")
        if not 0 < req.beam <= cfg.max_beam:
            return error(422, f"beam must be an integer in [1, {cfg.max_beam}], got {req.beam}")
        if len(req.histories) > cfg.max_request:
            return error(413, f"a request holds at most {cfg.max_request} histories, "
                              f"got {len(req.histories)}")
        hist = [[str(x) for x in h] for h in req.histories]
        try:
            ans = await service.retrieve(hist, req.k, req.beam, req.exclude_seen)
        except GroveError as exc:
            return error(422, str(exc))
        except Exception as exc:  # keep serving; report the failure of this request only
            log.exception("retrieve failed")
            return error(500, f"retrieval failed: {type(exc).__name__}: {exc}")
        return {"version": ans.version, "items": ans.items, "scores": ans.scores,
                "unknown": ans.unknown}

    @app.get("/health")
    async def health():
        return service.health()

    return app


def check_port_free(host: str, port: int) -> None:
    """GroveError when ``host:port`` cannot be bound (before loading anything heavy)."""
    import socket

    if not 0 < port < 65536:
        raise GroveError(f"--port must be in 1..65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise GroveError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(url: str | None, index: str, alias: str = "production", host: str = "127.0.0.1",
          port: int = 8000, device: str = "auto", config: ServiceConfig | None = None,
          log_level: str = "warning") -> None:
    """Load the alias's version, then serve HTTP until interrupted (blocks)."""
    import uvicorn

    check_port_free(host, port)
    service = RetrievalService.open(url, index, alias, device, config)  # errors before binding
    print(f"serving index {index!r} alias {alias!r} (version {service.current.version}, "
          f"{service.current.retriever.device}) on http://{host}:{port}", flush=True)
    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, access_log=False)
