"""PUT /v1/items, DELETE /v1/items/{item_id}: change the catalog without a new bundle."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from app.api.deps import BundleDep, StateDep, WriteAuth
from app.api.errors import AUTH_ERRORS, BODY_ERRORS, ApiError, error_responses
from app.schemas import ItemDeleted, ItemsRequest, ItemsResponse

router = APIRouter(tags=["items"], dependencies=[WriteAuth], responses=error_responses(*AUTH_ERRORS, 503))


@router.put("/v1/items", response_model=ItemsResponse, responses=error_responses(*BODY_ERRORS))
def upsert_items(body: ItemsRequest, bundle: BundleDep, state: StateDep) -> ItemsResponse:
    """Embed each item's text with the bundle's item encoder and put it in its platform's index; it can
    be recommended from the next request on. An existing id is replaced; one whose title and platform stay
    the same keeps its vector and only changes its `attributes` / `available` (left out: kept as they are).
    `available: false` hides the item from recommendations, /v1/rank and batch scoring (it stays in
    histories). With A/B variants, every variant's catalog changes."""
    version = state.upsert_items(bundle, [(i.item_id, i.platform, i.title, i.attributes, i.available)
                                          for i in body.items])
    return ItemsResponse(upserted=len(body.items), catalog_version=version, model_version=bundle.model_version)


@router.delete("/v1/items/{item_id:path}", response_model=ItemDeleted,
               responses=error_responses(404, 422, descriptions={404: "No live item with this id",
                                                                 422: "An item id over 256 characters"}))
def delete_item(item_id: Annotated[str, Path(max_length=256)], bundle: BundleDep, state: StateDep) -> ItemDeleted:
    """Never recommend the item again (histories that contain it keep it)."""
    version = state.delete_item(bundle, item_id)
    if version is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "no such item", ["path", "item_id"])
    return ItemDeleted(item_id=item_id, catalog_version=version)
