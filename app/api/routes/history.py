"""POST /v1/history: a person's fused timeline across platforms, as the recommender sees it (read-only).

The bundle's snapshot plus the events ingested since, the newest `limit` of them, each with its catalog
title. For the operator page (GET /ui) and for support: "why was this recommended?". Behind the read
auth of /v1/recommend. The person is named in the body, not the URL, so raw account ids stay out of
access logs. A keyless read (XREC_READ_AUTH=false, no key) sees what a keyless /v1/recommend may name in
its reasons: by account only, and that account's platform's events only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from app.api import openapi
from app.api.deps import AllPlatformReasons, BundleDep, ReadAuth, StateDep
from app.api.errors import AUTH_ERRORS, BODY_ERRORS, ApiError, error_responses
from app.schemas import PersonRef, WholeNumber

# The OpenAPI document names the loaded bundle's platforms as the enum of `account_platform` here too.
openapi.PLATFORM_FIELDS.setdefault("HistoryRequest", ("account_platform",))

router = APIRouter(tags=["history"], dependencies=[ReadAuth],
                   responses=error_responses(*AUTH_ERRORS, *BODY_ERRORS, 503))


def _one_person_account_with_platform(schema: dict[str, Any]) -> None:
    """JSON Schema for the rules the model checks: exactly one of person_id / account_id, and an account
    with its platform (there is no request platform to default to)."""
    schema["oneOf"] = [
        {"title": "by person", "required": ["person_id"],
         "properties": {"person_id": {"type": "string"}, "account_id": {"type": "null"}}},
        {"title": "by account", "required": ["account_id", "account_platform"],
         "properties": {"account_id": {"type": "string"}, "person_id": {"type": "null"},
                        "account_platform": {"type": "string"}}},
    ]


class HistoryRequest(PersonRef):
    """Whose history: `person_id`, or `account_id` with `account_platform` (required here)."""

    model_config = ConfigDict(json_schema_extra=_one_person_account_with_platform)

    account_platform: str | None = Field(default=None, min_length=1, max_length=64,
                                         description="the platform of `account_id` (required with it)")

    limit: Annotated[int, Field(ge=1, le=1000), WholeNumber] = Field(default=200,
                                                                     description="the newest this many events")

    @model_validator(mode="after")
    def _account_platform(self) -> HistoryRequest:
        if self.account_id is not None and self.account_platform is None:
            raise ValueError("account_platform is required with account_id")
        return self


class HistoryEvent(BaseModel):
    item_id: str
    platform: str
    title: str | None = Field(description="the catalog's title; null for an item the catalog does not have")
    ts: int


class HistoryResponse(BaseModel):
    person_id: str
    known: bool = Field(description="in the bundle's snapshot, or has ingested events")
    events: list[HistoryEvent] = Field(description="oldest first: the newest `limit` events")
    total: int = Field(description="events in the profile, before `limit`")
    platforms: list[str] = Field(description="the bundle's platforms")
    model_version: str
    degraded: bool = Field(description="Redis was unavailable: events since the bundle may be missing")


@router.post("/v1/history", response_model=HistoryResponse)
async def history(body: HistoryRequest, bundle: BundleDep, state: StateDep, all_platforms: AllPlatformReasons
                  ) -> HistoryResponse:
    if not all_platforms and body.person_id is not None:
        raise ApiError(401, "a keyless history read names an account (account_id + account_platform) and sees "
                            "that platform's events only; send an X-API-Key for a person's whole history",
                       ["header", "x-api-key"], headers={"WWW-Authenticate": "APIKey"})
    rec = state.recommender
    person = rec.resolve_person(bundle, body.person_id, body.account_id, body.account_platform or "", ("body",))
    # Not written back to Redis: looking a person up must not fill the profile cache.
    (profile,), degraded = await run_in_threadpool(state.profiles.get, bundle, [person], write_back=False)
    catalog, platforms = bundle.catalog, bundle.platforms
    only = None if all_platforms else bundle.platform_of[body.account_platform or ""]
    events = [(i, p, t) for i, p, t in zip(profile.item_ids, profile.platforms, profile.ts, strict=True)
              if only is None or p == only]
    titles = catalog.titles
    out = []
    for item, p, t in events[-body.limit:]:
        row = catalog.row_of.get(item)
        out.append(HistoryEvent(item_id=item, platform=platforms[int(p)], title=None if row is None else titles[row],
                                ts=int(t)))
    return HistoryResponse(person_id=person, known=profile.known, events=out, total=len(events), platforms=platforms,
                           model_version=bundle.model_version, degraded=degraded)
