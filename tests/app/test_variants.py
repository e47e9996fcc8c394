"""A/B variants (issue 15, part 3): a stable split by a keyed hash of the person id with the configured
shares, two bundles served side by side (each response names its variant and comes from that bundle), the
variant on the request metrics, events that carry a variant into the event log, and `xrec report ab`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.core.config import Settings, VariantSpec
from app.schemas import BatchRow, BatchSummary, RankResponse, RecommendResponse
from app.services.ab_report import ab_report_from_log
from app.services.event_log import EventLog, LoggedEvent, read_events
from app.services.variants import Split
from tests.app.conftest import AUTH, make_settings, running
from tests.fixtures.tiny_bundle import NO_HISTORY, PEOPLE, person_id

NOW = 1_760_000_000
NAMES = [n for n in PEOPLE if n not in NO_HISTORY]


def persons(n: int) -> list[str]:
    return ["p_" + hashlib.sha256(f"person-{i}".encode()).hexdigest()[:22] for i in range(n)]


@pytest.mark.parametrize("shares", [[0.5, 0.5], [0.2, 0.3, 0.5], [0.9, 0.1], [3, 1]])
def test_split_is_stable_per_person_and_keeps_the_shares(shares: list[float]) -> None:
    ids = persons(100_000)
    split = Split(shares, "salt-1")
    got = np.array([split.index(p) for p in ids])
    again = Split(list(shares), "salt-1")
    assert all(again.index(p) == g for p, g in zip(ids[:5000], got[:5000].tolist(), strict=True))
    want = np.array(shares, dtype=float) / sum(shares)
    observed = np.bincount(got, minlength=len(shares)) / len(ids)
    assert np.all(np.abs(observed - want) <= 0.02), (observed, want)
    # Another salt is another, independent split (about the expected share of persons stays put).
    other = np.array([Split(shares, "salt-2").index(p) for p in ids])
    assert abs(float(np.mean(other == got)) - float(np.sum(want ** 2))) < 0.02


def test_shrinking_the_last_variant_keeps_the_first_variants_persons() -> None:
    ids = persons(20_000)
    two = [Split([0.5, 0.5], "s").index(p) for p in ids]
    three = [Split([0.5, 0.25, 0.25], "s").index(p) for p in ids]
    assert all(t == 0 for s, t in zip(two, three, strict=True) if s == 0)


def test_variants_setting_is_parsed_and_checked(tmp_path: Path) -> None:
    s = Settings(_env_file=None, variants=f"a={tmp_path}/b1:0.5, b={tmp_path}/b:2:0.5")  # type: ignore[call-arg]
    assert [(v.name, v.bundle_dir, v.share) for v in s.variants] == [("a", tmp_path / "b1", 0.5),
                                                                      ("b", tmp_path / "b:2", 0.5)]
    for bad in ["a=/x", "a=/x:zero", "a=/x:0.5,a=/y:0.5", "a b=/x:0.5", "a=/x:-1"]:
        with pytest.raises(ValueError):
            Settings(_env_file=None, variants=bad)  # type: ignore[call-arg]


def _salt_splitting_the_fixture() -> str:
    """A variant salt that puts the fixture's persons in both variants (so both are exercised)."""
    for i in range(100):
        split = Split([0.5, 0.5], f"ab-{i}")
        got = [split.index(person_id(n)) for n in NAMES]
        if 2 <= sum(got) <= len(got) - 2:
            return f"ab-{i}"
    raise AssertionError("no salt splits the fixture")


@pytest.fixture
def ab(bundle_dir: Path, bundle_dir_v2: Path, redis_prefix: str, tmp_path: Path):
    salt = _salt_splitting_the_fixture()
    settings = make_settings(None, redis_prefix, tmp_path / "events", variant_salt=salt, variants=[
        VariantSpec(name="a", bundle_dir=bundle_dir, share=0.5), VariantSpec(name="b", bundle_dir=bundle_dir_v2,
                                                                            share=0.5)])
    split = Split([0.5, 0.5], salt)
    return settings, {n: "ab"[split.index(person_id(n))] for n in NAMES}


def test_each_response_names_its_variant_and_comes_from_that_bundle(ab, bundle_dir: Path, bundle_dir_v2: Path,
                                                                    redis_prefix: str, tmp_path: Path) -> None:
    settings, variant_of = ab
    refs = {"a": make_settings(bundle_dir, f"{redis_prefix}:ref-a", tmp_path / "ev-a"),
            "b": make_settings(bundle_dir_v2, f"{redis_prefix}:ref-b", tmp_path / "ev-b")}
    model = {"a": "tiny-0", "b": "tiny-1"}
    with running(settings) as c, running(refs["a"]) as ref_a, running(refs["b"]) as ref_b:
        ref = {"a": ref_a, "b": ref_b}
        ready = c.get("/readyz").json()
        assert ready["variants"] == [{"name": "a", "model_version": "tiny-0", "share": 0.5},
                                     {"name": "b", "model_version": "tiny-1", "share": 0.5}]
        assert ready["model_version"] == "tiny-0"
        for name in NAMES:
            v = variant_of[name]
            body = {"person_id": person_id(name), "platform": "kitchen", "k": 5, "now_ts": NOW}
            r = c.post("/v1/recommend", json=body)
            assert r.status_code == 200, r.text
            got = RecommendResponse.model_validate_json(r.content)
            want = ref[v].post("/v1/recommend", json=body).json()
            assert got.variant == v and got.model_version == model[v] == want["model_version"]
            assert [(i.item_id, i.score) for i in got.items] == [(i["item_id"], i["score"]) for i in want["items"]]
            # By account: the same person, the same variant.
            platform, account = next(iter(PEOPLE[name].items()))
            by_account = c.post("/v1/recommend", json={"account_id": account, "account_platform": platform,
                                                       "platform": "kitchen", "k": 5, "now_ts": NOW}).json()
            assert by_account["variant"] == v and by_account["items"] == r.json()["items"]
            # Rank, from the same bundle.
            rank = {"person_id": person_id(name), "platform": "kitchen", "now_ts": NOW,
                    "items": [{"item_id": "kitchen:k0001"}, {"item_id": "kitchen:k0002"}]}
            got_rank = RankResponse.model_validate(c.post("/v1/rank", json=rank).json())
            want_rank = ref[v].post("/v1/rank", json=rank).json()
            assert got_rank.variant == v and [i.score for i in got_rank.items] == [i["score"] for i in
                                                                                   want_rank["items"]]
        # Batch: each person scored by their variant's bundle, in request order.
        persons_body = [{"person_id": person_id(n)} for n in NAMES]
        r = c.post("/v1/batch/score", json={"platform": "kitchen", "persons": persons_body, "k": 3, "now_ts": NOW},
                   headers=AUTH)
        lines = r.text.splitlines()
        rows = [BatchRow.model_validate_json(line) for line in lines[:-1]]
        summary = BatchSummary.model_validate_json(lines[-1])
        assert summary.variants == {"a": "tiny-0", "b": "tiny-1"}
        for row, name in zip(rows, NAMES, strict=True):
            v = variant_of[name]
            want = ref[v].post("/v1/recommend", json={"person_id": person_id(name), "platform": "kitchen", "k": 3,
                                                     "now_ts": NOW}).json()
            assert row.variant == v and [i.item_id for i in row.items] == [i["item_id"] for i in want["items"]]
        metrics = c.get("/metrics").text
        for v in "ab":
            assert f'xrec_http_requests_total{{method="POST",route="/v1/recommend",variant="{v}",status="200"}}' \
                   in metrics
            assert f'route="/v1/rank",variant="{v}"' in metrics
        assert 'route="/v1/batch/score",variant="a+b"' in metrics
        assert 'xrec_variant_share{variant="b",model_version="tiny-1"} 0.5' in metrics


def test_events_reach_every_variant_and_carry_theirs_to_the_log(ab, tmp_path: Path) -> None:
    settings, variant_of = ab
    name = next(n for n in NAMES if variant_of[n] == "b" and "kitchen" in PEOPLE[n])
    body = {"person_id": person_id(name), "platform": "kitchen", "k": 5}
    with running(settings) as c:
        first = c.post("/v1/recommend", json=body).json()
        assert first["variant"] == "b" and c.post("/v1/recommend", json=body).json()["cache"] == "hit"
        event = {"event_id": "ev-b-1", "platform": "kitchen", "account_id": PEOPLE[name]["kitchen"],
                 "item_id": first["items"][0]["item_id"], "event": "click", "ts": NOW, "variant": "b"}
        plain = {**event, "event_id": "ev-none-1", "ts": NOW + 1}
        plain.pop("variant")
        assert c.post("/v1/events", json={"events": [event, plain]}, headers=AUTH).json()["accepted"] == 2
        after = c.post("/v1/recommend", json=body).json()
        # ranked ahead after the events (refresh_after_events), with the person's own variant's model
        assert after["cache"] == "hit" and after["variant"] == "b"
        assert first["items"][0]["item_id"] not in [i["item_id"] for i in after["items"]]
        r = c.post("/v1/events", json={"events": [{**event, "event_id": "x", "variant": "not a name"}]}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "events", 0, "variant"]
        # Catalog changes reach every variant's catalog.
        new = {"item_id": "kitchen:ab-new", "platform": "kitchen", "title": "a blue enamel pot"}
        assert c.put("/v1/items", json={"items": [new]}, headers=AUTH).status_code == 200
        assert all(v.bundle.catalog.is_live("kitchen:ab-new") for v in c.app.state.xrec.served.variants)
        # Reload: every variant from its folder; a bundle_dir is refused while XREC_VARIANTS is set.
        assert c.post("/v1/admin/reload", json={}, headers=AUTH).status_code == 200
        r = c.post("/v1/admin/reload", json={"bundle_dir": "/elsewhere"}, headers=AUTH)
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "bundle_error"
        assert c.post("/v1/recommend", json=body).json()["variant"] == "b"
    logged = {e.event_id: e for e in read_events(settings.events_dir)}
    assert logged["ev-b-1"].variant == "b" and logged["ev-none-1"].variant is None
    raw = "".join(p.read_text() for p in Path(settings.events_dir).glob("events-*.jsonl"))
    assert '"variant":"b"' in raw and raw.count('"variant"') == 1


def test_variant_bundles_must_serve_the_same_platforms(ab, tmp_path: Path, bundle_dir: Path) -> None:
    settings, _ = ab
    other = tmp_path / "one-platform"
    other.mkdir()
    for entry in bundle_dir.iterdir():
        if entry.name != "manifest.json":
            (other / entry.name).symlink_to(entry)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["platforms"] = ["kitchen", "grocery"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    bad = settings.model_copy(update={"variants": [settings.variants[0],
                                                   VariantSpec(name="c", bundle_dir=other, share=0.5)],
                                      "verify_bundle": False})
    with running(bad) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "same platforms" in r.json()["detail"]


# ---- xrec report ab ---------------------------------------------------------------------------------------

T0 = 1_760_000_000


def _simulated_log(directory: Path) -> None:
    """a: 1000 persons exposed, 100 of them click, 20 buy; b: 800 exposed, 120 click, 40 buy. Around them:
    duplicate deliveries, events naming no variant, events outside the window, clicks of unexposed persons."""
    events: list[LoggedEvent] = []
    n = 0

    def add(person: str, kind: str, variant: str | None, ts: int = T0 + 100) -> None:
        nonlocal n
        n += 1
        events.append(LoggedEvent(f"e{n}", "kitchen", "acct", "key", person, "kitchen:k0001", kind, ts, 0.0, variant))

    for v, exposed, clicks, buys in [("a", 1000, 100, 20), ("b", 800, 120, 40)]:
        for i in range(exposed):
            p = f"p_{v}{i}"
            add(p, "exposure", v)
            add(p, "exposure", v)  # seen twice: one person
            if i < clicks:
                add(p, "click", v)
            if i < buys:
                add(p, "purchase", v)
        for i in range(5):
            add(f"p_{v}_unexposed{i}", "click", v)  # no exposure: not in the rates
    add("p_a0", "click", None)  # names no variant
    add("p_b500", "click", "b", ts=T0 - 10)  # before --since
    add("p_b501", "purchase", "b", ts=T0 + 10_000)  # at/after --until
    log = EventLog(directory)
    log.write(events)
    log.write(events[:50])  # at-least-once: delivered again


def test_report_ab_on_a_simulated_event_log(tmp_path: Path) -> None:
    _simulated_log(tmp_path)
    report = ab_report_from_log(tmp_path, since=T0, until=T0 + 10_000)
    assert report.duplicates == 50
    a, b = report.variants
    assert (a.variant, a.exposed, b.variant, b.exposed) == ("a", 1000, "b", 800)
    assert (a.persons, a.exposures) == (1005, 2000)
    assert a.share == pytest.approx(1000 / 1800) and (a.share_low, a.share_high) == pytest.approx((0.53251, 0.57837),
                                                                                                  abs=1e-5)
    expected = {("a", "click"): (100, 0.10, 0.08291, 0.12015), ("a", "purchase"): (20, 0.02, 0.01298, 0.03069),
                ("b", "click"): (120, 0.15, 0.12693, 0.17641), ("b", "purchase"): (40, 0.05, 0.03693, 0.06737)}
    for s in (a, b):
        for kind in ("click", "purchase"):
            r = s.outcomes[kind]
            x, rate, lo, hi = expected[(s.variant, kind)]
            assert r.persons == x and r.rate == pytest.approx(rate), (s.variant, kind)
            assert (r.low, r.high) == pytest.approx((lo, hi), abs=1e-5), (s.variant, kind)
    assert a.outcomes["click"].events == 105 and b.outcomes["purchase"].events == 40
    d = b.outcomes["click"]
    assert (d.diff, d.diff_low, d.diff_high) == pytest.approx((0.05, 0.01905, 0.08095), abs=1e-5)
    d = b.outcomes["purchase"]
    assert (d.diff, d.diff_low, d.diff_high) == pytest.approx((0.03, 0.01258, 0.04742), abs=1e-5)
    # Without the window, the two events outside it count too.
    wide = ab_report_from_log(tmp_path)
    assert wide.variants[1].outcomes["purchase"].events == 41


def test_report_ab_command(tmp_path: Path) -> None:
    from xrec.cli import app

    _simulated_log(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["report", "ab", "--events-dir", str(tmp_path), "--since", str(T0), "--until",
                            str(T0 + 10_000)])
    assert r.exit_code == 0, r.output
    assert "10.00% [8.29%, 12.02%]" in r.output and "15.00% [12.69%, 17.64%]" in r.output
    assert "+5.00% [+1.90%, +8.10%]" in r.output
    r = runner.invoke(app, ["report", "ab", "--events-dir", str(tmp_path), "--json", "--outcomes", "purchase"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [v["variant"] for v in data["variants"]] == ["a", "b"]
    assert data["variants"][1]["outcomes"]["purchase"]["persons"] == 41  # the one after --until too
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["report", "ab", "--events-dir", str(empty)]).exit_code == 1
