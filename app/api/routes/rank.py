"""POST /v1/rank: score given items (new products, campaign creatives, by text) for one person."""

from __future__ import annotations

import time

from fastapi import APIRouter

from app.api.deps import BundleDep, ReadAuth, StateDep
from app.schemas import RankRequest, RankResponse

router = APIRouter(tags=["rank"], dependencies=[ReadAuth])


@router.post("/v1/rank", response_model=RankResponse)
def rank_items(body: RankRequest, bundle: BundleDep, state: StateDep) -> RankResponse:
    started = time.perf_counter()
    rec = state.recommender
    target, person = rec.resolve_request(bundle, body)
    out = rec.rank_items(bundle, person, target, [(i.item_id, i.title, i.platform) for i in body.items],
                         [(e.item_id, e.platform, e.ts) for e in body.context_events], body.now_ts)
    return RankResponse(**out, took_ms=round((time.perf_counter() - started) * 1000, 3))
