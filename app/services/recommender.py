"""Request-level work around `app.services.ranking`: who the person is, their profile, the ranked-list
cache, and the response JSON. Ranking itself is delegated, so online and offline results agree.

Warm path (`from_cache`): no I/O, no ONNX, no FAISS — a dict lookup and a join of pre-serialised JSON
fragments, cheap enough to run on the event loop. Uncached /v1/recommend requests (`compute_batched`) go to
the micro-batcher's worker thread (app/services/batching.py), which computes the requests that arrive
together as one batch (`compute_many`): at most one Redis round trip, one user-encoder call, one FAISS search
per platform, one scorer call. `rank_items` and `batch_lines` block and run in the threadpool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.core.config import Settings
from app.core.metrics import Metrics
from app.services.batching import MicroBatcher
from app.services.cache import LRU, Fragments, RankedCache, RankedEntry, RankedKey
from app.services.catalog_ops import check_item_platform
from app.services.errors import InputError, Overloaded
from app.services.model_bundle import LoadedBundle
from app.services.profiles import Fetched, Profile, ProfileStore, merge_events
from app.services.ranking import (
    History,
    Query,
    Ranked,
    explain,
    popular,
    rank,
    score_items,
    user_vectors,
)
from app.services.redis_store import RedisGuard
from app.services.retrieval import Catalog
from app.services.rules import Rules, allowed_mask, bought_rows, capped, diversify
from app.services.variants import Served, Variant
from contract.ids import account_key, unlinked_person_key
from contract.kg import ItemEntities, other_platform_entities, shared_entity

_NO_ROWS = np.zeros(0, dtype=np.int64)
_REFRESH_K = 20  # results rendered ahead by `refresh`: the API's default k (app.schemas.RecommendRequest)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ask:
    """A /v1/recommend request, resolved against the bundle."""

    person: str
    target: int
    k: int
    exclude_seen: bool = True
    exclude_ids: frozenset[str] = frozenset()
    context: tuple[tuple[str, str, int, str], ...] = ()  # (item_id, platform, ts, event type), not stored
    now: float | None = None
    # False for a keyless read (XREC_READ_AUTH=false): reasons name items of the target platform only.
    all_reasons: bool = True
    rules: Rules | None = None  # filters, diversity (app.services.rules)

    @property
    def cacheable(self) -> bool:
        # Context events, a fixed clock and business rules make the answer specific to this one request.
        return not self.context and self.now is None and self.rules is None


@dataclass
class Answer:
    fragments: list[bytes]
    cold_start: bool
    cache: str  # hit | miss | degraded
    ranked: Ranked | None = None  # what ranking returned (tests compare it with a direct call)


@dataclass
class _Work:
    """One request of a batch on its way through `compute_many`."""

    ask: Ask
    profile: Profile
    history: History
    user_vec: np.ndarray | None
    exclude_rows: np.ndarray
    now: float
    n: int  # candidates to retrieve
    cache_it: bool  # rank for the ranked cache (no request-specific exclusions), then answer from the entry
    ranked: Ranked | None = None
    allowed: np.ndarray | None = None  # the request's filters as a row mask
    answer: Answer | BaseException | None = None


@dataclass
class _Batch:
    """Requests of one bundle between `begin_many` and `finish_many`."""

    bundle: LoadedBundle
    asks: list[Ask]
    since: int  # the ranked cache's epoch when the batch began: a list computed from older data is not kept
    catalog: Catalog
    state: str = "miss"  # miss | degraded (Redis unavailable: profiles from the snapshot)
    works: list[_Work] = field(default_factory=list)
    failed: Exception | None = None  # a shared step failed: `finish_many` redoes the requests one by one


class Recommender:
    def __init__(self, settings: Settings, profiles: ProfileStore, cache: RankedCache, guard: RedisGuard,
                 metrics: Metrics) -> None:
        self.salt = settings.id_salt.get_secret_value()
        self.profiles = profiles
        self.cache = cache
        self.guard = guard
        self.metrics = metrics
        self.depth = settings.ranked_cache_depth
        self.n_reasons = settings.n_reasons
        self.cap = settings.profile_max_events
        self.batch_chunk = settings.batch_chunk
        self.purchase_event = settings.purchase_event
        self.refresh_reasons = settings.read_auth  # what a default read sees: all platforms' reasons with a key
        # ranked lists `refresh` is computing: a request for one of them waits for it instead of computing it twice
        self._refreshing: dict[RankedKey, Future] = {}
        self._refreshing_lock = threading.Lock()
        self.embed_cache: LRU[tuple[str, int, str], np.ndarray] = LRU(settings.embed_cache_size)
        # Two stages in two threads (settings.recommend_pipeline): one batch's model calls overlap the next's Python.
        two = settings.recommend_pipeline
        self.batcher: MicroBatcher[tuple[LoadedBundle, Ask], Answer] = MicroBatcher(
            self._finish_jobs if two else lambda jobs: self._finish_jobs(self._begin_jobs(jobs)),
            prepare=self._begin_jobs if two else None, window_s=settings.recommend_batch_window_ms / 1000.0,
            max_batch=settings.recommend_batch_max, max_queue=settings.recommend_queue_max,
            after_batch=profiles.flush_stores, observe=self._observe_batch, name="xrec-recommend-batcher")

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    # ---- who ----------------------------------------------------------------------------------------------

    def platform_id(self, bundle: LoadedBundle, platform: str, loc: tuple[str | int, ...]) -> int:
        pid = bundle.platform_of.get(platform)
        if pid is None:
            raise InputError(loc, f"unknown platform {platform!r}; this bundle has {bundle.platforms}")
        return pid

    def resolve_person(self, bundle: LoadedBundle, person_id: str | None, account_id: str | None,
                       account_platform: str, loc: tuple[str | int, ...] = ("body",)) -> str:
        """The pseudonymous person: given, or from the account's keyed hash (linked accounts share their
        person via accounts.parquet; an account the bundle never saw is a person of its own)."""
        if person_id is not None:
            return person_id
        assert account_id is not None
        self.platform_id(bundle, account_platform, (*loc, "account_platform"))
        person = bundle.accounts.get(account_key(self.salt, account_platform, account_id))
        return person or unlinked_person_key(self.salt, account_platform, account_id)

    def resolve_variant(self, served: Served, body: Any) -> tuple[Variant, int, str]:
        """(variant, target platform id, person) of a recommend/rank body: the person as the first variant's
        bundle knows them decides the variant; then the variant's own bundle resolves the request."""
        primary = served.primary
        target, person = self.resolve_request(primary, body)
        variant = served.pick(person)
        if variant.bundle is not primary:
            target, person = self.resolve_request(variant.bundle, body)
        return variant, target, person

    def rules(self, body: Any) -> Rules | None:
        """A request's business rules (`filters`, `diversity`), or None."""
        if body.filters is None and body.diversity is None:  # the common case: nothing to build
            return None
        return Rules.of(body.filters, body.diversity, self.purchase_event)

    def resolve_request(self, bundle: LoadedBundle, body: Any) -> tuple[int, str]:
        """(target platform id, person) of a recommend/rank body; every platform it names is checked, so a
        bad one is a 422 with its field path."""
        target = self.platform_id(bundle, body.platform, ("body", "platform"))
        person = self.resolve_person(bundle, body.person_id, body.account_id, body.account_platform or body.platform)
        for i, e in enumerate(body.context_events):
            self.platform_id(bundle, e.platform, ("body", "context_events", i, "platform"))
            check_item_platform(bundle, e.item_id, e.platform, ("body", "context_events", i, "item_id"))
        return target, person

    # ---- /v1/recommend ---------------------------------------------------------------------------------

    def key(self, bundle: LoadedBundle, ask: Ask) -> RankedKey:
        return (bundle.model_version, ask.person, ask.target, ask.exclude_seen, ask.all_reasons)

    def from_cache(self, bundle: LoadedBundle, ask: Ask) -> Answer | None:
        """The warm path; None when the request must be computed."""
        # Lists are cached for the bundle's candidate count; a larger k retrieves more candidates.
        if not ask.cacheable or ask.k > bundle.models.retrieval_candidates:
            return None
        entry = self.cache.get(self.key(bundle, ask), bundle.catalog.version)
        if entry is None or (ask.exclude_ids and _among(_live_rows(bundle.catalog, ask.exclude_ids),
                                                         entry.candidate_rows)):
            return None
        frags = _take(entry, ask.exclude_ids, ask.k)
        if frags is None:
            return None
        state = "hit" if self.guard.healthy else "degraded"
        self.metrics.ranked_cache.inc(result=state)
        return Answer(frags, entry.cold_start, state)

    async def compute_batched(self, bundle: LoadedBundle, ask: Ask) -> Answer:
        """`compute` in the micro-batcher's worker, together with the requests that arrive with it. Raises
        Overloaded when too many requests already wait. A list `refresh` is already computing is awaited,
        not computed again."""
        if ask.cacheable:
            pending = self._refreshing.get(self.key(bundle, ask))
            if pending is not None:
                with contextlib.suppress(Exception):  # failed: computed below, where the error is the request's
                    await asyncio.wrap_future(pending)
                answer = self.from_cache(bundle, ask)
                if answer is not None:
                    return answer
        return await self.batcher.run((bundle, ask))

    def refresh(self, served: Served, pairs: Iterable[tuple[str, str]]) -> None:
        """Rank (person, platform name) lists ahead of the person's next request, e.g. right after their
        events: queued with the uncached requests, so the request that follows an event is answered from the
        ranked cache (or waits for this computation). It never takes a request's place: beyond half the queue
        it is skipped, and the request computes its list itself."""
        for person, platform in dict.fromkeys(pairs):
            bundle = served.pick(person).bundle
            target = bundle.platform_of.get(platform)
            if target is None:
                continue
            ask = Ask(person, target, _REFRESH_K, all_reasons=self.refresh_reasons)
            key = self.key(bundle, ask)
            with self._refreshing_lock:
                if key in self._refreshing:
                    continue
                try:
                    future = self.batcher.submit((bundle, ask), keep_free=self.batcher.max_queue // 2)
                except Overloaded:
                    log.debug("refresh skipped: the recommend queue is half full")
                    break
                self._refreshing[key] = future
            future.add_done_callback(lambda _, key=key: self._refresh_done(key))

    def _refresh_done(self, key: RankedKey) -> None:
        with self._refreshing_lock:
            self._refreshing.pop(key, None)

    def compute(self, bundle: LoadedBundle, ask: Ask) -> Answer:
        """One request on its own (a batch of one); raises what failed it."""
        (answer,) = self.compute_many(bundle, [ask])
        self.profiles.flush_stores()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _begin_jobs(self, jobs: list[tuple[LoadedBundle, Ask]]) -> tuple[int, list[tuple[list[int], _Batch]]]:
        """The batcher's first stage: `begin_many` per bundle (a reload may be under way)."""
        by_bundle: dict[int, list[int]] = {}
        for i, (bundle, _) in enumerate(jobs):
            by_bundle.setdefault(id(bundle), []).append(i)
        return len(jobs), [(idx, self.begin_many(jobs[idx[0]][0], [jobs[i][1] for i in idx]))
                           for idx in by_bundle.values()]

    def _finish_jobs(self, begun: tuple[int, list[tuple[list[int], _Batch]]]) -> list[Answer | BaseException]:
        """The batcher's second stage: `finish_many` of what `_begin_jobs` began, answers in request order."""
        n, groups = begun
        out: list[Answer | BaseException | None] = [None] * n
        for idx, batch in groups:
            for i, answer in zip(idx, self.finish_many(batch), strict=True):
                out[i] = answer
        return [a if a is not None else RuntimeError("not answered") for a in out]

    def _observe_batch(self, size: int, holds: list[float]) -> None:
        self.metrics.recommend_batch.observe(size)
        for h in holds:
            self.metrics.recommend_hold.observe(h)

    def compute_many(self, bundle: LoadedBundle, asks: Sequence[Ask]) -> list[Answer | BaseException]:
        """Each request's answer, or the exception that failed it (the same answers as one request at a time).

        Profile → (popular | retrieve + re-rank) → fragments, filling the ranked cache when it may. The
        requests share one profile read (at most one Redis round trip), one user-encoder call, one FAISS
        search per platform and one scorer call. A shared step that fails is redone request by request, so a
        failure fails only the request it comes from. Profiles built from Redis events are written back at
        the next `profiles.flush_stores()` (the batcher's, after the answers are out).

        In two steps, which the micro-batcher runs in two threads: `begin_many` (profiles, histories, user
        vectors) and `finish_many` (candidates, scorer, fragments).
        """
        return self.finish_many(self.begin_many(bundle, asks))

    def begin_many(self, bundle: LoadedBundle, asks: Sequence[Ask]) -> _Batch:
        """Profiles (one Redis round trip at most), histories, the popular answers, one user-encoder call."""
        batch = _Batch(bundle, list(asks), self.cache.epoch(), bundle.catalog)  # one table for the whole batch
        try:
            fetched = self.profiles.fetch(bundle, [a.person for a in asks])
            batch.state = "degraded" if fetched.degraded else "miss"
            batch.works = [self._prepare(bundle, batch.catalog, ask, profile, batch.since, batch.state)
                           for ask, profile in zip(asks, fetched.profiles, strict=True)]
            self._user_vectors(bundle, batch.catalog, fetched, [w for w in batch.works if w.answer is None])
        except Exception as e:
            batch.failed = e
        return batch

    def finish_many(self, batch: _Batch) -> list[Answer | BaseException]:
        """Rank what `begin_many` prepared (one FAISS search per platform, one scorer call) and answer."""
        error = batch.failed
        if error is None:
            try:
                return self._finish_batch(batch)
            except Exception as e:
                error = e
        if len(batch.asks) == 1:
            return [error]
        return [self.compute_many(batch.bundle, [ask])[0] for ask in batch.asks]

    def _finish_batch(self, batch: _Batch) -> list[Answer | BaseException]:
        bundle, catalog, works = batch.bundle, batch.catalog, batch.works
        for _ in range(2):  # a request whose exclusions are among its cached candidates ranks once more
            todo = [w for w in works if w.answer is None]
            if not todo:
                break
            self._rank(bundle, catalog, todo)
            for w in todo:
                try:
                    w.answer = self._finish(bundle, catalog, w, batch.since, batch.state)
                except Exception as e:
                    w.answer = e
        answers = [w.answer for w in works]
        self.metrics.ranked_cache.inc(sum(isinstance(a, Answer) for a in answers), result=batch.state)
        return [a if a is not None else RuntimeError("not answered") for a in answers]

    def _prepare(self, bundle: LoadedBundle, catalog: Catalog, ask: Ask, profile: Profile, since: int,
                 state: str) -> _Work:
        """History and user vector (when the profile has it); the popular items when there is no history."""
        try:
            now = time.time() if ask.now is None else float(ask.now)
            history, user_vec = self._history(bundle, catalog, profile, ask.context, ask.target)
            exclude_rows = _live_rows(catalog, ask.exclude_ids)
            n = max(bundle.models.retrieval_candidates, ask.k)
            rules = ask.rules
            if rules is not None:
                exclude_rows = np.union1d(exclude_rows, _bought(catalog, rules, profile, ask.context, now))
                if rules.caps:  # room to skip items over a cap
                    n = max(n, 3 * ask.k)
            w = _Work(ask, profile, history, user_vec, exclude_rows, now, n,
                      ask.cacheable and n == bundle.models.retrieval_candidates,
                      allowed=allowed_mask(catalog, ask.target, rules))
            if len(history) == 0 and rules is not None:  # cold start under rules: popular items passing them
                depth = max(self.depth, ask.k) * (10 if rules.caps else 1)
                top = diversify(catalog, popular(catalog, ask.target, depth, exclude_rows, w.allowed), ask.k, rules)
                w.answer = Answer(self._fragments(bundle, catalog, history, top, ask), True, state, top)
            elif len(history) == 0:  # cold start with nothing to go on: the platform's popular items
                depth = max(self.depth, ask.k + len(exclude_rows))
                base = popular(catalog, ask.target, depth)
                frags = self._lazy_fragments(bundle, catalog, history, base, ask)
                entry = RankedEntry(catalog.version, profile.seq, _ids(catalog, base.rows), frags,
                                    _NO_ROWS, True, len(base.rows) < depth)
                if w.cache_it:
                    self.cache.put(self.key(bundle, ask), entry, since)
                w.answer = Answer(_take(entry, ask.exclude_ids, ask.k) or [], True, state, base)
            return w
        except Exception as e:
            return _Work(ask, profile, History.of([], [], []), None, _NO_ROWS, 0.0, 0, False, answer=e)

    def _user_vectors(self, bundle: LoadedBundle, catalog: Catalog, fetched: Fetched, works: list[_Work]) -> None:
        """One user-encoder call for every vector the batch lacks: the requests' (history, target), and
        every platform's for profiles built from Redis events (they are stored with them)."""
        n_platforms = len(bundle.platforms)
        built = [(p, p.history(catalog)) for p in fetched.built]
        built = [(p, h) for p, h in built if len(h)]
        from_built = {p.person for p, _ in built}
        need = [w for w in works if w.user_vec is None and (w.ask.context or w.profile.person not in from_built)]
        histories = [h for _, h in built for _ in range(n_platforms)] + [w.history for w in need]
        targets = list(range(n_platforms)) * len(built) + [w.ask.target for w in need]
        if not histories:
            return
        u = user_vectors(bundle.models, catalog, histories, targets)
        done: dict[str, Profile] = {}
        for j, (p, _) in enumerate(built):
            block = u[j * n_platforms:(j + 1) * n_platforms]
            done[p.person] = replace(p, vecs={t: block[t].copy() for t in range(n_platforms)})
        self.profiles.store_later(bundle, list(done.values()))
        for w, v in zip(need, u[len(built) * n_platforms:], strict=True):
            w.user_vec = v
            if not w.ask.context:  # a vector of the profile's own history: keep it with the profile
                w.profile.vecs.setdefault(w.ask.target, v)
        for w in works:
            if w.user_vec is None:
                w.user_vec = done[w.profile.person].vecs[w.ask.target]

    def _rank(self, bundle: LoadedBundle, catalog: Catalog, works: list[_Work]) -> None:
        """`rank` for these requests: one call per candidate count (one call, unless a k is above it)."""
        by_n: dict[int, list[_Work]] = {}
        for w in works:
            by_n.setdefault(w.n, []).append(w)
        for n, group in by_n.items():
            queries = [Query(w.history, w.ask.target, w.now, w.ask.exclude_seen,
                             _NO_ROWS if w.cache_it else w.exclude_rows, w.allowed) for w in group]
            users = np.stack([w.user_vec for w in group])  # type: ignore[misc]
            for w, ranked in zip(group, rank(bundle.models, catalog, queries, users, n), strict=True):
                w.ranked = ranked

    def _finish(self, bundle: LoadedBundle, catalog: Catalog, w: _Work, since: int, state: str) -> Answer | None:
        """The answer from the ranking, filling the ranked cache when it may. None when the request's own
        exclusions are among the cached ranking's candidates: it is ranked again, with them."""
        ask, history, ranked = w.ask, w.history, w.ranked
        assert ranked is not None
        cold = not w.profile.known
        if w.cache_it:
            depth = max(self.depth, ask.k)
            top = Ranked(ranked.rows[:depth], ranked.scores[:depth], ranked.candidates)
            entry = RankedEntry(catalog.version, w.profile.seq, _ids(catalog, top.rows),
                                self._lazy_fragments(bundle, catalog, history, top, ask),
                                ranked.candidates, cold, len(ranked.rows) <= depth)
            self.cache.put(self.key(bundle, ask), entry, since)
            if not _among(w.exclude_rows, entry.candidate_rows):
                return Answer(_take(entry, ask.exclude_ids, ask.k) or [], cold, state, ranked)
            w.cache_it = False
            return None
        top = diversify(catalog, ranked, ask.k, ask.rules)
        return Answer(self._fragments(bundle, catalog, history, top, ask), cold, state, ranked)

    def render(self, bundle: LoadedBundle, answer: Answer, started: float, variant: str) -> bytes:
        """The RecommendResponse JSON, assembled from cached fragments (no per-item serialisation)."""
        took = (time.perf_counter() - started) * 1000.0
        return b"".join((b'{"items":[', b",".join(answer.fragments), b'],"model_version":',
                         json.dumps(bundle.model_version).encode(), b',"variant":', json.dumps(variant).encode(),
                         b',"cache":"', answer.cache.encode(),
                         b'","cold_start":', b"true" if answer.cold_start else b"false",
                         b',"took_ms":', f"{took:.3f}".encode(), b"}"))

    def _history(self, bundle: LoadedBundle, catalog: Catalog, profile: Profile,
                 context: Sequence[tuple], target: int) -> tuple[History, np.ndarray | None]:
        """The history to rank with and, when the profile already has it, the user vector."""
        if context:
            merged = merge_events(bundle, profile.person, context, profile.seq, self.cap, base=profile)
            return History.from_ids(catalog, merged.item_ids, merged.platforms, merged.ts), None
        history = History.from_ids(catalog, profile.item_ids, profile.platforms, profile.ts)
        return history, profile.vecs.get(target)

    def _lazy_fragments(self, bundle: LoadedBundle, catalog: Catalog, history: History, ranked: Ranked, ask: Ask
                        ) -> Fragments:
        """`_fragments` of each result when first sent (reasons and JSON of the k sent, not of all cached)."""
        def render(idx: list[int]) -> list[bytes]:
            sub = np.asarray(idx, dtype=np.int64)
            return self._fragments(bundle, catalog, history, Ranked(ranked.rows[sub], ranked.scores[sub],
                                                                    ranked.candidates), ask)
        return Fragments(len(ranked.rows), render)

    def _fragments(self, bundle: LoadedBundle, catalog: Catalog, history: History, ranked: Ranked, ask: Ask
                   ) -> list[bytes]:
        reason_rows, reason_w = self._explain(bundle, catalog, history, catalog.vectors[ranked.rows], ask.target,
                                              ask.all_reasons)
        # Each result's JSON from pieces made once per row (item id, title, platform: JSON-escaped once).
        pieces = bundle.row_json
        platforms = bundle.platforms

        def piece(row: int, kind: str) -> bytes:  # made at load for most catalogs; else made once, kept
            got = pieces.get((row, kind))
            if got is None:
                got = pieces[(row, kind)] = row_piece(catalog, platforms, row, kind)
            return got

        # Knowledge-graph reasons name other platforms' items: only for reads that may see every platform. Most
        # results share no entity with that history: a set lookup finds the few that need `shared_entity`.
        kg = bundle.models.kg
        reach = (set() if kg.is_empty or not ask.all_reasons else
                 set(other_platform_entities(kg, history.rows, history.platforms, ask.target).tolist()))
        entity = [_entity_reason(kg, catalog, platforms, history, ask.target, row)
                  if reach and not reach.isdisjoint(kg.of(row).tolist()) else None for row in ranked.rows.tolist()]
        # Every number of the answer written by one C call (json's float repr), not one Python call each.
        scores = _nums(ranked.scores)
        weights = _nums(np.round(reason_w.astype(np.float64), 6))
        n_reasons = reason_rows.shape[1] if reason_rows.ndim == 2 else 0
        out = []
        for i, (row, r_rows) in enumerate(zip(ranked.rows.tolist(), reason_rows.tolist(), strict=True)):
            why = entity[i]
            base = i * n_reasons
            parts = [piece(r, "reason") + weights[base + j]
                     + (why[1] if why and why[0] == r else b"") + b"}" for j, r in enumerate(r_rows) if r >= 0]
            if why and why[0] not in r_rows:
                # Not among the items most like the result by vector: a reason of its own, with no vector weight.
                parts.append(piece(why[0], "reason") + b"0.0" + why[1] + b"}")
            out.append(piece(row, "result") + scores[i] + b',"reasons":['
                       + b",".join(parts) + b"]}")
        return out

    def _explain(self, bundle: LoadedBundle, catalog: Catalog, history: History, result_vecs: np.ndarray,
                 target: int, all_reasons: bool) -> tuple[np.ndarray, np.ndarray]:
        """`explain` over the history the user encoder saw; for a keyless read only that history's items
        of the target platform can be reasons (the ranking itself still uses every platform)."""
        max_history = bundle.models.max_history
        if not all_reasons:
            rows = history.rows[-max_history:]
            own = catalog.platform[rows] == target
            history = History(rows[own], history.platforms[-max_history:][own], history.ts[-max_history:][own])
        return explain(catalog, history, result_vecs, self.n_reasons, max_history)

    # ---- /v1/rank ------------------------------------------------------------------------------------------

    def rank_items(self, bundle: LoadedBundle, person: str, target: int,
                   items: Sequence[tuple[str, str | None, str | None]],
                   context: Sequence[tuple], now: float | None, all_reasons: bool = True,
                   rules: Rules | None = None) -> dict:
        """Score given items (catalog items by id, or any text) for a person, best first; `all_reasons`
        False: reasons from the target platform's history only (a keyless read). Catalog items that are
        unavailable or fail the rules are left out (`filtered_out`); items by text alone are not filtered."""
        catalog = bundle.catalog
        (profile,), degraded = self.profiles.get(bundle, [person])
        now_f = time.time() if now is None else float(now)
        vecs, rows = self.item_vectors(bundle, catalog, items, target)
        passing = _passing(catalog, rows, allowed_mask(catalog, target, rules),
                           _bought(catalog, rules, profile, context, now_f))
        history, user_vec = self._history(bundle, catalog, profile, context, target)
        if user_vec is None:
            user_vec = user_vectors(bundle.models, catalog, [history], [target])[0]
        q = Query(history, target, now_f)
        scores = score_items(bundle.models, catalog, [q], user_vec[None], vecs[passing], rows[passing])[0]
        order = passing[np.argsort(-scores, kind="stable")]
        if rules is not None and rules.caps:
            order = order[capped(catalog, rows[order], rules)]
        score_of = dict(zip(passing.tolist(), scores.tolist(), strict=True))
        r_rows, r_w = self._explain(bundle, catalog, history, vecs[order], target, all_reasons)
        out = []
        for j, i in enumerate(order.tolist()):
            reasons = [{"item_id": catalog.item_ids[r], "platform": bundle.platforms[int(catalog.platform[r])],
                        "weight": float(w)} for r, w in zip(r_rows[j].tolist(), r_w[j].tolist(), strict=True)
                       if r >= 0]
            out.append({"item_id": items[i][0], "score": float(score_of[i]), "reasons": reasons})
        kept = set(order.tolist())
        return {"items": out, "filtered_out": [items[i][0] for i in range(len(items)) if i not in kept],
                "model_version": bundle.model_version, "degraded": degraded, "cold_start": not profile.known}

    def item_vectors(self, bundle: LoadedBundle, catalog: Catalog,
                     items: Sequence[tuple[str, str | None, str | None]], target: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (text embedded, or the catalog's) and catalog rows (-1: not a live catalog item)."""
        vecs = np.zeros((len(items), catalog.dim), dtype=np.float32)
        rows = np.full(len(items), -1, dtype=np.int64)
        to_embed: list[tuple[int, int, str]] = []
        for i, (item_id, title, platform) in enumerate(items):
            pid = target if platform is None else self.platform_id(bundle, platform, ("body", "items", i,
                                                                                      "platform"))
            row = catalog.row_of.get(item_id)
            if row is not None and catalog.live[row]:
                rows[i] = row
            if title is not None:
                cached = self.embed_cache.get((bundle.model_version, pid, title))
                if cached is None:
                    to_embed.append((i, pid, title))
                else:
                    vecs[i] = cached
            elif rows[i] >= 0:
                vecs[i] = catalog.vectors[rows[i]]
            else:
                raise InputError(("body", "items", i, "title"),
                                 f"item {item_id!r} is not in the catalog: give its title")
        if to_embed:
            emb = bundle.embedder.embed([t for _, _, t in to_embed], [p for _, p, _ in to_embed])
            for (i, pid, title), v in zip(to_embed, emb, strict=True):
                vecs[i] = v
                self.embed_cache.put((bundle.model_version, pid, title), v)
        return vecs, rows

    # ---- /v1/batch/score ----------------------------------------------------------------------------------

    def batch_lines(self, bundle: LoadedBundle, persons: Sequence[str], target: int, item_ids: list[str] | None,
                    k: int | None, exclude_seen: bool, now: float | None, rules: Rules | None = None,
                    variant: str | None = None, variants: Sequence[Variant] | None = None) -> Iterator[bytes]:
        """NDJSON lines, one per person in order, then a summary; `batch_chunk` persons at a time, so
        memory stays bounded however many persons there are. `variants` (per person): each person is
        scored with their variant's bundle and their line names it; else every person with `bundle`, lines
        naming `variant` if given."""
        started = time.perf_counter()
        now_f = time.time() if now is None else float(now)
        degraded_any = False
        catalogs: dict[int, Catalog] = {}  # per bundle, read once: one consistent table for the whole batch
        names: dict[str, str] = {}
        for start in range(0, len(persons), self.batch_chunk):
            groups: dict[int, tuple[LoadedBundle, str | None, list[int]]] = {}
            for i in range(start, min(start + self.batch_chunk, len(persons))):
                b, name = (variants[i].bundle, variants[i].name) if variants is not None else (bundle, variant)
                groups.setdefault(id(b), (b, name, []))[2].append(i)
            lines: dict[int, bytes] = {}
            for b, name, idx in groups.values():
                catalog = catalogs.setdefault(id(b), b.catalog)
                if name is not None:
                    names[name] = b.model_version
                degraded_any |= self._batch_chunk(b, catalog, idx, [persons[i] for i in idx], target, item_ids, k,
                                                  exclude_seen, now_f, rules, name, lines)
            self.metrics.batch_rows.inc(len(lines))
            yield b"".join(lines[i] for i in sorted(lines))
        summary = {"done": True, "rows": len(persons), "model_version": bundle.model_version,
                   "degraded": degraded_any, "took_ms": round((time.perf_counter() - started) * 1000, 3)}
        if names:
            summary["variants"] = names
        yield json.dumps(summary).encode() + b"\n"

    def _batch_chunk(self, bundle: LoadedBundle, catalog: Catalog, index: list[int], chunk: Sequence[str],
                     target: int, item_ids: list[str] | None, k: int | None, exclude_seen: bool, now_f: float,
                     rules: Rules | None, variant: str | None, lines: dict[int, bytes]) -> bool:
        """Score these persons (positions `index` of the request) into `lines`; whether Redis was down."""
        models = bundle.models
        # Campaign reads do not write profiles back: 100k one-off persons would flush the Redis cache.
        profiles, degraded = self.profiles.get(bundle, chunk, write_back=False)
        histories = [History.from_ids(catalog, p.item_ids, p.platforms, p.ts) for p in profiles]
        bought = [_bought(catalog, rules, p, (), now_f) for p in profiles]
        queries = [Query(h, target, now_f, exclude_seen, ex) for h, ex in zip(histories, bought, strict=True)]
        need = [i for i, p in enumerate(profiles) if target not in p.vecs]
        u = np.zeros((len(chunk), catalog.dim), dtype=np.float32)
        for i, p in enumerate(profiles):
            if target in p.vecs:
                u[i] = p.vecs[target]
        if need:
            u[need] = user_vectors(models, catalog, [histories[i] for i in need], [target] * len(need))
        allowed = allowed_mask(catalog, target, rules)
        if item_ids is not None:
            all_rows = catalog.rows_of(item_ids)
            passing = _passing(catalog, all_rows, allowed, _NO_ROWS)
            item_rows = all_rows[passing]
            scores = score_items(models, catalog, [replace(q, exclude=_NO_ROWS) for q in queries], u,
                                 catalog.vectors[item_rows], item_rows)
            for i, p in enumerate(profiles):
                order = np.argsort(-scores[i], kind="stable")
                if len(bought[i]):
                    order = order[~np.isin(item_rows[order], bought[i])]
                if rules is not None and rules.caps:
                    order = order[capped(catalog, item_rows[order], rules)]
                lines[index[i]] = _line(index[i], p.person, [(item_ids[int(passing[j])], float(scores[i, j]))
                                                             for j in order.tolist()], not p.known, variant)
        else:
            assert k is not None
            n = max(models.retrieval_candidates, k, 3 * k if rules is not None and rules.caps else 0)
            with_hist = [i for i, h in enumerate(histories) if len(h)]
            ranked = dict(zip(with_hist, rank(models, catalog, [replace(queries[i], allowed=allowed)
                                                                for i in with_hist], u[with_hist], n),
                              strict=True)) if with_hist else {}
            for i, p in enumerate(profiles):
                r = ranked.get(i)
                if r is None:
                    depth = k * (10 if rules is not None and rules.caps else 1)
                    r = popular(catalog, target, depth, bought[i], allowed)
                r = diversify(catalog, r, k, rules)
                lines[index[i]] = _line(index[i], p.person,
                                        [(catalog.item_ids[row], float(sc))
                                         for row, sc in zip(r.rows.tolist(), r.scores.tolist(), strict=True)],
                                        not p.known or i not in ranked, variant)
        return degraded


def row_piece(catalog: Catalog, platforms: Sequence[str], row: int, kind: str) -> bytes:
    """A catalog row's JSON piece: "result" → b'{"item_id":…,"title":…,"score":', "reason" →
    b'{"item_id":…,"platform":…,"weight":'."""
    d = ({"item_id": catalog.item_ids[row], "title": catalog.titles[row]} if kind == "result" else
         {"item_id": catalog.item_ids[row], "platform": platforms[int(catalog.platform[row])]})
    return (json.dumps(d, ensure_ascii=False, separators=(",", ":"))[:-1]
            + (',"score":' if kind == "result" else ',"weight":')).encode()


def prerender_rows(bundle: LoadedBundle, max_rows: int) -> int:
    """Every row's JSON pieces into `bundle.row_json` ahead of the first requests, for a catalog of at most
    `max_rows` rows (a larger one makes them on first use); the number of rows rendered. A fresh process then
    answers its first cold requests as fast as its later ones (they made a piece per new result: ~1/4 of the
    reasons' and results' JSON on Food-Kitchen)."""
    catalog = bundle.catalog
    n = len(catalog.item_ids)
    if n > max_rows:
        return 0
    pieces, platforms = bundle.row_json, bundle.platforms
    for row in range(n):
        for kind in ("result", "reason"):
            if (row, kind) not in pieces:
                pieces[(row, kind)] = row_piece(catalog, platforms, row, kind)
    return n


def _bought(catalog: Catalog, rules: Rules | None, profile: Profile, context: Sequence[tuple], now: float
            ) -> np.ndarray:
    """Rows the person bought within the rules' window (their profile and the request's context events)."""
    if rules is None or not rules.bought_days:
        return _NO_ROWS
    items = list(profile.item_ids) + [c[0] for c in context]
    kinds = list(profile.event_types()) + [c[3] if len(c) > 3 else None for c in context]
    ts = list(profile.ts) + [int(c[2]) for c in context]
    return bought_rows(catalog, rules, items, kinds, ts, now)


def _passing(catalog: Catalog, rows: np.ndarray, allowed: np.ndarray | None, bought: np.ndarray) -> np.ndarray:
    """Positions of the given items that may be answered: free text (row -1) always; a catalog item when it is
    available, allowed by the filters and not bought recently."""
    ok = np.ones(len(rows), dtype=bool)
    cat = rows >= 0
    r = rows[cat]
    keep = catalog.recommendable[r] if allowed is None else allowed[r]
    if len(bought):
        keep &= ~np.isin(r, bought)
    ok[cat] = keep
    return np.flatnonzero(ok)


def _line(index: int, person: str, scored: list[tuple[str, float]], cold: bool, variant: str | None = None
          ) -> bytes:
    row = {"index": index, "person_id": person, "items": [{"item_id": i, "score": s} for i, s in scored],
           "cold_start": cold}
    if variant is not None:
        row["variant"] = variant
    return json.dumps(row, separators=(",", ":")).encode() + b"\n"


def _ids(catalog: Catalog, rows: np.ndarray) -> tuple[str, ...]:
    ids = catalog.item_ids
    return tuple(ids[r] for r in rows.tolist())


def _live_rows(catalog: Catalog, item_ids: frozenset[str]) -> np.ndarray:
    rows = catalog.rows_of(list(item_ids))
    return rows[rows >= 0]


def _among(rows: np.ndarray, candidate_rows: np.ndarray) -> bool:
    """Whether any of these catalog rows is one of an entry's candidates."""
    return bool(len(rows)) and bool(np.isin(rows, candidate_rows).any())


_KIND_WORDS = {"brand": "brand", "type": "kind of product", "category": "category"}


def _entity_reason(kg: ItemEntities, catalog: Catalog, platforms: list[str], history: History, target: int,
                   row: int) -> tuple[int, bytes] | None:
    """(history row, the reason's extra JSON members) when the result shares a brand, product type or category
    with an item of the person's history on another platform (`contract.kg.shared_entity`), e.g. "entity":
    "Melitta","text":"same brand (Melitta) as “Melitta Cone Coffee Filters …” in your grocery history"."""
    found = shared_entity(kg, history.rows, history.platforms, target, row)
    if found is None:
        return None
    pos, ent = found
    hist_row = int(history.rows[pos])
    title = catalog.titles[hist_row]
    title = title if len(title) <= 60 else title[:59].rstrip() + "…"
    name = str(kg.names[ent])
    text = (f"same {_KIND_WORDS[kg.kind(ent)]} ({name}) as “{title}” in your "
            f"{platforms[int(history.platforms[pos])]} history")
    members = {"entity": name, "text": text}
    return hist_row, b"," + json.dumps(members, ensure_ascii=False, separators=(",", ":"))[1:-1].encode()


def _nums(x: np.ndarray) -> list[bytes]:
    """Each number as json.dumps writes it (float repr; NaN and infinities as json.dumps spells them)."""
    if x.size == 0:
        return []
    return json.dumps(x.ravel().tolist()).encode()[1:-1].split(b", ")


def _take(entry: RankedEntry, exclude: frozenset[str], k: int) -> list[bytes] | None:
    """The first k fragments not excluded; None when the entry holds too few to answer."""
    if exclude:
        idx = [i for i, item in enumerate(entry.item_ids) if item not in exclude][:k]
    else:
        idx = list(range(min(k, len(entry.item_ids))))
    frags = entry.fragments.get(idx)
    if len(frags) < k and not entry.complete:
        return None
    return frags
