"""A person's fused profile: history across platforms plus one user vector per target platform.

Where a profile comes from, first hit wins:
1. Redis `{prefix}:{model_version}:profile:{person}`, written by whichever replica built it last;
2. built here from the bundle snapshot (history.parquet) + the person's events since (Redis list),
   the user vectors computed with user_encoder.onnx, and written back to Redis;
3. while Redis is unavailable: the in-process LRU, else the bundle snapshot alone (`degraded`).

Every profile built while Redis answers is also kept in the in-process LRU, so a Redis outage finds
recent profiles there. Events ingested during an outage update the in-process copy (the event log on
disk has them too and is replayed into Redis when it returns).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from app.core.config import Settings
from app.core.metrics import Metrics
from app.services.cache import LRU
from app.services.event_log import LoggedEvent
from app.services.model_bundle import LoadedBundle
from app.services.ranking import History, user_vectors
from app.services.redis_store import Keys, RedisGuard, RedisUnavailable
from app.services.retrieval import Catalog


@dataclass(frozen=True)
class Profile:
    person: str
    item_ids: list[str]
    platforms: list[int]
    ts: list[int]
    seq: int  # how many of the person's ingested events it includes (its version)
    vecs: dict[int, np.ndarray] = field(default_factory=dict)  # target platform → unit user vector
    known: bool = False  # in the bundle snapshot, or has ingested events

    def history(self, catalog: Catalog) -> History:
        return History.from_ids(catalog, self.item_ids, self.platforms, self.ts)

    def to_json(self) -> str:
        vecs = {str(p): base64.b64encode(v.astype(np.float32).tobytes()).decode() for p, v in self.vecs.items()}
        return json.dumps({"i": self.item_ids, "p": self.platforms, "t": self.ts, "v": vecs, "k": self.known},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, person: str, seq: int, data: bytes | str) -> Profile:
        d = json.loads(data)
        vecs = {int(p): np.frombuffer(base64.b64decode(v), dtype=np.float32) for p, v in d["v"].items()}
        return cls(person, d["i"], d["p"], d["t"], seq, vecs, bool(d["k"]))


@dataclass
class IngestOutcome:
    accepted: int = 0
    duplicates: int = 0
    persons: list[str] = field(default_factory=list)
    degraded: bool = False


def merge_events(bundle: LoadedBundle, person: str, extra: Sequence[tuple[str, str, int]], seq: int,
                 cap: int, base: Profile | None = None) -> Profile:
    """The profile without vectors: `base` (else the snapshot) + extra (item_id, platform name, ts) events,
    ordered by time (ties: earlier first), the newest `cap` kept. An extra event already in the base
    (same item and time, e.g. one the new bundle was trained on) is not counted twice."""
    if base is None:
        items, plats, ts = bundle.snapshot.events(person)
        known = person in bundle.snapshot or seq > 0
    else:
        items, plats, ts, known = base.item_ids, base.platforms, base.ts, True
    have = set(zip(items, ts, strict=True))
    rows = list(zip(items, plats, ts, strict=True))
    for item, platform, t in extra:
        pid = bundle.platform_of.get(platform)
        if pid is not None and (item, t) not in have:
            rows.append((item, pid, int(t)))
            have.add((item, t))
    rows.sort(key=lambda r: r[2])  # stable: equal times keep their order
    rows = rows[-cap:]
    return Profile(person, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], seq, {},
                   known or bool(extra))


def with_vectors(bundle: LoadedBundle, profiles: list[Profile]) -> list[Profile]:
    """Profiles with a user vector for every platform (one user-encoder call for all of them)."""
    n_platforms = len(bundle.platforms)
    catalog = bundle.catalog  # read once: rows and vectors from the same table
    histories, owners = [], []
    for i, p in enumerate(profiles):
        h = p.history(catalog)
        if len(h):
            histories.extend([h] * n_platforms)
            owners.append(i)
    if not histories:
        return profiles
    u = user_vectors(bundle.models, catalog, histories, list(range(n_platforms)) * len(owners))
    out = list(profiles)
    for j, i in enumerate(owners):
        block = u[j * n_platforms:(j + 1) * n_platforms]
        out[i] = replace(profiles[i], vecs={t: block[t].copy() for t in range(n_platforms)})
    return out


class ProfileStore:
    def __init__(self, guard: RedisGuard, keys: Keys, settings: Settings, metrics: Metrics) -> None:
        self.guard = guard
        self.keys = keys
        self.metrics = metrics
        self.cap = settings.profile_max_events
        self.profile_ttl = settings.profile_ttl_s
        self.event_ttl = settings.event_ttl_s
        self.stream_maxlen = settings.stream_maxlen
        self.local: LRU[tuple[str, str], Profile] = LRU(settings.profile_lru_size)
        # Event ids seen while Redis was down (idempotency then); Redis markers are the truth otherwise.
        self.local_seen: LRU[str, bool] = LRU(max(settings.profile_lru_size, 100_000))

    # ---- reading ------------------------------------------------------------------------------------------

    def get(self, bundle: LoadedBundle, persons: Sequence[str], write_back: bool = True
            ) -> tuple[list[Profile], bool]:
        """Profiles of these persons, and whether Redis was unavailable (answers may lack recent events)."""
        mv = bundle.model_version
        try:
            raw = self.guard.run(lambda r: _pipe(r, [("hmget", self.keys.profile(mv, p), "seq", "data")
                                                     for p in persons]))
            out: list[Profile | None] = [None] * len(persons)
            missing = []
            for i, (seq, data) in enumerate(raw):
                if data is None:
                    missing.append(i)
                else:
                    out[i] = Profile.from_json(persons[i], int(seq), data)
            self.metrics.profile_source.inc(len(persons) - len(missing), source="redis")
            if missing:
                built = self._build_from_redis(bundle, [persons[i] for i in missing], write_back)
                for i, prof in zip(missing, built, strict=True):
                    out[i] = prof
                self.metrics.profile_source.inc(len(missing), source="built")
            profiles = [p for p in out if p is not None]
            for p in profiles:
                self.local.put((mv, p.person), p)
            return profiles, False
        except RedisUnavailable:
            return self._get_local(bundle, persons), True

    def _get_local(self, bundle: LoadedBundle, persons: Sequence[str]) -> list[Profile]:
        mv = bundle.model_version
        out: list[Profile | None] = [self.local.get((mv, p)) for p in persons]
        self.metrics.profile_source.inc(sum(p is not None for p in out), source="memory")
        missing = [i for i, p in enumerate(out) if p is None]
        if missing:
            built = with_vectors(bundle, [merge_events(bundle, persons[i], [], 0, self.cap) for i in missing])
            for i, prof in zip(missing, built, strict=True):
                out[i] = prof
                self.local.put((mv, prof.person), prof)
            self.metrics.profile_source.inc(len(missing), source="snapshot")
        return [p for p in out if p is not None]

    def _build_from_redis(self, bundle: LoadedBundle, persons: Sequence[str], write_back: bool
                          ) -> list[Profile]:
        """Snapshot + the persons' ingested events, vectors computed, written back (newest seq wins)."""
        ops = []
        for p in persons:
            ops += [("lrange", self.keys.events(p), 0, -1), ("get", self.keys.seq(p))]
        # One MULTI/EXEC: each person's list and counter are read at the same instant.
        res = self.guard.run(lambda r: _pipe(r, ops, transaction=True))
        profiles = []
        for j, person in enumerate(persons):
            entries, seq = res[2 * j], int(res[2 * j + 1] or 0)
            extra = [(e[0], e[1], int(e[2])) for e in (json.loads(x) for x in entries)]
            profiles.append(merge_events(bundle, person, extra, seq, self.cap))
        profiles = with_vectors(bundle, profiles)
        if write_back:
            mv = bundle.model_version

            def write(r):
                pipe = r.pipeline(transaction=False)
                # Persons nobody knows (random or new account ids) are not stored: nothing to cache.
                for prof in (p for p in profiles if p.known):
                    self.guard.put_profile(keys=[self.keys.profile(mv, prof.person)],
                                           args=[prof.seq, prof.to_json(), self.profile_ttl], client=pipe)
                return pipe.execute()

            self.guard.run(write)
        return profiles

    # ---- writing ------------------------------------------------------------------------------------------

    def ingest(self, bundle: LoadedBundle, events: Sequence[LoggedEvent]) -> IngestOutcome:
        """Apply events (already in the durable log) to the persons' profiles, each event id once."""
        if not events:
            return IngestOutcome()
        try:
            return self._ingest_redis(bundle, events)
        except RedisUnavailable:
            return self._ingest_local(bundle, events)

    def append_events(self, events: Sequence[LoggedEvent]) -> list[LoggedEvent]:
        """Append events to the persons' Redis histories, each event id once; returns the new ones.
        Raises RedisUnavailable."""
        def run(r):
            pipe = r.pipeline(transaction=False)
            for e in events:
                self.guard.ingest(keys=[self.keys.event_id(e.event_id), self.keys.events(e.person),
                                        self.keys.seq(e.person), self.keys.stream],
                                  args=[e.history_entry(), self.cap, self.event_ttl, self.stream_maxlen,
                                        *e.stream_fields()], client=pipe)
            return pipe.execute()

        status = self.guard.run(run)
        return [e for e, s in zip(events, status, strict=True) if int(s) > 0]

    def _ingest_redis(self, bundle: LoadedBundle, events: Sequence[LoggedEvent]) -> IngestOutcome:
        accepted = self.append_events(events)
        persons = list(dict.fromkeys(e.person for e in accepted))
        if persons:
            self._build_from_redis(bundle, persons, write_back=True)
        return IngestOutcome(len(accepted), len(events) - len(accepted), persons, False)

    def _ingest_local(self, bundle: LoadedBundle, events: Sequence[LoggedEvent]) -> IngestOutcome:
        mv = bundle.model_version
        fresh: dict[str, list[LoggedEvent]] = {}
        for e in events:
            if self.local_seen.get(e.event_id) is None:
                self.local_seen.put(e.event_id, True)
                fresh.setdefault(e.person, []).append(e)
        updated = []
        for person, evs in fresh.items():
            base = self.local.get((mv, person))
            seq = (base.seq if base else 0) + len(evs)
            updated.append(merge_events(bundle, person, [(e.item_id, e.platform, e.ts) for e in evs], seq,
                                        self.cap, base))
        for prof in with_vectors(bundle, updated):
            self.local.put((mv, prof.person), prof)
        n = sum(len(v) for v in fresh.values())
        return IngestOutcome(n, len(events) - n, list(fresh), True)


def _pipe(r, ops: list[tuple], transaction: bool = False) -> list:
    pipe = r.pipeline(transaction=transaction)
    for name, *args in ops:
        getattr(pipe, name)(*args)
    return pipe.execute()
