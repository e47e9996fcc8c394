"""The API contract (issue 13): one error shape for every status, each route's OpenAPI `responses` listing
every status it can return with that model, the document saying what the server enforces (exactly one of
person_id / account_id, of items / k, the loaded bundle's platforms, an item id's namespace), and the
/docs and /redoc pages served with local assets only."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.schemas import ErrorResponse
from tests.app.conftest import AUTH, keyless, make_settings, running
from tests.fixtures.tiny_bundle import person_id

ALICE = {"person_id": person_id("alice"), "platform": "kitchen"}
ERROR_MODEL = "#/components/schemas/ErrorResponse"


def one_error(r, status: int, type_: str, loc: list) -> dict:
    assert r.status_code == status, r.text
    body = ErrorResponse.model_validate(r.json())
    assert set(r.json()) == {"detail"} and len(body.detail) == 1, r.text
    (e,) = r.json()["detail"]
    assert e["type"] == type_ and e["loc"] == loc, e
    return e


def test_every_error_status_has_the_one_shape(client: TestClient, bundle_dir: Path, redis_prefix: str,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = {"events": [{"event_id": "e", "platform": "kitchen", "account_id": "a", "item_id": "kitchen:k0001",
                          "ts": 1}]}
    with keyless(client):
        r = client.post("/v1/events", json=events)
        one_error(r, 401, "missing_api_key", ["header", "x-api-key"])
        assert r.headers["www-authenticate"] == "APIKey"
        one_error(client.post("/v1/events", json=events, headers={"X-API-Key": "nope"}), 403, "invalid_api_key",
                  ["header", "x-api-key"])
    one_error(client.delete("/v1/items/kitchen:no-such-item"), 404, "not_found", ["path", "item_id"])
    one_error(client.get("/v1/nothing-here"), 404, "not_found", [])
    r = client.get("/v1/recommend")
    one_error(r, 405, "method_not_allowed", ["method"])
    assert r.headers["allow"] == "POST"
    one_error(client.post("/v1/recommend", content="{}", headers={"content-type": "text/plain"}), 415,
              "unsupported_media_type", ["header", "content-type"])
    one_error(client.post("/v1/recommend", json={**ALICE, "k": 0}), 422, "greater_than_equal", ["body", "k"])
    one_error(client.post("/v1/recommend", json={**ALICE, "platform": "moon"}), 422, "value_error",
              ["body", "platform"])
    one_error(client.post("/v1/admin/reload", json={"bundle_dir": str(tmp_path / "none")}), 422, "bundle_error",
              ["body", "bundle_dir"])
    one_error(client.post("/v1/events", content="{", headers={"content-type": "application/json"}), 422,
              "json_invalid", ["body", 1])
    with running(make_settings(bundle_dir, redis_prefix, tmp_path / "ev", max_body_bytes=100)) as c:
        one_error(c.post("/v1/recommend", json={**ALICE, "exclude_items": ["x" * 200]}), 413, "body_too_large",
                  ["body"])
    with running(make_settings(None, redis_prefix, tmp_path / "ev2")) as c:
        one_error(c.post("/v1/recommend", json=ALICE), 503, "no_bundle", [])
    # An unexpected failure: a 500 in the same shape, saying nothing of the internals.
    settings = make_settings(bundle_dir, redis_prefix, tmp_path / "ev3")
    with TestClient(create_app(settings), headers=AUTH, raise_server_exceptions=False) as c:
        def boom(*args, **kwargs):
            raise RuntimeError("secret internals")

        monkeypatch.setattr(c.app.state.xrec.recommender, "resolve_request", boom)
        e = one_error(c.post("/v1/recommend", json=ALICE), 500, "internal_error", [])
        assert "secret" not in e["msg"]


# Every status each operation can answer (408: body read timeout, 413: body size, 415: not JSON).
BODY_ROUTE = {"200", "401", "403", "408", "413", "415", "422", "503"}
EXPECTED = {
    ("post", "/v1/recommend"): BODY_ROUTE,
    ("post", "/v1/rank"): BODY_ROUTE,
    ("post", "/v1/events"): BODY_ROUTE,
    ("put", "/v1/items"): BODY_ROUTE,
    ("delete", "/v1/items/{item_id}"): {"200", "401", "403", "404", "422", "503"},
    ("post", "/v1/batch/score"): BODY_ROUTE,
    ("post", "/v1/admin/reload"): BODY_ROUTE - {"503"},
    ("get", "/healthz"): {"200"},
    ("get", "/readyz"): {"200", "503"},
    ("get", "/metrics"): {"200"},
}


def test_openapi_lists_every_status_with_the_error_model(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    found = {(method, path): set(op["responses"]) for path, ops in doc["paths"].items() for method, op in ops.items()}
    for op, codes in EXPECTED.items():
        assert found[op] == codes, op
    for (method, path), codes in found.items():
        op = doc["paths"][path][method]
        if "requestBody" in op:
            assert {"408", "413", "415", "422"} <= codes, (method, path)
        if op.get("security"):
            assert {"401", "403"} <= codes, (method, path)
        for code in codes:
            if code.startswith("2"):
                continue
            schema = op["responses"][code]["content"]["application/json"]["schema"]
            want = "#/components/schemas/Ready" if path == "/readyz" else ERROR_MODEL
            assert schema == {"$ref": want}, (method, path, code)
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def _validator(doc: dict, component: str):
    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{component}", "components": doc["components"]})


@pytest.mark.parametrize(("path", "component", "body"), [
    ("/v1/recommend", "RecommendRequest", {"person_id": person_id("bob")}),
    ("/v1/recommend", "RecommendRequest", {"account_id": "g-bob"}),
    ("/v1/recommend", "RecommendRequest", {"person_id": person_id("bob"), "account_id": "g-bob"}),
    ("/v1/recommend", "RecommendRequest", {}),
    ("/v1/recommend", "RecommendRequest", {"person_id": person_id("bob"), "account_id": None}),
    ("/v1/recommend", "RecommendRequest", {"person_id": None, "account_id": "g-bob"}),
    ("/v1/recommend", "RecommendRequest", {"person_id": None, "account_id": None}),
    ("/v1/recommend", "RecommendRequest", {"account_id": "g-bob", "account_platform": "moon"}),
    ("/v1/recommend", "RecommendRequest", {"person_id": person_id("bob"), "k": 5.0}),
    ("/v1/recommend", "RecommendRequest", {"person_id": person_id("bob"), "k": True}),
    ("/v1/recommend", "RecommendRequest", {"person_id": person_id("bob"), "now_ts": "1700000000"}),
    ("/v1/recommend", "RecommendRequest", {"person_id": person_id("bob"), "context_events": [
        {"platform": "kitchen", "item_id": "grocery:g0001", "ts": 1}]}),
    ("/v1/recommend", "RecommendRequest", {"person_id": person_id("bob"), "context_events": [
        {"platform": "grocery", "item_id": "grocery:g0001", "ts": 1}]}),
    ("/v1/batch/score", "BatchScoreRequest", {"persons": [{"account_id": "a"}], "k": 3}),
    ("/v1/batch/score", "BatchScoreRequest", {"persons": [{"account_id": "a"}], "items": ["kitchen:k0001"]}),
    ("/v1/batch/score", "BatchScoreRequest", {"persons": [{"account_id": "a"}], "items": ["kitchen:k0001"], "k": 3}),
    ("/v1/batch/score", "BatchScoreRequest", {"persons": [{"account_id": "a"}]}),
    ("/v1/batch/score", "BatchScoreRequest", {"persons": [{"account_id": "a"}], "items": None, "k": 3}),
    ("/v1/batch/score", "BatchScoreRequest", {"persons": [{"person_id": None}], "k": 3}),
    ("/v1/events", "EventsRequest", {"events": [{"event_id": "x", "account_id": "a", "ts": 1,
                                                "item_id": "kitchen:n"}]}),
    ("/v1/events", "EventsRequest", {"events": [{"event_id": "x", "account_id": "a", "ts": 1,
                                                "item_id": "grocery:n"}]}),
    ("/v1/events", "EventsRequest", {"events": [{"event_id": "x", "account_id": "a", "ts": 1,
                                                "item_id": "plain"}]}),
    ("/v1/items", "ItemsRequest", {"items": [{"item_id": "kitchen:new", "title": "a pan"}]}),
    ("/v1/items", "ItemsRequest", {"items": [{"item_id": "grocery:new", "title": "a pan"}]}),
    ("/v1/items", "ItemsRequest", {"items": [{"item_id": "no-namespace", "title": "a pan"}]}),
])
def test_the_document_accepts_exactly_what_the_server_accepts(client: TestClient, path: str, component: str,
                                                              body: dict) -> None:
    """Schema-valid ⇔ served (or, for a request the bundle judges further, not refused by the schema part)."""
    if component in ("EventsRequest", "ItemsRequest"):
        key = "events" if component == "EventsRequest" else "items"
        body = {key: [{"platform": "kitchen", **e} for e in body[key]]}
    else:
        body = {"platform": "kitchen", **body}
    doc = client.get("/openapi.json").json()
    valid = _validator(doc, component).is_valid(body)
    method = "put" if path == "/v1/items" else "post"
    r = client.request(method, path, json=body)
    assert r.status_code in (200, 422), r.text
    assert valid == (r.status_code == 200), (valid, r.text)


def test_platforms_are_enums_of_the_loaded_bundle(client: TestClient, redis_prefix: str, tmp_path: Path) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["RecommendRequest"]["properties"]["platform"]["enum"] == ["grocery", "kitchen"]
    account_platform = schemas["BatchPerson"]["properties"]["account_platform"]["anyOf"]
    assert {"type": "null"} in account_platform and ["grocery", "kitchen"] in [s.get("enum") for s in account_platform]
    assert [b["title"] for b in schemas["RecommendRequest"]["oneOf"]] == ["by person", "by account"]
    assert "namespaced" in schemas["ItemIn"]["properties"]["item_id"]["description"]
    with running(make_settings(None, redis_prefix, tmp_path / "ev")) as c:  # no bundle: no enums
        assert "enum" not in c.get("/openapi.json").json()["components"]["schemas"]["RecommendRequest"][
            "properties"]["platform"]


def test_docs_pages_load_nothing_from_elsewhere(client: TestClient) -> None:
    for page, assets in [("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
                         ("/redoc", {"redoc.standalone.js", "favicon.png"})]:
        with keyless(client):
            r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text, page
        urls = set(re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", r.text))
        urls |= set(re.findall(r"""url\s*:\s*['"]([^'"]+)""", r.text))
        urls |= set(re.findall(r"""spec-url\s*=\s*["']([^"']+)""", r.text))
        assert {u.rsplit("/", 1)[-1] for u in urls if u.startswith("/docs/assets/")} == assets, urls
        assert all(u.startswith("/") for u in urls), urls
        for u in urls:
            got = client.get(u)
            assert got.status_code == 200 and len(got.content) > 100, u
    assert client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")

