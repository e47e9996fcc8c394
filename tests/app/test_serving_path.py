"""The uncached /v1/recommend path: Redis round trips per request (one at most, none for a person without
events since the bundle), micro-batching (same answers as one at a time, never held beyond the window, a
failure fails only its request), and FAISS indexes read from the bundle instead of built."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.services.batching import MicroBatcher
from app.services.errors import Overloaded
from app.services.model_bundle import load_bundle
from app.services.ranking import History, Query, rank
from app.services.recommender import Answer, Ask, prerender_rows, row_piece
from app.services.retrieval import IndexParams, PlatformIndex
from contract.bundle import BundleError, read_manifest, sha256_file, write_manifest
from contract.indexes import write_indexes
from tests.app.conftest import AUTH, running, wait_for
from tests.fixtures.tiny_bundle import PEOPLE, person_id

TS = 1_760_000_000



@contextlib.contextmanager
def round_trips(state) -> Iterator[list[bytes]]:
    """What the service's Redis client sends, one entry per send: a pipeline is one round trip (one
    entry), and so is every command sent alone (a hidden SCRIPT EXISTS included)."""
    pool = state.redis.connection_pool
    sent: list[bytes] = []
    wrapped = []

    def wrap(conn) -> None:
        if "send_packed_command" in vars(conn):
            return
        real = conn.send_packed_command

        def send(command, check_health=True):
            parts = command if isinstance(command, list | tuple) else [command]
            sent.append(b"".join(bytes(p) for p in parts))
            return real(command, check_health)

        conn.send_packed_command = send
        wrapped.append(conn)

    for conn in [*pool._available_connections, *pool._in_use_connections]:
        wrap(conn)
    real_get = pool.get_connection

    def get_connection(*args, **kwargs):
        conn = real_get(*args, **kwargs)
        wrap(conn)
        return conn

    pool.get_connection = get_connection
    try:
        yield sent
    finally:
        del pool.get_connection
        for conn in wrapped:
            del conn.send_packed_command


def ready(client: TestClient):
    """The state, once it knows who has events (before that, every request asks Redis)."""
    state = client.app.state.xrec
    assert wait_for(lambda: state.profiles.evented.trusted), "the persons-with-events set was never loaded"
    return state


def recommend(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/recommend", json={"platform": "kitchen", "k": 5, **body})
    assert r.status_code == 200, r.text
    return r.json()


def post_event(client: TestClient, event_id: str, name: str, item: str, ts: int = TS) -> None:
    ev = {"event_id": event_id, "platform": "kitchen", "account_id": PEOPLE[name]["kitchen"], "item_id": item,
          "ts": ts}
    r = client.post("/v1/events", json={"events": [ev]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


# ---- 1. Redis round trips ----------------------------------------------------------------------------------


@pytest.fixture
def uncached_client(settings: Settings) -> Iterator[TestClient]:
    """A service that does not rank ahead after events: the request after an event takes the uncached path."""
    with running(settings.model_copy(update={"refresh_after_events": False})) as c:
        yield c


def test_no_redis_for_a_person_without_events_one_round_trip_after_an_event(uncached_client: TestClient) -> None:
    client = uncached_client
    state = ready(client)
    with round_trips(state) as sent:
        first = recommend(client, person_id=person_id("alice"))
        assert first["cache"] == "miss" and not first["cold_start"]
        assert recommend(client, account_id="never-seen-anywhere")["cold_start"] is True
        # uncacheable (a fixed clock): computed every time, still from the snapshot
        recommend(client, person_id=person_id("carol"), now_ts=TS)
        recommend(client, person_id=person_id("carol"), now_ts=TS + 1)
    assert sent == [], "the bundle snapshot is current for them: nothing to ask Redis"

    post_event(client, "rt-1", "bob", "kitchen:k0004")
    with round_trips(state) as sent:
        after = recommend(client, person_id=person_id("bob"))
    assert after["cache"] == "miss"
    assert "kitchen:k0004" not in {i["item_id"] for i in after["items"]}, "the event counts"
    assert len(sent) == 1, f"one round trip for a person with events, got {len(sent)}"
    assert state.guard.read_profile.sha.encode() in sent[0]
    with round_trips(state) as sent:
        assert recommend(client, person_id=person_id("bob"))["cache"] == "hit"
    assert sent == []


def test_after_an_event_the_next_list_is_ranked_ahead_and_equals_a_fresh_one(settings: Settings) -> None:
    """refresh_after_events (the default): the events call queues the person's list for the events' platform;
    the request that follows is a cache hit (or waits for that computation, never computing it twice), and
    its answer is the one an uncached computation gives."""
    with running(settings) as client:
        state = ready(client)
        rec = state.recommender
        rec.batcher.reset_stats()
        post_event(client, "ra-1", "bob", "kitchen:k0004")
        assert wait_for(lambda: not rec._refreshing and rec.batcher.stats.requests == 1)
        ahead = recommend(client, person_id=person_id("bob"))
        assert ahead["cache"] == "hit"
        assert "kitchen:k0004" not in {i["item_id"] for i in ahead["items"]}, "the event counts"
        assert rec.batcher.stats.requests == 1, "answered from the list ranked ahead"

        # A request that arrives while the refresh is still being computed waits for it.
        gate = threading.Event()
        real = rec.batcher.process

        def held(begun):
            gate.wait(5)
            return real(begun)

        rec.batcher.process = held
        try:
            post_event(client, "ra-2", "bob", "kitchen:k0005", ts=TS + 1)
            assert wait_for(lambda: rec._refreshing)
            threading.Timer(0.3, gate.set).start()
            waited = recommend(client, person_id=person_id("bob"))
        finally:
            gate.set()
            rec.batcher.process = real
        assert waited["cache"] == "hit" and rec.batcher.stats.requests == 2
        state.ranked.clear()
        fresh = recommend(client, person_id=person_id("bob"))
        assert fresh["cache"] == "miss"
        strip = lambda body: [(i["item_id"], i["score"], i["reasons"]) for i in body["items"]]  # noqa: E731
        assert strip(waited) == strip(fresh)

    # Off: the next request computes its list itself.
    with running(settings.model_copy(update={"refresh_after_events": False,
                                             "redis_prefix": settings.redis_prefix + "-off"})) as client:
        state = ready(client)
        post_event(client, "ra-3", "bob", "kitchen:k0004")
        assert recommend(client, person_id=person_id("bob"))["cache"] == "miss"


def test_a_profile_rebuilt_from_events_costs_one_round_trip_then_is_written_back(
        uncached_client: TestClient, settings: Settings, redis_client: redis.Redis) -> None:
    client = uncached_client
    state = ready(client)
    post_event(client, "rt-2", "dave", "kitchen:k0007")
    key = f"{settings.redis_prefix}:tiny-0:profile:{person_id('dave')}"
    redis_client.delete(key)  # expired, or a new model version: the events are all there is
    with round_trips(state) as sent:
        body = recommend(client, person_id=person_id("dave"), now_ts=TS + 60)
        assert wait_for(lambda: redis_client.exists(key))
    assert "kitchen:k0007" not in {i["item_id"] for i in body["items"]}
    reads = [s for s in sent if state.guard.read_profile.sha.encode() in s]
    writes = [s for s in sent if state.guard.put_profile.sha.encode() in s]
    assert len(reads) == 1 and len(writes) == 1 and len(sent) == 2, sent
    assert sent.index(reads[0]) < sent.index(writes[0])
    with round_trips(state) as sent:
        recommend(client, person_id=person_id("dave"), now_ts=TS + 61)
    assert len(sent) == 1


def test_while_the_bus_is_down_everyone_asks_redis(client: TestClient) -> None:
    state = ready(client)
    state.profiles.evented.distrust()  # what the bus does when its connection drops
    with round_trips(state) as sent:
        recommend(client, person_id=person_id("alice"), now_ts=TS)
    assert len(sent) == 1, "a missed message may have named her: Redis is asked"
    state.profiles.sync_evented()  # what the bus does once subscribed again
    with round_trips(state) as sent:
        recommend(client, person_id=person_id("alice"), now_ts=TS + 1)
    assert sent == []


def test_another_replicas_event_reaches_this_one(settings: Settings, tmp_path: Path) -> None:
    other = settings.model_copy(update={"events_dir": tmp_path / "events-b"})
    with running(settings) as a, running(other) as b:
        state_a, _ = ready(a), ready(b)
        before = recommend(a, person_id=person_id("dave"), now_ts=TS)
        bought = before["items"][0]["item_id"]
        post_event(b, "rt-3", "dave", bought)
        assert wait_for(lambda: not state_a.profiles.evented.quiet(person_id("dave")))
        with round_trips(state_a) as sent:
            after = recommend(a, person_id=person_id("dave"), now_ts=TS)
        assert len(sent) == 1 and bought not in {i["item_id"] for i in after["items"]}


def test_events_from_before_the_set_existed_are_found(settings: Settings, redis_client: redis.Redis) -> None:
    """Redis data of an older xrec (events, no set of persons with events): the set is filled from the
    persons' counters once, so their events are not ignored."""
    p = settings.redis_prefix
    pid = person_id("dave")
    redis_client.rpush(f"{p}:events:{pid}", '["kitchen:k0009","kitchen",1760000000,"old-1"]')
    redis_client.set(f"{p}:seq:{pid}", 1)
    with running(settings) as c:
        state = ready(c)
        assert not state.profiles.evented.quiet(pid) and state.profiles.evented.quiet(person_id("alice"))
        body = recommend(c, person_id=pid)
        assert "kitchen:k0009" not in {i["item_id"] for i in body["items"]}
        assert any(r["item_id"] == "kitchen:k0009" for i in body["items"] for r in i["reasons"])
    assert redis_client.exists(f"{p}:evented:complete")


# ---- 2. micro-batching -------------------------------------------------------------------------------------


def mixed_asks(bundle) -> list[Ask]:
    """Every kind of request the cold path serves."""
    kitchen, grocery = bundle.platform_of["kitchen"], bundle.platform_of["grocery"]
    items = [bundle.catalog.item_ids[r] for r in bundle.catalog.popular[kitchen][:3]]
    return [
        Ask(person_id("alice"), kitchen, 5),
        Ask(person_id("alice"), grocery, 5),  # the same person again, another platform
        Ask(person_id("bob"), kitchen, 3, exclude_seen=False),
        Ask(person_id("carol"), kitchen, 4, exclude_ids=frozenset(items)),  # exclusions among the candidates
        Ask(person_id("dave"), kitchen, 30),  # k above the candidate count: its own retrieval depth
        Ask(person_id("erin"), grocery, 5, now=TS),
        Ask("p_nobody-knows", kitchen, 5),  # cold start: popular items
        Ask("p_visitor", kitchen, 5, context=(("grocery:g0003", "grocery", TS), ("kitchen:k0001", "kitchen", TS + 9))),
        Ask(person_id("frank"), grocery, 2),  # linked, no events: popular
        Ask(person_id("erin"), kitchen, 5, all_reasons=False),
    ]


def same(a: Answer | BaseException, b: Answer | BaseException) -> None:
    assert isinstance(a, Answer) and isinstance(b, Answer), (a, b)
    assert a.fragments == b.fragments and a.cold_start == b.cold_start and a.cache == b.cache
    assert a.ranked is not None and b.ranked is not None
    assert np.array_equal(a.ranked.rows, b.ranked.rows) and np.array_equal(a.ranked.scores, b.ranked.scores)
    assert np.array_equal(a.ranked.candidates, b.ranked.candidates)


def forget(state) -> None:
    """No cached lists, profiles or vectors: the next computation starts from nothing."""
    state.ranked.clear()
    state.profiles.local.clear()


def test_a_batch_of_mixed_requests_answers_exactly_as_one_by_one(client: TestClient) -> None:
    state = ready(client)
    post_event(client, "mb-1", "bob", "kitchen:k0011")  # bob: a profile from Redis (after an event)
    bundle, rec = state.bundle, state.recommender
    asks = mixed_asks(bundle)
    forget(state)
    alone = [rec.compute(bundle, a) for a in asks]
    forget(state)
    calls = {"encoder": 0, "scorer": 0}
    models = bundle.models
    real_user, real_score = models.user_encoder, models.scorer

    class Counting:
        def __init__(self, session, name):
            self.session, self.name = session, name

        def run(self, *args, **kwargs):
            calls[self.name] += 1
            return self.session.run(*args, **kwargs)

    object.__setattr__(models, "user_encoder", Counting(real_user, "encoder"))
    object.__setattr__(models, "scorer", Counting(real_score, "scorer"))
    try:
        together = rec.compute_many(bundle, asks)
    finally:
        object.__setattr__(models, "user_encoder", real_user)
        object.__setattr__(models, "scorer", real_score)
    for a, b in zip(alone, together, strict=True):
        same(a, b)
    # one encoder call for every missing user vector; one scorer call per retrieval depth (k=30 has its
    # own) plus one for the request ranked again with its exclusions
    assert calls["encoder"] == 1 and calls["scorer"] <= 3, calls


def test_requests_sent_together_through_the_batcher_get_the_same_answers(client: TestClient) -> None:
    state = ready(client)
    bundle, rec = state.bundle, state.recommender
    asks = mixed_asks(bundle)
    forget(state)
    alone = [rec.compute(bundle, a) for a in asks]
    forget(state)
    rec.batcher.reset_stats()

    async def all_at_once() -> list[Answer]:
        return await asyncio.gather(*(rec.compute_batched(bundle, a) for a in asks))

    for a, b in zip(alone, asyncio.run(all_at_once()), strict=True):
        same(a, b)
    assert rec.batcher.stats.requests == len(asks)


def test_a_failure_fails_only_its_own_request(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    state = ready(client)
    bundle, rec = state.bundle, state.recommender
    asks = mixed_asks(bundle)
    forget(state)
    alone = [rec.compute(bundle, a) for a in asks]
    bad = person_id("carol")

    # a step of its own (its fragments)
    forget(state)
    real_fragments = rec._fragments


    def only_bad_fails(out: list, error: type[Exception]) -> None:
        for ask, a, b in zip(asks, alone, out, strict=True):
            if ask.person == bad:
                assert isinstance(b, error)
            else:
                same(a, b)

    def fragments(b, c, h, r, ask):
        if ask.person == bad:
            raise ValueError("bad row")
        return real_fragments(b, c, h, r, ask)

    monkeypatch.setattr(rec, "_fragments", fragments)
    only_bad_fails(rec.compute_many(bundle, asks), ValueError)
    monkeypatch.setattr(rec, "_fragments", real_fragments)

    # a shared step (the profile read) that its presence breaks: the others are redone alone and answered
    forget(state)
    real_fetch = state.profiles.fetch

    def fetch(bundle, persons):
        if bad in persons:
            raise OverflowError("corrupt profile")
        return real_fetch(bundle, persons)

    monkeypatch.setattr(state.profiles, "fetch", fetch)
    only_bad_fails(rec.compute_many(bundle, asks), OverflowError)

    # through the batcher: sent together, the one fails and the other is answered
    async def both() -> list[Answer | BaseException]:
        return await asyncio.gather(rec.compute_batched(bundle, asks[0]), rec.compute_batched(bundle, asks[3]),
                                    return_exceptions=True)

    ok, failed = asyncio.run(both())
    assert isinstance(failed, OverflowError)
    same(alone[0], ok)


@contextlib.contextmanager
def wakeup_delays() -> Iterator[list[float]]:
    """How late a sleeping thread wakes up on this machine meanwhile (the OS's doing, not the batcher's):
    a probe thread sleeps 0.5 ms again and again; the list gets the worst delay when the block ends."""
    stop = threading.Event()
    worst = [0.0]

    def probe() -> None:
        while not stop.is_set():
            t = time.monotonic()
            threading.Event().wait(0.0005)
            worst[0] = max(worst[0], time.monotonic() - t - 0.0005)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    out: list[float] = []
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out.append(worst[0])


def test_a_request_is_never_held_longer_than_the_window() -> None:
    """The hold is measured by the batcher for each request: from when it could have started (arrived, and
    the worker free) to when its batch started. Traffic: bursts, a steady stream, lone requests."""
    window = 0.004
    holds: list[float] = []
    sizes: list[int] = []

    def process(items: list[int]) -> list[int]:
        time.sleep(0.0005 * len(items) + 0.001)  # computing takes a while, as a batch does
        return [i * 2 for i in items]

    def observe(size: int, h: list[float]) -> None:
        sizes.append(size)
        holds.extend(h)

    b: MicroBatcher[int, int] = MicroBatcher(process, window_s=window, max_batch=8, max_queue=1000,
                                             observe=observe)
    b.start()
    try:
        with wakeup_delays() as noise:
            futures, expected = [], []
            for burst in range(5):  # bursts: the worker is busy, requests queue up behind it
                futures += [b.submit(burst * 100 + i) for i in range(20)]
                expected += [2 * (burst * 100 + i) for i in range(20)]
                time.sleep(0.02)
            for i in range(60):  # a steady stream, closer together than the window
                futures.append(b.submit(1000 + i))
                expected.append(2 * (1000 + i))
                time.sleep(0.0007)
            assert b.busy
            assert [f.result(5) for f in futures] == expected
            lone_holds = []
            for i in range(3):  # lone requests after a pause: not held for company
                time.sleep(0.2)
                n = len(holds)
                future = b.submit(i)
                assert not b.busy
                assert future.result(5) == 2 * i
                lone_holds += holds[n:]
    finally:
        b.stop()
    # What the OS adds (waking the worker late on a shared, loaded machine) is not the batcher's doing.
    slack = max(0.001, 2 * noise[0])
    assert max(holds) <= window + slack, f"held {max(holds) * 1e3:.2f} ms, window {window * 1e3} ms"
    assert max(lone_holds) <= slack, f"a lone request was held {max(lone_holds) * 1e3:.2f} ms"
    assert max(sizes) > 1, "requests were batched"
    assert b.stats.max_hold_s == max(holds)


@contextlib.contextmanager
def gated_batcher(max_queue: int) -> Iterator[tuple[MicroBatcher[int, int], threading.Event]]:
    """A batcher of one item per batch whose work waits for the gate, so the queue can be filled exactly."""
    gate = threading.Event()

    def process(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    b: MicroBatcher[int, int] = MicroBatcher(process, window_s=0, max_batch=1, max_queue=max_queue)
    b.start()
    try:
        yield b, gate
    finally:
        gate.set()
        b.stop()


def test_a_full_queue_refuses_at_once() -> None:
    with gated_batcher(max_queue=1) as (b, gate):
        first = b.submit(1)
        assert wait_for(lambda: b._queue.empty())  # the worker holds it
        second = b.submit(2)  # waits in the queue
        with pytest.raises(Overloaded):
            b.submit(3)
        gate.set()
        assert first.result(5) == 1 and second.result(5) == 2


def test_work_that_may_wait_leaves_room_for_requests() -> None:
    """`keep_free` (how `refresh` queues lists ranked ahead after events): refused once only that many
    places are left, which requests can still take."""
    with gated_batcher(max_queue=4) as (b, gate):
        held = b.submit(0)
        assert wait_for(lambda: b._queue.empty())  # the worker holds it
        ahead = [b.submit(i, keep_free=2) for i in (1, 2)]
        with pytest.raises(Overloaded):
            b.submit(3, keep_free=2)
        asked = [b.submit(i) for i in (4, 5)]
        with pytest.raises(Overloaded):
            b.submit(6)
        gate.set()
        assert [f.result(5) for f in (held, *ahead, *asked)] == [0, 1, 2, 4, 5]


def test_two_stages_overlap_and_keep_each_batchs_answers() -> None:
    """With `prepare`, the next batch is prepared while the last one is still in `process` (that overlap is
    what uses the second core), every request still gets its own answer, a whole-batch failure in `prepare`
    fails only that batch, and `stop` answers the batch that was between the stages."""
    in_process = threading.Event()
    release = threading.Event()
    prepared: list[list[int]] = []

    def prepare(items: list[int]) -> list[int]:
        if 13 in items:
            raise KeyError("bad batch")
        prepared.append(list(items))
        return [i * 10 for i in items]

    def process(tens: list[int]) -> list[int | BaseException]:
        if 10 in tens:  # the first batch: hold the second stage
            in_process.set()
            release.wait(5)
        return [ValueError("seven") if t == 70 else t + 1 for t in tens]

    b: MicroBatcher[int, int | BaseException] = MicroBatcher(process, prepare=prepare, window_s=0, max_batch=8,
                                                             max_queue=100)
    b.start()
    try:
        first = b.submit(1)
        assert in_process.wait(5)
        later = [b.submit(i) for i in (2, 3, 7)]
        # prepared while batch [1] is still in its second stage
        assert wait_for(lambda: any(2 in p for p in prepared))
        assert not first.done() and not any(f.done() for f in later)
        release.set()
        assert first.result(5) == 11
        assert [f.result(5) if not f.exception(5) else f.exception(5) for f in later[:2]] == [21, 31]
        assert isinstance(later[2].exception(5), ValueError)
        bad, good = b.submit(13), None
        assert isinstance(bad.exception(5), KeyError)
        good = b.submit(4)
        assert good.result(5) == 41
        release.clear()
        in_process.clear()
        held = b.submit(1)  # in the second stage when stop() is called: answered, not lost
        assert in_process.wait(5)
        threading.Timer(0.2, release.set).start()
    finally:
        b.stop()
    assert held.result(0) == 11


def test_awaited_requests_get_their_own_answers_and_a_cancelled_one_is_skipped() -> None:
    """`run` (the service's path): each awaiting request gets its own result or its own exception, a batch's
    answers reach the loop in one wake-up, and a request whose caller went away before its batch started is
    never computed."""
    gate = threading.Event()
    computed: list[int] = []

    def process(items: list[int]) -> list[int | BaseException]:
        gate.wait(5)
        computed.extend(items)
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    b: MicroBatcher[int, int | BaseException] = MicroBatcher(process, window_s=0.002, max_batch=16,
                                                             max_queue=100)
    b.start()

    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counting(*args, **kwargs):  # counts the batcher's wake-ups of this loop
            nonlocal wakeups
            wakeups += 1
            return real(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        blocker = asyncio.ensure_future(b.run(100))  # holds the worker until the gate opens
        await asyncio.sleep(0.05)
        tasks = [asyncio.ensure_future(b.run(i)) for i in range(6)]
        gone = asyncio.ensure_future(b.run(99))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)  # the cancellation reaches the batcher's side
        gate.set()
        out = await asyncio.gather(blocker, *tasks, return_exceptions=True)
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]
        return [out, wakeups]

    try:
        (out, wakeups) = asyncio.run(scenario())
    finally:
        gate.set()
        b.stop()
    assert out[0] == 1000
    assert out[1:4] == [0, 10, 20] and out[5:] == [40, 50]
    assert isinstance(out[4], ValueError) and str(out[4]) == "bad 3"
    assert 99 not in computed  # cancelled while waiting: skipped
    assert wakeups <= b.stats.batches  # one wake-up per batch, not per request

# ---- 3. indexes from the bundle ----------------------------------------------------------------------------


def without_index_files(bundle_dir: Path, out: Path) -> Path:
    """The bundle as an export from before index files wrote it."""
    shutil.copytree(bundle_dir, out)
    shutil.rmtree(out / "indexes")
    write_manifest(out, read_manifest(out).model_copy(update={"indexes": {}}))
    return out


def _ranked(bundle) -> list[tuple[list[int], list[float]]]:
    """Every snapshot person's ranking on every platform."""
    out = []
    for person in sorted(bundle.snapshot.spans):
        items, plats, ts = bundle.snapshot.events(person)
        history = History.from_ids(bundle.catalog, items, plats, ts)
        for target in range(len(bundle.platforms)):
            r = rank(bundle.models, bundle.catalog, [Query(history, target, TS)])[0]
            out.append((r.rows.tolist(), r.scores.tolist()))
    return out


def test_index_files_are_read_not_built_and_rank_the_same(bundle_dir: Path, settings: Settings, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = read_manifest(bundle_dir)
    assert sorted(manifest.indexes) == sorted(manifest.platforms)
    assert all(e.file in manifest.files and e.kind == "flat" for e in manifest.indexes.values())
    old = without_index_files(bundle_dir, tmp_path / "old")

    builds: list[int] = []
    real_build = PlatformIndex.build.__func__

    def build(cls, dim, rows, vecs, params):
        builds.append(len(rows))
        return real_build(cls, dim, rows, vecs, params)

    monkeypatch.setattr(PlatformIndex, "build", classmethod(build))
    new_bundle = load_bundle(bundle_dir, settings)
    assert builds == [], "the indexes come from the bundle"
    assert all(idx.mapped for idx in new_bundle.catalog.indexes.values())
    old_bundle = load_bundle(old, settings)
    assert len(builds) == len(manifest.platforms), "a bundle without index files is indexed at load, as before"
    assert _ranked(new_bundle) == _ranked(old_bundle)

    # Catalog changes work on a memory-mapped index (a copy in memory changes, never the file) and agree.
    digest = sha256_file(bundle_dir / manifest.indexes["kitchen"].file)
    vec = new_bundle.catalog.vectors[new_bundle.catalog.row_of["kitchen:k0003"]]
    for b in (new_bundle, old_bundle):
        b.catalog = b.catalog.with_changes([("kitchen:new-1", b.platform_of["kitchen"], "a new pan", vec)],
                                           ["kitchen:k0005"])
    assert _ranked(new_bundle) == _ranked(old_bundle)
    assert not new_bundle.catalog.indexes[1].mapped and new_bundle.catalog.indexes[0].mapped
    assert sha256_file(bundle_dir / manifest.indexes["kitchen"].file) == digest


def test_ivf_index_files_are_read_mapped_with_their_nprobe_and_rank_the_same(bundle_dir: Path, settings: Settings,
                                                                             tmp_path: Path) -> None:
    """The fixture bundle with IVF index files (thresholds lowered; 30 items a platform: one list, so exact):
    read memory-mapped, their rows checked, the manifest's nprobe applied; rankings and catalog changes agree
    with the exact indexes'."""
    flat = load_bundle(bundle_dir, settings)
    ivf_dir = tmp_path / "ivf"
    shutil.copytree(bundle_dir, ivf_dir)
    manifest = read_manifest(ivf_dir)
    entries = write_indexes(ivf_dir, manifest.platforms, flat.catalog.platform, flat.catalog.vectors,
                            IndexParams(ivf_threshold=0), threads=1)
    write_manifest(ivf_dir, manifest.model_copy(update={"indexes": entries}))
    assert all(e.kind == "ivf" and (e.ivf_nlist, e.ivf_nprobe, e.ivf_recall) == (1, 1, 1.0) for e in entries.values())
    ivf = load_bundle(ivf_dir, settings)
    assert all(i.kind == "ivf" and i.mapped and faiss.extract_index_ivf(i.index).nprobe == 1
               for i in ivf.catalog.indexes.values())
    assert _ranked(ivf) == _ranked(flat)
    digest = sha256_file(ivf_dir / entries["kitchen"].file)
    vec = flat.catalog.vectors[flat.catalog.row_of["kitchen:k0003"]]
    for b in (flat, ivf):
        b.catalog = b.catalog.with_changes([("kitchen:new-1", b.platform_of["kitchen"], "a new pan", vec)],
                                           ["kitchen:k0005"])
    assert ivf.catalog.indexes[1].kind == "ivf" and not ivf.catalog.indexes[1].mapped
    assert _ranked(ivf) == _ranked(flat)
    assert sha256_file(ivf_dir / entries["kitchen"].file) == digest


def test_an_index_file_that_does_not_match_the_items_is_refused(bundle_dir: Path, settings: Settings,
                                                                tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    files = read_manifest(bad).indexes
    a, b = bad / files["grocery"].file, bad / files["kitchen"].file
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    write_manifest(bad, read_manifest(bad))  # hashes that match: only the content check can tell
    with pytest.raises(BundleError, match="re-export the bundle"):
        load_bundle(bad, settings)


def test_a_bundle_without_index_files_serves(settings: Settings, bundle_dir: Path, tmp_path: Path) -> None:
    old = without_index_files(bundle_dir, tmp_path / "old")
    with running(settings.model_copy(update={"bundle_dir": old})) as c:
        body = recommend(c, person_id=person_id("alice"))
        assert len(body["items"]) == 5 and not body["cold_start"]


def test_searches_use_the_configured_faiss_threads_in_any_thread() -> None:
    """OpenMP's thread count is per thread: set where the service loads a bundle, it would not reach the
    micro-batcher's worker, whose batched searches would then run on every core."""
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((200, 8)).astype(np.float32)
    idx = PlatformIndex.build(8, np.arange(200), vecs, IndexParams(search_threads=1))
    seen: list[int] = []

    def search() -> None:
        idx.search(vecs[:4], 5, [np.zeros(0, dtype=np.int64)] * 4)
        seen.append(faiss.omp_get_max_threads())

    t = threading.Thread(target=search)
    t.start()
    t.join()
    assert seen == [1]


def test_a_small_catalogs_json_pieces_are_made_at_load_and_are_what_a_request_would_make(client: TestClient) -> None:
    bundle = client.app.state.xrec.bundle
    n = len(bundle.catalog.item_ids)
    assert len(bundle.row_json) >= 2 * n  # every row, both kinds, before any request
    for row in (0, n // 2, n - 1):
        for kind in ("result", "reason"):
            assert bundle.row_json[(row, kind)] == row_piece(bundle.catalog, bundle.platforms, row, kind)
    body = json.loads(bundle.row_json[(0, "result")] + b"0.5}")
    assert body == {"item_id": bundle.catalog.item_ids[0], "title": bundle.catalog.titles[0], "score": 0.5}
    bundle.row_json.clear()
    assert prerender_rows(bundle, n - 1) == 0 and not bundle.row_json  # too large: made on first use instead
    recommend(client, person_id=person_id("alice"), platform="kitchen")
    assert 0 < len(bundle.row_json) < 2 * n
