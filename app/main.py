"""The xrec HTTP service. Read top-down, this file is the path a request takes.

1. Before the first request, the lifespan builds `ServiceState`: it loads the bundle (ONNX sessions, FAISS
   indexes, item table, history snapshot), connects Redis and replays the durable event log.
2. Middleware, outermost first: request metrics (latency per route), then the body-size limit (413).
3. The router for the area (app/api/routes/*): its dependencies check the API key (401/403) and hand the
   handler the current bundle (503 while none is loaded).
4. FastAPI validates the body against its pydantic model: 422 with the field path of each error (415
   for a body not sent as JSON).
5. The handler calls app/services; input that only the bundle can judge (an unknown platform, an item
   without text) comes back as `InputError` and becomes a 422 of the same shape.

Run: `xrec serve --bundle DIR` (uvicorn), or `uvicorn app.main:app` with XREC_* settings.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.main import routers
from app.api.middleware import BodySizeLimit, RequestMetrics
from app.core.config import DEV_ID_SALT, Settings, get_settings
from app.services.errors import InputError
from app.services.state import ServiceState

log = logging.getLogger("xrec")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Light: clients and caches, no I/O. The heavy loading happens in the lifespan below.
    state = ServiceState(settings)

    # 1. startup / shutdown
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.id_salt.get_secret_value() == DEV_ID_SALT:
            log.warning("XREC_ID_SALT is the development default; accounts of real data will not be found")
        if not settings.api_keys:
            log.warning("XREC_API_KEYS is empty: write, batch and admin routes refuse every request")
        await run_in_threadpool(state.start)
        try:
            yield
        finally:
            await run_in_threadpool(state.stop)

    app = FastAPI(title="xrec", summary="Cross-platform recommendations", version="0.1.0", lifespan=lifespan)
    app.state.xrec = state

    # 2. middleware: added innermost first, so the last one added sees the request first
    app.add_middleware(BodySizeLimit, default=settings.max_body_bytes,  # type: ignore[arg-type]
                       by_prefix={"/v1/batch/": settings.max_batch_body_bytes})
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # type: ignore[arg-type]

    # 3. routes (auth and bundle are dependencies of each router)
    for router in routers:
        app.include_router(router)

    # 4.–5. bad input → 422 with field paths; the input itself is not echoed (it may be a 60 MB batch,
    # or hold raw account ids)
    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI parses a body as JSON only under a JSON content type; otherwise the model gets the raw
        # bytes and fails. That is the wrong media type (415), not a wrong field (422).
        if any(e.get("loc") == ("body",) and isinstance(e.get("input"), bytes | bytearray) for e in exc.errors()):
            given = request.headers.get("content-type")
            got = f"got {given[:100]!r}" if given else "the header is missing"
            return _error(415, "unsupported_media_type", ["header", "content-type"],
                          f"the body must be JSON, sent with Content-Type: application/json ({got})")
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # A body JSON could not even parse into Python values (a number of over 4300 digits, bytes that
        # are not UTF-8): FastAPI says a bare 400; it is invalid JSON, a 422 saying why.
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            why = ("a number has too many digits" if "integer string conversion" in str(exc.__cause__)
                   else "not UTF-8 JSON")
            return _error(422, "json_invalid", ["body"], f"JSON decode error: {why}")
        return await http_exception_handler(request, exc)

    @app.exception_handler(InputError)
    async def invalid_for_bundle(request: Request, exc: InputError) -> JSONResponse:
        return _error(422, "value_error", list(exc.loc), exc.msg)

    return app


def _error(status: int, kind: str, loc: list[str | int], msg: str) -> JSONResponse:
    """A 4xx in the shape of FastAPI's 422: `{"detail": [{"type", "loc", "msg"}]}` (`ErrorItem`)."""
    return JSONResponse({"detail": [{"type": kind, "loc": loc, "msg": msg}]}, status_code=status)


app = create_app()
