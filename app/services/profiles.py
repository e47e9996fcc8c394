"""A person's fused profile: history across platforms plus one user vector per target platform.

Where a profile comes from, first hit wins:
1. a person with no events since the bundle (`EventedPersons` says so, without asking Redis): the bundle
   snapshot (history.parquet) — no Redis at all; the in-process LRU keeps it, with the user vectors
   computed for it so far;
2. Redis, one round trip for any number of persons (READ_PROFILE_LUA): the profile
   `{prefix}:{model_version}:profile:{person}` when it includes every event appended so far (whichever
   replica built it), else the person's events, from which it is built here (snapshot + events) and
   written back once it has its user vectors (`store`, after the answers went out);
3. while Redis is unavailable: the in-process LRU, else the bundle snapshot alone (`degraded`).

Every profile read or built while Redis answers is also kept in the in-process LRU, so a Redis outage finds
recent profiles there. Events ingested during an outage update the in-process copy (the event log on
disk has them too and is replayed into Redis when it returns). User vectors are computed by the caller
(`fetch` makes no model call), so that one batch of requests needs one user-encoder call.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from app.core.config import Settings
from app.core.metrics import Metrics
from app.services.cache import LRU
from app.services.event_log import LoggedEvent
from app.services.model_bundle import LoadedBundle
from app.services.ranking import History, user_vectors
from app.services.redis_store import Keys, RedisGuard, RedisUnavailable, run_scripts
from app.services.retrieval import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    person: str
    item_ids: list[str]
    platforms: list[int]
    ts: list[int]
    seq: int  # how many of the person's ingested events it includes (its version)
    vecs: dict[int, np.ndarray] = field(default_factory=dict)  # target platform → unit user vector
    known: bool = False  # in the bundle snapshot, or has ingested events
    # each event's type ("purchase", …; None: not known, e.g. a snapshot without an `event` column);
    # None: a profile stored by an older xrec, without types
    events: list[str | None] | None = None

    def history(self, catalog: Catalog) -> History:
        return History.from_ids(catalog, self.item_ids, self.platforms, self.ts)

    def to_json(self) -> str:
        vecs = {str(p): base64.b64encode(v.astype(np.float32).tobytes()).decode() for p, v in self.vecs.items()}
        d = {"i": self.item_ids, "p": self.platforms, "t": self.ts, "v": vecs, "k": self.known}
        if self.events is not None:
            d["e"] = self.events
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, person: str, seq: int, data: bytes | str) -> Profile:
        d = json.loads(data)
        vecs = {int(p): np.frombuffer(base64.b64decode(v), dtype=np.float32) for p, v in d["v"].items()}
        return cls(person, d["i"], d["p"], d["t"], seq, vecs, bool(d["k"]), d.get("e"))

    def event_types(self) -> list[str | None]:
        return self.events if self.events is not None else [None] * len(self.item_ids)


@dataclass
class IngestOutcome:
    accepted: int = 0
    duplicates: int = 0
    persons: list[str] = field(default_factory=list)
    degraded: bool = False


@dataclass
class Fetched:
    """What `ProfileStore.fetch` found: profiles in the order asked (user vectors only where stored)."""

    profiles: list[Profile]
    degraded: bool  # Redis was unavailable: answers may lack recent events
    built: list[Profile]  # built here from Redis events: give them vectors for every platform, then `store`


class EventedPersons:
    """The persons with events since the bundle, any replica's: Redis set `{prefix}:evented` (INGEST_LUA adds
    to it), copied into this process and kept current by this replica's ingests and the other replicas' bus
    messages. For anyone not in it the bundle snapshot IS the profile, so a request for them needs no Redis.

    The copy is trusted only while it is complete: loaded after the bus (re)subscribed, and the bus not
    disconnected since (a message missed meanwhile could name a person with new events). Members are never
    removed (a person whose events expired costs a Redis round trip, no wrong answer).
    """

    def __init__(self) -> None:
        self._persons: set[str] = set()
        self._lock = threading.Lock()
        self._epoch = 0
        self.trusted = False

    def quiet(self, person: str) -> bool:
        """True when the person surely has no events since the bundle."""
        return self.trusted and person not in self._persons

    def add(self, persons: Iterable[str]) -> None:
        with self._lock:
            self._persons.update(persons)

    def distrust(self) -> None:
        """Messages may be missed from now on (bus disconnected): ask Redis for everyone until `load`."""
        with self._lock:
            self._epoch += 1
            self.trusted = False

    def load(self, guard: RedisGuard, keys: Keys) -> int:
        """Copy Redis's set (after the bus subscribed, so nothing added later is missed). Raises
        RedisUnavailable. Returns how many persons the copy holds."""
        with self._lock:
            epoch = self._epoch
        members = guard.run(lambda r: _read_evented(r, keys))
        with self._lock:
            self._persons |= members  # a union: persons added while Redis was read stay in
            if epoch == self._epoch:  # no disconnect meanwhile
                self.trusted = True
            return len(self._persons)

    def members(self) -> list[str]:
        """A copy of the persons known to have events since the bundle (trusted or not)."""
        with self._lock:
            return list(self._persons)

    def __len__(self) -> int:
        return len(self._persons)


def _read_evented(r, keys: Keys) -> set[str]:
    if not r.exists(keys.evented_complete):
        # Events ingested before the set existed (an older xrec): their persons have a counter each.
        batch: list[bytes] = []
        for key in r.scan_iter(match=f"{keys.prefix}:seq:*", count=1000):
            batch.append(key[len(keys.prefix) + 5:])
            if len(batch) >= 1000:
                r.sadd(keys.evented, *batch)
                batch = []
        if batch:
            r.sadd(keys.evented, *batch)
        r.set(keys.evented_complete, b"1")
    return {m.decode() for m in r.sscan_iter(keys.evented, count=10_000)}


def merge_events(bundle: LoadedBundle, person: str, extra: Sequence[tuple], seq: int,
                 cap: int, base: Profile | None = None) -> Profile:
    """The profile without vectors: `base` (else the snapshot) + extra (item_id, platform name, ts[, event
    type]) events, ordered by time (ties: earlier first), the newest `cap` kept. An extra event already in
    the base (same item and time, e.g. one the new bundle was trained on) is not counted twice."""
    if base is None:
        items, plats, ts = bundle.snapshot.events(person)
        kinds: list[str | None] = bundle.snapshot.event_types(person)
        known = person in bundle.snapshot or seq > 0
    else:
        items, plats, ts, known = base.item_ids, base.platforms, base.ts, True
        kinds = base.event_types()
    have = set(zip(items, ts, strict=True))
    rows = list(zip(items, plats, ts, kinds, strict=True))
    for e in extra:
        item, platform, t = e[0], e[1], e[2]
        pid = bundle.platform_of.get(platform)
        if pid is not None and (item, t) not in have:
            rows.append((item, pid, int(t), e[3] if len(e) > 3 else None))
            have.add((item, t))
    rows.sort(key=lambda r: r[2])  # stable: equal times keep their order
    rows = rows[-cap:]
    return Profile(person, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], seq, {},
                   known or bool(extra), [r[3] for r in rows])


def _entry(raw: bytes | str) -> tuple:
    """A Redis history entry, [item_id, platform, ts, event_id(, event type)], as merge_events takes it."""
    e = json.loads(raw)
    return (e[0], e[1], int(e[2]), e[4] if len(e) > 4 else None)


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
        self.evented = EventedPersons()
        self._unstored: list[tuple[str, Profile]] = []  # (model version, profile) for `flush_stores`
        self._unstored_lock = threading.Lock()

    # ---- reading ------------------------------------------------------------------------------------------

    def fetch(self, bundle: LoadedBundle, persons: Sequence[str]) -> Fetched:
        """Profiles of these persons: no Redis for persons without events since the bundle, one round trip
        for all the others. No model call: a profile has the user vectors it was stored with, if any."""
        mv = bundle.model_version
        unique = list(dict.fromkeys(persons))
        got: dict[str, Profile] = {}
        ask = unique
        if self.guard.healthy:  # (while it is not, every profile comes from the one place that may be current)
            ask = []
            for person in unique:
                if self.evented.quiet(person):
                    got[person] = self._from_snapshot(bundle, person)
                else:
                    ask.append(person)
        built: list[Profile] = []
        degraded = False
        if ask:
            try:
                replies = self.guard.run(lambda r: run_scripts(r, [
                    (self.guard.read_profile, (self.keys.profile(mv, p), self.keys.events(p), self.keys.seq(p)), ())
                    for p in ask]))
            except RedisUnavailable:
                degraded = True
                got.update(zip(ask, self._get_local(bundle, ask), strict=True))
            else:
                stored = 0
                legacy = []
                for person, (seq, data, entries) in zip(ask, replies, strict=True):
                    if data is not None:
                        prof = Profile.from_json(person, int(seq), data)
                        stored += 1
                        if prof.events is None:  # stored by an older xrec: rebuilt below, with event types
                            legacy.append(person)
                    elif not entries:  # no events after all: the snapshot is the profile (not stored)
                        prof = self._from_snapshot(bundle, person)
                    else:
                        prof = merge_events(bundle, person, [_entry(x) for x in entries], int(seq), self.cap)
                        built.append(prof)
                    got[person] = prof
                    self.local.put((mv, person), prof)
                if legacy:
                    with contextlib.suppress(RedisUnavailable):  # then served as stored, without types
                        for prof in self._read_from_redis(bundle, legacy):
                            got[prof.person] = prof
                            built.append(prof)
                            self.local.put((mv, prof.person), prof)
                self.metrics.profile_source.inc(stored, source="redis")
                if built:
                    self.metrics.profile_source.inc(len(built), source="built")
        return Fetched([got[p] for p in persons], degraded, built)

    def get(self, bundle: LoadedBundle, persons: Sequence[str], write_back: bool = True
            ) -> tuple[list[Profile], bool]:
        """`fetch`, with the profiles built from Redis events given their vectors and (`write_back`) stored
        at once. Returns the profiles and whether Redis was unavailable."""
        fetched = self.fetch(bundle, persons)
        if not (fetched.built and write_back):
            return fetched.profiles, fetched.degraded
        done = {p.person: p for p in with_vectors(bundle, fetched.built)}
        self.store(bundle, list(done.values()))
        return [done.get(p.person, p) for p in fetched.profiles], fetched.degraded

    def _from_snapshot(self, bundle: LoadedBundle, person: str) -> Profile:
        """A person with no events since the bundle: the LRU's copy (it may hold user vectors), else the
        snapshot's history."""
        key = (bundle.model_version, person)
        prof = self.local.get(key)
        if prof is not None:
            self.metrics.profile_source.inc(source="memory")
            return prof
        prof = merge_events(bundle, person, [], 0, self.cap)
        self.local.put(key, prof)
        self.metrics.profile_source.inc(source="snapshot")
        return prof

    def _get_local(self, bundle: LoadedBundle, persons: Sequence[str]) -> list[Profile]:
        mv = bundle.model_version
        out: list[Profile | None] = [self.local.get((mv, p)) for p in persons]
        self.metrics.profile_source.inc(sum(p is not None for p in out), source="memory")
        missing = [i for i, p in enumerate(out) if p is None]
        for i in missing:
            out[i] = prof = merge_events(bundle, persons[i], [], 0, self.cap)
            self.local.put((mv, prof.person), prof)
        if missing:
            self.metrics.profile_source.inc(len(missing), source="snapshot")
        return [p for p in out if p is not None]

    def store(self, bundle: LoadedBundle, profiles: Sequence[Profile]) -> None:
        """Write profiles (with their vectors) to Redis now, one round trip; a newer stored one wins."""
        self.store_later(bundle, profiles)
        self.flush_stores()

    def store_later(self, bundle: LoadedBundle, profiles: Sequence[Profile]) -> None:
        """`store` at the next `flush_stores` (the micro-batcher flushes once it has answered the batch)."""
        mv = bundle.model_version
        for p in profiles:
            self.local.put((mv, p.person), p)
        with self._unstored_lock:
            self._unstored.extend((mv, p) for p in profiles)

    def flush_stores(self) -> None:
        """Write what `store_later` collected. Persons nobody knows (random or new account ids) are not
        stored: nothing to cache. Redis unavailable: the LRU has them, and the next request that finds none
        in Redis builds it again."""
        with self._unstored_lock:
            pending, self._unstored = self._unstored, []
        calls = [(self.guard.put_profile, (self.keys.profile(mv, p.person),), (p.seq, p.to_json(), self.profile_ttl))
                 for mv, p in pending if p.known]
        if calls:
            with contextlib.suppress(RedisUnavailable):
                self.guard.run(lambda r: run_scripts(r, calls))

    def sync_evented(self) -> None:
        """(Re)load the set of persons with events; after it, requests for anyone else skip Redis."""
        try:
            n = self.evented.load(self.guard, self.keys)
        except RedisUnavailable:
            return
        log.info("persons with events since the bundle: %d (the others are served from the snapshot)", n)

    def _read_from_redis(self, bundle: LoadedBundle, persons: Sequence[str]) -> list[Profile]:
        """Snapshot + the persons' ingested events (no vectors). Raises RedisUnavailable."""
        ops = []
        for p in persons:
            ops += [("lrange", self.keys.events(p), 0, -1), ("get", self.keys.seq(p))]
        # One MULTI/EXEC: each person's list and counter are read at the same instant.
        res = self.guard.run(lambda r: _pipe(r, ops, transaction=True))
        profiles = []
        for j, person in enumerate(persons):
            entries, seq = res[2 * j], int(res[2 * j + 1] or 0)
            profiles.append(merge_events(bundle, person, [_entry(x) for x in entries], seq, self.cap))
        return profiles

    def _build_from_redis(self, bundle: LoadedBundle, persons: Sequence[str], write_back: bool
                          ) -> list[Profile]:
        """Snapshot + the persons' ingested events, vectors computed, written back (newest seq wins)."""
        profiles = with_vectors(bundle, self._read_from_redis(bundle, persons))
        if write_back:
            self.store(bundle, profiles)
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
        calls = [(self.guard.ingest, (self.keys.event_id(e.event_id), self.keys.events(e.person),
                                      self.keys.seq(e.person), self.keys.stream, self.keys.evented),
                  (e.history_entry(), self.cap, self.event_ttl, self.stream_maxlen, e.person, *e.stream_fields()))
                 for e in events]
        status = self.guard.run(lambda r: run_scripts(r, calls))
        new = [e for e, s in zip(events, status, strict=True) if int(s) > 0]
        # Before anything invalidates their cached lists: a request from then on asks Redis for them.
        self.evented.add(e.person for e in new)
        return new

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
        self.evented.add(fresh)
        updated = []
        for person, evs in fresh.items():
            base = self.local.get((mv, person))
            seq = (base.seq if base else 0) + len(evs)
            updated.append(merge_events(bundle, person, [(e.item_id, e.platform, e.ts, e.event) for e in evs],
                                        seq, self.cap, base))
        for prof in with_vectors(bundle, updated):
            self.local.put((mv, prof.person), prof)
        n = sum(len(v) for v in fresh.values())
        return IngestOutcome(n, len(events) - n, list(fresh), True)


def _pipe(r, ops: list[tuple], transaction: bool = False) -> list:
    pipe = r.pipeline(transaction=transaction)
    for name, *args in ops:
        getattr(pipe, name)(*args)
    return pipe.execute()
