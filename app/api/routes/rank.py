"""POST /v1/rank: score given items (new products, campaign creatives, by text) for one person."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from app.api.deps import AllPlatformReasons, ReadAuth, ServedDep, StateDep
from app.api.errors import AUTH_ERRORS, BODY_ERRORS, error_responses
from app.api.middleware import VARIANT
from app.schemas import RankRequest, RankResponse
from app.services.errors import InputError
from app.services.model_bundle import LoadedBundle

router = APIRouter(tags=["rank"], dependencies=[ReadAuth], responses=error_responses(*AUTH_ERRORS, *BODY_ERRORS, 503))


@router.post("/v1/rank", response_model=RankResponse)
def rank_items(body: RankRequest, request: Request, served: ServedDep, state: StateDep,
               all_reasons: AllPlatformReasons) -> RankResponse:
    """The given items, best first, for one person. Catalog items that are unavailable, fail `filters`,
    were bought within `diversity.exclude_bought_days` or are over a `diversity.max_per_value` cap are left
    out and listed in `filtered_out`; items given by text alone are ranked as given. A/B variants: the
    person's variant answers (`variant`)."""
    started = time.perf_counter()
    rec = state.recommender
    variant, target, person = rec.resolve_variant(served, body)
    request.scope[VARIANT] = variant.name
    bundle = variant.bundle
    _check_catalog_items(bundle, body)
    out = rec.rank_items(bundle, person, target, [(i.item_id, i.title, i.platform) for i in body.items],
                         [(e.item_id, e.platform, e.ts, e.event) for e in body.context_events], body.now_ts,
                         all_reasons, rec.rules(body))
    return RankResponse(**out, variant=variant.name, took_ms=round((time.perf_counter() - started) * 1000, 3))


def _check_catalog_items(bundle: LoadedBundle, body: RankRequest) -> None:
    """A catalog item is ranked on its own platform only, as in batch scoring; texts may be of any."""
    catalog = bundle.catalog
    for i, item in enumerate(body.items):
        row = catalog.row_of.get(item.item_id)
        if row is None:
            continue
        owner = bundle.platforms[int(catalog.platform[row])]
        if owner != body.platform:
            raise InputError(("body", "items", i, "item_id"),
                             f"item {item.item_id!r} is a {owner} catalog item, not a {body.platform} one")
        if item.platform is not None and item.platform != owner:
            raise InputError(("body", "items", i, "platform"),
                             f"item {item.item_id!r} is a {owner} catalog item, not a {item.platform} one")
