"""Redis unavailable: answers keep coming (`cache: degraded`) from memory and the bundle snapshot, and the
service recovers by itself when Redis returns (events taken meanwhile are replayed into it)."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.app.conftest import AUTH, free_port, make_settings, private_redis, running
from tests.fixtures.tiny_bundle import PEOPLE, person_id


def test_no_redis_still_answers_degraded(bundle_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(bundle_dir, "xrectest-degraded", tmp_path / "events",
                             redis_url="redis://127.0.0.1:6390/0")
    with running(settings) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["redis"] == "down"
        started = time.perf_counter()
        for _ in range(3):
            r = c.post("/v1/recommend", json={"person_id": person_id("alice"), "platform": "kitchen", "k": 5})
            assert r.status_code == 200 and r.json()["cache"] == "degraded"
            assert r.json()["cold_start"] is False
        assert time.perf_counter() - started < 3.0, "a dead Redis must not cost each request a timeout"
        cold = c.post("/v1/recommend", json={"account_id": "nobody", "platform": "kitchen", "k": 5})
        assert cold.status_code == 200 and cold.json()["cold_start"] is True
        # Events are still acknowledged (durable on disk) and applied in this process.
        ev = {"event_id": "deg-1", "platform": "kitchen", "account_id": PEOPLE["dave"]["kitchen"],
              "item_id": "kitchen:k0011", "ts": 1_760_000_000}
        out = c.post("/v1/events", json={"events": [ev]}, headers=AUTH).json()
        assert out["degraded"] is True and out["accepted"] == 1
        assert c.post("/v1/events", json={"events": [ev]}, headers=AUTH).json()["duplicates"] == 1
        after = c.post("/v1/recommend", json={"person_id": person_id("dave"), "platform": "kitchen", "k": 30})
        assert "kitchen:k0011" not in {i["item_id"] for i in after.json()["items"]}
        assert c.post("/v1/rank", json={"person_id": person_id("dave"), "platform": "kitchen",
                                        "items": [{"item_id": "kitchen:k0001"}]}).status_code == 200
        metrics = c.get("/metrics").text
        assert "xrec_redis_up 0" in metrics
        assert any(line.startswith("xrec_redis_errors_total ") and float(line.split()[1]) > 0
                   for line in metrics.splitlines())


def test_recovers_when_redis_returns(bundle_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(bundle_dir, "xrectest-recover", tmp_path / "events",
                             redis_url=f"redis://127.0.0.1:{port}/0")
    body = {"person_id": person_id("dave"), "platform": "kitchen", "k": 5}
    with private_redis(port) as server, running(settings) as c:
        assert c.post("/v1/recommend", json=body).json()["cache"] == "miss"
        server.terminate()
        server.wait(timeout=5)
        # A computed answer finds Redis gone at once (a cached one once the bus connection drops).
        assert c.post("/v1/recommend", json={**body, "now_ts": 1_760_000_000}).json()["cache"] == "degraded"
        ev = {"event_id": "rec-1", "platform": "kitchen", "account_id": PEOPLE["dave"]["kitchen"],
              "item_id": "kitchen:k0012", "ts": 1_760_000_000}
        assert c.post("/v1/events", json={"events": [ev]}, headers=AUTH).json()["degraded"] is True
        with private_redis(port):  # Redis is back, empty (no persistence)
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            states = []
            while time.monotonic() < deadline:
                states.append(c.post("/v1/recommend", json={**body, "now_ts": 1_760_000_000}
                                     ).json()["cache"])
                if states[-1] != "degraded" and client.llen(
                        f"xrectest-recover:events:{person_id('dave')}") == 1:
                    break
                time.sleep(0.1)
            assert states[-1] == "miss", states
            # The event taken while Redis was away was replayed into it from the durable log.
            assert client.llen(f"xrectest-recover:events:{person_id('dave')}") == 1
            assert c.get("/readyz").json()["redis"] == "up"
