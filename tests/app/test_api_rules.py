"""Auth (401 missing, 403 wrong, reads keyed by default and what a keyless read may see), 413 body
limit, 422 with field paths, 503 without a bundle, health and metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.app.conftest import AUTH, OTHER_KEY, keyless, make_settings, running
from tests.fixtures.tiny_bundle import PEOPLE, person_id

WRITES = [
    ("post", "/v1/events", {"events": [{"event_id": "a", "platform": "kitchen", "account_id": "x",
                                        "item_id": "kitchen:k0001", "ts": 1}]}),
    ("put", "/v1/items", {"items": [{"item_id": "kitchen:z", "platform": "kitchen", "title": "z"}]}),
    ("delete", "/v1/items/kitchen:k0001", None),
    ("post", "/v1/batch/score", {"platform": "kitchen", "persons": [{"account_id": "x"}], "k": 1}),
    ("post", "/v1/admin/reload", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_write_batch_and_admin_routes_need_a_key(client: TestClient, method: str, path: str,
                                                 body: dict | None) -> None:
    kwargs = {} if body is None else {"json": body}
    with keyless(client):
        missing = client.request(method, path, **kwargs)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "APIKey"
    assert client.request(method, path, headers={"X-API-Key": "nope"}, **kwargs).status_code == 403
    ok = client.request(method, path, headers={"X-API-Key": OTHER_KEY}, **kwargs)
    assert ok.status_code == 200, ok.text


def test_reads_need_a_key_by_default(client: TestClient) -> None:
    assert Settings(_env_file=None).read_auth is True  # type: ignore[call-arg]
    body = {"person_id": person_id("alice"), "platform": "kitchen"}
    reads = [("/v1/recommend", body), ("/v1/rank", {**body, "items": [{"item_id": "kitchen:k0001"}]})]
    for path, json in reads:
        with keyless(client):
            r = client.post(path, json=json)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "APIKey", r.text
            assert client.post(path, json=json, headers={"X-API-Key": "bad"}).status_code == 403
        assert client.post(path, json=json).status_code == 200
    with keyless(client):
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def _reason_platforms(r) -> set[str]:
    assert r.status_code == 200, r.text
    return {reason["platform"] for item in r.json()["items"] for reason in item["reasons"]}


@pytest.mark.parametrize("who", [{"person_id": person_id("alice")}, {"account_id": PEOPLE["alice"]["kitchen"]}])
def test_keyless_reads_name_no_other_platforms_items(bundle_dir: Path, redis_prefix: str, tmp_path: Path,
                                                     who: dict) -> None:
    """XREC_READ_AUTH=false: reads without a key are served, but their reasons come from the target
    platform only; a read with a valid key (before or after, cached or not) sees every platform."""
    with running(make_settings(bundle_dir, redis_prefix, tmp_path / "ev", read_auth=False)) as c:
        seen_other, seen_own = set(), set()
        for platform in ("kitchen", "grocery"):
            body = {**who, "platform": platform, "k": 20}
            items = [{"item_id": i} for i in c.app.state.xrec.bundle.catalog.item_ids if i.startswith(platform)]
            rank = {**who, "platform": platform, "items": items[:20]}
            if "account_id" in who:
                body["account_platform"] = rank["account_platform"] = "kitchen"
            full = _reason_platforms(c.post("/v1/recommend", json=body))  # cached with every platform's reasons
            seen_other |= full - {platform}
            seen_other |= _reason_platforms(c.post("/v1/rank", json=rank)) - {platform}
            with keyless(c):
                for _ in range(2):  # computed, then from the ranked cache
                    for got in (_reason_platforms(c.post("/v1/recommend", json=body)),
                                _reason_platforms(c.post("/v1/recommend", json={**body, "now_ts": 1_800_000_000})),
                                _reason_platforms(c.post("/v1/rank", json=rank))):
                        assert got <= {platform}
                        seen_own |= got
                # A key that is sent is checked, whatever the setting.
                assert c.post("/v1/recommend", json=body, headers={"X-API-Key": "bad"}).status_code == 403
            assert _reason_platforms(c.post("/v1/recommend", json=body)) == full
        assert seen_other, "with a key, some reasons name the other platform: there was something to leak"
        assert seen_own == {"kitchen", "grocery"}, "keyless reads still get reasons of their own platform"


def test_a_keyless_read_of_a_one_platform_person_names_nothing(bundle_dir: Path, redis_prefix: str,
                                                                tmp_path: Path) -> None:
    """Carol used grocery only: her kitchen results are personal (from grocery), but a keyless read
    does not say which grocery items they came from."""
    body = {"account_id": PEOPLE["carol"]["grocery"], "account_platform": "grocery", "platform": "kitchen", "k": 5}
    with running(make_settings(bundle_dir, redis_prefix, tmp_path / "ev", read_auth=False), key=None) as c:
        r = c.post("/v1/recommend", json=body)
        assert r.status_code == 200 and r.json()["cold_start"] is False
        assert all(item["reasons"] == [] for item in r.json()["items"])
        assert _reason_platforms(c.post("/v1/recommend", json=body, headers=AUTH)) == {"grocery"}


def test_no_configured_keys_refuses_writes(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> None:
    with running(make_settings(bundle_dir, redis_prefix, tmp_path / "ev", api_keys=[])) as c:
        assert c.put("/v1/items", json={"items": []}, headers=AUTH).status_code == 403


@pytest.mark.parametrize(("body", "loc"), [
    ({"person_id": "p_x", "platform": "kitchen", "k": 0}, ["body", "k"]),
    ({"person_id": "p_x", "platform": "kitchen", "k": 201}, ["body", "k"]),
    ({"person_id": "not-a-person", "platform": "kitchen"}, ["body", "person_id"]),
    ({"platform": "kitchen"}, ["body"]),
    ({"person_id": "p_x", "account_id": "a", "platform": "kitchen"}, ["body"]),
    ({"person_id": "p_x", "platform": "moon"}, ["body", "platform"]),
    ({"account_id": "a", "account_platform": "moon", "platform": "kitchen"}, ["body", "account_platform"]),
    ({"person_id": "p_x", "platform": "kitchen", "context_events": [{"platform": "kitchen", "item_id": "i"}]},
     ["body", "context_events", 0, "ts"]),
    ({"person_id": "p_x", "platform": "kitchen",
      "context_events": [{"platform": "moon", "item_id": "i", "ts": 1}]}, ["body", "context_events", 0, "platform"]),
    ({"person_id": "p_x", "platform": "kitchen", "surprise": 1}, ["body", "surprise"]),
])
def test_bad_input_is_422_with_the_field_path(client: TestClient, body: dict, loc: list) -> None:
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["detail"]]
    assert all("input" not in e for e in r.json()["detail"]), "input is not echoed back"


def test_bad_event_fields(client: TestClient) -> None:
    ev = {"event_id": "", "platform": "kitchen", "account_id": "a", "item_id": "kitchen:k1", "ts": -1}
    r = client.post("/v1/events", json={"events": [ev]}, headers=AUTH)
    locs = [e["loc"] for e in r.json()["detail"]]
    assert r.status_code == 422 and ["body", "events", 0, "event_id"] in locs and ["body", "events", 0, "ts"] in locs
    assert client.post("/v1/events", json={"events": []}, headers=AUTH).status_code == 422


def test_body_over_the_limit_is_413(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> None:
    with running(make_settings(bundle_dir, redis_prefix, tmp_path / "ev", max_body_bytes=2000)) as c:
        big = {"person_id": person_id("alice"), "platform": "kitchen", "exclude_items": ["x" * 50] * 100}
        assert c.post("/v1/recommend", json=big).status_code == 413
        # Chunked upload without Content-Length is cut off as it streams in.
        chunks = (b"x" * 500 for _ in range(10))
        r = c.post("/v1/recommend", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413
        # Batch routes have their own, larger limit.
        batch = {"platform": "kitchen", "persons": [{"person_id": person_id("alice")}] * 100, "k": 1}
        assert c.post("/v1/batch/score", json=batch, headers=AUTH).status_code == 200


def test_health_ready_and_no_bundle(client: TestClient, redis_prefix: str, tmp_path: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready == {"status": "ready", "model_version": "tiny-0", "execution_provider": "CPUExecutionProvider",
                     "redis": "up", "items": 60, "platforms": ["grocery", "kitchen"],
                     "variants": [{"name": "default", "model_version": "tiny-0", "share": 1.0}]}
    with running(make_settings(None, redis_prefix, tmp_path / "ev")) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "no bundle"
        assert c.post("/v1/recommend", json={"person_id": "p_x", "platform": "kitchen"}).status_code == 503
    # A bundle that fails at startup: the service still starts, unready, saying why.
    with running(make_settings(tmp_path / "missing-bundle", redis_prefix, tmp_path / "ev")) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "no manifest" in r.json()["detail"]


def test_metrics_text_has_the_named_series(client: TestClient, settings: Settings) -> None:
    body = {"person_id": person_id("alice"), "platform": "kitchen"}
    client.post("/v1/recommend", json=body)
    client.post("/v1/recommend", json=body)
    client.post("/v1/batch/score", json={"platform": "kitchen", "persons": [{"person_id": person_id("bob")}] * 3,
                                         "k": 2}, headers=AUTH)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for needle in [
        'xrec_http_request_duration_seconds_bucket{method="POST",route="/v1/recommend",variant="default",le="0.005"}',
        'xrec_http_request_duration_seconds_count{method="POST",route="/v1/recommend",variant="default"} 2',
        'xrec_http_requests_total{method="POST",route="/v1/recommend",variant="default",status="200"} 2',
        'xrec_http_requests_total{method="POST",route="/v1/batch/score",variant="default",status="200"} 1',
        'xrec_variant_share{variant="default",model_version="tiny-0"} 1',
        'xrec_ranked_cache_requests_total{result="hit"} 1',
        'xrec_ranked_cache_requests_total{result="miss"} 1',
        "xrec_redis_errors_total 0",
        "xrec_redis_up 1",
        'xrec_index_items{platform="kitchen"} 30',
        'xrec_model_info{model_version="tiny-0",provider="CPUExecutionProvider"} 1',
        "xrec_batch_rows_total 3",
    ]:
        assert needle in text, needle
