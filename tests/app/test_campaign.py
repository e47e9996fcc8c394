"""`xrec batch score` (app/services/campaign.py): on a local Ray, the lists equal /v1/recommend's for the same
persons; a rerun skips the parts already written; --no-ray writes the same rows; the CLI and its errors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from app.core.config import Settings
from app.services.campaign import JOB_FILE, OUTPUT_SCHEMA, Campaign, CampaignError
from tests.app.conftest import AUTH, running
from tests.fixtures.tiny_bundle import PEOPLE, TEST_SALT, person_id

NOW = 1_760_000_000
K = 4
PLATFORM = "kitchen"

# (person_id, account_id, account_platform): by person, by account (default platform and another one), an
# account nobody knows (cold start), a person with no history (cold start), and repeats across parts.
ROWS: list[tuple[str | None, str | None, str | None]] = [
    (person_id("alice"), None, None),
    (None, PEOPLE["carol"]["grocery"], "grocery"),
    (None, PEOPLE["dave"]["kitchen"], None),
    (None, "nobody-knows-me", None),
    (person_id("bob"), None, None),
    (person_id("erin"), None, None),
    (person_id("frank"), None, None),
    (person_id("alice"), None, None),
]


def _ray():
    return pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[campaign]' "
                                             "(scripts/install.sh installs it)")


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """A local Ray (2 CPUs) that the Campaign joins rather than starting its own (so reruns reuse it)."""
    ray = _ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def write_persons(path: Path, rows: list[tuple[str | None, str | None, str | None]]) -> Path:
    s = pa.string()
    pq.write_table(pa.table({"person_id": pa.array([r[0] for r in rows], s),
                             "account_id": pa.array([r[1] for r in rows], s),
                             "account_platform": pa.array([r[2] for r in rows], s)}), path)
    return path


def service_answers(settings: Settings) -> list[dict]:
    """/v1/recommend for every input row, after an event the bundle does not have (so the profiles in Redis,
    not only the snapshot, must agree)."""
    with running(settings) as client:
        r = client.post("/v1/events", headers=AUTH, json={"events": [
            {"event_id": "camp-1", "platform": "kitchen", "account_id": PEOPLE["dave"]["kitchen"],
             "item_id": "kitchen:k0007", "event": "purchase", "ts": NOW - 60}]})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        answers = []
        for pid, acc, plat in ROWS:
            who = {"person_id": pid} if pid else {"account_id": acc, "account_platform": plat or PLATFORM}
            r = client.post("/v1/recommend", json={**who, "platform": PLATFORM, "k": K, "now_ts": NOW})
            assert r.status_code == 200, r.text
            answers.append(r.json())
    return answers


def by_row(table: pa.Table) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in sorted(table.to_pylist(), key=lambda r: (r["input_row"], r["rank"])):
        out.setdefault(r["input_row"], []).append(r)
    return out


def read_out(out: Path) -> pa.Table:
    parts = sorted(out.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts])


def test_ray_campaign_equals_the_service_and_resumes(settings: Settings, bundle_dir: Path, tmp_path: Path) -> None:
    _ray()
    # Generous Redis timeouts: on 2 busy cores (Ray starting) the service's 0.25 s could degrade an answer.
    settings = settings.model_copy(update={"redis_socket_timeout_s": 5.0, "redis_connect_timeout_s": 5.0})
    answers = service_answers(settings)
    assert all(a["cache"] == "miss" for a in answers)
    persons = write_persons(tmp_path / "persons.parquet", ROWS)
    out = tmp_path / "out"
    parts_seen: list[int] = []

    def campaign(**kw: object) -> Campaign:
        return Campaign(settings, bundle_dir, persons, PLATFORM, out, k=K, now=NOW, part_size=3, workers=2,
                        progress=False, on_part=lambda r: parts_seen.append(r.part), **kw)  # type: ignore[arg-type]

    def mtimes() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}

    with local_ray():
        summary = campaign().run()
        table, written = read_out(out), mtimes()
        again = campaign().run()
        assert mtimes() == written
        (out / "part-00001.parquet").unlink()
        once_more = campaign().run()
        assert {n: t for n, t in mtimes().items() if n != "part-00001.parquet"} == {
            n: t for n, t in written.items() if n != "part-00001.parquet"}
    assert (summary.mode, summary.workers, summary.parts, summary.persons) == ("ray", 2, 3, len(ROWS))
    assert summary.skipped_parts == 0
    assert not summary.degraded and summary.cold == 2  # the unknown account, frank
    assert "scored 8 persons in 3 parts" in summary.line()

    assert table.schema.equals(OUTPUT_SCHEMA)
    got = by_row(table)
    assert sorted(got) == list(range(len(ROWS)))
    for i, answer in enumerate(answers):
        rows = got[i]
        assert [r["item_id"] for r in rows] == [it["item_id"] for it in answer["items"]], f"input row {i}"
        assert [r["rank"] for r in rows] == list(range(1, K + 1))
        assert {r["platform"] for r in rows} == {PLATFORM}
        assert {r["cold_start"] for r in rows} == {answer["cold_start"]}
        for r, it in zip(rows, answer["items"], strict=True):
            assert r["score"] == pytest.approx(it["score"], rel=1e-6, abs=1e-7)
            assert [x["item_id"] for x in r["reasons"]] == [x["item_id"] for x in it["reasons"]]
            assert [x["weight"] for x in r["reasons"]] == pytest.approx([x["weight"] for x in it["reasons"]],
                                                                        abs=1e-5)
    assert got[1][0]["person"] == person_id("carol") and got[0][0]["person"] == got[7][0]["person"]
    assert any(x["platform"] == "grocery" for rows in got.values() for r in rows for x in r["reasons"])

    # A rerun wrote nothing; with one part gone, only that part.
    assert (again.parts, again.skipped_parts, again.skipped_persons) == (0, 3, len(ROWS))
    assert (once_more.parts, once_more.persons, once_more.skipped_parts) == (1, 3, 2)
    assert sorted(parts_seen) == [0, 1, 1, 2]
    assert by_row(read_out(out)) == got

    # The same job in one process: the same rows.
    solo = tmp_path / "solo"
    summary = Campaign(settings, bundle_dir, persons, PLATFORM, solo, k=K, now=NOW, part_size=3, use_ray=False,
                       progress=False).run()
    assert summary.mode == "in-process" and summary.persons == len(ROWS)
    assert by_row(read_out(solo)) == got


def test_campaign_items_csv_and_job_mismatch(settings: Settings, bundle_dir: Path, tmp_path: Path) -> None:
    persons = tmp_path / "persons.csv"
    persons.write_text("account_id,account_platform\n"
                       f"{PEOPLE['alice']['grocery']},grocery\n{PEOPLE['dave']['kitchen']},\n", encoding="utf-8")
    out = tmp_path / "out"
    items = ["kitchen:k0001", "kitchen:k0002", "kitchen:k0003"]
    Campaign(settings, bundle_dir, persons, PLATFORM, out, k=None, items=items, now=NOW, use_ray=False,
             progress=False).run()
    got = by_row(read_out(out))
    assert sorted(got) == [0, 1]
    for rows in got.values():
        assert sorted(r["item_id"] for r in rows) == items
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert got[0][0]["person"] == person_id("alice")

    with pytest.raises(CampaignError, match="holds another campaign.*k: None there, 2 now"):
        Campaign(settings, bundle_dir, persons, PLATFORM, out, k=2, items=items, use_ray=False, progress=False).run()
    with pytest.raises(CampaignError, match="not a live kitchen item"):
        Campaign(settings, bundle_dir, persons, PLATFORM, tmp_path / "o2", k=None, items=["grocery:g0001"],
                 use_ray=False, progress=False).run()
    bad = write_persons(tmp_path / "bad.parquet", [(person_id("bob"), None, None), (None, "x", "video")])
    with pytest.raises(CampaignError, match="input row 1: unknown account_platform 'video'"):
        Campaign(settings, bundle_dir, bad, PLATFORM, tmp_path / "o3", use_ray=False, progress=False).run()


@contextlib.contextmanager
def env(values: dict[str, str]) -> Iterator[None]:
    from app.core.config import get_settings

    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def test_cli_batch_score_no_ray(settings: Settings, bundle_dir: Path, tmp_path: Path) -> None:
    from xrec.cli import app

    persons = write_persons(tmp_path / "persons.parquet", ROWS[:3])
    args = ["batch", "score", "--bundle", str(bundle_dir), "--persons", str(persons), "--platform", PLATFORM,
            "--out", str(tmp_path / "out"), "--k", "2", "--no-ray", "--now", str(NOW), "--no-progress"]
    with env({"XREC_ID_SALT": TEST_SALT, "XREC_REDIS_PREFIX": settings.redis_prefix,
              "XREC_EVENTS_DIR": str(tmp_path / "events")}):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        assert "scored 3 persons in 1 parts" in r.output and "in-process" in r.output
        assert len(read_out(tmp_path / "out")) == 6 and (tmp_path / "out" / JOB_FILE).is_file()
        r = CliRunner().invoke(app, ["batch", "score", "--bundle", str(bundle_dir), "--persons", str(persons),
                                     "--platform", "video", "--out", str(tmp_path / "o2"), "--no-ray"])
        assert r.exit_code == 2 and "unknown platform 'video'" in r.output


# Business rules: kitchen items get a category and a brand (PUT /v1/items, as an operator would); the campaign
# (in process, and through the CLI) must answer what POST /v1/batch/score answers with the same rules.
FILTERS = {"include": {"category": ["pans"]}, "exclude": {"brand": ["b3"]}}
DIVERSITY = {"max_per_value": {"brand": 1}}


def _attributes(item_id: str) -> dict[str, str]:
    i = int(item_id.rsplit("k", 1)[1])
    return {"category": "pans" if i % 3 == 0 else "tools", "brand": f"b{i % 4}"}


def _persons_json(rows: list[tuple[str | None, str | None, str | None]]) -> list[dict]:
    return [{"person_id": pid} if pid else {"account_id": acc, "account_platform": plat or PLATFORM}
            for pid, acc, plat in rows]


def test_campaign_filters_and_diversity_are_the_batch_endpoints(settings: Settings, bundle_dir: Path,
                                                                tmp_path: Path) -> None:
    import json

    from xrec.cli import app

    with running(settings) as client:
        catalog = client.app.state.xrec.bundle.catalog
        kitchen = [i for i in catalog.item_ids if i.startswith("kitchen:")]
        r = client.put("/v1/items", json={"items": [
            {"item_id": i, "platform": "kitchen", "title": catalog.titles[catalog.row_of[i]],
             "attributes": _attributes(i)} for i in kitchen]})
        assert r.status_code == 200, r.text
        r = client.post("/v1/batch/score", json={"platform": PLATFORM, "persons": _persons_json(ROWS), "k": K,
                                                 "now_ts": NOW, "filters": FILTERS, "diversity": DIVERSITY})
        assert r.status_code == 200, r.text
        lines = [json.loads(x) for x in r.text.splitlines()]
    assert lines[-1]["done"] is True
    expected = {row["index"]: [it["item_id"] for it in row["items"]] for row in lines[:-1]}

    persons = write_persons(tmp_path / "persons.parquet", ROWS)
    out = tmp_path / "out"
    Campaign(settings, bundle_dir, persons, PLATFORM, out, k=K, now=NOW, part_size=3, filters=FILTERS,
             diversity=DIVERSITY, use_ray=False, progress=False).run()
    got = {i: [r["item_id"] for r in rows] for i, rows in by_row(read_out(out)).items()}
    assert {i: v for i, v in expected.items() if v} == got and len(got) >= 6
    for ids in got.values():
        attrs = [_attributes(i) for i in ids]
        assert all(a["category"] == "pans" and a["brand"] != "b3" for a in attrs), ids  # the filters
        assert len({a["brand"] for a in attrs}) == len(ids) <= 3, ids  # one per brand: b0, b1, b2
    job = json.loads((out / JOB_FILE).read_text())
    assert job["filters"] == FILTERS and job["diversity"] == DIVERSITY
    # Without the rules the same persons get other items: the rules are what made the difference.
    plain = tmp_path / "plain"
    Campaign(settings, bundle_dir, persons, PLATFORM, plain, k=K, now=NOW, use_ray=False, progress=False).run()
    assert any(_attributes(r["item_id"])["category"] != "pans" for r in read_out(plain).to_pylist())
    # A rerun with other rules is another campaign; bad rules are refused before anything runs.
    with pytest.raises(CampaignError, match="holds another campaign.*diversity"):
        Campaign(settings, bundle_dir, persons, PLATFORM, out, k=K, now=NOW, part_size=3, filters=FILTERS,
                 use_ray=False, progress=False).run()
    with pytest.raises(CampaignError, match=r"--filters: include\.price\.range\.min: Input should be a valid number"):
        Campaign(settings, bundle_dir, persons, PLATFORM, tmp_path / "bad",
                 filters={"include": {"price": {"min": "x"}}}, use_ray=False, progress=False).run()
    with pytest.raises(CampaignError, match="--diversity: max_per_value.brand: Input should be greater than"):
        Campaign(settings, bundle_dir, persons, PLATFORM, tmp_path / "bad", diversity={"max_per_value": {"brand": 0}},
                 use_ray=False, progress=False).run()
    assert not (tmp_path / "bad").exists()

    # The CLI: --filters as JSON, --diversity from a file; the same rows.
    (tmp_path / "diversity.json").write_text(json.dumps(DIVERSITY), encoding="utf-8")
    base = ["batch", "score", "--bundle", str(bundle_dir), "--persons", str(persons), "--platform", PLATFORM,
            "--k", str(K), "--no-ray", "--now", str(NOW), "--no-progress", "--part-size", "3"]
    with env({"XREC_ID_SALT": TEST_SALT, "XREC_REDIS_PREFIX": settings.redis_prefix,
              "XREC_EVENTS_DIR": str(settings.events_dir)}):
        r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "cli"), "--filters", json.dumps(FILTERS),
                                     "--diversity", f"@{tmp_path / 'diversity.json'}"])
        assert r.exit_code == 0, r.output
        assert {i: [x["item_id"] for x in rows] for i, rows in by_row(read_out(tmp_path / "cli")).items()} == got
        r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "cli2"), "--filters", "{not json"])
        assert r.exit_code == 2 and "--filters: not JSON" in r.output
        r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "cli2"), "--diversity", "[1]"])
        assert r.exit_code == 2 and "--diversity: a JSON object" in r.output
