"""The routers of the service, one per area, in the order they are matched."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.routes import admin, audience, batch, docs, events, health, items, metrics, rank, recommend, ui

# /v1/recommend first: routes are matched in order and it is the hot one. /v1/items/audience before
# /v1/items/{item_id}, whose path also matches it: a 405 there names the audience route's methods (Allow: POST).
routers: list[APIRouter] = [recommend.router, rank.router, events.router, audience.router, items.router, batch.router,
                            admin.router, health.router, metrics.router, docs.router, ui.router]
