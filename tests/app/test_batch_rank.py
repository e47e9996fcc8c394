"""POST /v1/batch/score (NDJSON) and POST /v1/rank."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from app.schemas import BatchRow, BatchSummary, RankResponse
from tests.app.conftest import AUTH
from tests.fixtures.tiny_bundle import PEOPLE, person_id

NOW = 1_760_000_000


def ndjson(client: TestClient, body: dict) -> tuple[list[dict], dict]:
    r = client.post("/v1/batch/score", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    rows, summary = lines[:-1], lines[-1]
    for row in rows:
        BatchRow.model_validate(row)
    BatchSummary.model_validate(summary)
    return rows, summary


def test_batch_top_k_matches_recommend(client: TestClient) -> None:
    persons = [{"person_id": person_id("alice")}, {"account_id": PEOPLE["carol"]["grocery"],
                                                   "account_platform": "grocery"},
               {"account_id": "unknown-account"}, {"person_id": person_id("dave")}]
    rows, summary = ndjson(client, {"platform": "kitchen", "persons": persons, "k": 4, "now_ts": NOW})
    assert summary["done"] is True and summary["rows"] == 4 and summary["model_version"] == "tiny-0"
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert rows[1]["person_id"] == person_id("carol")
    assert rows[2]["cold_start"] is True and rows[0]["cold_start"] is False
    for row, name in [(rows[0], "alice"), (rows[1], "carol"), (rows[3], "dave")]:
        rec = client.post("/v1/recommend", json={"person_id": person_id(name), "platform": "kitchen", "k": 4,
                                                 "now_ts": NOW}).json()
        assert [i["item_id"] for i in row["items"]] == [i["item_id"] for i in rec["items"]]
    cold = client.post("/v1/recommend", json={"account_id": "unknown-account", "platform": "kitchen",
                                              "k": 4}).json()
    assert [i["item_id"] for i in rows[2]["items"]] == [i["item_id"] for i in cold["items"]]


def test_batch_given_items_streams_in_chunks(client: TestClient) -> None:
    client.app.state.xrec.recommender.batch_chunk = 7
    items = ["grocery:g0001", "grocery:g0002", "grocery:g0003"]
    persons = [{"person_id": person_id(n)} for n in ("alice", "bob", "erin")] * 10
    rows, summary = ndjson(client, {"platform": "grocery", "persons": persons, "items": items, "now_ts": NOW})
    assert len(rows) == 30 and summary["rows"] == 30
    for row in rows:
        assert sorted(i["item_id"] for i in row["items"]) == sorted(items)
        scores = [i["score"] for i in row["items"]]
        assert scores == sorted(scores, reverse=True)
    assert rows[0] == {**rows[3], "index": 0}
    assert client.app.state.xrec.metrics.batch_rows.value() == 30


def test_batch_rejects_bad_items_before_streaming(client: TestClient) -> None:
    r = client.post("/v1/batch/score", json={"platform": "grocery", "persons": [{"person_id": person_id("bob")}],
                                             "items": ["grocery:g0001", "kitchen:k0001"]}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 1]
    r = client.post("/v1/batch/score", json={"platform": "grocery", "persons": [{"person_id": person_id("bob")}],
                                             "items": ["grocery:g0001"], "k": 3}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]


def test_rank_scores_new_texts_and_catalog_items(client: TestClient) -> None:
    body = {"person_id": person_id("erin"), "platform": "kitchen", "now_ts": NOW,
            "items": [{"item_id": "promo-1", "title": "spicy golden skillet"},
                      {"item_id": "kitchen:k0003"},
                      {"item_id": "promo-2", "title": "wild honey", "platform": "grocery"}]}
    r = client.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    out = RankResponse.model_validate(r.json())
    assert sorted(i.item_id for i in out.items) == ["kitchen:k0003", "promo-1", "promo-2"]
    assert [i.score for i in out.items] == sorted((i.score for i in out.items), reverse=True)
    assert out.cold_start is False and all(i.reasons for i in out.items)
    # Same input, same scores (embeddings are cached by text; the cache must not change them).
    again = RankResponse.model_validate(client.post("/v1/rank", json=body).json())
    assert [(i.item_id, i.score) for i in again.items] == [(i.item_id, i.score) for i in out.items]
    # Scoring agrees with /v1/recommend for a catalog item.
    rec = client.post("/v1/recommend", json={"person_id": person_id("erin"), "platform": "kitchen", "k": 1,
                                             "now_ts": NOW}).json()["items"][0]
    one = client.post("/v1/rank", json={"person_id": person_id("erin"), "platform": "kitchen", "now_ts": NOW,
                                        "items": [{"item_id": rec["item_id"]}]}).json()["items"][0]
    assert abs(one["score"] - rec["score"]) < 1e-5


def test_rank_needs_a_title_for_unknown_items(client: TestClient) -> None:
    r = client.post("/v1/rank", json={"person_id": person_id("erin"), "platform": "kitchen",
                                      "items": [{"item_id": "kitchen:k0001"}, {"item_id": "mystery"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 1, "title"]


def test_rank_for_an_unknown_person(client: TestClient) -> None:
    r = client.post("/v1/rank", json={"account_id": "new", "platform": "kitchen",
                                      "items": [{"item_id": "kitchen:k0001"}, {"item_id": "kitchen:k0002"}]})
    assert r.status_code == 200 and r.json()["cold_start"] is True
