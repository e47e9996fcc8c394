"""Two service instances on one Redis (two replicas): an event ingested by one ends the other's cached
list for that person, and an item added on one is searchable on the other."""

from __future__ import annotations

import time

from app.core.config import Settings
from tests.app.conftest import AUTH, running, wait_for
from tests.fixtures.tiny_bundle import PEOPLE, person_id


def test_replicas_share_invalidations_and_catalog_changes(settings: Settings, tmp_path) -> None:
    other = settings.model_copy(update={"events_dir": tmp_path / "events-b"})
    body = {"person_id": person_id("bob"), "platform": "kitchen", "k": 5}
    with running(settings) as a, running(other) as b:
        time.sleep(0.3)  # both bus listeners subscribed
        b.post("/v1/recommend", json=body)
        assert b.post("/v1/recommend", json=body).json()["cache"] == "hit"
        ev = {"event_id": "r-1", "platform": "kitchen", "account_id": PEOPLE["bob"]["kitchen"],
              "item_id": "kitchen:k0008", "ts": 1_760_000_000}
        assert a.post("/v1/events", json={"events": [ev]}, headers=AUTH).json()["accepted"] == 1
        key = (b.app.state.xrec.bundle.model_version, person_id("bob"), 1, True, True)  # Recommender.key
        assert wait_for(lambda: b.app.state.xrec.ranked.get(key, b.app.state.xrec.bundle.catalog.version) is None)
        after = b.post("/v1/recommend", json=body).json()
        assert after["cache"] == "miss"
        assert any(r["item_id"] == "kitchen:k0008" for i in after["items"] for r in i["reasons"])

        item = {"item_id": "kitchen:shared-1", "platform": "kitchen", "title": "enamel dutch oven"}
        assert a.put("/v1/items", json={"items": [item]}, headers=AUTH).status_code == 200
        assert wait_for(lambda: b.app.state.xrec.bundle.catalog.is_live("kitchen:shared-1"))
