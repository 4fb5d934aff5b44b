"""The retrieval service: ``grove serve INDEX --alias production``.

An HTTP JSON API (FastAPI, served by uvicorn):

* ``POST /retrieve`` ``{"histories": [[raw item ids, oldest first], ...], "k": 10, "beam": 50,
  "exclude_seen": false}`` -> ``{"version": V, "items": [[raw ids]], "scores": [[...]],
  "unknown": n}``. Lists are best first and trimmed of padding (a list is shorter than k only
  when the index found fewer items). Ids may be JSON strings or integers (compared as strings).
* ``GET /health`` -> the version served, load time, alias, device, search precision and
  compile mode, swaps; ``GET /quality`` -> the served version's stored metrics.

Unknown item ids (choice): ignored and counted in ``unknown``, never an error -- a history whose
ids are all unknown is served like an empty one (the model's prior), because after a promotion to
a version built on a new data snapshot some ids legitimately vanish and a client should not
start failing. Bad requests get a JSON ``{"error": "<one line>"}``: malformed JSON body 400,
wrong field types / k or beam <= 0 or above the configured caps 422, more histories than
``max_request`` 413. The service keeps serving after any of them.

Parts, one module each: the served version (`grove.flows.service.served`), the micro-batcher
(`grove.flows.service.batcher`), the alias watcher (`grove.flows.service.watcher`), the service that holds
them (`grove.flows.service.service`) and the HTTP app (`grove.flows.service.app`):

* the served version is one immutable `ServedIndex`; it is replaced by a single reference
  assignment, so a request sees either the old or the new version, never a half-loaded one;
* concurrent requests are queued and served together: a worker thread takes the first request,
  waits up to ``max_wait_ms`` for more (up to ``max_batch`` histories), maps every raw id of the
  batch in one vectorised lookup and runs one `Retriever.retrieve` per (beam, exclude_seen)
  group, on the version's device (CPU or CUDA). One worker means one search at a time on the
  device; the event loop only parses and awaits;
* a watcher thread polls the alias every ``poll_seconds`` on a short read-only connection
  (`Store.alias_target`); the store is never held open while serving. When the alias moved it loads
  the new version in the background (short read connections) and swaps. A DuckDB lock held by a
  writer (`StoreBusyError`, "Conflicting lock") or any failed poll backs off exponentially
  (to ``max_backoff``) and tries again; the old version keeps serving meanwhile.
"""

from __future__ import annotations

from grove.flows.service.app import RetrieveRequest, check_port_free, create_app, serve
from grove.flows.service.served import Answer, Query, ServedIndex, answer_batch, load_served
from grove.flows.service.service import RetrievalService, ServiceConfig

__all__ = [
    "Answer",
    "Query",
    "RetrievalService",
    "RetrieveRequest",
    "ServedIndex",
    "ServiceConfig",
    "answer_batch",
    "check_port_free",
    "create_app",
    "load_served",
    "serve",
]
