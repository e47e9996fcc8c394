"""POST /v1/recommend: top-k items of a platform for a person."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from app.api.deps import AllPlatformReasons, ReadAuth, ServedDep, StateDep
from app.api.errors import AUTH_ERRORS, BODY_ERRORS, ApiError, error_responses
from app.api.middleware import VARIANT
from app.schemas import RecommendRequest, RecommendResponse
from app.services.errors import Overloaded
from app.services.recommender import Ask

router = APIRouter(tags=["recommend"], dependencies=[ReadAuth],
                   responses=error_responses(*AUTH_ERRORS, *BODY_ERRORS, 503))


@router.post("/v1/recommend", response_model=RecommendResponse)
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
    started = time.perf_counter()
    rec = state.recommender
    variant, target, person = rec.resolve_variant(served, body)
    request.scope[VARIANT] = variant.name
    bundle = variant.bundle
    ask = Ask(person, target, body.k, body.exclude_seen, frozenset(body.exclude_items),
              tuple((e.item_id, e.platform, e.ts, e.event) for e in body.context_events), body.now_ts, all_reasons,
              rec.rules(body))
    try:
        answer = rec.from_cache(bundle, ask) or await rec.compute_batched(bundle, ask)
    except Overloaded as e:
        raise ApiError(503, f"overloaded: {e}", type_="overloaded", headers={"Retry-After": "1"}) from None
    # Pre-serialised fragments: the body is RecommendResponse, built without per-item model validation.
    return Response(rec.render(bundle, answer, started, variant.name), media_type="application/json")
