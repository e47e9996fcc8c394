"""GET /ui (app/static/) and POST /v1/history: the page is served with its assets and nothing from elsewhere;
the history endpoint's auth rules; and the page driven in headless Chromium (Debian's /usr/bin/chromium via
Playwright): a search shows the timeline and recommendations, a new item's text gets scored, its audience is
listed (a click on a person looks them up), a screenshot is saved (XREC_UI_SCREENSHOT=docs/ui.png also writes it
there)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.app.conftest import API_KEY, keyless, make_settings, running, serving
from tests.fixtures.tiny_bundle import PEOPLE, person_id

CHROMIUM = Path("/usr/bin/chromium")


def test_ui_page_and_assets_load_nothing_from_elsewhere(client: TestClient) -> None:
    with keyless(client):
        page = client.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        texts = [page.text]
        for name, kind in [("ui.js", "text/javascript"), ("ui.css", "text/css")]:
            r = client.get(f"/ui/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
            texts.append(r.text)
        assert client.get("/ui/ui.html").status_code == 404 and client.get("/ui/../main.py").status_code == 404
    for text in texts:
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert 'src="ui/ui.js"' in texts[0] and 'href="ui/ui.css"' in texts[0]
    assert "/ui" not in client.get("/openapi.json").json()["paths"]


def test_history_is_the_fused_timeline_behind_read_auth(client: TestClient) -> None:
    r = client.post("/v1/history", json={"account_id": PEOPLE["alice"]["kitchen"], "account_platform": "kitchen"})
    assert r.status_code == 200, r.text
    h = r.json()
    snapshot = client.app.state.xrec.bundle.snapshot.events(person_id("alice"))
    assert h["person_id"] == person_id("alice") and h["known"] is True and h["total"] == len(snapshot[0])
    assert [e["item_id"] for e in h["events"]] == snapshot[0] and {e["platform"] for e in h["events"]} == {
        "grocery", "kitchen"}
    assert all(e["title"] for e in h["events"]) and h["platforms"] == ["grocery", "kitchen"]
    assert [e["ts"] for e in h["events"]] == sorted(e["ts"] for e in h["events"])
    newest = client.post("/v1/history", json={"person_id": person_id("alice"), "limit": 2}).json()
    assert newest["events"] == h["events"][-2:] and newest["total"] == h["total"]
    unknown = client.post("/v1/history", json={"account_id": "nobody", "account_platform": "grocery"}).json()
    assert unknown["known"] is False and unknown["events"] == []
    r = client.post("/v1/history", json={"account_id": "g-alice"})
    assert r.status_code == 422 and "account_platform is required" in r.json()["detail"][0]["msg"]
    with keyless(client):
        assert client.post("/v1/history", json={"person_id": person_id("alice")}).status_code == 401


def test_keyless_history_reads_see_one_platform(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> None:
    settings = make_settings(bundle_dir, redis_prefix, tmp_path / "events", read_auth=False)
    with running(settings, key=None) as c:
        r = c.post("/v1/history", json={"account_id": PEOPLE["alice"]["grocery"], "account_platform": "grocery"})
        assert r.status_code == 200, r.text
        assert r.json()["events"] and {e["platform"] for e in r.json()["events"]} == {"grocery"}
        r = c.post("/v1/history", json={"person_id": person_id("alice")})
        assert r.status_code == 401 and "keyless history read" in r.json()["detail"][0]["msg"]


def test_ui_in_headless_chromium(settings: Settings, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    shot = tmp_path / "ui.png"
    with serving(settings) as port, sync_api.sync_playwright() as pw:
        base = f"http://127.0.0.1:{port}"
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            requests: list[str] = []
            errors: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/ui")
            page.wait_for_selector("#model:has-text('model tiny-0')")
            page.fill("#api-key", API_KEY)
            page.select_option("#account-platform", "grocery")
            page.fill("#account-id", PEOPLE["alice"]["grocery"])
            page.fill("#k", "5")
            page.click("#search")
            page.wait_for_selector("section.platform-recs[data-platform='kitchen'] tr.rec")
            assert person_id("alice") in page.inner_text("#person")
            timeline = page.locator("#timeline li")
            n_events = len(client_events(settings))
            assert timeline.count() == n_events > 0
            assert timeline.locator(".badge", has_text="kitchen").count() > 0
            assert timeline.locator(".badge", has_text="grocery").count() > 0
            for platform in ("grocery", "kitchen"):
                assert page.locator(f"section.platform-recs[data-platform='{platform}'] tr.rec").count() == 5
            assert page.locator("tr.rec .reason").count() > 0
            page.select_option("#try-platform", "kitchen")
            page.fill("#try-title", "spicy golden skillet")
            page.click("#try")
            verdict = page.wait_for_selector("#try-verdict").inner_text()
            assert "would rank #" in verdict and "of 6" in verdict and "score" in verdict
            assert "found" in page.inner_text("#status")
            # Who would like a new item: the audience table, then a click on a person looks them up.
            page.select_option("#aud-platform", "kitchen")
            page.fill("#aud-title", "golden skillet")
            page.fill("#aud-k", "3")
            page.click("#aud-find")
            page.wait_for_selector("#aud-table tr.aud-person")
            people = page.locator("#aud-table tr.aud-person")
            assert people.count() == 3
            assert "of 5 known persons" in page.inner_text("#aud-status")
            assert people.nth(0).locator(".reason .badge").count() > 0
            first = people.nth(0).get_attribute("data-person")
            assert first and first.startswith("p_")
            known = {person_id(n) for n in PEOPLE}
            assert {people.nth(i).get_attribute("data-person") for i in range(3)} <= known
            people.nth(0).locator("button.linkish").click()
            page.wait_for_selector(f"#status:has-text('found {first}')")
            assert first in page.inner_text("#person")
            page.fill("#aud-title", "   ")
            page.click("#aud-find")
            page.wait_for_selector("#aud-status.error:has-text('enter a title')")
            page.fill("#aud-title", "golden skillet")
            page.click("#aud-find")
            page.wait_for_selector("#aud-table tr.aud-person")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert requests and all(u.startswith(base) for u in requests), [u for u in requests if not u.startswith(base)]
    assert not errors, errors
    if os.environ.get("XREC_UI_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["XREC_UI_SCREENSHOT"])


def client_events(settings: Settings) -> list[str]:
    """Alice's events as the service holds them (snapshot; the test ingests none)."""
    from app.services.model_bundle import load_bundle

    assert settings.bundle_dir is not None
    return load_bundle(settings.bundle_dir, settings).snapshot.events(person_id("alice"))[0]
