"""scripts/make_variants.py on a tiny synthetic data set in Food-Kitchen's own layout and formats."""

import csv
import gzip
import importlib.util
import json
import random
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from training.data.build import build_dataset
from training.data.sources import load_sources

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "configs/food-kitchen.toml"
CUTOFF = 1538352000  # 2018-10-01: every source event before it, every source target after it

_spec = importlib.util.spec_from_file_location("make_variants", ROOT / "scripts/make_variants.py")
mv = importlib.util.module_from_spec(_spec)
sys.modules["make_variants"] = mv  # dataclasses look their module up while the file runs
_spec.loader.exec_module(mv)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _csv(path: Path, header: list[str], rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def raw(tmp_path) -> Path:
    """12 linked persons (grocery + kitchen), 12 grocery-only and 12 kitchen-only accounts, targets for some
    linked persons after the cut-off, and the dirt the real data has: duplicates, unknown items, blank accounts."""
    rng = random.Random(7)
    d = tmp_path / "fk"
    grocery_items = [f"G{i:03d}" for i in range(30)]
    kitchen_items = [f"K{i:03d}" for i in range(40)]
    _csv(d / "grocery/items.csv", ["item_id", "title"], [(i, f"grocery thing {i}") for i in grocery_items])
    (d / "kitchen").mkdir()
    (d / "kitchen/catalog.jsonl").write_text("".join(json.dumps({"sku": i, "name": f"kitchen thing {i}"}) + "\n"
                                                     for i in kitchen_items))
    grocery, kitchen, links, targets = [], [], [], []

    def timeline(n: int) -> list[int]:
        return sorted(rng.randrange(CUTOFF - 10**8, CUTOFF) for _ in range(n))

    for n in range(12):
        g, k = f"G{n:07d}", f"c-{n:012x}"
        links += [(f"P{n:06d}", "grocery", g), (f"P{n:06d}", "kitchen", k)]
        # Both platforms and some history; P000011 is linked but has no kitchen events (no target possible there).
        extra = rng.choices(["grocery", "kitchen"], k=n % 4 + 1)
        where = ["grocery"] * 3 if n == 11 else ["grocery", "kitchen", *extra]
        rng.shuffle(where)
        for platform, ts in zip(where, timeline(len(where)), strict=True):
            if platform == "kitchen":
                kitchen.append({"customer": k, "sku": rng.choice(kitchen_items), "action": "review", "ts": ts})
            else:
                grocery.append([g, rng.choice(grocery_items), "review", _iso(ts)])
        if n < 8:
            platform, account, item = (("grocery", g, rng.choice(grocery_items)) if n % 2
                                       else ("kitchen", k, rng.choice(kitchen_items)))
            targets.append((("valid", "test")[n % 2 if n < 4 else 1 - n % 2], f"P{n:06d}", platform, account, item,
                            _iso(CUTOFF + rng.randrange(86400 * 30))))
    for n in range(12):
        for ts in timeline(rng.randint(1, 4)):
            grocery.append([f"G9{n:06d}", rng.choice(grocery_items), "review", _iso(ts)])
        for ts in timeline(rng.randint(1, 4)):
            kitchen.append({"customer": f"c-9{n:011x}", "sku": rng.choice(kitchen_items), "action": "review", "ts": ts})
    # Dirt: the last grocery event of P000000 logged twice (a target in both-platform: the copy must go too),
    # an unknown item, a blank account.
    last_g0 = max((r for r in grocery if r[0] == "G0000000"), key=lambda r: r[3])
    grocery += [list(last_g0), ["G0000001", "UNKNOWN1", "review", _iso(CUTOFF - 5)],
                ["", grocery_items[0], "review", _iso(CUTOFF - 9)]]
    kitchen.append({"customer": "", "sku": kitchen_items[0], "action": "review", "ts": CUTOFF - 7})

    _csv(d / "grocery/events.csv", ["account_id", "item_id", "event", "timestamp"], grocery)
    with gzip.open(d / "kitchen/activity.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kitchen)
    _csv(d / "identity_links.csv", ["person_id", "platform", "account_id"], links)
    for split in ("valid", "test"):
        _csv(d / f"eval/{split}.csv", ["person_id", "platform", "account_id", "item_id", "timestamp"],
             [t[1:] for t in targets if t[0] == split])
    return d


def _build(mapping: Path, out: Path) -> dict:
    report = build_dataset(load_sources(mapping), out, salt="s").report
    assert report["checks"]["targets_in_events"] == 0
    assert report["checks"]["events_at_or_after_first_target"] == 0
    return report


def _rows(files: dict[str, list]) -> dict[str, list[dict]]:
    """platform (or split) → its rows, all files together."""
    return {k: [row for f in fs for row in f.rows] for k, fs in files.items()}


def test_sparse_keeps_whole_persons_with_their_targets(raw, tmp_path):
    src = mv.read_source(MAPPING, raw)
    v = mv.sparse(src, seed=3, fraction=0.5)
    events = _rows(v.events)
    people = {src.event_person(p, r) for p, rows in events.items() for r in rows}
    all_people = {src.event_person(p, r) for p, files in src.events.items() for f in files for r in f.rows} - {None}
    assert len(people) == round(len(all_people) / 2) and None not in people
    # A kept person keeps every row of every account: linked accounts are never split.
    for p, files in src.events.items():
        source_rows = [r for f in files for r in f.rows if src.event_person(p, r) in people]
        assert events[p] == source_rows
    kept_links = {r["person_id"] for r in v.links.rows}
    assert {f"person:{x}" for x in kept_links} == {x for x in people if x.startswith("person:")}
    assert Counter(r["person_id"] for r in v.links.rows) == Counter({x: 2 for x in kept_links})
    targets = _rows(v.evals)
    assert targets == {s: [r for r in rows if src.target_person(r) in people] for s, rows in _rows(src.evals).items()}
    assert sum(map(len, targets.values())) > 0
    # Seeded: the same seed, the same sample.
    assert mv.sparse(src, seed=3, fraction=0.5).events == v.events

    report = _build(mv.write_variant(src, v, tmp_path / "variants"), tmp_path / "ds")
    assert report["people"] == len(people)
    assert report["targets"] == {s: len(rows) for s, rows in targets.items() if rows}


def test_order_only_keeps_every_order_and_drops_the_gaps(raw, tmp_path):
    src = mv.read_source(MAPPING, raw)
    v = mv.order_only(src)
    new_ts: list[tuple[int, int]] = []  # (source time, new time), every row with a time
    for p, files in src.events.items():
        s = src.cfg.platforms[p]
        for f, g in zip(files, v.events[p], strict=True):
            assert g.rel == f.rel and g.columns == f.columns
            for a, b in zip(f.rows, g.rows, strict=True):
                assert {**a, s.timestamp: 0} == {**b, s.timestamp: 0}  # only the time changes
                assert type(a[s.timestamp]) is type(b[s.timestamp])  # JSON ints stay ints, CSV text stays text
                new_ts.append((mv.parse_ts(a[s.timestamp], s.timestamp_format),
                               mv.parse_ts(b[s.timestamp], s.timestamp_format)))
    last_event = max(b for _, b in new_ts)
    for files in v.evals.values():
        for f in files:
            for r in f.rows:
                assert r["timestamp"].endswith("Z") and mv.parse_ts(r["timestamp"], "iso") > last_event
    new_ts.sort()
    assert new_ts[0][1] == mv.ORDER_BASE
    # Monotone in source time; only the duplicate shares its time with another row.
    pairs = list(zip(new_ts, new_ts[1:], strict=False))
    assert all(b1 <= b2 and (a1 == a2) >= (b1 == b2) for (a1, b1), (a2, b2) in pairs)
    assert sum(1 for x, y in pairs if x[1] == y[1]) == 1

    report = _build(mv.write_variant(src, v, tmp_path / "variants"), tmp_path / "ds")
    source = build_dataset(load_sources(MAPPING, data_root=raw), tmp_path / "src", salt="s").report
    for key in ("events", "people", "linked_people", "accounts", "targets"):
        assert report[key] == source[key]
    for p in report["platforms"]:
        assert report["platforms"][p]["dropped"] == source["platforms"][p]["dropped"]
    assert report["checks"]["first_target_ts"] == last_event + 1  # targets rank right after every event row


def test_both_platform_holds_out_each_persons_last_event_per_platform(raw, tmp_path):
    src = mv.read_source(MAPPING, raw)
    v = mv.both_platform(src, seed=0)
    targets = _rows(v.evals)
    # P000011 has no kitchen events: left out. The 11 others: half valid (5), the rest test (6).
    persons = {s: {r["person_id"] for r in rows} for s, rows in targets.items()}
    assert (len(persons["valid"]), len(persons["test"])) == (5, 6) and not persons["valid"] & persons["test"]
    assert persons["valid"] | persons["test"] == {f"P{n:06d}" for n in range(11)}
    assert all(Counter(r["person_id"] for r in rows) == Counter({x: 2 for x in persons[s]})
               for s, rows in targets.items())

    events, source = _rows(v.events), _rows(src.events)
    cols = {"grocery": ("account_id", "item_id", "timestamp"), "kitchen": ("customer", "sku", "ts")}
    for rows in targets.values():
        for t in rows:
            account, item, ts = cols[t["platform"]]
            mine = [r for r in source[t["platform"]] if r[account] == t["account_id"] and r[item] != "UNKNOWN1"]
            last = max(mine, key=lambda r: mv.parse_ts(r[ts], "iso" if t["platform"] == "grocery" else "epoch_s"))
            assert t["item_id"] == last[item]
            assert last not in events[t["platform"]]  # held out, its duplicate too
            assert mv.parse_ts(t["timestamp"], "iso") >= CUTOFF
    # Only the linked persons' events remain: unlinked accounts and P000011 are gone.
    assert {r["account_id"] for r in events["grocery"]} <= {f"G{n:07d}" for n in range(11)}
    assert len(events["grocery"]) + len(events["kitchen"]) == sum(
        1 for p, rows in source.items() for r in rows
        if src.event_person(p, r) in {f"person:{x}" for x in persons["valid"] | persons["test"]}) - 22 - 1

    report = _build(mv.write_variant(src, v, tmp_path / "variants"), tmp_path / "ds")
    assert report["targets"] == {"valid": 10, "test": 12}
    assert report["people"] == report["linked_people"] == 11


def test_no_text_blanks_the_last_platforms_catalog_text_and_nothing_else(raw, tmp_path):
    src = mv.read_source(MAPPING, raw)
    v = mv.no_text(src)
    assert v.events is None and v.evals is None and v.links is None and list(v.catalogs) == ["kitchen"]
    (cat,) = v.catalogs["kitchen"]
    assert [r["sku"] for r in cat.rows] == [r["sku"] for r in src.catalog_files["kitchen"][0].rows]
    assert {r["name"] for r in cat.rows} == {""}

    mapping = mv.write_variant(src, v, tmp_path / "variants")
    cfg = load_sources(mapping)
    # The changed catalog is the variant's own; grocery's is read from the source.
    kitchen = cfg.resolve(cfg.platforms["kitchen"].catalog.file, "x")[0]
    assert kitchen.resolve() == mapping.parent.resolve() / "kitchen/catalog.jsonl"
    assert cfg.resolve(cfg.platforms["grocery"].catalog.file, "x")[0].resolve() == raw / "grocery/items.csv"
    variant = build_dataset(load_sources(mapping), tmp_path / "ds", salt="s")
    source = build_dataset(load_sources(MAPPING, data_root=raw), tmp_path / "src", salt="s")
    assert variant.report["people"] == source.report["people"] and variant.report["targets"] == source.report["targets"]
    items = pq.read_table(tmp_path / "ds/items.parquet").to_pylist()
    assert {r["title"] for r in items if r["platform"] == "kitchen"} == {""}
    assert all(r["title"].startswith("grocery thing") for r in items if r["platform"] == "grocery")


def test_main_writes_every_variant_and_prints_one_line_each(raw, tmp_path, capsys):
    out = tmp_path / "variants"
    assert mv.main(["--out", str(out), "--data-root", str(raw), "--mapping", str(MAPPING)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == list(mv.VARIANTS)
    for name in mv.VARIANTS:
        text = (out / name / f"{name}.toml").read_text()
        assert 'data_root = "."' in text and f'name = "food-kitchen-{name}"' in text
        # Unchanged files (the catalogs at least) are read from the source, never copied.
        assert not (out / name / "grocery/items.csv").exists()
        cfg = load_sources(out / name / f"{name}.toml")
        assert cfg.resolve(cfg.platforms["grocery"].catalog.file, "x")[0].resolve() == raw / "grocery/items.csv"
        _build(out / name / f"{name}.toml", out / name / "dataset")
