"""Request-level work around `app.services.ranking`: who the person is, their profile, the ranked-list
cache, and the response JSON. Ranking itself is delegated, so online and offline results agree.

Warm path (`from_cache`): no I/O, no ONNX, no FAISS — a dict lookup and a join of pre-serialised JSON
fragments, cheap enough to run on the event loop. Everything else (`compute`, `rank_items`,
`batch_lines`) blocks and runs in the threadpool.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.config import Settings
from app.core.metrics import Metrics
from app.services.cache import LRU, RankedCache, RankedEntry, RankedKey
from app.services.catalog_ops import check_item_platform
from app.services.errors import InputError
from app.services.model_bundle import LoadedBundle
from app.services.profiles import Profile, ProfileStore, merge_events
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
from contract.ids import account_key, unlinked_person_key

_NO_ROWS = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Ask:
    """A /v1/recommend request, resolved against the bundle."""

    person: str
    target: int
    k: int
    exclude_seen: bool = True
    exclude_ids: frozenset[str] = frozenset()
    context: tuple[tuple[str, str, int], ...] = ()  # (item_id, platform, ts), not stored
    now: float | None = None

    @property
    def cacheable(self) -> bool:
        # Context events and a fixed clock make the answer specific to this one request.
        return not self.context and self.now is None


@dataclass
class Answer:
    fragments: list[bytes]
    cold_start: bool
    cache: str  # hit | miss | degraded
    ranked: Ranked | None = None  # what ranking returned (tests compare it with a direct call)


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
        self.embed_cache: LRU[tuple[str, int, str], np.ndarray] = LRU(settings.embed_cache_size)

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
        return (bundle.model_version, ask.person, ask.target, ask.exclude_seen)

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

    def compute(self, bundle: LoadedBundle, ask: Ask) -> Answer:
        """Profile → (popular | retrieve + re-rank) → fragments; fills the ranked cache when it may."""
        since = self.cache.epoch()
        catalog = bundle.catalog  # read once: one consistent table + index for the whole request
        (profile,), degraded = self.profiles.get(bundle, [ask.person])
        state = "degraded" if degraded else "miss"
        self.metrics.ranked_cache.inc(result=state)
        now = time.time() if ask.now is None else float(ask.now)
        history, user_vec = self._history(bundle, catalog, profile, ask.context, ask.target)
        exclude_rows = _live_rows(catalog, ask.exclude_ids)
        models = bundle.models
        n = max(models.retrieval_candidates, ask.k)
        cache_it = ask.cacheable and n == models.retrieval_candidates

        if len(history) == 0:  # cold start with nothing to go on: the platform's popular items
            depth = max(self.depth, ask.k + len(exclude_rows))
            base = popular(catalog, ask.target, depth)
            frags = self._fragments(bundle, catalog, history, base)
            entry = RankedEntry(catalog.version, profile.seq, _ids(catalog, base.rows), tuple(frags),
                                _NO_ROWS, True, len(base.rows) < depth)
            if cache_it:
                self.cache.put(self.key(bundle, ask), entry, since)
            return Answer(_take(entry, ask.exclude_ids, ask.k) or [], True, state, base)

        cold = not profile.known
        uv = None if user_vec is None else user_vec[None]
        if cache_it:
            base = rank(models, catalog, [Query(history, ask.target, now, ask.exclude_seen)], uv, n)[0]
            depth = max(self.depth, ask.k)
            top = Ranked(base.rows[:depth], base.scores[:depth], base.candidates)
            entry = RankedEntry(catalog.version, profile.seq, _ids(catalog, top.rows),
                                tuple(self._fragments(bundle, catalog, history, top)),
                                base.candidates, cold, len(base.rows) <= depth)
            self.cache.put(self.key(bundle, ask), entry, since)
            if not _among(exclude_rows, entry.candidate_rows):
                return Answer(_take(entry, ask.exclude_ids, ask.k) or [], cold, state, base)
        ranked = rank(models, catalog, [Query(history, ask.target, now, ask.exclude_seen, exclude_rows)],
                      uv, n)[0]
        top = Ranked(ranked.rows[:ask.k], ranked.scores[:ask.k], ranked.candidates)
        return Answer(self._fragments(bundle, catalog, history, top), cold, state, ranked)

    def render(self, bundle: LoadedBundle, answer: Answer, started: float) -> bytes:
        """The RecommendResponse JSON, assembled from cached fragments (no per-item serialisation)."""
        took = (time.perf_counter() - started) * 1000.0
        return b"".join((b'{"items":[', b",".join(answer.fragments), b'],"model_version":',
                         json.dumps(bundle.model_version).encode(), b',"cache":"', answer.cache.encode(),
                         b'","cold_start":', b"true" if answer.cold_start else b"false",
                         b',"took_ms":', f"{took:.3f}".encode(), b"}"))

    def _history(self, bundle: LoadedBundle, catalog: Catalog, profile: Profile,
                 context: Sequence[tuple[str, str, int]], target: int) -> tuple[History, np.ndarray | None]:
        """The history to rank with and, when the profile already has it, the user vector."""
        if context:
            merged = merge_events(bundle, profile.person, context, profile.seq, self.cap, base=profile)
            return History.from_ids(catalog, merged.item_ids, merged.platforms, merged.ts), None
        history = History.from_ids(catalog, profile.item_ids, profile.platforms, profile.ts)
        return history, profile.vecs.get(target)

    def _fragments(self, bundle: LoadedBundle, catalog: Catalog, history: History, ranked: Ranked
                   ) -> list[bytes]:
        reason_rows, reason_w = explain(catalog, history, catalog.vectors[ranked.rows], self.n_reasons,
                                        bundle.models.max_history)
        platforms = bundle.platforms
        out = []
        for i, row in enumerate(ranked.rows.tolist()):
            reasons = [{"item_id": catalog.item_ids[r], "platform": platforms[int(catalog.platform[r])],
                        "weight": round(float(w), 6)}
                       for r, w in zip(reason_rows[i].tolist(), reason_w[i].tolist(), strict=True) if r >= 0]
            out.append(json.dumps({"item_id": catalog.item_ids[row], "title": catalog.titles[row],
                                   "score": float(ranked.scores[i]), "reasons": reasons},
                                  ensure_ascii=False, separators=(",", ":")).encode())
        return out

    # ---- /v1/rank ------------------------------------------------------------------------------------------

    def rank_items(self, bundle: LoadedBundle, person: str, target: int,
                   items: Sequence[tuple[str, str | None, str | None]],
                   context: Sequence[tuple[str, str, int]], now: float | None) -> dict:
        """Score given items (catalog items by id, or any text) for a person, best first."""
        catalog = bundle.catalog
        (profile,), degraded = self.profiles.get(bundle, [person])
        history, user_vec = self._history(bundle, catalog, profile, context, target)
        if user_vec is None:
            user_vec = user_vectors(bundle.models, catalog, [history], [target])[0]
        vecs, rows = self.item_vectors(bundle, catalog, items, target)
        q = Query(history, target, time.time() if now is None else float(now))
        scores = score_items(bundle.models, catalog, [q], user_vec[None], vecs, rows)[0]
        order = np.argsort(-scores, kind="stable")
        r_rows, r_w = explain(catalog, history, vecs[order], self.n_reasons, bundle.models.max_history)
        out = []
        for j, i in enumerate(order.tolist()):
            reasons = [{"item_id": catalog.item_ids[r], "platform": bundle.platforms[int(catalog.platform[r])],
                        "weight": float(w)} for r, w in zip(r_rows[j].tolist(), r_w[j].tolist(), strict=True)
                       if r >= 0]
            out.append({"item_id": items[i][0], "score": float(scores[i]), "reasons": reasons})
        return {"items": out, "model_version": bundle.model_version, "degraded": degraded,
                "cold_start": not profile.known}

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
                    k: int | None, exclude_seen: bool, now: float | None) -> Iterator[bytes]:
        """NDJSON lines, one per person in order, then a summary; `batch_chunk` persons at a time, so
        memory stays bounded however many persons there are."""
        started = time.perf_counter()
        catalog = bundle.catalog
        models = bundle.models
        now_f = time.time() if now is None else float(now)
        degraded_any = False
        if item_ids is not None:
            item_rows = catalog.rows_of(item_ids)
            item_vecs = catalog.vectors[item_rows]
        for start in range(0, len(persons), self.batch_chunk):
            chunk = persons[start:start + self.batch_chunk]
            # Campaign reads do not write profiles back: 100k one-off persons would flush the Redis cache.
            profiles, degraded = self.profiles.get(bundle, chunk, write_back=False)
            degraded_any |= degraded
            histories = [History.from_ids(catalog, p.item_ids, p.platforms, p.ts) for p in profiles]
            queries = [Query(h, target, now_f, exclude_seen) for h in histories]
            need = [i for i, p in enumerate(profiles) if target not in p.vecs]
            u = np.zeros((len(chunk), catalog.dim), dtype=np.float32)
            for i, p in enumerate(profiles):
                if target in p.vecs:
                    u[i] = p.vecs[target]
            if need:
                u[need] = user_vectors(models, catalog, [histories[i] for i in need], [target] * len(need))
            lines = []
            if item_ids is not None:
                scores = score_items(models, catalog, queries, u, item_vecs, item_rows)
                for i, p in enumerate(profiles):
                    order = np.argsort(-scores[i], kind="stable")
                    lines.append(_line(start + i, p.person, [(item_ids[j], float(scores[i, j])) for j in order],
                                       not p.known))
            else:
                assert k is not None
                with_hist = [i for i, h in enumerate(histories) if len(h)]
                ranked = dict(zip(with_hist, rank(models, catalog, [queries[i] for i in with_hist],
                                                  u[with_hist], max(models.retrieval_candidates, k)),
                                  strict=True)) if with_hist else {}
                for i, p in enumerate(profiles):
                    r = ranked.get(i) or popular(catalog, target, k)
                    lines.append(_line(start + i, p.person,
                                       [(catalog.item_ids[row], float(s))
                                        for row, s in zip(r.rows[:k].tolist(), r.scores[:k].tolist(),
                                                          strict=True)],
                                       not p.known or i not in ranked))
            self.metrics.batch_rows.inc(len(chunk))
            yield b"".join(lines)
        summary = {"done": True, "rows": len(persons), "model_version": bundle.model_version,
                   "degraded": degraded_any, "took_ms": round((time.perf_counter() - started) * 1000, 3)}
        yield json.dumps(summary).encode() + b"\n"


def _line(index: int, person: str, scored: list[tuple[str, float]], cold: bool) -> bytes:
    row = {"index": index, "person_id": person, "items": [{"item_id": i, "score": s} for i, s in scored],
           "cold_start": cold}
    return json.dumps(row, separators=(",", ":")).encode() + b"\n"


def _ids(catalog: Catalog, rows: np.ndarray) -> tuple[str, ...]:
    ids = catalog.item_ids
    return tuple(ids[r] for r in rows.tolist())


def _live_rows(catalog: Catalog, item_ids: frozenset[str]) -> np.ndarray:
    rows = catalog.rows_of(list(item_ids))
    return rows[rows >= 0]


def _among(rows: np.ndarray, candidate_rows: np.ndarray) -> bool:
    """Whether any of these catalog rows is one of an entry's candidates."""
    return bool(np.isin(rows, candidate_rows).any())


def _take(entry: RankedEntry, exclude: frozenset[str], k: int) -> list[bytes] | None:
    """The first k fragments not excluded; None when the entry holds too few to answer."""
    if exclude:
        frags = [f for i, f in zip(entry.item_ids, entry.fragments, strict=True) if i not in exclude][:k]
    else:
        frags = list(entry.fragments[:k])
    if len(frags) < k and not entry.complete:
        return None
    return frags
