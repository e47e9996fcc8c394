"""POST /v1/recommend: top-k items of a platform for a person.

Two ways in, one answer: the FastAPI route below (what the OpenAPI document shows, and what answers every request
that is not plainly valid), and `FastRecommend`, served ahead of it on the same path, which answers a valid
request without FastAPI's dependency solving and body machinery: about a third of a warm request's CPU went there
(py-spy, docs/benchmarks.md). It checks the same things in the same order (API key, bundle, body) and hands any
request it would not answer itself to the FastAPI route, so every error is FastAPI's, word for word.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.api.deps import AllPlatformReasons, ReadAuth, ServedDep, StateDep, key_is_valid
from app.api.errors import AUTH_ERRORS, BODY_ERRORS, ApiError, error_responses
from app.api.middleware import VARIANT
from app.schemas import RecommendRequest, RecommendResponse
from app.services.errors import NoBundle, Overloaded
from app.services.recommender import Ask
from app.services.state import ServiceState
from app.services.variants import Served

PATH = "/v1/recommend"
router = APIRouter(tags=["recommend"], dependencies=[ReadAuth],
                   responses=error_responses(*AUTH_ERRORS, *BODY_ERRORS, 503))


@router.post(PATH, response_model=RecommendResponse)
async def recommend(body: RecommendRequest, request: Request, served: ServedDep, state: StateDep,
                    all_reasons: AllPlatformReasons) -> Response:
    """A person's history (all platforms) → the target platform's best items, with the history items
    behind each. Unknown persons: their context events, else the platform's popular items (`cold_start`).

    Business rules: `filters` (item attributes: include/exclude values or numeric ranges) and `diversity`
    (at most N results per attribute value, no item bought in the last D days); unavailable items are never
    recommended. A/B variants (XREC_VARIANTS): the person's variant answers, named in `variant`.

    `async` on purpose: a warm request (ranked list cached for this person) is answered right here on the
    event loop; only a cold one goes to the micro-batcher's worker thread for Redis, ONNX and FAISS, computed
    together with the cold requests that arrive with it (503 when too many already wait).
    """
    return await answer(request, body, served, state, all_reasons)


async def answer(request: Request, body: RecommendRequest, served: Served, state: ServiceState,
                 all_reasons: bool) -> Response:
    started = time.perf_counter()
    rec = state.recommender
    variant, target, person = rec.resolve_variant(served, body)
    request.scope[VARIANT] = variant.name
    bundle = variant.bundle
    ask = Ask(person, target, body.k, body.exclude_seen, frozenset(body.exclude_items),
              tuple((e.item_id, e.platform, e.ts, e.event) for e in body.context_events), body.now_ts, all_reasons,
              rec.rules(body))
    try:
        got = rec.from_cache(bundle, ask) or await rec.compute_batched(bundle, ask)
    except Overloaded as e:
        raise ApiError(503, f"overloaded: {e}", type_="overloaded", headers={"Retry-After": "1"}) from None
    # Pre-serialised fragments: the body is RecommendResponse, built without per-item model validation.
    return Response(rec.render(bundle, got, started, variant.name), media_type="application/json")


class FastRecommend:
    """An ASGI endpoint for POST /v1/recommend that answers a plainly valid request (a good key, or none where
    reads need none; a bundle loaded; a JSON body the model accepts) by `answer`, and hands every other
    request, body replayed, to the FastAPI route `slow`, which answers it as if this did not exist."""

    def __init__(self, slow: APIRoute) -> None:
        self.slow = slow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.slow  # what the metrics label a request by: the route template, as for the slow way
        request = Request(scope, receive)
        body_bytes = await request.body()
        parsed = self._parse(request, body_bytes)
        if parsed is None:
            await self.slow.handle(scope, _replay(body_bytes), send)
            return
        body, served, state, all_reasons = parsed
        response = await answer(request, body, served, state, all_reasons)
        await response(scope, receive, send)

    @staticmethod
    def _parse(request: Request, body_bytes: bytes) -> tuple[RecommendRequest, Served, ServiceState, bool] | None:
        state: ServiceState = request.app.state.xrec
        settings = state.settings
        key = request.headers.get("x-api-key")
        if settings.read_auth or key:
            if not key_is_valid(settings, key):
                return None
            all_reasons = True
        else:
            all_reasons = False
        content_type = request.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            return None
        try:
            served = state.require_served()
            body = RecommendRequest.model_validate_json(body_bytes)
        except (NoBundle, ValidationError, ValueError):
            return None
        return body, served, state, all_reasons


def _replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI `receive` that gives the body already read, once, then waits for the client to go."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def install_fast_path(app: FastAPI) -> None:
    """Serve `FastRecommend` ahead of the FastAPI route (same path and method; left out of the OpenAPI
    document, which shows the FastAPI route)."""
    slow = next(r for r in router.routes if isinstance(r, APIRoute) and r.path == PATH)
    app.router.routes.insert(0, Route(PATH, FastRecommend(slow), methods=["POST"], include_in_schema=False))
