"""GET /ui: the operator and sales-demo page (app/static/: plain HTML, CSS and JavaScript, nothing from a
CDN, so it works offline). Look a person up by account or person id, see their fused timeline
(POST /v1/history), their recommendations per platform with scores and reasons (POST /v1/recommend), try a
new item's text against them (POST /v1/rank), and see who a new item would be recommended to
(POST /v1/items/audience). The page itself needs no key; its calls send the API key typed into it as
X-API-Key."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.errors import ApiError
from app.api.routes import history

STATIC = Path(__file__).resolve().parents[2] / "static"
# Served files and their media types; nothing else under app/static is reachable.
ASSETS = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}
# The page talks to this service only (the API key must not leave it); inline scripts and styles are off.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}

router = APIRouter()
router.include_router(history.router)  # POST /v1/history: the page's timeline (an API route, in the schema)


@router.get("/ui", include_in_schema=False)
async def ui_page() -> FileResponse:
    return FileResponse(STATIC / "ui.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/ui/{name}", include_in_schema=False)
async def ui_asset(name: str) -> FileResponse:
    media = ASSETS.get(name)
    if media is None:
        raise ApiError(404, f"no such file: {name}")
    return FileResponse(STATIC / name, media_type=media, headers=HEADERS)
