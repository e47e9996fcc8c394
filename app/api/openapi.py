"""The OpenAPI document (/openapi.json): FastAPI's, plus what only the loaded bundle knows — its platforms,
as an `enum` on every request field that names one (a platform outside it is a 422), and the rule that ties
an item id's namespace to its platform (`oneOf`, one branch per platform). Built once per set of platforms;
before a bundle is loaded, FastAPI's document as it is."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

# component → its fields that name a platform of the bundle
PLATFORM_FIELDS: dict[str, tuple[str, ...]] = {
    "RecommendRequest": ("platform", "account_platform"),
    "RankRequest": ("platform", "account_platform"),
    "BatchPerson": ("account_platform",),
    "BatchScoreRequest": ("platform",),
    "ContextEvent": ("platform",),
    "RankItem": ("platform",),
    "EventIn": ("platform",),
    "ItemIn": ("platform",),
}


def install(app: FastAPI, platforms: Callable[[], list[str] | None]) -> None:
    """Serve `app`'s document with the platform enums of `platforms()` (None: no bundle loaded)."""
    generate = app.openapi
    lock = threading.Lock()
    built: dict[tuple[str, ...], dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        base = generate()
        names = platforms()
        if not names:
            return base
        key = tuple(names)
        with lock:
            doc = built.get(key)
            if doc is None:
                doc = with_platforms(base, list(key))
                built.clear()  # one bundle at a time: keep the current document only
                built[key] = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def with_platforms(base: dict[str, Any], platforms: list[str]) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    schemas = doc.get("components", {}).get("schemas", {})
    for component, fields in PLATFORM_FIELDS.items():
        props = schemas.get(component, {}).get("properties", {})
        for field in fields:
            prop = props.get(field)
            if prop is None:
                continue
            # A nullable field is anyOf [string, null]: the enum goes on the string.
            target = next((s for s in prop.get("anyOf", []) if s.get("type") == "string"), prop)
            target["enum"] = list(platforms)
            prop["description"] = (prop.get("description", "") + " (one of the loaded bundle's platforms)").strip()
    # An item added to the catalog is namespaced by its own platform.
    if "ItemIn" in schemas:
        schemas["ItemIn"]["oneOf"] = [
            {"title": p, "properties": {"platform": {"const": p}, "item_id": {"pattern": f"^{_regex_escape(p)}:"}}}
            for p in platforms]
    # An event's (or context event's) item may not be namespaced by another of the bundle's platforms.
    if len(platforms) > 1:
        for component in ("EventIn", "ContextEvent"):
            if component in schemas:
                schemas[component]["oneOf"] = [
                    {"title": p, "properties": {"platform": {"const": p}, "item_id": {"not": {
                        "pattern": "^(?:" + "|".join(_regex_escape(q) for q in platforms if q != p) + "):"}}}}
                    for p in platforms]
    return doc


def _regex_escape(text: str) -> str:
    """`text` as a literal in an ECMA-262 pattern (the dialect of OpenAPI's `pattern`)."""
    return "".join("\\" + c if c in r"\^$.|?*+()[]{}/" else c for c in text)
