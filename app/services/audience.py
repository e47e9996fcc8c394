"""Who would a new item be recommended to (POST /v1/items/audience, the operator page's "audience" view).

The item's text is embedded by the bundle's item encoder exactly as `PUT /v1/items` and `/v1/rank` embed new
items (`Recommender.item_vectors`, sharing their embedding cache). It is then scored for the persons the
service knows, with the recommender's own steps, in its two stages:

1. retrieval: u·v against every known person's user vector for the item's platform — the vectors
   `contract.ranking.user_vectors` (through `app.services.ranking`, the ONNX user encoder) gives the histories
   the recommender would use (`profiles.merge_events`: the snapshot, capped at XREC_PROFILE_MAX_EVENTS);
2. the best `audience_rescore` of them by u·v are scored by the bundle's scorer (`ranking.score_items`, the
   features of a free-text item, as /v1/rank scores a title), and the best k returned, with the history items
   behind the match (`ranking.explain`, as /v1/recommend's reasons) and the person's linked accounts (as
   accounts.parquet has them: keyed hashes; raw account ids never reach a bundle).

Known persons: the bundle snapshot's (history.parquet) and those with events since the bundle. The snapshot
persons' vectors are computed once per platform, in batches of `BATCH`, and kept for the loaded bundle (at most
`audience_max_persons` persons, the most recently active: a 64-d vector is 256 bytes); a reload drops them
(`clear`), and a pool built for another bundle object is never used. Persons with events since the bundle are
read at each request (the profile store: one Redis round trip per `FETCH` persons, the vectors stored with
their profiles or computed here), so their answers include their newest events; their snapshot vectors are
left out. With A/B variants each person is scored by their own variant's bundle (`Served.pick`) and named with
it; the merged list is ordered by those scores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.core.config import Settings
from app.services.model_bundle import LoadedBundle
from app.services.profiles import Profile, ProfileStore, merge_events
from app.services.ranking import History, Query, explain, score_items, user_vectors
from app.services.recommender import Recommender
from app.services.retrieval import Catalog
from app.services.variants import Served, Variant

BATCH = 512  # persons per user-encoder call while the pool's vectors are computed
FETCH = 1_000  # persons with events per profile-store read


@dataclass(frozen=True)
class Member:
    """One person of the audience."""

    person: str
    score: float  # the scorer's (u·v without a scorer)
    retrieval: float  # u·v
    events: int  # events in the history the models saw (profile, capped)
    last_ts: int | None
    reasons: list[tuple[str, str, str, float]]  # (item_id, platform, title, weight)
    accounts: list[tuple[str, str]]  # (platform, keyed account hash)
    variant: str


@dataclass
class Audience:
    platform: str
    members: list[Member]
    known: int  # persons with a history the models can use (capped pool + persons with events): scored by u·v
    rescored: int  # scored by the scorer
    capped: bool  # some snapshot persons were left out (over audience_max_persons)
    degraded: bool  # Redis unavailable: persons with events since the bundle may lack them
    model_version: str


@dataclass
class _Pool:
    """The snapshot persons of one bundle (of one variant) and their user vectors per platform."""

    bundle: LoadedBundle
    split: object  # the Served split this pool was cut by (None: the only variant)
    persons: list[str]
    total: int  # snapshot persons of this variant, before the cap
    vecs: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # target → (vectors, has history)
    accounts: pa.Table | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class AudienceFinder:
    def __init__(self, settings: Settings, profiles: ProfileStore, recommender: Recommender) -> None:
        self.profiles = profiles
        self.rec = recommender
        self.max_persons = settings.audience_max_persons
        self.rescore = settings.audience_rescore
        self.cap = settings.profile_max_events
        self._pools: dict[str, _Pool] = {}  # model version → pool
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every pool (a reload: the next request computes the new bundle's vectors)."""
        with self._lock:
            self._pools.clear()

    # ---- the answer ---------------------------------------------------------------------------------------

    def find(self, served: Served, platform: str, title: str, k: int, now: float | None = None) -> Audience:
        """The k persons the item (`title`, on `platform`: one of the bundle's) would score highest for."""
        now_f = time.time() if now is None else float(now)
        many = len(served.variants) > 1
        merged: list[Member] = []
        known = rescored = 0
        capped = degraded = False
        for v in served.variants:
            bundle = v.bundle
            target = bundle.platform_of[platform]
            catalog = bundle.catalog  # read once: one consistent table for the whole request
            vec = self.rec.item_vectors(bundle, catalog, [("", title, None)], target)[0][0]
            member: Callable[[str], bool] | None = (lambda p, v=v: served.pick(p) is v) if many else None
            pool = self._pool(bundle, served.split if many else None, member)
            got, counts, deg = self._score(pool, catalog, v, target, vec, k, now_f, member)
            merged += got
            known += counts[0]
            rescored += counts[1]
            capped |= pool.total > len(pool.persons)
            degraded |= deg
        merged.sort(key=lambda m: -m.score)
        return Audience(platform, merged[:k], known, rescored, capped, degraded,
                        served.primary.model_version)

    def _score(self, pool: _Pool, catalog: Catalog, variant: Variant, target: int, vec: np.ndarray, k: int,
               now: float, member: Callable[[str], bool] | None) -> tuple[list[Member], tuple[int, int], bool]:
        bundle = pool.bundle
        u_pool, has = self._vectors(pool, catalog, target)
        fresh, degraded = self._evented(bundle, catalog, target, member)
        fresh_set = {p.person for p, _, _ in fresh}
        keep = has.copy()
        if fresh_set:
            keep &= np.fromiter((p not in fresh_set for p in pool.persons), dtype=bool, count=len(pool.persons))
        idx = np.flatnonzero(keep)
        persons = [pool.persons[i] for i in idx.tolist()] + [p.person for p, _, _ in fresh]
        u = np.concatenate([u_pool[idx], np.stack([x for _, x, _ in fresh]).astype(np.float32)]) if fresh \
            else u_pool[idx]
        known = len(persons)
        if not known:
            return [], (0, 0), degraded
        dots = u @ vec
        m = min(known, max(self.rescore, k))
        top = np.argpartition(-dots, m - 1)[:m] if m < known else np.arange(known)
        top = top[np.argsort(-dots[top], kind="stable")]
        # The histories of the re-scored persons, as the recommender builds them.
        n_pool = len(idx)
        histories: list[History] = []
        for j in top.tolist():
            if j < n_pool:
                histories.append(merge_events(bundle, persons[j], [], 0, self.cap).history(catalog))
            else:
                histories.append(fresh[j - n_pool][2])
        queries = [Query(h, target, now) for h in histories]
        scores = score_items(bundle.models, catalog, queries, u[top], vec[None], np.full(1, -1, dtype=np.int64))[:, 0]
        order = np.argsort(-scores, kind="stable")[:k]
        chosen = [persons[int(top[i])] for i in order.tolist()]
        accounts = self._accounts(pool, chosen)
        out = []
        for i in order.tolist():
            h = histories[i]
            r_rows, r_w = explain(catalog, h, vec[None], self.rec.n_reasons, bundle.models.max_history)
            reasons = [(catalog.item_ids[r], bundle.platforms[int(catalog.platform[r])], catalog.titles[r], float(w))
                       for r, w in zip(r_rows[0].tolist(), r_w[0].tolist(), strict=True) if r >= 0]
            person = persons[int(top[i])]
            out.append(Member(person, float(scores[i]), float(dots[int(top[i])]), len(h),
                              int(h.ts[-1]) if len(h) else None, reasons, accounts.get(person, []), variant.name))
        return out, (known, len(top)), degraded

    # ---- the pool: snapshot persons and their vectors -------------------------------------------------------

    def _pool(self, bundle: LoadedBundle, split: object, member: Callable[[str], bool] | None) -> _Pool:
        with self._lock:
            pool = self._pools.get(bundle.model_version)
            if pool is not None and pool.bundle is bundle and pool.split is split:
                return pool
            snapshot = bundle.snapshot
            spans = snapshot.spans
            persons = [p for p in spans if member is None or member(p)]
            total = len(persons)
            if total > self.max_persons:  # the most recently active ones
                last = np.fromiter((snapshot.ts[spans[p][1] - 1] for p in persons), dtype=np.int64, count=total)
                order = np.sort(np.argsort(-last, kind="stable")[:self.max_persons])
                persons = [persons[i] for i in order.tolist()]
            if len(self._pools) >= 8:  # one pool per variant served; `clear` at every reload
                self._pools.clear()
            pool = self._pools[bundle.model_version] = _Pool(bundle, split, persons, total)
            return pool

    def _vectors(self, pool: _Pool, catalog: Catalog, target: int) -> tuple[np.ndarray, np.ndarray]:
        """(user vectors [N, D] for `target`, whether each person has a history the models can use)."""
        with pool.lock:  # concurrent first requests compute them once
            got = pool.vecs.get(target)
            if got is not None:
                return got
            bundle = pool.bundle
            n = len(pool.persons)
            u = np.zeros((n, catalog.dim), dtype=np.float32)
            has = np.zeros(n, dtype=bool)
            for start in range(0, n, BATCH):
                chunk = pool.persons[start:start + BATCH]
                hs = [merge_events(bundle, p, [], 0, self.cap).history(catalog) for p in chunk]
                rows = [i for i, h in enumerate(hs) if len(h)]
                if rows:
                    at = np.asarray(rows, dtype=np.int64) + start
                    u[at] = user_vectors(bundle.models, catalog, [hs[i] for i in rows], [target] * len(rows))
                    has[at] = True
            pool.vecs[target] = (u, has)
            return u, has

    def _evented(self, bundle: LoadedBundle, catalog: Catalog, target: int, member: Callable[[str], bool] | None
                 ) -> tuple[list[tuple[Profile, np.ndarray, History]], bool]:
        """Persons with events since the bundle: (profile, user vector for `target`, history), those with a
        history only; and whether Redis was unavailable."""
        persons = sorted(p for p in self.profiles.evented.members() if member is None or member(p))
        persons = persons[:self.max_persons]
        out: list[tuple[Profile, np.ndarray, History]] = []
        degraded = False
        for start in range(0, len(persons), FETCH):
            profiles, deg = self.profiles.get(bundle, persons[start:start + FETCH], write_back=False)
            degraded |= deg
            got = [(p, p.history(catalog)) for p in profiles]
            got = [(p, h) for p, h in got if len(h)]
            need = [i for i, (p, _) in enumerate(got) if target not in p.vecs]
            computed: dict[int, np.ndarray] = {}
            if need:
                vecs = user_vectors(bundle.models, catalog, [got[i][1] for i in need], [target] * len(need))
                computed = dict(zip(need, vecs, strict=True))
            out += [(p, computed[i] if i in computed else p.vecs[target], h) for i, (p, h) in enumerate(got)]
        return out, degraded

    def _accounts(self, pool: _Pool, persons: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """person → their (platform, keyed account) pairs from the bundle's accounts.parquet."""
        if not persons:
            return {}
        with pool.lock:
            if pool.accounts is None:
                path = pool.bundle.path / "accounts.parquet"
                pool.accounts = pq.read_table(path, columns=["platform", "account", "person"])
            table = pool.accounts
        rows = table.filter(pc.is_in(table.column("person"), value_set=pa.array(list(persons), pa.string())))
        out: dict[str, list[tuple[str, str]]] = {}
        for platform, account, person in zip(rows.column("platform").to_pylist(), rows.column("account").to_pylist(),
                                             rows.column("person").to_pylist(), strict=True):
            out.setdefault(person, []).append((platform, account))
        for accs in out.values():
            accs.sort()
        return out
