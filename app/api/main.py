"""The routers of the service, one per area, in the order they are matched."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.routes import admin, batch, docs, events, health, items, metrics, rank, recommend, ui

# /v1/recommend first: routes are matched in order and it is the hot one.
routers: list[APIRouter] = [recommend.router, rank.router, events.router, items.router, batch.router,
                            admin.router, health.router, metrics.router, docs.router, ui.router]
