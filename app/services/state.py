"""Everything the service holds between requests, created once in the FastAPI lifespan.

`served` (the variants and their split; `bundle` is its first variant's) is the one reference a reload
swaps: a request reads it once (`require_served`, `require_bundle`) and keeps that bundle to the end, so a
reload never fails or mixes an in-flight request.

A/B variants (XREC_VARIANTS): every variant's bundle is loaded, each with its own catalog, caches keyed by
its model version and Redis profiles; events are ingested once (the first variant builds the profiles, the
others rebuild theirs from the same Redis events on the next request) and end every variant's cached lists;
catalog changes go to every variant's catalog.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from threadpoolctl import threadpool_limits

from app.core.config import DEFAULT_VARIANT, Settings, VariantSpec
from app.core.metrics import Metrics
from app.services.audience import AudienceFinder
from app.services.bus import Bus
from app.services.cache import RankedCache
from app.services.catalog_ops import CatalogService, check_item_platform
from app.services.errors import NoBundle
from app.services.event_log import CatalogChange, CatalogLog, EventLog, LoggedEvent, log_files, parse_events, read_lines
from app.services.model_bundle import LoadedBundle, load_bundle
from app.services.profiles import IngestOutcome, ProfileStore
from app.services.recommender import Recommender, prerender_rows
from app.services.redis_store import Keys, RedisGuard, RedisUnavailable, make_client
from app.services.variants import Served, Split, Variant
from contract.bundle import BundleError
from contract.ids import account_key

log = logging.getLogger(__name__)

REPLAY_BATCH = 500


class ServiceState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.keys = Keys(settings.redis_prefix)
        self.redis = make_client(settings)
        self.guard = RedisGuard(self.redis, self.keys, settings, self.metrics)
        self.profiles = ProfileStore(self.guard, self.keys, settings, self.metrics)
        self.ranked = RankedCache(settings.ranked_cache_size, settings.ranked_cache_ttl_s)
        self.event_log = EventLog(settings.events_dir)
        self.catalog = CatalogService(self.guard, self.keys, CatalogLog(settings.events_dir), self.metrics)
        self.recommender = Recommender(settings, self.profiles, self.ranked, self.guard, self.metrics)
        self.audience = AudienceFinder(settings, self.profiles, self.recommender)
        self.bus = Bus(settings.redis_url, self.keys, self.guard, settings.redis_connect_timeout_s)
        self.bus.handlers = {"person": self._on_person_message, "catalog": self._on_catalog_message}
        self.bus.on_reconnect = self._resync
        # Who has events since the bundle: loaded once the bus listens, distrusted while it does not.
        self.bus.on_subscribed = self.profiles.sync_evented
        self.bus.on_lost = self.profiles.evented.distrust
        self.guard.on_recover.append(self._resync)
        self.bundle: LoadedBundle | None = None  # the first variant's (the only one without XREC_VARIANTS)
        self.served: Served | None = None
        self.load_error: str | None = None
        self._reload_lock = threading.Lock()
        self._replay_lock = threading.Lock()
        self.metrics.index_items.collect = self._index_sizes

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        threadpool_limits(limits=self.settings.blas_threads, user_api="blas")  # process-wide, from now on
        with contextlib.suppress(RedisUnavailable):
            self.guard.load_scripts()
        self.recommender.start()
        self.bus.start()
        if self.settings.variants or self.settings.bundle_dir is not None:
            try:
                if self.settings.variants:
                    self.load_variants()
                else:
                    assert self.settings.bundle_dir is not None
                    self.load(self.settings.bundle_dir)
            except BundleError as e:
                # Stay up without a bundle: /readyz says why (503) and /v1/admin/reload can fix it.
                self.load_error = str(e)
                log.error("bundle not loaded: %s", e)

    def stop(self) -> None:
        self.recommender.stop()
        self.bus.stop()
        self.redis.close()

    def require_bundle(self) -> LoadedBundle:
        bundle = self.bundle
        if bundle is None:
            raise NoBundle("no bundle loaded")
        return bundle

    def require_served(self) -> Served:
        served = self.served
        if served is None:
            raise NoBundle("no bundle loaded")
        return served

    def bundles(self) -> list[LoadedBundle]:
        served = self.served
        return served.bundles() if served is not None else []

    def load(self, path: Path) -> LoadedBundle:
        """Serve this one bundle (the variant "default"): load fully (catalog changes re-applied, event log
        replayed), then swap. Raises BundleError."""
        return self._serve([VariantSpec(name=DEFAULT_VARIANT, bundle_dir=path, share=1.0)]).primary

    def load_variants(self, specs: list[VariantSpec] | None = None) -> Served:
        """Serve the A/B variants (default: XREC_VARIANTS), all loaded before any is swapped in."""
        return self._serve(specs or self.settings.variants)

    def _serve(self, specs: list[VariantSpec]) -> Served:
        with self._reload_lock:
            started = time.perf_counter()
            previous = self.bundles()
            try:
                bundles = []
                for spec in specs:
                    bundle = load_bundle(spec.bundle_dir, self.settings)
                    self.catalog.replay(bundle)
                    prerender_rows(bundle, self.settings.prerender_max_rows)
                    bundles.append(bundle)
                platforms = {tuple(b.platforms) for b in bundles}
                if len(platforms) > 1:
                    raise BundleError("the variants' bundles must serve the same platforms, in the same order: "
                                      + "; ".join(f"{s.name}: {b.platforms}" for s, b in zip(specs, bundles,
                                                                                             strict=True)))
            except Exception:
                self.metrics.reloads.inc(result="failed")
                raise
            split = Split([s.share for s in specs], self.settings.variant_salt.get_secret_value())
            served = Served(tuple(Variant(s.name, share, b) for s, share, b in zip(specs, split.shares, bundles,
                                                                                   strict=True)), split)
            self.served, self.bundle = served, served.primary
            self.load_error = None
            self.ranked.clear()
            self.audience.clear()  # user vectors of the previous bundle
            self.metrics.reloads.inc(result="ok")
            for b in previous:
                self.metrics.model_info.set(0, model_version=b.model_version, provider=b.provider)
            for v in served.variants:
                self.metrics.model_info.set(1, model_version=v.bundle.model_version, provider=v.bundle.provider)
                self.metrics.variant_share.set(v.share, variant=v.name, model_version=v.bundle.model_version)
            many = len(served.variants) > 1
            log.info("serving %s (%.1fs)", ", ".join(f"model {v.bundle.model_version}"
                                                     + (f" (variant {v.name}, {v.share:.0%})" if many else "")
                                                     for v in served.variants), time.perf_counter() - started)
        self.replay_event_log()
        return served

    # ---- events ---------------------------------------------------------------------------------------------

    def ingest(self, bundle: LoadedBundle, raw: Sequence[tuple]) -> tuple[IngestOutcome, int]:
        """(event_id, platform, account_id, item_id, event, ts[, variant]) → durable log (fsync) → profiles →
        caches. Returns the outcome and how many events name items the catalog does not have."""
        salt = self.settings.id_salt.get_secret_value()
        now = time.time()
        events = []
        for i, (event_id, platform, account, item_id, event, ts, *more) in enumerate(raw):
            self.recommender.platform_id(bundle, platform, ("body", "events", i, "platform"))
            check_item_platform(bundle, item_id, platform, ("body", "events", i, "item_id"))
            person = self.recommender.resolve_person(bundle, None, account, platform)
            events.append(LoggedEvent(event_id, platform, account, account_key(salt, platform, account), person,
                                      item_id, event, int(ts), now, more[0] if more else None))
        # Durable before anything else: an acknowledged event must survive a crash and a Redis loss.
        path, start, end = self.event_log.write(events)
        outcome = self.profiles.ingest(bundle, events)
        if not outcome.degraded:
            self._advance(path.name, start, end)
        self._invalidate(bundle, outcome.persons)
        served = self.served
        if self.settings.refresh_after_events and served is not None and outcome.persons:
            changed = set(outcome.persons)
            self.recommender.refresh(served, [(e.person, e.platform) for e in events if e.person in changed])
        self.metrics.events.inc(outcome.accepted, result="accepted")
        self.metrics.events.inc(outcome.duplicates, result="duplicate")
        unknown = sum(1 for e in events if e.item_id not in bundle.catalog.row_of)
        return outcome, unknown

    def _invalidate(self, bundle: LoadedBundle, persons: Sequence[str]) -> None:
        if not persons:
            return
        for b in self.bundles() or [bundle]:  # every variant's cached lists
            for p in persons:
                self.ranked.invalidate_person(b.model_version, p, len(b.platforms))
        for b in self.bundles():
            if b is not bundle:  # built by `bundle` only; the others rebuild from Redis, or the snapshot
                for p in persons:
                    self.profiles.local.pop((b.model_version, p))
        self.bus.publish("person", p=list(persons))

    def _advance(self, file_name: str, start: int, end: int) -> None:
        """Bytes [start, end) of the file are applied: the replay offset moves to the end of the applied
        prefix (forward only, whatever order batches finish in; see ADVANCE_LUA)."""
        # Unavailable: the next replay re-reads those lines; event ids make that harmless.
        keys = [self.keys.replay(file_name), self.keys.replay_acked(file_name)]
        with contextlib.suppress(RedisUnavailable):
            self.guard.run(lambda r: self.guard.advance(keys=keys, args=[start, end, self.settings.event_ttl_s]))

    def replay_event_log(self) -> int:
        """Apply logged events Redis has not seen (it restarted empty, or was down when they came).

        Per file, Redis remembers how many bytes were applied; the rest is re-ingested (idempotent by
        event id) and the affected persons' cached profiles dropped, to be rebuilt on their next request.
        """
        bundle = self.bundle
        if bundle is None or not self._replay_lock.acquire(blocking=False):
            return 0
        applied = 0
        started = last_said = time.monotonic()
        try:
            # Older files than the idempotency window would come back as new events: skip them.
            oldest = time.time() - self.settings.event_ttl_s
            for path in log_files(self.settings.events_dir):
                if path.stat().st_mtime < oldest:
                    continue
                key = self.keys.replay(path.name)
                offset = int(self.guard.run(lambda r, k=key: r.get(k)) or 0)
                lines, end = read_lines(path, offset)
                events = parse_events(lines, path)
                for i in range(0, len(events), REPLAY_BATCH):
                    if time.monotonic() - last_said >= self.settings.replay_progress_s:
                        last_said = time.monotonic()
                        # A long replay (Redis came back empty, a large log) says how far it is.
                        log.info("event log replay: %s: %d of %d events read, %d new so far (%.1fs)", path.name, i,
                                 len(events), applied, last_said - started)
                    batch = events[i:i + REPLAY_BATCH]
                    new = self.profiles.append_events(batch)
                    persons = list(dict.fromkeys(e.person for e in new))
                    if persons:
                        stale = [self.keys.profile(b.model_version, p) for b in self.bundles() or [bundle]
                                 for p in persons]
                        self.guard.run(lambda r, ks=stale: r.delete(*ks))
                        self._invalidate(bundle, persons)
                    applied += len(new)
                if end != offset:
                    self._advance(path.name, offset, end)
        except RedisUnavailable:
            log.warning("event log replay stopped: Redis unavailable (it resumes when Redis returns)")
        finally:
            self._replay_lock.release()
        if applied:
            log.info("replayed %d events from the event log into Redis (%.1fs)", applied, time.monotonic() - started)
        return applied

    # ---- catalog --------------------------------------------------------------------------------------------

    def upsert_items(self, bundle: LoadedBundle,
                     items: Sequence[tuple[str, str, str, dict[str, str | float] | None, bool | None]]) -> int:
        """(item_id, platform, title, attributes, available) → every variant's catalog; attributes or
        availability left out (None) keep the item's current ones (a new item: none, available). The change
        is recorded with the resolved values, so a replay restores the item as it is now."""
        catalog = bundle.catalog
        changes = []
        for i, (item_id, platform, title, attributes, available) in enumerate(items):
            self.recommender.platform_id(bundle, platform, ("body", "items", i, "platform"))
            row = catalog.row_of.get(item_id)
            current = row is not None and bool(catalog.live[row])
            if attributes is None and current:
                attributes = catalog.attributes_of(row)  # type: ignore[arg-type]
            if available is None:
                available = catalog.is_available(row) if current else True  # type: ignore[arg-type]
            changes.append(CatalogChange("upsert", item_id, platform, title, attributes=attributes,
                                         available=available))
        version = self._apply_everywhere(bundle, changes)
        self.catalog.record(changes)
        self.bus.publish("catalog", ids=[c.item_id for c in changes])
        return version

    def delete_item(self, bundle: LoadedBundle, item_id: str) -> int | None:
        """The new catalog version, or None when the item is not in the catalog (or already deleted)."""
        if not bundle.catalog.is_live(item_id):
            return None
        change = CatalogChange("delete", item_id)
        version = self._apply_everywhere(bundle, [change])
        self.catalog.record([change])
        self.bus.publish("catalog", ids=[item_id])
        return version

    def _apply_everywhere(self, bundle: LoadedBundle, changes: list[CatalogChange]) -> int:
        """Apply to `bundle` and every other variant; `bundle`'s new catalog version."""
        version = self.catalog.apply(bundle, changes)
        for other in self.bundles():
            if other is not bundle:
                self.catalog.apply(other, changes)
        return version

    # ---- messages from other replicas, recovery ---------------------------------------------------------

    def _on_person_message(self, message: dict) -> None:
        persons = message.get("p", [])
        self.profiles.evented.add(persons)  # before the invalidation: a request after it asks Redis
        for bundle in self.bundles():
            for p in persons:
                self.ranked.invalidate_person(bundle.model_version, p, len(bundle.platforms))
                self.profiles.local.pop((bundle.model_version, p))

    def _on_catalog_message(self, message: dict) -> None:
        bundles = self.bundles()
        if bundles:
            changes = self.catalog.stored(message.get("ids", []))
            for bundle in bundles if changes else []:
                self.catalog.apply(bundle, changes)

    def _resync(self) -> None:
        """After missing messages or Redis being away: drop cached lists, replay the event log."""
        self.ranked.clear()
        self.replay_event_log()

    def _index_sizes(self) -> dict[tuple[str, ...], float]:
        bundle = self.bundle
        if bundle is None:
            return {}
        return {(bundle.platforms[p],): float(n) for p, n in bundle.catalog.index_sizes().items()}

