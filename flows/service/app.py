"""The HTTP API of the retrieval service (FastAPI, served by uvicorn): ``POST /retrieve`` and
``GET /health`` over a `RetrievalService`; `serve` binds the port and blocks."""
from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from flows.service.service import RetrievalService, ServiceConfig
from indexstore.errors import GroveError

log = logging.getLogger("grove.service")


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
