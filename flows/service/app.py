"""The HTTP API of the retrieval service (FastAPI, served by uvicorn) over a `RetrievalService`:
``POST /retrieve``, ``GET /health`` (small: what is served, polls, swaps), ``GET /quality`` (the
served version's stored evaluation rows), ``GET /metrics`` (Prometheus); `serve` binds the port.
No interactive API docs (they would load their scripts from a CDN, blank offline).

Every 4xx answer has one shape, ``{"error": "<one line>"}``: malformed JSON 400, a missing or
wrong bearer token 401 (when ``GROVE_API_TOKEN`` is set; /health stays open), unknown route
404, wrong method 405, a body over ``max_body_bytes`` or a request whose cost (histories x beam
x k) is over ``max_cost`` or that holds more than ``max_request`` histories 413, wrong field
types or values 422.
"""

from __future__ import annotations

import hmac
import logging
import os
import time

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from grove.flows.service.metrics import ServiceMetrics
from grove.flows.service.service import RetrievalService, ServiceConfig
from grove.indexstore.errors import GroveError

log = logging.getLogger("grove.service")
TOKEN_ENV = "GROVE_API_TOKEN"
OPEN_ROUTES = ("/health",)


class RetrieveRequest(BaseModel):
    """Body of POST /retrieve (strict types: 2.5 is not a k, "10" is not a k)."""

    model_config = ConfigDict(extra="forbid")
    histories: list[list[StrictStr | StrictInt]]
    k: StrictInt = 10
    beam: StrictInt = 50
    exclude_seen: StrictBool = False


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before it is read whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_error(
                send, 413, f"the request body holds {int(length):,} bytes, more than the limit of {self.limit:,}"
            )
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        try:
            return await self.app(scope, counted, send)
        except _TooLarge:
            return await _send_error(send, 413, f"the request body is more than the limit of {self.limit:,} bytes")


class _TooLarge(Exception):
    pass


async def _send_error(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(service: RetrievalService, watch: bool = True, token: str | None = None):
    """The FastAPI app over ``service``; its lifespan starts/stops the batcher and watcher.
    ``token`` (default ``$GROVE_API_TOKEN``): the bearer token every route but /health needs."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    cfg, metrics = service.config, ServiceMetrics()
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None

    @asynccontextmanager
    async def lifespan(app):
        service.start(watch=watch)
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="grove retrieval", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message})

    @app.middleware("http")
    async def guard_and_count(request: Request, call_next):
        start, route = time.perf_counter(), request.url.path
        if token and route not in OPEN_ROUTES and not _bearer_ok(request, token):
            response = error(401, "missing or wrong bearer token (Authorization: Bearer <GROVE_API_TOKEN>)")
        else:
            response = await call_next(request)
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        return error(*_validation_message(exc.errors()))

    @app.post("/retrieve")
    async def retrieve(req: RetrieveRequest):
        refused = _refusal(req, cfg)
        if refused:
            return error(*refused)
        hist = [[str(x) for x in h] for h in req.histories]
        try:
            ans = await service.retrieve(hist, req.k, req.beam, req.exclude_seen)
        except GroveError as exc:
            return error(422, str(exc))
        except Exception as exc:  # keep serving; report the failure of this request only
            log.exception("retrieve failed")
            return JSONResponse(status_code=500, content={"error": f"retrieval failed: {type(exc).__name__}: {exc}"})
        return {"version": ans.version, "items": ans.items, "scores": ans.scores, "unknown": ans.unknown}

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/quality")
    async def quality():
        return service.quality()

    @app.get("/metrics")
    async def prometheus():
        metrics.version.labels(service.index, service.alias).set(service.current.version)
        metrics.observe_batches(service.batcher)
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app


def _bearer_ok(request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    return given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip(), token)


def _validation_message(errs: list) -> tuple[int, str]:
    if any(e.get("type") == "json_invalid" for e in errs):
        ctx = errs[0].get("ctx", {})
        return 400, f"malformed JSON body: {ctx.get('error', 'cannot parse')}"
    first = errs[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    value = first.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return 422, f"{where or 'body'}: {first.get('msg')} (got {shown})"


def _refusal(req: RetrieveRequest, cfg: ServiceConfig) -> tuple[int, str] | None:
    """(status, message) of a request over the service's bounds, or None."""
    if not 0 < req.k <= cfg.max_k:
        return 422, f"k must be an integer in [1, {cfg.max_k}], got {req.k}"
    if not 0 < req.beam <= cfg.max_beam:
        return 422, f"beam must be an integer in [1, {cfg.max_beam}], got {req.beam}"
    if len(req.histories) > cfg.max_request:
        return 413, f"a request holds at most {cfg.max_request} histories, got {len(req.histories)}"
    cost = len(req.histories) * req.beam * req.k
    if cost > cfg.max_cost:
        return 413, (
            f"the request's cost (histories x beam x k = {cost:,}) is over the service's "
            f"budget of {cfg.max_cost:,}: split it or lower beam or k"
        )
    return None


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


def serve(
    url: str | None,
    index: str,
    alias: str = "production",
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    config: ServiceConfig | None = None,
    log_level: str = "warning",
    access_log: bool = False,
) -> None:
    """Load the alias's version, then serve HTTP until interrupted (blocks)."""
    import uvicorn

    check_port_free(host, port)
    service = RetrievalService.open(url, index, alias, device, config)  # errors before binding
    print(
        f"serving index {index!r} alias {alias!r} (version {service.current.version}, "
        f"{service.current.retriever.device}) on http://{host}:{port}"
        + (" (bearer token required)" if os.environ.get(TOKEN_ENV) else ""),
        flush=True,
    )
    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, access_log=access_log)
