"""POST /v1/batch/score: campaigns — up to 100k persons per call, results streamed as NDJSON."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.deps import BundleDep, StateDep, WriteAuth
from app.schemas import BatchScoreRequest
from app.services.errors import InputError

router = APIRouter(tags=["batch"], dependencies=[WriteAuth])

NDJSON = "application/x-ndjson"


@router.post("/v1/batch/score", response_class=StreamingResponse,
             responses={200: {"content": {NDJSON: {}},
                              "description": "one BatchRow per person, in request order, then a BatchSummary"}})
def batch_score(body: BatchScoreRequest, bundle: BundleDep, state: StateDep) -> StreamingResponse:
    """Every input is checked before the first line is sent (a 422 cannot follow a 200). Persons are
    then scored a chunk at a time (XREC_BATCH_CHUNK), so memory does not grow with the number of rows."""
    rec = state.recommender
    target = rec.platform_id(bundle, body.platform, ("body", "platform"))
    persons = [rec.resolve_person(bundle, p.person_id, p.account_id, p.account_platform or body.platform,
                                  ("body", "persons", i)) for i, p in enumerate(body.persons)]
    if body.items is not None:
        catalog = bundle.catalog
        for i, item in enumerate(body.items):
            if not catalog.is_live(item) or int(catalog.platform[catalog.row_of[item]]) != target:
                raise InputError(("body", "items", i), f"item {item!r} is not a live {body.platform} item")
    lines = rec.batch_lines(bundle, persons, target, body.items, body.k, body.exclude_seen, body.now_ts)
    return StreamingResponse(lines, media_type=NDJSON)
