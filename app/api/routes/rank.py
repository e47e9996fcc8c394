"""POST /v1/rank: score given items (new products, campaign creatives, by text) for one person."""

from __future__ import annotations

import time

from fastapi import APIRouter

from app.api.deps import AllPlatformReasons, BundleDep, ReadAuth, StateDep
from app.api.errors import AUTH_ERRORS, BODY_ERRORS, error_responses
from app.schemas import RankRequest, RankResponse
from app.services.errors import InputError
from app.services.model_bundle import LoadedBundle

router = APIRouter(tags=["rank"], dependencies=[ReadAuth], responses=error_responses(*AUTH_ERRORS, *BODY_ERRORS, 503))


@router.post("/v1/rank", response_model=RankResponse)
def rank_items(body: RankRequest, bundle: BundleDep, state: StateDep, all_reasons: AllPlatformReasons) -> RankResponse:
    started = time.perf_counter()
    rec = state.recommender
    target, person = rec.resolve_request(bundle, body)
    _check_catalog_items(bundle, body)
    out = rec.rank_items(bundle, person, target, [(i.item_id, i.title, i.platform) for i in body.items],
                         [(e.item_id, e.platform, e.ts) for e in body.context_events], body.now_ts, all_reasons)
    return RankResponse(**out, took_ms=round((time.perf_counter() - started) * 1000, 3))


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
