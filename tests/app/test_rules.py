"""Business rules at request time (issue 15, part 2), through the API: attribute filters, availability,
diversity caps, no recently bought items — on /v1/recommend, /v1/rank and /v1/batch/score — and the recall
of filtered retrieval against exact filtered search."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.schemas import BatchRow, RankResponse, RecommendResponse
from app.services.retrieval import Catalog, IndexParams
from app.services.rules import Condition, Rules, allowed_mask
from tests.app.conftest import AUTH, make_settings, running
from tests.fixtures.tiny_bundle import PEOPLE, TEST_SALT, person_id

ROOT = Path(__file__).resolve().parents[2]
ALICE = {"person_id": person_id("alice"), "platform": "kitchen"}
N_CATEGORIES = 3
NOW = int(time.time())  # a fixed clock where answers are compared (the scorer sees the time since the last event)


def attributes_of(i: int) -> dict:
    return {"category": f"c{i % N_CATEGORIES}", "brand": "acme" if i % 2 else "zen", "price": float(i)}


def tag_kitchen(client: TestClient) -> dict[str, dict]:
    """Attributes for every kitchen item of the fixture, through PUT /v1/items (same titles: in place)."""
    catalog = client.app.state.xrec.bundle.catalog
    items, attrs = [], {}
    for row, item_id in enumerate(catalog.item_ids):
        if item_id.startswith("kitchen:") and catalog.live[row]:
            i = int(item_id.split(":k")[1])
            attrs[item_id] = attributes_of(i)
            items.append({"item_id": item_id, "platform": "kitchen", "title": catalog.titles[row],
                          "attributes": attrs[item_id]})
    r = client.put("/v1/items", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert client.app.state.xrec.bundle.catalog.row_of == catalog.row_of, "same titles: rows kept"
    return attrs


def recommend(client: TestClient, **body: object) -> list[str]:
    r = client.post("/v1/recommend", json={**ALICE, **body})
    assert r.status_code == 200, r.text
    RecommendResponse.model_validate_json(r.content)
    return [i["item_id"] for i in r.json()["items"]]


def seen_kitchen(client: TestClient, name: str = "alice") -> set[str]:
    ids, _, _ = client.app.state.xrec.bundle.snapshot.events(person_id(name))
    return {i for i in ids if i.startswith("kitchen:")}


def test_filters_restrict_results(client: TestClient) -> None:
    attrs = tag_kitchen(client)
    unseen = set(attrs) - seen_kitchen(client)
    # Every matching item the person has not seen, and nothing else (30 kitchen items: k covers them all).
    got = recommend(client, k=30, filters={"include": {"category": ["c1"]}})
    assert set(got) == {i for i in unseen if attrs[i]["category"] == "c1"} and got
    got = recommend(client, k=30, filters={"include": {"category": ["c1", "c2"], "brand": ["acme"]}})
    assert set(got) == {i for i in unseen if attrs[i]["category"] in ("c1", "c2") and attrs[i]["brand"] == "acme"}
    got = recommend(client, k=30, filters={"include": {"price": {"min": 5, "max": 12.5}}})
    assert set(got) == {i for i in unseen if 5 <= attrs[i]["price"] <= 12.5}
    got = recommend(client, k=30, filters={"exclude": {"brand": ["zen"], "price": {"max": 3}}})
    assert set(got) == {i for i in unseen if attrs[i]["brand"] != "zen" and attrs[i]["price"] > 3}
    assert recommend(client, k=30, filters={"include": {"price": [7, 8]}}) and set(
        recommend(client, k=30, filters={"include": {"price": [7, 8]}})) <= {"kitchen:k0007", "kitchen:k0008"}
    # The order is the ranking's: a filtered list is the unfiltered one with the other items left out (the
    # candidates here are every unseen item either way).
    full = recommend(client, k=30, now_ts=NOW)
    got = recommend(client, k=5, filters={"include": {"category": ["c0"]}}, now_ts=NOW)
    assert got == [i for i in full if attrs[i]["category"] == "c0"][:5]
    # Unknown attribute names match nothing: an include keeps nothing, an exclude leaves everything.
    assert recommend(client, k=30, filters={"include": {"colour": ["red"]}}) == []
    assert recommend(client, k=30, filters={"exclude": {"colour": ["red"]}}, now_ts=NOW) == full
    # A person with no history (popular items) gets the filter too.
    r = client.post("/v1/recommend", json={"account_id": "nobody-new", "platform": "kitchen", "k": 30,
                                           "filters": {"include": {"category": ["c2"]}}}).json()
    assert r["cold_start"] and r["items"] and {attrs[i["item_id"]]["category"] for i in r["items"]} == {"c2"}
    # Filtered requests bypass the ranked cache; the plain request after them still hits it.
    assert client.post("/v1/recommend", json={**ALICE, "k": 5}).json()["cache"] == "miss"
    assert client.post("/v1/recommend", json={**ALICE, "k": 5}).json()["cache"] == "hit"
    r = client.post("/v1/recommend", json={**ALICE, "k": 5, "filters": {"include": {"category": ["c0"]}}}).json()
    assert r["cache"] == "miss" and {attrs[i["item_id"]]["category"] for i in r["items"]} == {"c0"}
    assert client.post("/v1/recommend", json={**ALICE, "k": 5}).json()["cache"] == "hit"


def test_filters_on_rank_and_batch(client: TestClient) -> None:
    attrs = tag_kitchen(client)
    items = ["kitchen:k0001", "kitchen:k0002", "kitchen:k0004", "kitchen:k0005"]
    r = client.post("/v1/rank", json={**ALICE, "items": [{"item_id": i} for i in items]
                                      + [{"item_id": "ext:creative", "title": "a steel pan"}],
                                      "filters": {"include": {"brand": ["acme"]}}})
    assert r.status_code == 200, r.text
    body = RankResponse.model_validate(r.json())
    kept = {i for i in items if attrs[i]["brand"] == "acme"}
    assert {i.item_id for i in body.items} == kept | {"ext:creative"}, "text-only items are not filtered"
    assert set(body.filtered_out) == set(items) - kept
    batch = {"platform": "kitchen", "persons": [{"person_id": person_id(n)} for n in ("alice", "bob", "dave")],
             "filters": {"include": {"category": ["c1"]}}}
    for extra in ({"k": 4}, {"items": items}):
        r = client.post("/v1/batch/score", json={**batch, **extra}, headers=AUTH)
        rows = [BatchRow.model_validate_json(line) for line in r.text.splitlines()[:-1]]
        assert len(rows) == 3 and all(row.variant == "default" for row in rows)
        got = {i.item_id for row in rows for i in row.items}
        assert got and {attrs[i]["category"] for i in got} == {"c1"}, extra


def test_availability_false_hides_an_item(client: TestClient) -> None:
    before = recommend(client, k=5, now_ts=NOW)
    top = before[0]
    catalog = client.app.state.xrec.bundle.catalog
    row = catalog.row_of[top]
    item = {"item_id": top, "platform": "kitchen", "title": catalog.titles[row]}
    assert client.put("/v1/items", json={"items": [{**item, "available": False}]}, headers=AUTH).status_code == 200
    assert top not in recommend(client, k=30)
    assert top not in recommend(client, k=30, exclude_seen=False)
    assert client.app.state.xrec.bundle.catalog.row_of[top] == row, "the item keeps its row (vector, item-KNN)"
    r = client.post("/v1/rank", json={**ALICE, "items": [{"item_id": top}, {"item_id": before[1]}]}).json()
    assert [i["item_id"] for i in r["items"]] == [before[1]] and r["filtered_out"] == [top]
    r = client.post("/v1/batch/score", json={"platform": "kitchen", "persons": [{"person_id": ALICE["person_id"]}],
                                             "k": 30}, headers=AUTH)
    assert top not in r.text
    # A change that leaves `available` out keeps it (here: new attributes only) ...
    assert client.put("/v1/items", json={"items": [{**item, "attributes": {"category": "x"}}]},
                      headers=AUTH).status_code == 200
    assert top not in recommend(client, k=30)
    # ... and available again, it is back where it was.
    assert client.put("/v1/items", json={"items": [{**item, "available": True}]}, headers=AUTH).status_code == 200
    assert recommend(client, k=5, now_ts=NOW) == before
    assert recommend(client, k=5, filters={"include": {"category": ["x"]}}) == [top]


def test_availability_survives_a_restart(settings: Settings) -> None:
    with running(settings) as c:
        catalog = c.app.state.xrec.bundle.catalog
        top = recommend(c, k=1)[0]
        item = {"item_id": top, "platform": "kitchen", "title": catalog.titles[catalog.row_of[top]],
                "available": False, "attributes": {"brand": "acme"}}
        assert c.put("/v1/items", json={"items": [item]}, headers=AUTH).status_code == 200
    with running(settings) as c:
        assert top not in recommend(c, k=30)
        catalog = c.app.state.xrec.bundle.catalog
        assert catalog.attributes_of(catalog.row_of[top]) == {"brand": "acme"}


def test_diversity_caps_per_category(client: TestClient) -> None:
    attrs = tag_kitchen(client)
    # k 20: every retrieval candidate (3k ≤ 20 below: a capped request retrieves the same candidates).
    full = recommend(client, k=20, now_ts=NOW)
    for cap, k in [(1, 5), (2, 5), (3, 6)]:
        got = recommend(client, k=k, diversity={"max_per_value": {"category": cap}}, now_ts=NOW)
        counts = Counter(attrs[i]["category"] for i in got)
        assert max(counts.values()) <= cap and len(got) >= min(k, cap * 2)
        # Greedy down the ranked list: each item the best one left that is not over its cap.
        expected, seen = [], Counter()
        for i in full:
            if seen[attrs[i]["category"]] < cap and len(expected) < k:
                expected.append(i)
                seen[attrs[i]["category"]] += 1
        assert got == expected, cap
    # Two caps at once, with a filter.
    got = recommend(client, k=6, filters={"exclude": {"category": ["c0"]}},
                    diversity={"max_per_value": {"category": 2, "brand": 2}})
    assert "c0" not in {attrs[i]["category"] for i in got}
    assert max(Counter(attrs[i]["brand"] for i in got).values()) <= 2
    assert max(Counter(attrs[i]["category"] for i in got).values()) <= 2
    # Rank: items over a cap are left out.
    items = [i for i in full if attrs[i]["category"] == "c0"][:4]
    r = client.post("/v1/rank", json={**ALICE, "items": [{"item_id": i} for i in items],
                                      "diversity": {"max_per_value": {"category": 1}}}).json()
    assert len(r["items"]) == 1 and len(r["filtered_out"]) == 3


def test_recently_bought_items_are_excluded(client: TestClient) -> None:
    full = recommend(client, k=30, exclude_seen=False)
    bought, old, clicked = full[0], full[1], full[2]
    now = int(time.time())
    events = [{"event_id": "buy-1", "platform": "kitchen", "account_id": PEOPLE["alice"]["kitchen"],
               "item_id": bought, "event": "purchase", "ts": now - 2 * 86_400},
              {"event_id": "buy-2", "platform": "kitchen", "account_id": PEOPLE["alice"]["kitchen"],
               "item_id": old, "event": "purchase", "ts": now - 20 * 86_400},
              {"event_id": "click-1", "platform": "kitchen", "account_id": PEOPLE["alice"]["kitchen"],
               "item_id": clicked, "event": "click", "ts": now - 86_400}]
    assert client.post("/v1/events", json={"events": events}, headers=AUTH).json()["accepted"] == 3
    rule = {"exclude_bought_days": 7}
    got = recommend(client, k=30, exclude_seen=False, diversity=rule)
    assert bought not in got and old in got and clicked in got
    assert bought in recommend(client, k=30, exclude_seen=False), "without the rule it may be recommended again"
    assert old not in recommend(client, k=30, exclude_seen=False, diversity={"exclude_bought_days": 30})
    # Another event type can mean "bought".
    got = recommend(client, k=30, exclude_seen=False, diversity={"exclude_bought_days": 7, "bought_event": "click"})
    assert clicked not in got and bought in got
    # A context event (not stored) counts too; and the rule applies to rank and batch scoring.
    ctx = [{"platform": "kitchen", "item_id": full[3], "ts": now - 60, "event": "purchase"}]
    assert full[3] not in recommend(client, k=30, exclude_seen=False, diversity=rule, context_events=ctx)
    r = client.post("/v1/rank", json={**ALICE, "items": [{"item_id": bought}, {"item_id": old}],
                                      "diversity": rule}).json()
    assert [i["item_id"] for i in r["items"]] == [old] and r["filtered_out"] == [bought]
    r = client.post("/v1/batch/score", json={"platform": "kitchen", "persons": [{"person_id": ALICE["person_id"]}],
                                             "k": 30, "exclude_seen": False, "diversity": rule}, headers=AUTH)
    row = json.loads(r.text.splitlines()[0])
    assert bought not in {i["item_id"] for i in row["items"]} and old in {i["item_id"] for i in row["items"]}


def test_rules_validation_is_a_clear_422(client: TestClient) -> None:
    cases = [
        ({"filters": {"include": {"category": "c1"}}}, ["body", "filters", "include", "category"], "condition_type"),
        ({"filters": {"include": {"category": []}}}, ["body", "filters", "include", "category", "values"],
         "too_short"),
        ({"filters": {"include": {"price": {"min": "3"}}}}, ["body", "filters", "include", "price", "range", "min"],
         "float_type"),
        ({"filters": {"include": {"price": {"low": 3}}}}, ["body", "filters", "include", "price", "range", "low"],
         "extra_forbidden"),
        ({"filters": {"include": {"x" * 65: ["a"]}}}, ["body", "filters", "include", "x" * 65, "[key]"],
         "string_too_long"),
        ({"filters": {"include": {f"a{i}": ["a"] for i in range(17)}}}, ["body", "filters", "include"], "too_long"),
        ({"diversity": {"max_per_value": {"category": 0}}}, ["body", "diversity", "max_per_value", "category"],
         "greater_than_equal"),
        ({"diversity": {"exclude_bought_days": 0}}, ["body", "diversity", "exclude_bought_days"], "greater_than_equal"),
        ({"diversity": {"exclude_bought_days": 4000}}, ["body", "diversity", "exclude_bought_days"], "less_than_equal"),
    ]
    for extra, loc, kind in cases:
        r = client.post("/v1/recommend", json={**ALICE, **extra})
        assert r.status_code == 422, (extra, r.text)
        (e,) = r.json()["detail"]
        assert e["loc"] == loc and e["type"] == kind, (extra, e)
    r = client.put("/v1/items", json={"items": [{"item_id": "kitchen:k0001", "platform": "kitchen", "title": "t",
                                                 "attributes": {"category": ["a"]}}]}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:5] == ["body", "items", 0, "attributes", "category"]
    doc = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"filters", "diversity"} <= set(doc["RecommendRequest"]["properties"])
    assert {"filters", "diversity"} <= set(doc["RankRequest"]["properties"])
    assert {"filters", "diversity"} <= set(doc["BatchScoreRequest"]["properties"])
    assert "matches nothing" in doc["Filters"]["properties"]["include"]["description"]
    assert {"attributes", "available"} <= set(doc["ItemIn"]["properties"])


def test_bundle_attributes_are_read_from_items_parquet(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> None:
    grown = tmp_path / "bundle"
    grown.mkdir()
    for entry in bundle_dir.iterdir():
        (grown / entry.name).symlink_to(entry)
    (grown / "items.parquet").unlink()
    items = pq.read_table(bundle_dir / "items.parquet")
    attrs = [json.dumps({"category": "pans", "price": 3, "new": True}) if i.endswith("0003") else None
             for i in items.column("item_id").to_pylist()]
    import pyarrow as pa

    pq.write_table(items.append_column("attributes", pa.array(attrs, pa.string())), grown / "items.parquet")
    with running(make_settings(grown, redis_prefix, tmp_path / "ev", verify_bundle=False)) as c:
        catalog = c.app.state.xrec.bundle.catalog
        assert catalog.attributes_of(catalog.row_of["kitchen:k0003"]) == {"category": "pans", "price": 3.0,
                                                                           "new": "true"}
        got = recommend(c, k=30, exclude_seen=False, filters={"include": {"category": ["pans"], "new": ["true"]}})
        assert got == ["kitchen:k0003"]


# ---- filtered recall ------------------------------------------------------------------------------------

def _catalog(n: int, dim: int, seed: int, exact_max: int) -> Catalog:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    platform = (np.arange(n) % 2).astype(np.int64)
    cats = rng.integers(0, 10, size=n)
    return Catalog.build([f"{'ab'[p]}:{i}" for i, p in enumerate(platform)], platform, ["t"] * n, vecs,
                         np.zeros(n), 2, IndexParams(hnsw_threshold=1000, hnsw_m=16, hnsw_ef_construction=100),
                         attributes=[{"category": f"c{c}"} for c in cats.tolist()], filter_exact_max=exact_max)


@pytest.mark.parametrize("exact_max", [20_000, 0])  # the service's path (exact), the index's over-fetch alone
def test_filtered_search_recall_against_exact(exact_max: int) -> None:
    """recall@100 under a filter keeping ~10% of a platform (HNSW index), against exact filtered search."""
    catalog = _catalog(24_000, 16, 0, exact_max)
    assert catalog.indexes[0].kind == "hnsw"
    mask = allowed_mask(catalog, 0, Rules(include=(("category", Condition(("c3",))),)))
    assert mask is not None
    rows = np.flatnonzero(mask)
    assert 0.08 < len(rows) / catalog.indexes[0].size < 0.12
    rng = np.random.default_rng(1)
    q = rng.standard_normal((100, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    found = catalog.search(0, q, 100, [np.zeros(0, dtype=np.int64)] * len(q), [mask] * len(q))
    scores = q @ catalog.vectors[rows].T
    truth = rows[np.argsort(-scores, axis=1)[:, :100]]
    recall = np.mean([len(np.intersect1d(f, t)) / 100 for f, t in zip(found, truth, strict=True)])
    print(f"\nfiltered recall@100 (filter_exact_max={exact_max}): {recall:.4f}")
    assert all(mask[f].all() and len(f) == 100 for f in found)
    assert recall >= (0.999 if exact_max else 0.95)
    # The unfiltered search sees every category: the filter is what restricts it.
    plain = catalog.search(0, q[:5], 100, [np.zeros(0, dtype=np.int64)] * 5)
    assert not all(mask[p].all() for p in plain)


def test_filtered_recall_on_the_grown_fixture_bundle(bundle_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/index.py's measurement (the fixture bundle grown with random items, a `category` keeping ~10% of
    each platform, the service's loader and search) at a size a test can afford."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setenv("XREC_ID_SALT", TEST_SALT)
    monkeypatch.setenv("XREC_HNSW_THRESHOLD", "1000")
    for name in ("index", "common"):
        sys.modules.pop(name, None)
    import index as bench_index  # bench/index.py
    from common import grow_bundle

    grown = grow_bundle(bundle_dir, tmp_path / "grown", 16_000, log=lambda *_: None)
    bench_index.tag_categories(grown, 0.1, 0)
    rows = bench_index.filtered_recall(grown, 60, 100, 0, exact_max=0)
    assert {r["index"] for r in rows} == {"hnsw"} and all(0.07 < r["allowed_share"] < 0.13 for r in rows)
    assert min(r["recall"] for r in rows) >= 0.95, rows
