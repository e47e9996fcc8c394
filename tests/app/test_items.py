"""PUT /v1/items, DELETE /v1/items/{id}: searchable on the next request, gone after delete, kept across
restarts (recorded changes are re-applied to the loaded bundle)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.app.conftest import AUTH, running
from tests.fixtures.tiny_bundle import person_id

NEW = {"item_id": "kitchen:new-001", "platform": "kitchen", "title": "copper skillet with wooden handle"}


def all_kitchen(client: TestClient, name: str = "alice") -> list[str]:
    r = client.post("/v1/recommend", json={"person_id": person_id(name), "platform": "kitchen", "k": 200,
                                           "exclude_seen": False})
    assert r.status_code == 200
    return [i["item_id"] for i in r.json()["items"]]


def test_upsert_then_searchable_and_delete_then_gone(client: TestClient) -> None:
    assert NEW["item_id"] not in all_kitchen(client)
    warm = {"person_id": person_id("bob"), "platform": "kitchen", "k": 5}
    client.post("/v1/recommend", json=warm)
    r = client.put("/v1/items", json={"items": [NEW]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["upserted"] == 1
    assert NEW["item_id"] in all_kitchen(client)
    assert client.post("/v1/recommend", json=warm).json()["cache"] == "miss", "catalog changes end cached lists"
    readyz = client.get("/readyz").json()
    assert readyz["items"] == 61
    # Its vector is the item encoder's embedding of the text.
    bundle = client.app.state.xrec.bundle
    row = bundle.catalog.row_of[NEW["item_id"]]
    expected = bundle.embedder.embed([NEW["title"]], [1])[0]
    assert abs(float(bundle.catalog.vectors[row] @ expected) - 1.0) < 1e-5
    # Rank it by id now that the catalog has it.
    ranked = client.post("/v1/rank", json={"person_id": person_id("bob"), "platform": "kitchen",
                                           "items": [{"item_id": NEW["item_id"]}]})
    assert ranked.status_code == 200
    assert client.delete(f"/v1/items/{NEW['item_id']}", headers=AUTH).status_code == 200
    assert NEW["item_id"] not in all_kitchen(client)
    assert client.delete(f"/v1/items/{NEW['item_id']}", headers=AUTH).status_code == 404


def test_deleting_a_bundle_item_and_replacing_one(client: TestClient) -> None:
    assert "kitchen:k0000" in all_kitchen(client)
    assert client.delete("/v1/items/kitchen:k0000", headers=AUTH).json()["item_id"] == "kitchen:k0000"
    assert "kitchen:k0000" not in all_kitchen(client)
    changed = {"item_id": "kitchen:k0001", "platform": "kitchen", "title": "a completely new text"}
    assert client.put("/v1/items", json={"items": [changed]}, headers=AUTH).status_code == 200
    got = all_kitchen(client)
    assert got.count("kitchen:k0001") == 1 and len(got) == 29
    rec = client.post("/v1/recommend", json={"person_id": person_id("alice"), "platform": "kitchen", "k": 200,
                                             "exclude_seen": False}).json()
    (item,) = [i for i in rec["items"] if i["item_id"] == "kitchen:k0001"]
    assert item["title"] == "a completely new text"


def test_catalog_changes_survive_a_restart(settings: Settings) -> None:
    with running(settings) as c:
        c.put("/v1/items", json={"items": [NEW]}, headers=AUTH)
        c.delete("/v1/items/kitchen:k0002", headers=AUTH)
    with running(settings) as c:
        got = all_kitchen(c)
        assert NEW["item_id"] in got and "kitchen:k0002" not in got


def test_item_ids_must_be_namespaced(client: TestClient) -> None:
    r = client.put("/v1/items", json={"items": [{"item_id": "x1", "platform": "kitchen", "title": "t"}]},
                   headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 0, "item_id"]
    r = client.put("/v1/items", json={"items": [{"item_id": "moon:x", "platform": "moon", "title": "t"}]},
                   headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 0, "platform"]
