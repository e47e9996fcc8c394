"""`xrec export` copies the catalog's item attributes into the bundle (items.parquet `attributes`, a JSON object
per item), so the service's filters and diversity caps work on a fresh bundle without PUT /v1/items.

The dataset's items.parquet carries them (the attribute columns of the catalog, each named by its column, and/or
an `attributes` JSON column); a tiny model is trained on it and exported, the bundle loaded by the real service
(Redis on 127.0.0.1:6379), and /v1/recommend asked with filters and caps."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from export.verify import verify_bundle
from export.write_bundle import export_bundle, item_attributes
from training.data.build import build_dataset
from training.data.demo import write_demo
from training.data.sources import load_sources
from training.model import ModelConfig
from training.train import TrainConfig, train

SALT = "s"


def _expected(i: int) -> dict[str, str | float]:
    """What item number i of the dataset is given below, as the service keeps it."""
    out: dict[str, str | float] = {"brand": f"brand-{i % 4}", "category": ("pans", "knives", "bowls")[i % 3]}
    if i % 5:
        out["price"] = float(5 + i)
    out["in_stock"] = "true" if i % 2 else "false"
    return out


def _add_attributes(items_file: Path) -> None:
    """The dataset as a build with attribute columns writes it: `category`, `price` (numbers, some missing),
    `in_stock` (bool) as columns; `brand` (and a stale `category`, which the column overrides) in JSON."""
    t = pq.read_table(items_file)
    n = t.num_rows
    t = t.append_column("category", pa.array([("pans", "knives", "bowls")[i % 3] for i in range(n)]))
    t = t.append_column("price", pa.array([float(5 + i) if i % 5 else None for i in range(n)], pa.float64()))
    t = t.append_column("in_stock", pa.array([bool(i % 2) for i in range(n)]))
    t = t.append_column("attributes", pa.array([json.dumps({"brand": f"brand-{i % 4}", "category": "old"})
                                                for i in range(n)]))
    pq.write_table(t, items_file)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_text_model) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export-attributes")
    mapping = write_demo(root / "raw", people=150, items_per_platform=24, seed=5)
    build_dataset(load_sources(mapping), root / "ds", salt=SALT)
    _add_attributes(root / "ds" / "items.parquet")
    ckpt = train(TrainConfig(dataset=root / "ds", out=root / "run", epochs=1, batch_tokens=256, scorer_epochs=1,
                             text_cache=root / "cache",
                             model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model)))
    return export_bundle(ckpt, root / "bundles", version="attrs", salt=SALT, measure_variants=False), root / "ds"


def test_the_bundle_items_carry_the_catalog_attributes(exported: tuple[Path, Path]) -> None:
    bundle, ds = exported
    items = pq.read_table(bundle / "items.parquet")
    assert items.column_names == ["item_id", "platform", "title", "vector", "popularity", "attributes"]
    source = pq.read_table(ds / "items.parquet").column("item_id").to_pylist()
    number = {item: i for i, item in enumerate(source)}
    got = [json.loads(a) for a in items.column("attributes").to_pylist()]
    assert len(got) == len(source) == 72
    for item, attrs in zip(items.column("item_id").to_pylist(), got, strict=True):
        assert attrs == _expected(number[item]), item
    assert verify_bundle(bundle) == []  # hashed like every file


def test_filters_work_on_the_fresh_bundle(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.app.conftest import REDIS_URL, make_settings, running

    bundle, _ = exported
    prefix = f"xrectest-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL)
    settings = make_settings(bundle, prefix, tmp_path / "events", id_salt=SALT)
    try:
        with running(settings) as c:
            state = c.app.state.xrec
            catalog = state.bundle.catalog
            person = next(iter(state.bundle.snapshot.spans))
            platform = state.bundle.platforms[0]

            def recommend(**rules: object) -> list[dict[str, str | float]]:
                r = c.post("/v1/recommend", json={"person_id": person, "platform": platform, "k": 6, **rules})
                assert r.status_code == 200, r.text
                return [catalog.attributes_of(catalog.row_of[it["item_id"]]) for it in r.json()["items"]]

            plain = recommend()
            assert len(plain) == 6 and {a["category"] for a in plain} != {"pans"}
            some = recommend(filters={"include": {"category": ["pans", "bowls"], "price": {"min": 6, "max": 60}},
                                      "exclude": {"brand": ["brand-0"]}})
            assert some and all(a["category"] in ("pans", "bowls") and 6 <= a["price"] <= 60 and a["brand"] != "brand-0"
                                for a in some), some
            assert {a["in_stock"] for a in recommend(filters={"include": {"in_stock": ["true"]}})} == {"true"}
            capped = recommend(diversity={"max_per_value": {"category": 1}})
            assert len(capped) == 3 and len({a["category"] for a in capped}) == 3
            brand = recommend(filters={"include": {"brand": ["brand-1"]}})
            assert brand and {a["brand"] for a in brand} == {"brand-1"}
    finally:
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


def test_item_attributes_reads_columns_maps_and_json(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    base = {"item_id": ["a:1", "a:2", "a:3"], "platform": ["a"] * 3, "title": ["x", "y", "z"]}
    pq.write_table(pa.table(base), path)
    assert item_attributes(path, base["item_id"]) is None  # a dataset without attributes: no column
    assert item_attributes(tmp_path / "none.parquet", base["item_id"]) is None
    tags = pa.array([[("colour", "red")], None, [("colour", "blue"), ("size", "L")]],
                    pa.map_(pa.string(), pa.string()))
    pq.write_table(pa.table({**base, "attributes": tags, "rating": [4.5, float("nan"), None]}), path)
    assert item_attributes(path, ["a:3", "a:1", "a:2", "a:9"]) == [
        json.dumps({"colour": "blue", "size": "L"}), json.dumps({"colour": "red", "rating": 4.5}), None, None]
    pq.write_table(pa.table({**base, "attributes": ["{bad", None, None]}), path)
    with pytest.raises(ValueError, match="item 'a:1': attributes are not JSON"):
        item_attributes(path, base["item_id"])
    pq.write_table(pa.table({**base, "note": [None, None, None]}), path)
    assert item_attributes(path, base["item_id"]) is None
