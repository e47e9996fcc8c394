"""POST /v1/batch/score: campaigns — up to 100k persons per call, results streamed as NDJSON."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.types import Scope

from app.api.deps import ServedDep, StateDep, WriteAuth
from app.api.errors import AUTH_ERRORS, BODY_ERRORS, error_responses
from app.api.middleware import STREAM_FAILED, VARIANT
from app.schemas import BatchError, BatchScoreRequest, ErrorItem
from app.services.errors import InputError

log = logging.getLogger(__name__)
router = APIRouter(tags=["batch"], dependencies=[WriteAuth], responses=error_responses(*AUTH_ERRORS, *BODY_ERRORS, 503))

NDJSON = "application/x-ndjson"


@router.post("/v1/batch/score", response_class=StreamingResponse,
             responses={200: {"content": {NDJSON: {}},
                              "description": "one BatchRow per person, in request order, then a BatchSummary; "
                                             "a BatchError instead of the summary if scoring failed midway"}})
def batch_score(body: BatchScoreRequest, request: Request, served: ServedDep, state: StateDep) -> StreamingResponse:
    """Every input is checked before the first line is sent (a 422 cannot follow a 200). Persons are
    then scored a chunk at a time (XREC_BATCH_CHUNK), so memory does not grow with the number of rows.
    A failure after that ends the stream with a `BatchError` line, never silently.

    Business rules (`filters`, `diversity`) apply to every person: with `k`, as in /v1/recommend; with
    `items`, the items that fail them are left out of the person's line. A/B variants: each person is scored
    by their variant's bundle, named in their line (`variant`)."""
    rec = state.recommender
    primary = served.primary
    target = rec.platform_id(primary, body.platform, ("body", "platform"))
    persons, variants = [], []
    for i, p in enumerate(body.persons):
        loc = ("body", "persons", i)
        platform = p.account_platform or body.platform
        person = rec.resolve_person(primary, p.person_id, p.account_id, platform, loc)
        variant = served.pick(person)
        if variant.bundle is not primary:
            person = rec.resolve_person(variant.bundle, p.person_id, p.account_id, platform, loc)
        persons.append(person)
        variants.append(variant)
    used = {v.name: v for v in variants}
    if body.items is not None:
        for v in used.values():
            catalog = v.bundle.catalog
            for i, item in enumerate(body.items):
                if not catalog.is_live(item) or int(catalog.platform[catalog.row_of[item]]) != target:
                    raise InputError(("body", "items", i), f"item {item!r} is not a live {body.platform} item")
    request.scope[VARIANT] = "+".join(sorted(used))
    lines = rec.batch_lines(primary, persons, target, body.items, body.k, body.exclude_seen, body.now_ts,
                            rec.rules(body), variants=variants)
    return StreamingResponse(_ending_in_error_line(lines, request.scope), media_type=NDJSON)


def _ending_in_error_line(lines: Iterator[bytes], scope: Scope) -> Iterator[bytes]:
    """The lines as they come; if producing them fails, one last `BatchError` line (the client sees why
    the summary is missing and from which row to retry) and the request counts as a 500 in the metrics."""
    sent = 0
    try:
        for chunk in lines:
            yield chunk
            sent += chunk.count(b"\n")
    except Exception:
        log.exception("batch scoring failed after %d rows had been sent", sent)
        scope[STREAM_FAILED] = True
        error = ErrorItem(type="internal_error", loc=["body", "persons", sent],
                          msg=f"scoring failed after {sent} rows: persons from index {sent} on were not scored")
        yield BatchError(error=error).model_dump_json().encode() + b"\n"
