"""GET /docs (Swagger UI) and /redoc (ReDoc), with their JavaScript, CSS and icon served by the service
itself from the `fastapi-offline` package (a base dependency): the pages work on a machine without
internet, and load nothing from a CDN. FastAPI's own /docs and /redoc (CDN) are switched off in app/main.py.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, swagger_ui_default_parameters
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs/assets"
# swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
assets = StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static")

router = APIRouter(include_in_schema=False)


def _urls(request: Request) -> tuple[str, str]:
    """(the OpenAPI document's URL, the assets' URL prefix), behind a proxy's root path too."""
    root = request.scope.get("root_path", "")
    return f"{root}{request.app.openapi_url}", f"{root}{ASSETS_PATH}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    openapi_url, assets_url = _urls(request)
    # validatorUrl None: Swagger UI would otherwise send the document to validator.swagger.io.
    return get_swagger_ui_html(openapi_url=openapi_url, title=f"{request.app.title} - Swagger UI",
                               swagger_js_url=f"{assets_url}/swagger-ui-bundle.js",
                               swagger_css_url=f"{assets_url}/swagger-ui.css",
                               swagger_favicon_url=f"{assets_url}/favicon.png",
                               swagger_ui_parameters={**swagger_ui_default_parameters, "validatorUrl": None})


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    openapi_url, assets_url = _urls(request)
    return get_redoc_html(openapi_url=openapi_url, title=f"{request.app.title} - ReDoc",
                          redoc_js_url=f"{assets_url}/redoc.standalone.js",
                          redoc_favicon_url=f"{assets_url}/favicon.png", with_google_fonts=False)
