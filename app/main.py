"""The xrec HTTP service. Read top-down, this file is the path a request takes.

1. Before the first request, the lifespan builds `ServiceState`: it loads the bundle (ONNX sessions, FAISS
   indexes read from the bundle, item table, history snapshot), connects Redis and replays the durable
   event log.
2. Middleware, outermost first: the request id (in log lines and X-Request-ID), request metrics (latency
   per route), the body read timeout (408), then the body-size limit (413).
3. The router for the area (app/api/routes/*): its dependencies check the API key (401/403) and hand the
   handler the current bundle (503 while none is loaded).
4. FastAPI validates the body against its pydantic model: 422 with the field path of each error (415
   for a body not sent as JSON).
5. The handler calls app/services (/v1/recommend: the ranked-list cache, else the micro-batcher's worker,
   which computes the uncached requests that arrive together as one batch — app/services/batching.py,
   `Recommender.compute_many`); input that only the bundle can judge (an unknown platform, an item
   without text) comes back as `InputError` and becomes a 422 of the same shape. Every error, whatever its
   status, is one `ErrorResponse`: `{"detail": [{"type", "loc", "msg"}]}` (app/api/errors.py).

Run: `xrec serve --bundle DIR` (uvicorn), or `uvicorn app.main:app` with XREC_* settings.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import openapi
from app.api.errors import ApiError, error_content
from app.api.main import routers
from app.api.middleware import BodyReadTimeout, BodySizeLimit, RequestContext, RequestMetrics
from app.api.routes import docs, recommend
from app.core.config import DEV_ID_SALT, Settings, get_settings
from app.core.logs import configure_logging
from app.services.errors import InputError
from app.services.state import ServiceState

log = logging.getLogger("xrec")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
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
        # What start-up allocated (bundle tables, sessions, imports) lives as long as the process: keep it out
        # of every later collection, and collect young objects less often. Full collections walking it
        # were the warm path's p99 (tens of ms at c=16).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*settings.gc_thresholds)
        try:
            yield
        finally:
            await run_in_threadpool(state.stop)

    # docs_url/redoc_url None: FastAPI's pages load Swagger UI and ReDoc from a CDN; app/api/routes/docs.py
    # serves both from local files.
    app = FastAPI(title="xrec", summary="Cross-platform recommendations", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.xrec = state

    # 2. middleware: added innermost first, so the last one added sees the request first
    app.add_middleware(BodySizeLimit, default=settings.max_body_bytes,  # type: ignore[arg-type]
                       by_prefix={"/v1/batch/": settings.max_batch_body_bytes})
    app.add_middleware(BodyReadTimeout, timeout=settings.body_timeout_s)  # type: ignore[arg-type]
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # type: ignore[arg-type]
    app.add_middleware(RequestContext)  # type: ignore[arg-type]

    # 3. routes (auth and bundle are dependencies of each router); the OpenAPI document names the platforms
    # of the bundle being served
    for router in routers:
        app.include_router(router)
    recommend.install_fast_path(app)  # /v1/recommend's valid requests without FastAPI's dependency solving
    app.mount(docs.ASSETS_PATH, docs.assets, name="docs-assets")
    openapi.install(app, lambda: state.bundle.platforms if state.bundle is not None else None)

    # 4.–5. errors, all in one shape (app/api/errors.py); bad input → 422 with field paths; the input itself
    # is not echoed (it may be a 60 MB batch, or hold raw account ids)
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
        # are not UTF-8, arrays or objects nested deeper than the parser's recursion limit): FastAPI says a
        # bare 400, which no route documents; it is invalid JSON, a 422 saying why.
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            why = ("nested too deeply" if isinstance(exc.__cause__, RecursionError)
                   else "a number has too many digits" if "integer string conversion" in str(exc.__cause__)
                   else "not UTF-8 JSON")
            return _error(422, "json_invalid", ["body"], f"JSON decode error: {why}")
        # ApiError says where and what kind; Starlette's own (404 no such route, 405 wrong method) do not.
        type_, loc = (exc.type, exc.loc) if isinstance(exc, ApiError) else (None, [])
        if exc.status_code == 405:
            loc = ["method"]
        return _error(exc.status_code, type_, loc, str(exc.detail), exc.headers)

    @app.exception_handler(InputError)
    async def invalid_for_bundle(request: Request, exc: InputError) -> JSONResponse:
        return _error(422, "value_error", list(exc.loc), exc.msg)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log (Starlette re-raises it for uvicorn to log); the client
        # gets the shape and nothing of the internals.
        return _error(500, "internal_error", [], "internal error: see the service log")

    return app


def _error(status: int, kind: str | None, loc: list[str | int], msg: str,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error in the one shape, `ErrorResponse`: `{"detail": [{"type", "loc", "msg"}]}`."""
    return JSONResponse(error_content(status, msg, loc, kind), status_code=status, headers=headers)


app = create_app()
