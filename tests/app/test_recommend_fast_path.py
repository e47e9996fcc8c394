"""/v1/recommend's fast path (app/api/routes/recommend.py `FastRecommend`): the same answer as the FastAPI route
for every request, valid or not — it answers valid requests itself and hands the others to the route."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.api.routes import recommend
from tests.app.conftest import API_KEY, make_settings, running
from tests.fixtures.tiny_bundle import person_id

ALICE = person_id("alice")
GOOD = {"person_id": ALICE, "platform": "kitchen", "k": 5}
# (headers, raw body): valid requests, and each way a request can be wrong
CASES: list[tuple[dict[str, str], bytes]] = [
    ({}, json.dumps(GOOD).encode()),
    ({}, json.dumps({**GOOD, "k": 3, "exclude_seen": False}).encode()),
    ({}, json.dumps({"account_id": "no-such-account", "platform": "grocery"}).encode()),
    ({}, json.dumps({**GOOD, "filters": {"include": {"brand": ["x"]}}}).encode()),
    ({"X-API-Key": "wrong"}, json.dumps(GOOD).encode()),
    ({"X-API-Key": ""}, json.dumps(GOOD).encode()),
    ({"Content-Type": "text/plain"}, json.dumps(GOOD).encode()),
    ({}, b""),
    ({}, b"{not json"),
    ({}, json.dumps({**GOOD, "platform": "no-such-platform"}).encode()),
    ({}, json.dumps({**GOOD, "k": 0}).encode()),
    ({}, json.dumps({"platform": "kitchen"}).encode()),
    ({}, json.dumps({**GOOD, "account_id": "a"}).encode()),
    ({}, json.dumps({**GOOD, "surprise": 1}).encode()),
    ({}, json.dumps([GOOD]).encode()),
    ({}, json.dumps({**GOOD, "context_events": [{"item_id": "kitchen:nope", "platform": "kitchen",
                                                 "ts": 1}]}).encode()),
]


def answers(client: TestClient) -> list[tuple[int, object]]:
    out = []
    for headers, body in CASES:
        r = client.post("/v1/recommend", content=body, headers={"Content-Type": "application/json", **headers})
        text = re.sub(r'"took_ms":[0-9.]+', '"took_ms":0', r.text)
        out.append((r.status_code, json.loads(text)))
    return out


def without_fast_path(client: TestClient) -> None:
    routes = client.app.router.routes
    routes[:] = [r for r in routes if not (getattr(r, "path", None) == recommend.PATH
                                           and isinstance(getattr(r, "app", None), recommend.FastRecommend))]


@pytest.mark.parametrize("read_auth", [True, False])
def test_every_request_gets_the_answer_the_fastapi_route_gives(bundle_dir: Path, redis_prefix: str, tmp_path: Path,
                                                               read_auth: bool) -> None:
    settings = make_settings(bundle_dir, redis_prefix, tmp_path / "events", read_auth=read_auth)
    with running(settings) as fast, running(settings) as slow:
        assert any(isinstance(getattr(r, "app", None), recommend.FastRecommend) for r in fast.app.router.routes)
        without_fast_path(slow)
        for c in (fast, slow):
            c.headers.pop("X-API-Key", None)
            c.headers["X-API-Key"] = API_KEY
        got, want = answers(fast), answers(slow)
        statuses = [s for s, _ in want]
        assert statuses.count(200) >= 4 and {403, 415, 422} <= set(statuses)  # the cases reach each outcome
        for case, g, w in zip(CASES, got, want, strict=True):
            assert g == w, case
        # and without a key: 401 where reads need one, else the answer with this platform's reasons only
        for c in (fast, slow):
            c.headers.pop("X-API-Key")
        g, w = answers(fast)[0], answers(slow)[0]
        assert g == w and g[0] == (401 if read_auth else 200)


def test_a_valid_request_does_not_go_through_the_fastapi_route(client: TestClient, monkeypatch) -> None:
    slow = next(r for r in recommend.router.routes if isinstance(r, APIRoute))
    calls: list[str] = []
    original = slow.handle

    async def counting(scope, receive, send):  # type: ignore[no-untyped-def]
        calls.append(scope["path"])
        await original(scope, receive, send)

    monkeypatch.setattr(slow, "handle", counting)
    assert client.post("/v1/recommend", json=GOOD).status_code == 200 and calls == []
    assert client.post("/v1/recommend", json={**GOOD, "k": 0}).status_code == 422 and calls == ["/v1/recommend"]
