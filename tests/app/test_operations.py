"""Operations (issue 13): the service's log lines are JSON with level, time, logger and request id, and
never hold a raw account id; a long event-log replay says how far it is; a request body that stops short
of its Content-Length gets a 408 and its connection closed, on a real uvicorn server."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from app.core.config import Settings
from app.services.event_log import LoggedEvent
from app.services.state import REPLAY_BATCH, ServiceState
from tests.app.conftest import AUTH, make_settings, running, serving
from tests.fixtures.tiny_bundle import person_id

TS = 1_760_000_000


def json_lines(text: str) -> list[dict]:
    """The service's log lines among captured stderr (uvicorn, pytest and others may write too)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if {"time", "level", "logger", "message"} <= set(record):
                out.append(record)
    return out


def test_log_lines_are_json_with_level_time_logger_and_request_id(settings: Settings, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    with running(settings) as c:
        r = c.post("/v1/admin/reload", json={"bundle_dir": str(tmp_path / "not-a-bundle")},
                   headers={**AUTH, "X-Request-ID": "trace-42"})
        assert r.status_code == 422 and r.headers["x-request-id"] == "trace-42"
    records = json_lines(capsys.readouterr().err)
    startup = next(r for r in records if r["message"].startswith("serving model tiny-0"))
    assert startup["level"] == "INFO" and startup["logger"] == "app.services.state" and "request_id" not in startup
    datetime.fromisoformat(startup["time"].replace("Z", "+00:00"))  # ISO 8601, UTC
    refused = next(r for r in records if r["message"].startswith("reload refused"))
    # Written in the threadpool (a sync route): the request id came along.
    assert refused["level"] == "WARNING" and refused["request_id"] == "trace-42"


def test_request_ids_are_made_when_missing_or_unfit(client) -> None:
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 16 for i in ids)
    odd = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 100})
    assert odd.headers["x-request-id"] != "bad id" and len(odd.headers["x-request-id"]) == 16


def test_no_raw_account_id_in_any_log_line(bundle_dir: Path, redis_prefix: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    secret = "raw-account-9c1e"
    settings = make_settings(bundle_dir, redis_prefix, tmp_path / "events", log_level="DEBUG")
    with running(settings) as c:
        ev = {"event_id": "s-1", "platform": "kitchen", "account_id": secret, "item_id": "kitchen:k0001", "ts": TS}
        assert c.post("/v1/events", json={"events": [ev, {**ev, "event_id": "s-2", "item_id": "grocery:g0001"}]}
                      ).status_code == 422
        assert c.post("/v1/events", json={"events": [ev]}).status_code == 200
        assert c.post("/v1/recommend", json={"account_id": secret, "platform": "kitchen"}).status_code == 200
        assert c.post("/v1/batch/score", json={"platform": "kitchen", "persons": [{"account_id": secret}],
                                               "k": 2}).status_code == 200
    with running(settings):  # a restart replays the event log
        pass
    err = capsys.readouterr().err
    assert json_lines(err), "the service did log"
    assert secret not in err


def test_a_long_replay_says_how_far_it_is(settings: Settings, redis_client, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    settings.replay_progress_s = 0.0  # every batch; the default says it every 5 s
    state = ServiceState(settings)
    try:
        state.load(settings.bundle_dir)
        n = 2 * REPLAY_BATCH + 7
        state.event_log.write([LoggedEvent(f"r-{i}", "kitchen", "k-dave", "key", person_id("dave"), "kitchen:k0001",
                                           "interaction", TS + i) for i in range(n)])
        with caplog.at_level(logging.INFO, logger="app.services.state"):
            assert state.replay_event_log() == n
    finally:
        state.redis.close()
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event log replay:")]
    assert len(progress) == 3 and f"of {n} events read" in progress[-1], progress
    assert any(r.getMessage().startswith(f"replayed {n} events") for r in caplog.records)


# ---- the body read timeout, on a real server ----------------------------------------------------------


def _request(port: int, body: bytes, length: int, wait_s: float) -> tuple[bytes, float, bool]:
    """POST a body that may be shorter than its Content-Length: (what came back, seconds until its first
    byte, whether the server closed the connection after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"X-API-Key: " + AUTH["X-API-Key"].encode() + b"\r\nContent-Length: " + str(length).encode()
                  + b"\r\n\r\n" + body)
        started = time.monotonic()
        response, took, closed = b"", None, False
        s.settimeout(2.0)
        with contextlib.suppress(TimeoutError):
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                if took is None:
                    took = time.monotonic() - started
                response += chunk
        return response, took if took is not None else float("inf"), closed


def test_a_body_shorter_than_its_content_length_gets_408(bundle_dir: Path, redis_prefix: str, tmp_path: Path
                                                         ) -> None:
    settings = make_settings(bundle_dir, redis_prefix, tmp_path / "events", body_timeout_s=1.0)
    body = json.dumps({"person_id": person_id("alice"), "platform": "kitchen", "k": 3}).encode()
    with serving(settings) as port:
        response, took, closed = _request(port, body[:10], len(body), wait_s=10)
        head, _, rest = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), response
        assert 0.9 <= took < 5, took
        assert b"connection: close" in head.lower() and closed, "the connection is not kept"
        (error,) = json.loads(rest)["detail"]
        assert error["type"] == "body_timeout" and error["loc"] == ["body"], error
        # A whole body on the same server is served (and the connection kept alive).
        response, _, closed = _request(port, body, len(body), wait_s=10)
        assert response.startswith(b"HTTP/1.1 200") and not closed, response
