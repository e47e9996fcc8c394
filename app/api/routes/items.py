"""PUT /v1/items, DELETE /v1/items/{item_id}: change the catalog without a new bundle."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from app.api.deps import BundleDep, StateDep, WriteAuth
from app.schemas import ItemDeleted, ItemsRequest, ItemsResponse

router = APIRouter(tags=["items"], dependencies=[WriteAuth])


@router.put("/v1/items", response_model=ItemsResponse)
def upsert_items(body: ItemsRequest, bundle: BundleDep, state: StateDep) -> ItemsResponse:
    """Embed each item's text with the bundle's item encoder and put it in its platform's index; it can
    be recommended from the next request on. An existing id is replaced."""
    version = state.upsert_items(bundle, [(i.item_id, i.platform, i.title) for i in body.items])
    return ItemsResponse(upserted=len(body.items), catalog_version=version, model_version=bundle.model_version)


@router.delete("/v1/items/{item_id:path}", response_model=ItemDeleted)
def delete_item(item_id: str, bundle: BundleDep, state: StateDep) -> ItemDeleted:
    """Never recommend the item again (histories that contain it keep it)."""
    version = state.delete_item(bundle, item_id)
    if version is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such item")
    return ItemDeleted(item_id=item_id, catalog_version=version)
