"""POST /v1/items/audience (app/services/audience.py): a new item's text → the persons it would be recommended
to, on the fixture bundle (a real tokenizer and item encoder: titles that share words get close vectors).

The audience is sensible (a person whose history is all items like the text ranks above one whose history is
not), each score is the one /v1/rank gives the same text for that person, persons with events since the bundle
are in it with their newest events, linked accounts come from the bundle, the snapshot's user vectors are
kept until a reload, the cap holds, and bad input is a clear 4xx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contract.ids import account_key
from tests.app.conftest import keyless, make_settings, running
from tests.fixtures.tiny_bundle import BASE_TS, PEOPLE, TEST_SALT, person_id

NOW = BASE_TS + 90 * 86_400
TEXT = "golden skillet"


def _items(client: TestClient, platform: str, word: str) -> list[str]:
    catalog = client.app.state.xrec.bundle.catalog
    return [i for i, t in zip(catalog.item_ids, catalog.titles, strict=True)
            if i.startswith(platform + ":") and word in t.split()]


def _ingest(client: TestClient, account: str, items: list[str], tag: str) -> None:
    events = [{"event_id": f"{tag}-{n}", "platform": "kitchen", "account_id": account, "item_id": item,
               "event": "purchase", "ts": BASE_TS + 40 * 86_400 + n * 3600} for n, item in enumerate(items)]
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text


def _audience(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/items/audience", json={"platform": "kitchen", "title": TEXT, "k": 20, "now_ts": NOW, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_history_like_the_text_ranks_first_with_the_scores_of_rank(client: TestClient) -> None:
    skillets, mugs = _items(client, "kitchen", "skillet"), _items(client, "kitchen", "mug")
    assert len(skillets) >= 3 and len(mugs) >= 3
    _ingest(client, "k-skillet-fan", skillets, "fan")
    _ingest(client, "k-mug-fan", mugs, "mug")
    fan = client.post("/v1/history", json={"account_id": "k-skillet-fan", "account_platform": "kitchen"}).json()
    mug = client.post("/v1/history", json={"account_id": "k-mug-fan", "account_platform": "kitchen"}).json()

    got = _audience(client)
    order = [p["person_id"] for p in got["persons"]]
    # Everyone with a history is there: the snapshot's five and the two with events since the bundle.
    with_history = [n for n in PEOPLE if n != "frank"]
    assert sorted(order) == sorted([person_id(n) for n in with_history] + [fan["person_id"], mug["person_id"]])
    assert got["known"] == got["rescored"] == 7 and not got["capped"] and not got["degraded"]
    assert got["model_version"] == "tiny-0" and got["platform"] == "kitchen"
    scores = [p["score"] for p in got["persons"]]
    assert scores == sorted(scores, reverse=True)
    # The skillet fan first, above the mug fan; their reasons are their own history items like the text. (The
    # fixture's item encoder is random: texts are alike by their shared words, nothing more.)
    assert order[0] == fan["person_id"] and order.index(fan["person_id"]) < order.index(mug["person_id"])
    mug_order = [p["person_id"] for p in _audience(client, title="mug")["persons"]]
    assert mug_order.index(mug["person_id"]) < mug_order.index(fan["person_id"])
    first = got["persons"][0]
    assert first["events"] == len(skillets) and first["accounts"] == []  # first seen online: no linked accounts
    assert first["reasons"] and {r["item_id"] for r in first["reasons"]} <= set(skillets)
    assert all("skillet" in r["title"] and r["platform"] == "kitchen" for r in first["reasons"])

    # Each score is /v1/rank's for the same text, person and time (the same embedding, vectors, scorer).
    for p in got["persons"]:
        r = client.post("/v1/rank", json={"person_id": p["person_id"], "platform": "kitchen", "now_ts": NOW,
                                          "items": [{"item_id": "kitchen:new-item", "title": TEXT}]})
        assert r.status_code == 200, r.text
        assert r.json()["items"][0]["score"] == pytest.approx(p["score"], rel=1e-4, abs=1e-5), p["person_id"]

    # Linked accounts as the bundle has them (keyed hashes), every platform of the person.
    alice = next(p for p in got["persons"] if p["person_id"] == person_id("alice"))
    assert alice["accounts"] == [{"platform": pl, "account": account_key(TEST_SALT, pl, acc)}
                                 for pl, acc in sorted(PEOPLE["alice"].items())]
    assert alice["variant"] == "default" and alice["events"] > 0 and alice["last_event_ts"] > BASE_TS

    # New events count at once: the mug fan buys skillets, and the text suits them better.
    _ingest(client, "k-mug-fan", skillets * 3, "mug-more")
    after = {p["person_id"]: (i, p) for i, p in enumerate(_audience(client)["persons"])}
    before = {p["person_id"]: (i, p) for i, p in enumerate(got["persons"])}
    rank, now_mug = after[mug["person_id"]]
    assert now_mug["score"] > before[mug["person_id"]][1]["score"] and now_mug["events"] > len(mugs)
    assert rank <= before[mug["person_id"]][0]
    assert {r["item_id"] for r in now_mug["reasons"]} <= set(skillets)


def test_the_snapshot_vectors_are_kept_until_a_reload(client: TestClient) -> None:
    state = client.app.state.xrec
    first = _audience(client, k=3)
    pool = state.audience._pools["tiny-0"]
    u, has = pool.vecs[1]  # kitchen
    assert pool.bundle is state.bundle and u.shape == (5, 16) and has.all()
    again = _audience(client, k=3)
    assert state.audience._pools["tiny-0"].vecs[1][0] is u  # not recomputed
    assert [p["person_id"] for p in again["persons"]] == [p["person_id"] for p in first["persons"]]
    assert 0 not in pool.vecs  # grocery's: computed per platform, when first asked for

    assert client.post("/v1/admin/reload", json={}).status_code == 200
    assert state.audience._pools == {}  # dropped with the old bundle
    after = _audience(client, k=3)
    assert state.audience._pools["tiny-0"].bundle is state.bundle is not pool.bundle
    assert [p["person_id"] for p in after["persons"]] == [p["person_id"] for p in first["persons"]]
    assert [p["score"] for p in after["persons"]] == pytest.approx([p["score"] for p in first["persons"]], rel=1e-5)


def test_the_pool_is_capped_to_the_most_recently_active(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> None:
    settings = make_settings(bundle_dir, redis_prefix, tmp_path / "events", audience_max_persons=2, audience_rescore=1)
    with running(settings) as c:
        snapshot = c.app.state.xrec.bundle.snapshot
        last = {p: int(snapshot.ts[hi - 1]) for p, (_, hi) in snapshot.spans.items()}
        newest = sorted(last, key=lambda p: -last[p])[:2]
        got = _audience(c, k=5)
        assert got["capped"] is True and got["known"] == 2 and got["rescored"] == 2  # max(rescore, k), at most known
        assert sorted(p["person_id"] for p in got["persons"]) == sorted(newest)
        one = _audience(c, k=1)
        assert one["rescored"] == 1 and len(one["persons"]) == 1


def test_bad_requests_are_clear_4xx(client: TestClient) -> None:
    def error(body: dict, status: int = 422) -> dict:
        r = client.post("/v1/items/audience", json=body)
        assert r.status_code == status, r.text
        (e,) = r.json()["detail"]
        return e

    e = error({"platform": "moon", "title": TEXT})
    assert e["loc"] == ["body", "platform"] and "unknown platform 'moon'" in e["msg"]
    e = error({"platform": "kitchen", "title": " \t\n "})
    assert e["loc"] == ["body", "title"] and "blank" in e["msg"]
    assert error({"platform": "kitchen", "title": ""})["type"] == "string_too_short"
    assert error({"platform": "kitchen"})["loc"] == ["body", "title"]
    assert error({"platform": "kitchen", "title": TEXT, "k": 0})["loc"] == ["body", "k"]
    assert error({"platform": "kitchen", "title": TEXT, "k": 101})["type"] == "less_than_equal"
    assert error({"platform": "kitchen", "title": TEXT, "k": "5"})["loc"] == ["body", "k"]
    assert error({"platform": "kitchen", "title": TEXT, "person_id": "p_x"})["type"] == "extra_forbidden"
    assert error({"platform": "kitchen", "title": "x" * 4001})["type"] == "string_too_long"
    with keyless(client):
        assert error({"platform": "kitchen", "title": TEXT}, 401)["type"] == "missing_api_key"
    r = client.post("/v1/items/audience", json={"platform": "kitchen", "title": TEXT}, headers={"X-API-Key": "nope"})
    assert r.status_code == 403
    r = client.get("/v1/items/audience")  # not the item "audience" of DELETE /v1/items/{item_id}
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    # A title of any script, or a long one (truncated to the encoder's max length), is an item like any other.
    for title in ("平底锅 skillet", "skillet " * 500):
        assert _audience(client, title=title)["persons"]


def test_keyless_reads_do_not_open_the_audience(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> None:
    settings = make_settings(bundle_dir, redis_prefix, tmp_path / "events", read_auth=False)
    with running(settings, key=None) as c:
        r = c.post("/v1/items/audience", json={"platform": "kitchen", "title": TEXT})
        assert r.status_code == 401 and r.json()["detail"][0]["loc"] == ["header", "x-api-key"]


def test_openapi_documents_the_route(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/v1/items/audience"]["post"]
    assert set(op["responses"]) == {"200", "401", "403", "408", "413", "415", "422", "503"}
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for code, response in op["responses"].items():
        assert code == "200" or response["content"]["application/json"]["schema"] == error, code
    req = doc["components"]["schemas"]["AudienceRequest"]["properties"]
    assert req["platform"]["enum"] == ["grocery", "kitchen"] and req["k"]["maximum"] == 100
    assert req["title"]["pattern"] and np.isclose(req["k"]["minimum"], 1)


def test_ab_variants_each_person_scored_by_their_own_bundle(bundle_dir: Path, bundle_dir_v2: Path,
                                                            redis_prefix: str, tmp_path: Path) -> None:
    from app.core.config import VariantSpec
    from app.services.variants import Split

    names = [n for n in PEOPLE if n != "frank"]
    salt = next(f"aud-{i}" for i in range(100)
                if 2 <= sum(Split([0.5, 0.5], f"aud-{i}").index(person_id(n)) for n in names) <= len(names) - 2)
    split = Split([0.5, 0.5], salt)
    settings = make_settings(None, redis_prefix, tmp_path / "events", variant_salt=salt, variants=[
        VariantSpec(name="a", bundle_dir=bundle_dir, share=0.5), VariantSpec(name="b", bundle_dir=bundle_dir_v2,
                                                                            share=0.5)])
    with running(settings) as c:
        got = _audience(c)
        assert got["known"] == len(names) and len(got["persons"]) == len(names)
        for p in got["persons"]:
            assert p["variant"] == "ab"[split.index(p["person_id"])]
            r = c.post("/v1/rank", json={"person_id": p["person_id"], "platform": "kitchen", "now_ts": NOW,
                                         "items": [{"item_id": "kitchen:new-item", "title": TEXT}]}).json()
            assert r["variant"] == p["variant"]
            assert r["items"][0]["score"] == pytest.approx(p["score"], rel=1e-4, abs=1e-5), p["person_id"]
        assert {p["variant"] for p in got["persons"]} == {"a", "b"}
        assert sorted(c.app.state.xrec.audience._pools) == ["tiny-0", "tiny-1"]
