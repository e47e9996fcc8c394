"""POST /v1/events: ingest interactions; the next recommendation for those persons reflects them."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import BundleDep, StateDep, WriteAuth
from app.api.errors import AUTH_ERRORS, BODY_ERRORS, error_responses
from app.schemas import EventsRequest, EventsResponse

router = APIRouter(tags=["events"], dependencies=[WriteAuth],
                   responses=error_responses(*AUTH_ERRORS, *BODY_ERRORS, 503))


@router.post("/v1/events", response_model=EventsResponse)
def ingest_events(body: EventsRequest, bundle: BundleDep, state: StateDep) -> EventsResponse:
    """Idempotent by `event_id`. Acknowledged = durable: appended and fsync'd to the event log before
    anything else, then applied to the persons' profiles in Redis (user vectors recomputed)."""
    outcome, unknown = state.ingest(bundle, [(e.event_id, e.platform, e.account_id, e.item_id, e.event, e.ts,
                                              e.variant) for e in body.events])
    return EventsResponse(accepted=outcome.accepted, duplicates=outcome.duplicates, unknown_items=unknown,
                          persons=len(outcome.persons), degraded=outcome.degraded)
