import gzip
import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from training.data.build import atomic_dir, build_dataset
from training.data.demo import write_demo
from training.data.fuse import account_key
from training.data.readers import DataError
from training.data.sources import SourceError, load_sources
from xrec.cli import app

MAPPING = """
name = "tiny"
data_root = "."
[identity]
file = "links.csv"
[platforms.shop]
events = ["shop_*.csv"]
account = "user"
item = "sku"
event = "kind"
timestamp = "at"
catalog = { file = "items_shop.csv", id = "sku", text = "name" }
[platforms.tv]
events = "tv.jsonl.gz"
account = "viewer"
item = "show"
timestamp = "t"
timestamp_format = "epoch_s"
catalog = { file = "tv_items.jsonl", id = "show", text = "title" }
[eval]
splits = { test = "test.csv" }
"""


@pytest.fixture
def tiny(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    (d / "mapping.toml").write_text(MAPPING)
    (d / "links.csv").write_text("person_id,platform,account_id\nP1,shop,s1\nP1,tv,t1\n")
    (d / "items_shop.csv").write_text("sku,name\nA,Ｃoffee  grinder\nB,Tea pot\n")
    (d / "shop_1.csv").write_text(
        "user,sku,kind,at\n"
        "s1,A,buy,2020-01-01T00:00:00Z\n"
        "s1,A,buy,2020-01-01T00:00:00Z\n"  # duplicate
        "s2,B,buy,2020-01-03T00:00:00Z\n"
        ",B,buy,2020-01-03T00:00:00Z\n"  # blank account
        "s2,Q,buy,2020-01-04T00:00:00Z\n"  # unknown item
    )
    (d / "tv_items.jsonl").write_text('{"show": "X", "title": "Cooking show"}\n{"show": "Y", "title": "News"}\n')
    with gzip.open(d / "tv.jsonl.gz", "wt") as f:
        f.write(json.dumps({"viewer": "t1", "show": "X", "t": 1577923200}) + "\n")  # 2020-01-02
        f.write('{"viewer": "t1", "show": \n')  # malformed
        f.write(json.dumps({"viewer": "t9", "show": "Y", "t": "soon"}) + "\n")  # bad timestamp
    (d / "test.csv").write_text("platform,account_id,item_id,timestamp\ntv,t1,Y,2020-02-01T00:00:00Z\n")
    return d


def test_build_cleans_fuses_and_reports(tiny, tmp_path):
    cfg = load_sources(tiny / "mapping.toml")
    res = build_dataset(cfg, tmp_path / "out", salt="s")
    r = res.report
    assert r["platforms"]["shop"]["dropped"]["exact_duplicate"] == 1
    assert r["platforms"]["shop"]["dropped"]["blank_account"] == 1
    assert r["platforms"]["shop"]["dropped"]["unknown_item"] == 1
    assert r["platforms"]["shop"]["kept"] == 2
    assert r["platforms"]["tv"]["dropped"]["malformed_line"] == 1
    assert r["platforms"]["tv"]["dropped"]["unparseable_timestamp"] == 1
    assert r["platforms"]["tv"]["kept"] == 1
    assert (r["people"], r["linked_people"], r["targets"]) == (2, 1, {"test": 1})
    assert r["checks"]["targets_in_events"] == 0 and r["checks"]["events_at_or_after_first_target"] == 0

    out = tmp_path / "out"
    events = pq.read_table(out / "events.parquet").to_pylist()
    p1 = [e for e in events if e["platform"] == "tv"][0]["person"]
    # One timeline across platforms, ordered by time, items namespaced.
    assert [e["item_id"] for e in events if e["person"] == p1] == ["shop:A", "tv:X"]
    items = {i["item_id"]: i["title"] for i in pq.read_table(out / "items.parquet").to_pylist()}
    assert items["shop:A"] == "Coffee grinder" and set(items) == {"shop:A", "shop:B", "tv:X", "tv:Y"}
    accounts = pq.read_table(out / "accounts.parquet").to_pylist()
    assert {"platform": "tv", "account": account_key("s", "tv", "t1"), "person": p1} in accounts
    raw_ids = {"s1", "s2", "t1", "P1"}
    assert not raw_ids & {a["account"] for a in accounts} and not raw_ids & {e["person"] for e in events}
    targets = pq.read_table(out / "targets.parquet").to_pylist()
    assert targets == [{"split": "test", "person": p1, "platform": "tv", "item_id": "tv:Y", "ts": 1580515200}]


def test_strict_build_fails_naming_file_and_line_and_leaves_nothing(tiny, tmp_path):
    cfg = load_sources(tiny / "mapping.toml")
    with pytest.raises(DataError) as e:
        build_dataset(cfg, tmp_path / "out", salt="s", strict=True)
    assert e.value.path.endswith("shop_1.csv") and e.value.line == 3
    assert list(tmp_path.iterdir()) == [tiny]


def test_failed_build_keeps_the_previous_output(tiny, tmp_path):
    out = tmp_path / "out"
    build_dataset(load_sources(tiny / "mapping.toml"), out, salt="s")
    before = (out / "events.parquet").read_bytes()
    (tiny / "shop_1.csv").write_text("user,sku\ns1,A\n")  # the timestamp column is gone
    with pytest.raises(DataError, match="missing column 'at'"):
        build_dataset(load_sources(tiny / "mapping.toml"), out, salt="s")
    assert (out / "events.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "o"
    with atomic_dir(out) as t:
        (t / "f").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(out) as t:
        (t / "f").write_text("2")
        raise RuntimeError
    assert (out / "f").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["o"]


def test_mapping_errors_are_clear(tiny):
    (tiny / "bad.toml").write_text('name = "x"\n[platforms.a]\nevents = "e.csv"\n')
    with pytest.raises(SourceError, match=r"platforms\.a\.account"):
        load_sources(tiny / "bad.toml")
    (tiny / "m2.toml").write_text(MAPPING.replace('"shop_*.csv"', '"nothing_*.csv"'))
    with pytest.raises(SourceError, match="shop events: no file matches"):
        build_dataset(load_sources(tiny / "m2.toml"), tiny / "o", salt="s")


def test_cli_strict_bad_json_exit_code_and_message(tiny, tmp_path):
    (tiny / "shop_1.csv").write_text("user,sku,kind,at\ns1,A,buy,2020-01-01T00:00:00Z\n")
    runner = CliRunner()
    out = tmp_path / "o"
    res = runner.invoke(app, ["data", "build", str(tiny / "mapping.toml"), "--out", str(out), "--strict"])
    assert res.exit_code == 2
    assert "tv.jsonl.gz:2: malformed line: invalid JSON" in res.output.replace("\n", "")
    assert not out.exists()
    res = runner.invoke(app, ["data", "build", str(tiny / "mapping.toml"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "report.json").read_text())["platforms"]["tv"]["dropped"]["malformed_line"] == 1


def test_cli_missing_column_and_bad_timestamp_under_strict(tiny, tmp_path):
    runner = CliRunner()
    (tiny / "shop_1.csv").write_text("user,sku,kind,at\ns1,A,buy,31/02/2020\n")
    res = runner.invoke(app, ["data", "build", str(tiny / "mapping.toml"), "-o", str(tmp_path / "o"), "--strict"])
    assert res.exit_code == 2 and "shop_1.csv:2: unparseable timestamp '31/02/2020'" in res.output.replace("\n", "")
    (tiny / "shop_1.csv").write_text("user,sku,at\ns1,A,2020-01-01\n")
    (tiny / "mapping.toml").write_text(MAPPING.replace('event = "kind"\n', 'event = "kind"\nformat = "csv"\n')
                                       .replace('timestamp = "at"', 'timestamp = "when"'))
    res = runner.invoke(app, ["data", "build", str(tiny / "mapping.toml"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "shop_1.csv:1: missing column 'when'" in res.output.replace("\n", "")
    assert not (tmp_path / "o").exists()


def test_demo_builds_and_its_dirt_is_counted_exactly(tmp_path):
    mapping = write_demo(tmp_path / "demo", people=400, items_per_platform=120, seed=3)
    stats = json.loads((tmp_path / "demo" / "stats.json").read_text())
    r = build_dataset(load_sources(mapping), tmp_path / "out", salt="s").report
    assert set(r["platforms"]) == {"shop", "video", "news"}
    for p, dirt in stats["injected_dirt"].items():
        got = r["platforms"][p]
        assert got["dropped"]["exact_duplicate"] == dirt["exact_duplicates"]
        assert got["dropped"]["unknown_item"] == dirt["unknown_item"]
        assert got["dropped"]["blank_account"] == dirt["blank_account"]
        assert got["kept"] == stats["clean_events"][p]
    assert r["linked_people"] == stats["linked_people"]
    assert r["targets"] == stats["eval"]
    assert r["checks"]["events_at_or_after_first_target"] == 0


@pytest.mark.realdata
def test_food_kitchen_build_matches_the_published_counts(food_kitchen, tmp_path):
    stats = json.loads((food_kitchen / "stats.json").read_text())
    cfg = load_sources(__import__("pathlib").Path("configs/food-kitchen.toml"), data_root=food_kitchen)
    res = build_dataset(cfg, tmp_path / "fk", salt="test-salt")
    r = json.loads((tmp_path / "fk" / "report.json").read_text())
    for p, dirt in stats["injected_dirt"].items():
        got = r["platforms"][p]["dropped"]
        assert (got["exact_duplicate"], got["unknown_item"], got["blank_account"]) == (
            dirt["exact_duplicates"], dirt["unknown_item"], dirt["blank_account"])
        assert got["malformed_line"] == got["blank_item"] == got["unparseable_timestamp"] == 0
        assert r["platforms"][p]["kept"] == stats["clean_events"][p]
        assert r["platforms"][p]["items"] == stats["items"][p]
    assert (r["people"], r["linked_people"]) == (stats["people"], stats["linked_people"])
    assert r["targets"] == stats["eval"]
    # No target leaks into the events; every event is before 2018-10-01.
    events = pq.read_table(tmp_path / "fk" / "events.parquet", columns=["person", "item_id", "ts"])
    targets = pq.read_table(tmp_path / "fk" / "targets.parquet").to_pylist()
    assert max(events.column("ts").to_pylist()) < 1538352000
    keys = set(zip(*(events.column(c).to_pylist() for c in ("person", "item_id", "ts")), strict=True))
    assert not any((t["person"], t["item_id"], t["ts"]) in keys for t in targets)
    assert res.seconds < 120  # generous bound; the speed figure itself is reported by the CLI
