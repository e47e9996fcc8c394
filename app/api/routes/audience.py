"""POST /v1/items/audience: who a new item would be recommended to (app/services/audience.py).

For operators and sales demos (the operator page's "Who would like a new item?"): it names persons and their
linked accounts, so it needs an API key even where reads are keyless (XREC_READ_AUTH=false).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.api import openapi
from app.api.deps import ServedDep, StateDep, WriteAuth
from app.api.errors import AUTH_ERRORS, BODY_ERRORS, error_responses
from app.api.middleware import VARIANT
from app.schemas import AudienceAccount, AudienceMember, AudienceReason, AudienceRequest, AudienceResponse

# The OpenAPI document names the loaded bundle's platforms as the enum of `platform` (app/api/openapi.py).
openapi.PLATFORM_FIELDS.setdefault("AudienceRequest", ("platform",))

router = APIRouter(tags=["items"], dependencies=[WriteAuth],
                   responses=error_responses(*AUTH_ERRORS, *BODY_ERRORS, 503, descriptions={
                       422: "Invalid input: `loc` is the field's path (a blank `title`, `k` out of 1..100, a "
                            "`platform` the loaded bundle does not have)"}))


@router.post("/v1/items/audience", response_model=AudienceResponse)
async def audience(body: AudienceRequest, request: Request, served: ServedDep, state: StateDep) -> AudienceResponse:
    """The persons a new item would score highest for, best first: its text embedded by the bundle's item
    encoder (as `PUT /v1/items` does; nothing is added to the catalog), scored for every known person — the
    bundle snapshot's (the most recently active XREC_AUDIENCE_MAX_PERSONS) and those with events since the
    bundle — by u·v with their user vectors for `platform`, the best XREC_AUDIENCE_RESCORE of them by the
    scorer, as /v1/rank scores a text. Each person comes with their linked accounts (keyed hashes) and the
    history items most like the new item. The first request per platform after a (re)load computes the
    snapshot persons' user vectors (one user-encoder pass over all of them); they are kept until the next
    reload. A/B variants: each person is scored by their own variant's bundle (`variant`)."""
    started = time.perf_counter()
    state.recommender.platform_id(served.primary, body.platform, ("body", "platform"))
    request.scope[VARIANT] = "+".join(v.name for v in served.variants)
    found = await run_in_threadpool(state.audience.find, served, body.platform, body.title, body.k, body.now_ts)
    persons = [AudienceMember(person_id=m.person, score=m.score, retrieval_score=m.retrieval,
                              accounts=[AudienceAccount(platform=p, account=a) for p, a in m.accounts],
                              events=m.events, last_event_ts=m.last_ts,
                              reasons=[AudienceReason(item_id=i, platform=p, title=t, weight=w)
                                       for i, p, t, w in m.reasons], variant=m.variant)
               for m in found.members]
    return AudienceResponse(platform=found.platform, persons=persons, known=found.known, rescored=found.rescored,
                            capped=found.capped, model_version=found.model_version, degraded=found.degraded,
                            took_ms=round((time.perf_counter() - started) * 1000, 3))
