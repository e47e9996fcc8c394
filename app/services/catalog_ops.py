"""Items added, changed or removed online: embedded with the bundle's item encoder, swapped into the index.

A change is recorded three ways: in the durable catalog log (this replica's disk), in the Redis hash
`{prefix}:catalog` (shared by replicas, latest change per item) and announced on the bus so other
replicas apply it at once. A newly loaded bundle gets the recorded changes re-applied (`replay`), so an
item added online survives restarts and reloads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

import numpy as np

from app.core.metrics import Metrics
from app.services.errors import InputError
from app.services.event_log import CatalogChange, CatalogLog, read_catalog_changes
from app.services.model_bundle import LoadedBundle
from app.services.redis_store import Keys, RedisGuard, RedisUnavailable
from app.services.retrieval import Catalog

log = logging.getLogger(__name__)


class CatalogService:
    def __init__(self, guard: RedisGuard, keys: Keys, catalog_log: CatalogLog, metrics: Metrics) -> None:
        self.guard = guard
        self.keys = keys
        self.log = catalog_log
        self.metrics = metrics

    def apply(self, bundle: LoadedBundle, changes: Sequence[CatalogChange]) -> int:
        """Apply changes to the bundle's catalog (copy-on-write, one swap); returns the new catalog version.
        Later changes to the same item win. An upsert that keeps a live item's title and platform changes
        only its attributes and availability, in place (no new vector, row or item-KNN loss); any other gets
        a new row with its text embedded."""
        latest: dict[str, CatalogChange] = {}
        for c in changes:
            latest[c.item_id] = c
        upserts = [c for c in latest.values() if c.op == "upsert" and c.platform in bundle.platform_of]
        deletes = [c.item_id for c in latest.values() if c.op == "delete"]
        same = {c.item_id for c in upserts if _same_text(bundle, bundle.catalog, c)}
        vecs = self._embed(bundle, [c for c in upserts if c.item_id not in same])
        with bundle.catalog_lock:
            catalog = bundle.catalog
            late = [c for c in upserts if c.item_id in same and not _same_text(bundle, catalog, c)]
            vecs.update(self._embed(bundle, late))  # changed meanwhile by another writer (rare)
            updates = [(c.item_id, c.attributes, c.available) for c in upserts if c.item_id not in vecs]
            new = [c for c in upserts if c.item_id in vecs]
            bundle.catalog = catalog.with_changes(
                [(c.item_id, bundle.platform_of[c.platform], c.title, vecs[c.item_id]) for c in new], deletes,
                updates, [(c.attributes, c.available) for c in new])
            return bundle.catalog.version

    @staticmethod
    def _embed(bundle: LoadedBundle, changes: Sequence[CatalogChange]) -> dict[str, np.ndarray]:
        if not changes:
            return {}
        vecs = bundle.embedder.embed([c.title for c in changes], [bundle.platform_of[c.platform] for c in changes])
        return {c.item_id: vecs[i] for i, c in enumerate(changes)}

    def record(self, changes: Sequence[CatalogChange]) -> None:
        """Durable first (fsync'd log), then shared (Redis, best effort: the log replays it locally)."""
        self.log.write(list(changes))
        try:
            self.guard.run(lambda r: r.hset(self.keys.catalog,
                                            mapping={c.item_id: c.to_json() for c in changes}))
        except RedisUnavailable:
            log.warning("catalog change recorded on disk only: Redis unavailable")

    def stored(self, item_ids: Sequence[str] | None = None) -> list[CatalogChange]:
        """Recorded changes, the latest per item, from the local log and Redis together."""
        changes = read_catalog_changes(self.log.directory)
        try:
            if item_ids is None:
                raw = self.guard.run(lambda r: r.hgetall(self.keys.catalog))
                values = list(raw.values())
            else:
                values = [v for v in self.guard.run(lambda r: r.hmget(self.keys.catalog, list(item_ids))) if v]
            changes += [CatalogChange.from_json(v) for v in values]
        except RedisUnavailable:
            pass
        except (ValueError, TypeError, json.JSONDecodeError):
            log.warning("unreadable catalog change in Redis, skipped")
        latest: dict[str, CatalogChange] = {}
        for c in sorted(changes, key=lambda c: c.at):
            if item_ids is None or c.item_id in item_ids:
                latest[c.item_id] = c
        return list(latest.values())

    def replay(self, bundle: LoadedBundle) -> int:
        """Re-apply recorded changes to a freshly loaded bundle. An upsert of an item the bundle already
        has is skipped when the bundle is newer than the change (its vector, trained, is the better one);
        deletes always apply."""
        created = _epoch(bundle.manifest.created_at)
        catalog = bundle.catalog
        keep = []
        for c in self.stored():
            if c.op == "delete" or c.item_id not in catalog.row_of or c.at > created:
                keep.append(c)
                continue
            # The bundle's text and vector are newer; the attributes and availability set online still hold.
            row = catalog.row_of[c.item_id]
            if (c.attributes is not None and c.attributes != catalog.attributes_of(row)) or not c.available:
                keep.append(replace(c, title=catalog.titles[row],
                                    platform=bundle.platforms[int(catalog.platform[row])]))
        if keep:
            self.apply(bundle, keep)
            log.info("re-applied %d recorded catalog changes to bundle %s", len(keep), bundle.model_version)
        return len(keep)


def _same_text(bundle: LoadedBundle, catalog: Catalog, c: CatalogChange) -> bool:
    """Whether the upsert keeps the item's live row (same title and platform): only attributes change."""
    row = catalog.row_of.get(c.item_id)
    return (row is not None and bool(catalog.live[row]) and catalog.titles[row] == c.title
            and bundle.platforms[int(catalog.platform[row])] == c.platform)


def item_platform(bundle: LoadedBundle, item_id: str) -> str | None:
    """The platform an item id belongs to: its catalog row's (live or deleted), else the platform it is
    namespaced with ('<platform>:<id>') when that is one of the bundle's; None when nothing says."""
    catalog = bundle.catalog
    row = catalog.row_of.get(item_id)
    if row is not None:
        return bundle.platforms[int(catalog.platform[row])]
    prefix, colon, _ = item_id.partition(":")
    return prefix if colon and prefix in bundle.platform_of else None


def check_item_platform(bundle: LoadedBundle, item_id: str, platform: str, loc: tuple[str | int, ...]) -> None:
    """Refuse (InputError at `loc`) an item of another platform than `platform`."""
    owner = item_platform(bundle, item_id)
    if owner is not None and owner != platform:
        raise InputError(loc, f"item {item_id!r} belongs to platform {owner!r}, not {platform!r}")


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0
