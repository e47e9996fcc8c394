"""Request and response bodies of every route (pydantic: validation, 422 with field paths, OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    model_validator,
)

from app.core.config import VARIANT_NAME

# Pseudonymous person ids as the bundle writes them ("p_" + keyed hash).
PERSON_ID = r"^p_[A-Za-z0-9_-]{1,64}$"
Id = Field(min_length=1, max_length=256)
ItemRef = Annotated[str, Field(max_length=256)]
# Item ids are namespaced by platform, '<platform>:<id>' (the data build writes them so).
ITEM_OF_PLATFORM = ("an item id, namespaced '<platform>:<id>': one whose namespace (the text before the first ':') "
                    "is another of the bundle's platforms, or a catalog item of another platform, is refused (422)")

# Every number a request can carry is bounded here, so no value that passes validation can overflow an
# int64 or a float64 further on: timestamps up to 2200-01-01 UTC (epoch seconds), counts and list
# lengths below, and no NaN or infinity anywhere (`allow_inf_nan=False`). Strict types: a field is what the
# schema says, no coercion (`false` or "12" is not an integer, 1 is not a boolean).
MAX_TS = 7_258_118_400


def _whole_number(value: object) -> object:
    # JSON Schema's `integer` is any number with no fraction: 5.0 is one, 5.5 and "5" are not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer under strict validation, except that 5.0 counts (as in JSON Schema). The validator comes after
# the bounds: before them, pydantic would write them into the JSON Schema as `ge`/`le`, not minimum/maximum.
WholeNumber = BeforeValidator(_whole_number)
EpochSeconds = Annotated[int, Field(ge=0, le=MAX_TS, description="epoch seconds, UTC (at most year 2200)"),
                         WholeNumber]
TopK = Annotated[int, Field(ge=1, le=200), WholeNumber]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


# ---- business rules: item attributes, filters, diversity -------------------------------------------------

AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# Attribute numbers (prices, ratings, …) are bounded like every other number a request carries.
AttributeNumber = Annotated[float, Field(ge=-1e15, le=1e15)]
AttributeValue = Annotated[
    Annotated[Annotated[str, Field(max_length=256)], Tag("string")] | Annotated[AttributeNumber, Tag("number")],
    Discriminator(lambda v: "string" if isinstance(v, str) else "number"),
]


class NumberRange(_Body):
    """Numbers from `min` to `max`, both included; either may be left out (open). Matches items whose
    attribute is a number in the range (a range with min above max matches nothing)."""

    min: AttributeNumber | None = None
    max: AttributeNumber | None = None


def _condition_kind(v: object) -> str | None:
    return "values" if isinstance(v, list) else "range" if isinstance(v, dict | NumberRange) else None


Condition = Annotated[
    Annotated[Annotated[list[AttributeValue], Field(min_length=1, max_length=100)], Tag("values")]
    | Annotated[NumberRange, Tag("range")],
    Discriminator(_condition_kind, custom_error_type="condition_type",
                  custom_error_message="a condition is a list of values or a {\"min\", \"max\"} range"),
]
_CONDITIONS = ("attribute name → a list of values (the item's value is one of them: strings exactly, numbers "
               "numerically) or a {min, max} numeric range. An item without the attribute, or an attribute name "
               "no item has, matches nothing")


class Filters(_Body):
    """Which catalog items may be returned, by their attributes (`PUT /v1/items` `attributes`, or the bundle's
    items.parquet `attributes` column). Unavailable items (`available: false`) are never returned, filters or
    not. Items given to /v1/rank by text alone (not in the catalog) are not filtered."""

    include: dict[AttributeName, Condition] = Field(
        default_factory=dict, max_length=16,
        description=f"every condition must hold (and within a list, any value): {_CONDITIONS}",
        examples=[{"category": ["pans", "knives"], "price": {"min": 5, "max": 50}}])
    exclude: dict[AttributeName, Condition] = Field(
        default_factory=dict, max_length=16,
        description=f"an item matching any of these is left out: {_CONDITIONS}", examples=[{"brand": ["acme"]}])


class Diversity(_Body):
    """Rules on the answer as a whole."""

    max_per_value: dict[AttributeName, Annotated[int, Field(ge=1, le=200), WholeNumber]] = Field(
        default_factory=dict, max_length=4,
        description="attribute name → at most this many results per value of it (e.g. {\"category\": 2}); "
                    "the ranked list is walked from the top, an item over a cap skipped for the next. Items "
                    "without the attribute are not capped. /v1/rank and batch `items`: items over a cap are "
                    "left out", examples=[{"category": 2}])
    exclude_bought_days: Annotated[int, Field(ge=1, le=3650), WholeNumber] | None = Field(
        default=None, description="leave out items the person had a `bought_event` event for in the last this "
                                  "many days (before `now_ts`), of the history the service keeps")
    bought_event: str | None = Field(default=None, min_length=1, max_length=64,
                                     description="the event type that means bought; default XREC_PURCHASE_EVENT "
                                                 "(`purchase`)")


FILTERS_DOC = "business rules: only items matching these attribute filters (and available ones)"
DIVERSITY_DOC = "business rules: per-value caps on the answer, no recently bought items"


def _exactly_one_person(schema: dict[str, Any]) -> None:
    """JSON Schema for the rule `_one_identity` checks: exactly one of person_id / account_id is given
    (present and not null)."""
    schema["oneOf"] = [
        {"title": "by person", "required": ["person_id"],
         "properties": {"person_id": {"type": "string"}, "account_id": {"type": "null"}}},
        {"title": "by account", "required": ["account_id"],
         "properties": {"account_id": {"type": "string"}, "person_id": {"type": "null"}}},
    ]


class PersonRef(_Body):
    """Who: a pseudonymous `person_id`, or a raw `account_id` on `account_platform` (default: the request's
    `platform`), which the service hashes with the id salt exactly as the data build did. Exactly one of
    the two."""

    model_config = ConfigDict(json_schema_extra=_exactly_one_person)

    person_id: str | None = Field(default=None, pattern=PERSON_ID,
                                  description="pseudonymous person id, as in the bundle ('p_' + keyed hash)")
    account_id: str | None = Field(default=None, min_length=1, max_length=256,
                                   description="a raw account id on `account_platform`")
    account_platform: str | None = Field(default=None, min_length=1, max_length=64,
                                         description="the platform of `account_id`; default: `platform`")

    @model_validator(mode="after")
    def _one_identity(self) -> PersonRef:
        if (self.person_id is None) == (self.account_id is None):
            raise ValueError("give exactly one of person_id or account_id")
        return self


class ContextEvent(_Body):
    """A recent event the service has not ingested yet (e.g. from this page view): used, not stored."""

    platform: str = Field(min_length=1, max_length=64)
    item_id: str = Field(min_length=1, max_length=256, description=f"of `platform`: {ITEM_OF_PLATFORM}")
    ts: EpochSeconds
    event: str = Field(default="interaction", min_length=1, max_length=64)


class RecommendRequest(PersonRef):
    platform: str = Field(min_length=1, max_length=64, description="the platform to recommend items of")
    k: TopK = 20
    exclude_seen: bool = True
    exclude_items: list[ItemRef] = Field(default_factory=list, max_length=1000)
    context_events: list[ContextEvent] = Field(default_factory=list, max_length=200)
    now_ts: EpochSeconds | None = Field(default=None,
                                        description="evaluate as of this time (epoch s; replays and tests); "
                                                    "default: now. Such requests bypass the cache")
    filters: Filters | None = Field(default=None, description=FILTERS_DOC + " (such requests bypass the cache)")
    diversity: Diversity | None = Field(default=None, description=DIVERSITY_DOC + " (such requests bypass the cache)")


class Reason(BaseModel):
    item_id: str
    platform: str
    weight: float


class RecommendReason(Reason):
    """A history item behind a result; `entity`/`text` when the result shares a brand, product type or
    category with it in the knowledge graph (then `weight` is 0 unless its vector is among the nearest too)."""

    entity: str | None = Field(default=None, description="the shared entity's name, e.g. a brand")
    text: str | None = Field(default=None, description='e.g. "same brand (Melitta) as “…” in your grocery history"')


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    score: float
    reasons: list[RecommendReason]


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    model_version: str
    variant: str = Field(description="the A/B variant (bundle) that answered: `default` without XREC_VARIANTS")
    cache: Literal["hit", "miss", "degraded"]
    cold_start: bool
    took_ms: float


class EventIn(_Body):
    event_id: str = Field(min_length=1, max_length=128, description="idempotency key")
    platform: str = Field(min_length=1, max_length=64)
    account_id: str = Field(min_length=1, max_length=256, description="the raw account id on `platform`")
    item_id: str = Field(min_length=1, max_length=256,
                         description=f"of `platform`: {ITEM_OF_PLATFORM}; not in the catalog is accepted "
                                     "(counted in `unknown_items`)")
    event: str = Field(default="interaction", min_length=1, max_length=64)
    ts: EpochSeconds
    variant: str | None = Field(default=None, pattern=VARIANT_NAME,
                                description="the A/B variant whose recommendation this event answers (the "
                                            "response's `variant`); kept in the event log for `xrec report ab`")


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
    item_id: str = Field(min_length=1, max_length=256, pattern=r"^[^:]+:",
                         description="namespaced '<platform>:<id>': starts with this item's `platform` and ':'")
    platform: str = Field(min_length=1, max_length=64)
    title: str = Field(min_length=1, max_length=4000)
    attributes: dict[AttributeName, AttributeValue] | None = Field(
        default=None, max_length=32,
        description="business attributes for filters and diversity (string or number values), e.g. "
                    "{\"category\": \"pans\", \"brand\": \"acme\", \"price\": 24.5}; they replace the item's; "
                    "left out: the item keeps its current ones", examples=[{"category": "pans", "price": 24.5}])
    available: bool | None = Field(default=None,
                                   description="false: never recommended nor ranked (it stays in histories); "
                                               "left out: unchanged (a new item is available)")

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


# A title must hold a character other than ASCII whitespace: the same class in the JSON Schema (ECMA-262), in
# pydantic (Rust regex) and in schemathesis (Python re); `\S` differs between the three on some code points.
NOT_BLANK = r"[^ \t\n\r\f\v]"


def _not_blank(value: str) -> str:
    if not value.strip(" \t\n\r\f\v"):
        raise ValueError("the title is blank: give the new item's text")
    return value


class AudienceRequest(_Body):
    """A new item (its text, the platform it is shown on) and how many persons to name."""

    platform: str = Field(min_length=1, max_length=64, description="the platform the item would be shown on")
    title: Annotated[str, AfterValidator(_not_blank)] = Field(
        min_length=1, max_length=4000, json_schema_extra={"pattern": NOT_BLANK},
        description="the item's text, embedded by the bundle's item encoder as PUT /v1/items embeds it; not blank",
        examples=["spicy golden skillet"])
    k: Annotated[int, Field(ge=1, le=100), WholeNumber] = Field(default=20, description="persons to return")
    now_ts: EpochSeconds | None = Field(default=None, description="score as of this time (epoch s); default: now")


class AudienceReason(BaseModel):
    item_id: str
    platform: str
    title: str
    weight: float


class AudienceAccount(BaseModel):
    platform: str
    account: str = Field(description="the account's keyed hash, as in the bundle's accounts.parquet (raw "
                                     "account ids never reach a bundle)")


class AudienceMember(BaseModel):
    person_id: str
    score: float = Field(description="the item's score for this person: the scorer's, as /v1/rank scores a text")
    retrieval_score: float = Field(description="u·v, the retrieval stage's score")
    accounts: list[AudienceAccount] = Field(description="the person's accounts the bundle links (empty for a person "
                                                        "first seen online)")
    events: int = Field(description="events in the person's profile (the newest XREC_PROFILE_MAX_EVENTS of their "
                                    "fused history)")
    last_event_ts: int | None
    reasons: list[AudienceReason] = Field(description="the history items most like the new item")
    variant: str = Field(description="the A/B variant (bundle) that scored this person")


class AudienceResponse(BaseModel):
    platform: str
    persons: list[AudienceMember] = Field(description="best first")
    known: int = Field(description="persons with a history considered (the bundle snapshot's, at most "
                                   "XREC_AUDIENCE_MAX_PERSONS, and those with events since the bundle)")
    rescored: int = Field(description="the best of them by u·v, scored by the scorer")
    capped: bool = Field(description="snapshot persons beyond XREC_AUDIENCE_MAX_PERSONS (the least recently "
                                     "active) were not considered")
    model_version: str
    degraded: bool = Field(description="Redis was unavailable: events since the bundle may be missing")
    took_ms: float


class RankItem(_Body):
    item_id: str = Field(min_length=1, max_length=256,
                         description="a catalog item of the request's `platform`, or any id given with a `title`")
    title: str | None = Field(default=None, min_length=1, max_length=4000,
                              description="the text to embed; may be left out for an item in the catalog")
    platform: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="the item's platform; default: the request's platform")


class RankRequest(PersonRef):
    platform: str = Field(min_length=1, max_length=64, description="the platform the items are shown on")
    items: list[RankItem] = Field(min_length=1, max_length=1000)
    context_events: list[ContextEvent] = Field(default_factory=list, max_length=200)
    now_ts: EpochSeconds | None = None
    filters: Filters | None = Field(default=None, description=FILTERS_DOC + "; the others are left out")
    diversity: Diversity | None = Field(default=None, description=DIVERSITY_DOC)


class RankedItem(BaseModel):
    item_id: str
    score: float
    reasons: list[Reason]


class RankResponse(BaseModel):
    items: list[RankedItem]
    filtered_out: list[str] = Field(default_factory=list,
                                    description="given catalog items left out: unavailable, not matching the "
                                                "filters, bought recently, or over a diversity cap")
    model_version: str
    variant: str = Field(description="the A/B variant (bundle) that answered")
    cold_start: bool
    degraded: bool
    took_ms: float


class BatchPerson(PersonRef):
    pass


def _items_or_k_schema(schema: dict[str, Any]) -> None:
    """JSON Schema for `_items_or_k`: exactly one of items / k (present and not null)."""
    schema["oneOf"] = [
        {"title": "score items", "required": ["items"],
         "properties": {"items": {"type": "array"}, "k": {"type": "null"}}},
        {"title": "top k", "required": ["k"], "properties": {"k": {"type": "integer"}, "items": {"type": "null"}}},
    ]


class BatchScoreRequest(_Body):
    model_config = ConfigDict(json_schema_extra=_items_or_k_schema)

    platform: str = Field(min_length=1, max_length=64)
    persons: list[BatchPerson] = Field(min_length=1, max_length=100_000)
    items: list[ItemRef] | None = Field(default=None, min_length=1, max_length=1000,
                                        description="score these live catalog items of `platform` for everyone, "
                                                    "or…")
    k: TopK | None = Field(default=None, description="…recommend the top k to each")
    exclude_seen: bool = True
    now_ts: EpochSeconds | None = None
    filters: Filters | None = Field(default=None, description=FILTERS_DOC)
    diversity: Diversity | None = Field(default=None, description=DIVERSITY_DOC)

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
    variant: str | None = Field(default=None, description="the A/B variant (bundle) that scored this person")


class BatchSummary(BaseModel):
    """The last NDJSON line: its absence means the stream was cut."""

    done: Literal[True] = True
    rows: int
    model_version: str
    variants: dict[str, str] = Field(default_factory=dict, description="variant → its model version")
    degraded: bool
    took_ms: float


class ErrorItem(BaseModel):
    """One error: what kind (`type`), where (`loc`: the field or header path, empty when the request as a
    whole is meant), why (`msg`, for people). The input is never echoed back."""

    type: str = Field(description="machine-readable kind: pydantic's for field errors (e.g. `missing`, "
                                  "`string_too_long`), else one of missing_api_key, invalid_api_key, not_found, "
                                  "method_not_allowed, body_timeout, body_too_large, unsupported_media_type, "
                                  "json_invalid, value_error, condition_type (a filter condition that is neither "
                                  "a list of values nor a range), bundle_error, no_bundle, internal_error",
                      examples=["missing"])
    loc: list[str | int] = Field(description="where: e.g. [\"body\", \"events\", 0, \"ts\"], "
                                             "[\"header\", \"x-api-key\"], [\"path\", \"item_id\"]",
                                 examples=[["body", "platform"]])
    msg: str = Field(examples=["Field required"])


class ErrorResponse(BaseModel):
    """The body of every error response (4xx, 5xx), FastAPI's 422 shape for all of them."""

    detail: list[ErrorItem] = Field(min_length=1)


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


class VariantInfo(BaseModel):
    name: str
    model_version: str
    share: float


class Ready(BaseModel):
    status: Literal["ready", "no bundle"]
    model_version: str | None = None
    variants: list[VariantInfo] = Field(default_factory=list, description="the A/B variants served, first: the "
                                                                          "primary")
    execution_provider: str | None = None
    redis: Literal["up", "down"]
    items: int = 0
    platforms: list[str] = Field(default_factory=list)
    detail: str | None = Field(default=None, description="why no bundle is loaded, if a load failed")
