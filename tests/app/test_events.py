"""POST /v1/events: idempotency, profiles in Redis, the next recommendation reflecting events, durability
across restarts and Redis loss, and `xrec data export-events`."""

from __future__ import annotations

import json
import logging
import time
import tomllib
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.core.config import Settings
from tests.app.conftest import AUTH, running, wait_for
from tests.fixtures.tiny_bundle import PEOPLE, person_id

TS = 1_760_000_000


def event(event_id: str, account: str, item: str, platform: str = "kitchen", ts: int = TS,
          kind: str = "purchase") -> dict:
    return {"event_id": event_id, "platform": platform, "account_id": account, "item_id": item, "event": kind,
            "ts": ts}


def send(client: TestClient, *events: dict) -> dict:
    r = client.post("/v1/events", json={"events": list(events)}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def recommend(client: TestClient, name: str, platform: str = "kitchen", k: int = 20) -> dict:
    r = client.post("/v1/recommend", json={"person_id": person_id(name), "platform": platform, "k": k})
    assert r.status_code == 200, r.text
    return r.json()


def test_same_event_id_twice_is_one_history_entry(client: TestClient, settings: Settings,
                                                  redis_client: redis.Redis) -> None:
    e = event("ev-1", PEOPLE["dave"]["kitchen"], "kitchen:k0001")
    assert send(client, e) == {"accepted": 1, "duplicates": 0, "unknown_items": 0, "persons": 1,
                               "degraded": False}
    assert send(client, e, e)["duplicates"] == 2
    pid = person_id("dave")
    assert redis_client.llen(f"{settings.redis_prefix}:events:{pid}") == 1
    profile = json.loads(redis_client.hget(f"{settings.redis_prefix}:tiny-0:profile:{pid}", "data"))
    assert profile["i"].count("kitchen:k0001") == sum(
        1 for i in client.app.state.xrec.bundle.snapshot.events(pid)[0] if i == "kitchen:k0001") + 1


def test_events_update_the_profile_and_the_next_recommendation(client: TestClient, settings: Settings,
                                                               redis_client: redis.Redis) -> None:
    first = recommend(client, "bob")
    assert recommend(client, "bob")["cache"] == "hit"
    bought = first["items"][0]["item_id"]
    out = send(client, event("ev-2", PEOPLE["bob"]["kitchen"], bought, ts=TS))
    assert out["accepted"] == 1
    after = recommend(client, "bob")
    # The events invalidate the person's cached lists; the list that answers is the one ranked ahead after the
    # event (refresh_after_events), so it reflects the event.
    assert after["cache"] == "hit"
    assert bought not in {i["item_id"] for i in after["items"]}, "a seen item is excluded"
    assert any(r["item_id"] == bought for i in after["items"] for r in i["reasons"])
    key = f"{settings.redis_prefix}:tiny-0:profile:{person_id('bob')}"
    assert redis_client.exists(key) and 0 < redis_client.ttl(key) <= settings.profile_ttl_s
    assert int(redis_client.hget(key, "seq")) == 1
    # The stream carries pseudonyms only.
    entries = redis_client.xrange(f"{settings.redis_prefix}:stream:events")
    assert len(entries) == 1
    fields = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    assert fields["person"] == person_id("bob") and PEOPLE["bob"]["kitchen"] not in fields.values()


def test_a_new_account_becomes_a_known_person_after_events(client: TestClient) -> None:
    r = client.post("/v1/recommend", json={"account_id": "brand-new", "platform": "kitchen", "k": 3})
    assert r.json()["cold_start"] is True
    send(client, event("ev-n1", "brand-new", "kitchen:k0004"), event("ev-n2", "brand-new", "kitchen:k0009",
                                                                     ts=TS + 60))
    body = client.post("/v1/recommend", json={"account_id": "brand-new", "platform": "kitchen", "k": 3}).json()
    assert body["cold_start"] is False and body["items"][0]["reasons"]


def test_profile_is_cached_in_redis_under_the_model_version(client: TestClient, settings: Settings,
                                                            redis_client: redis.Redis) -> None:
    """A person with events has a profile (history + user vectors) in Redis under the model version, built
    when the events came; a person without any is served from the bundle snapshot and stores nothing."""
    state = client.app.state.xrec
    deadline = time.monotonic() + 5
    while not state.profiles.evented.trusted and time.monotonic() < deadline:
        time.sleep(0.02)
    pid = person_id("erin")
    key = f"{settings.redis_prefix}:tiny-0:profile:{pid}"
    recommend(client, "erin")
    assert not redis_client.exists(key), "nothing to cache that the bundle does not already hold"
    send(client, event("ev-e1", PEOPLE["erin"]["kitchen"], "kitchen:k0002"))
    assert redis_client.exists(key) and redis_client.ttl(key) > 0
    assert int(redis_client.hget(key, "seq")) == 1
    # the event queued the person's kitchen list to be ranked ahead, which reads the profile too: let it finish
    assert wait_for(lambda: not state.recommender._refreshing)
    loads = state.metrics.profile_source
    before = loads.value(source="redis")
    client.post("/v1/recommend", json={"person_id": pid, "platform": "grocery", "now_ts": TS})
    assert loads.value(source="redis") == before + 1


def test_unknown_items_are_accepted_and_counted(client: TestClient) -> None:
    assert send(client, event("ev-u", "k-x", "kitchen:not-in-catalog"))["unknown_items"] == 1


def test_events_survive_a_restart_and_a_redis_wipe(settings: Settings, redis_client: redis.Redis) -> None:
    with running(settings) as c1:
        send(c1, event("ev-d1", PEOPLE["dave"]["kitchen"], "kitchen:k0002"),
             event("ev-d2", PEOPLE["dave"]["kitchen"], "kitchen:k0003", ts=TS + 10))
        before = recommend(c1, "dave")
    seen = {"kitchen:k0002", "kitchen:k0003"}
    assert not seen & {i["item_id"] for i in before["items"]}
    with running(settings) as c2:  # a new instance on the same Redis and event log
        assert not seen & {i["item_id"] for i in recommend(c2, "dave")["items"]}
    # Redis loses everything (no persistence): the event log is replayed into it at startup.
    keys = list(redis_client.scan_iter(f"{settings.redis_prefix}:*"))
    redis_client.delete(*keys)
    with running(settings) as c3:
        assert redis_client.llen(f"{settings.redis_prefix}:events:{person_id('dave')}") == 2
        assert not seen & {i["item_id"] for i in recommend(c3, "dave")["items"]}
        assert send(c3, event("ev-d1", PEOPLE["dave"]["kitchen"], "kitchen:k0002"))["duplicates"] == 1


def test_raw_account_ids_stay_out_of_logs_and_redis(settings: Settings, redis_client: redis.Redis,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "raw-account-7f3a"
    with running(settings) as c:
        send(c, event("ev-s", secret, "kitchen:k0001"))
        c.post("/v1/recommend", json={"account_id": secret, "platform": "kitchen"})
    assert secret not in caplog.text
    for key in redis_client.scan_iter(f"{settings.redis_prefix}:*"):
        assert secret.encode() not in key
        kind = redis_client.type(key)
        blob = (repr(redis_client.lrange(key, 0, -1)) if kind == b"list" else
                repr(redis_client.xrange(key)) if kind == b"stream" else
                repr(redis_client.hgetall(key)) if kind == b"hash" else
                repr(redis_client.smembers(key)) if kind == b"set" else repr(redis_client.get(key)))
        assert secret not in blob
    # The durable log keeps it, on purpose (export needs it), in files only the service user may read.
    (log_file,) = Path(settings.events_dir).glob("events-*.jsonl")
    assert secret in log_file.read_text() and oct(log_file.stat().st_mode)[-3:] == "600"


def test_export_events_writes_build_input_and_a_mapping_snippet(settings: Settings, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from training.data.sources import SourceConfig, load_sources
    from xrec.cli import app as cli

    with running(settings) as c:
        send(c, event("x1", "k-alice", "kitchen:k0005", ts=TS), event("x2", "g-bob", "grocery:g0002",
                                                                      platform="grocery", ts=TS + 5))
        send(c, event("x1", "k-alice", "kitchen:k0005", ts=TS))  # a redelivery: logged twice, exported once
    mapping = Path(__file__).resolve().parents[2] / "configs" / "food-kitchen.toml"
    data_root = tmp_path / "root"
    data_root.mkdir()
    monkeypatch.setenv("XREC_DATA_ROOT", str(data_root))
    from app.core import config
    config.get_settings.cache_clear()
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["data", "export-events", str(out), "--events-dir", str(settings.events_dir),
                                      "--mapping", str(mapping)])
    config.get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    kitchen = [json.loads(line) for line in (out / "kitchen.events.jsonl").read_text().splitlines()]
    # The food-kitchen mapping reads kitchen events as customer/sku/action/ts (epoch seconds).
    assert kitchen == [{"customer": "k-alice", "sku": "k0005", "action": "purchase", "ts": TS}]
    grocery = (out / "grocery.events.jsonl").read_text()
    assert "g-bob" in grocery and "g0002" in grocery
    snippet = tomllib.loads((out / "mapping-snippet.toml").read_text())
    own = tomllib.loads(mapping.read_text())
    for name, table in snippet["platforms"].items():
        assert table["events"][:-1] == own["platforms"][name]["events"]
        assert table["events"][-1] == str(out / f"{name}.events.jsonl")
    # Merged into the mapping, it is a valid mapping file for `xrec data build`.
    merged = {**own, "platforms": snippet["platforms"]}
    cfg = SourceConfig.model_validate(merged)
    assert cfg.platforms["kitchen"].account == "customer"
    assert load_sources  # the CLI used the real mapping reader
