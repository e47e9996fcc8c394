"""Request and response bodies of every route (pydantic: validation, 422 with field paths, OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Pseudonymous person ids as the bundle writes them ("p_" + keyed hash).
PERSON_ID = r"^p_[A-Za-z0-9_-]{1,64}$"
Id = Field(min_length=1, max_length=256)
ItemRef = Annotated[str, Field(max_length=256)]

# Every number a request can carry is bounded here, so no value that passes validation can overflow an
# int64 or a float64 further on: timestamps up to 2200-01-01 UTC (epoch seconds), counts and list
# lengths below, and no NaN or infinity anywhere (`allow_inf_nan=False`).
MAX_TS = 7_258_118_400
EpochSeconds = Annotated[int, Field(ge=0, le=MAX_TS, description="epoch seconds, UTC (at most year 2200)")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PersonRef(_Body):
    """Who: a pseudonymous `person_id`, or a raw `account_id` on `account_platform` (default: the request's
    `platform`), which the service hashes with the id salt exactly as the data build did."""

    person_id: str | None = Field(default=None, pattern=PERSON_ID)
    account_id: str | None = Field(default=None, min_length=1, max_length=256)
    account_platform: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_identity(self) -> PersonRef:
        if (self.person_id is None) == (self.account_id is None):
            raise ValueError("give exactly one of person_id or account_id")
        return self


class ContextEvent(_Body):
    """A recent event the service has not ingested yet (e.g. from this page view): used, not stored."""

    platform: str = Field(min_length=1, max_length=64)
    item_id: str = Id
    ts: EpochSeconds
    event: str = Field(default="interaction", min_length=1, max_length=64)


class RecommendRequest(PersonRef):
    platform: str = Field(min_length=1, max_length=64, description="the platform to recommend items of")
    k: int = Field(default=20, ge=1, le=200)
    exclude_seen: bool = True
    exclude_items: list[ItemRef] = Field(default_factory=list, max_length=1000)
    context_events: list[ContextEvent] = Field(default_factory=list, max_length=200)
    now_ts: EpochSeconds | None = Field(default=None,
                                        description="evaluate as of this time (epoch s; replays and tests); "
                                                    "default: now. Such requests bypass the cache")


class Reason(BaseModel):
    item_id: str
    platform: str
    weight: float


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    score: float
    reasons: list[Reason]


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    model_version: str
    cache: Literal["hit", "miss", "degraded"]
    cold_start: bool
    took_ms: float


class EventIn(_Body):
    event_id: str = Field(min_length=1, max_length=128, description="idempotency key")
    platform: str = Field(min_length=1, max_length=64)
    account_id: str = Id
    item_id: str = Id
    event: str = Field(default="interaction", min_length=1, max_length=64)
    ts: EpochSeconds


class EventsRequest(_Body):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class EventsResponse(BaseModel):
    accepted: int = Field(description="new events applied")
    duplicates: int = Field(description="event ids seen before: not applied again")
    unknown_items: int = Field(description="accepted events whose item is not in the catalog (kept for "
                                           "training, not used by the models until it is)")
    persons: int
    degraded: bool = Field(description="Redis was unavailable: applied in this process only, replayed "
                                       "from the durable log when Redis returns")


class ItemIn(_Body):
    item_id: str = Field(min_length=1, max_length=256, description="namespaced: '<platform>:<id>'")
    platform: str = Field(min_length=1, max_length=64)
    title: str = Field(min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _namespaced(self) -> ItemIn:
        if not self.item_id.startswith(self.platform + ":"):
            raise ValueError(f"item_id must start with '{self.platform}:' (item ids are namespaced by platform)")
        return self


class ItemsRequest(_Body):
    items: list[ItemIn] = Field(min_length=1, max_length=1000)


class ItemsResponse(BaseModel):
    upserted: int
    catalog_version: int
    model_version: str


class ItemDeleted(BaseModel):
    item_id: str
    catalog_version: int


class RankItem(_Body):
    item_id: str = Id
    title: str | None = Field(default=None, min_length=1, max_length=4000,
                              description="the text to embed; may be left out for an item in the catalog")
    platform: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="the item's platform; default: the request's platform")


class RankRequest(PersonRef):
    platform: str = Field(min_length=1, max_length=64, description="the platform the items are shown on")
    items: list[RankItem] = Field(min_length=1, max_length=1000)
    context_events: list[ContextEvent] = Field(default_factory=list, max_length=200)
    now_ts: EpochSeconds | None = None


class RankedItem(BaseModel):
    item_id: str
    score: float
    reasons: list[Reason]


class RankResponse(BaseModel):
    items: list[RankedItem]
    model_version: str
    cold_start: bool
    degraded: bool
    took_ms: float


class BatchPerson(PersonRef):
    pass


class BatchScoreRequest(_Body):
    platform: str = Field(min_length=1, max_length=64)
    persons: list[BatchPerson] = Field(min_length=1, max_length=100_000)
    items: list[ItemRef] | None = Field(default=None, min_length=1, max_length=1000,
                                    description="score these catalog items for everyone, or…")
    k: int | None = Field(default=None, ge=1, le=200, description="…recommend the top k to each")
    exclude_seen: bool = True
    now_ts: EpochSeconds | None = None

    @model_validator(mode="after")
    def _items_or_k(self) -> BatchScoreRequest:
        if (self.items is None) == (self.k is None):
            raise ValueError("give exactly one of items or k")
        return self


class BatchScore(BaseModel):
    item_id: str
    score: float


class BatchRow(BaseModel):
    """One NDJSON line per person, in request order."""

    index: int
    person_id: str
    items: list[BatchScore]
    cold_start: bool


class BatchSummary(BaseModel):
    """The last NDJSON line: its absence means the stream was cut."""

    done: Literal[True] = True
    rows: int
    model_version: str
    degraded: bool
    took_ms: float


class ErrorItem(BaseModel):
    """One error, as in the `detail` list of a 422: what kind, where (`loc`: the field path), why."""

    type: str
    loc: list[str | int]
    msg: str


class BatchError(BaseModel):
    """The last NDJSON line instead of the summary when scoring failed after the first line was sent
    (the status, 200, was sent before): `loc` is the first person whose row was not sent."""

    error: ErrorItem


class ReloadRequest(_Body):
    bundle_dir: str | None = Field(default=None, description="default: reload the current bundle folder")


class ReloadResponse(BaseModel):
    model_version: str
    previous_model_version: str | None
    items: int
    took_ms: float


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready", "no bundle"]
    model_version: str | None = None
    execution_provider: str | None = None
    redis: Literal["up", "down"]
    items: int = 0
    platforms: list[str] = Field(default_factory=list)
    detail: str | None = Field(default=None, description="why no bundle is loaded, if a load failed")
