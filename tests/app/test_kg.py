"""The knowledge graph in the service: the bundle's kg.npz is loaded (a bundle without one serves with an empty
table), and /v1/recommend names a shared brand in a result's reasons."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from app.services.model_bundle import load_bundle
from contract.bundle import BundleError, read_manifest, write_manifest
from contract.kg import ItemEntities
from tests.app.conftest import keyless, make_settings, running
from tests.fixtures.tiny_bundle import person_id


def _with_kg(bundle_dir: Path, out: Path, kg: ItemEntities, kg_candidates: int = 0) -> Path:
    """A copy of the bundle with `kg` as its kg.npz (listed and hashed in the manifest)."""
    shutil.copytree(bundle_dir, out)
    kg.save(out / "kg.npz")
    manifest = read_manifest(out).model_copy(update={"kg": "kg.npz", "kg_candidates": kg_candidates})
    write_manifest(out, manifest)
    return out


def _alice_newest_grocery_item(bundle_dir: Path) -> str:
    hist = pq.read_table(bundle_dir / "history.parquet").to_pylist()
    mine = sorted((r for r in hist if r["person"] == person_id("alice") and r["platform"] == "grocery"),
                  key=lambda r: r["ts"])
    assert mine, "the fixture gives alice grocery events"
    return mine[-1]["item_id"]


def _brand_table(bundle_dir: Path, grocery_item: str) -> ItemEntities:
    """One brand, "Acme", of that grocery item and of every kitchen item."""
    ids = pq.read_table(bundle_dir / "items.parquet").column("item_id").to_pylist()
    rows = [ids.index(grocery_item)] + [i for i, item in enumerate(ids) if item.startswith("kitchen:")]
    return ItemEntities.from_pairs(len(ids), np.array(rows), np.zeros(len(rows), dtype=np.int64), ["Acme"], ["brand"])


def test_a_bundle_without_kg_loads_with_an_empty_table(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> None:
    assert read_manifest(bundle_dir).kg is None and not (bundle_dir / "kg.npz").exists()
    models = load_bundle(bundle_dir, make_settings(bundle_dir, redis_prefix, tmp_path / "ev")).models
    assert models.kg.is_empty and models.kg_candidates == 0


def test_the_bundles_kg_table_is_loaded_and_checked(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> None:
    kg = _brand_table(bundle_dir, _alice_newest_grocery_item(bundle_dir))
    with_kg = _with_kg(bundle_dir, tmp_path / "kg", kg, kg_candidates=7)
    models = load_bundle(with_kg, make_settings(with_kg, redis_prefix, tmp_path / "ev")).models
    assert models.kg_candidates == 7 and np.array_equal(models.kg.offsets, kg.offsets)
    assert models.kg.names.tolist() == ["Acme"]
    wrong = _with_kg(bundle_dir, tmp_path / "wrong", ItemEntities.empty(3))  # rows ≠ items.parquet's
    with pytest.raises(BundleError, match="kg.npz: 3 rows"):
        load_bundle(wrong, make_settings(wrong, redis_prefix, tmp_path / "ev2"))


def test_recommend_names_the_shared_brand_of_another_platforms_item(bundle_dir: Path, redis_prefix: str,
                                                                    tmp_path: Path) -> None:
    grocery_item = _alice_newest_grocery_item(bundle_dir)
    with_kg = _with_kg(bundle_dir, tmp_path / "kg", _brand_table(bundle_dir, grocery_item))
    title = pq.read_table(with_kg / "items.parquet").to_pandas().set_index("item_id").loc[grocery_item, "title"]
    body = {"person_id": person_id("alice"), "platform": "kitchen", "k": 5}
    with running(make_settings(with_kg, redis_prefix, tmp_path / "ev", read_auth=False)) as c:
        r = c.post("/v1/recommend", json=body)
        assert r.status_code == 200, r.text
        for item in r.json()["items"]:
            named = [x for x in item["reasons"] if x.get("entity")]
            assert len(named) == 1, item
            (why,) = named
            assert why["item_id"] == grocery_item and why["platform"] == "grocery" and why["entity"] == "Acme"
            assert why["text"] == f"same brand (Acme) as “{title}” in your grocery history"
            # The vector reasons are still there, their weights summing to 1.
            assert sum(x["weight"] for x in item["reasons"]) == pytest.approx(1.0, abs=1e-4)
        # On grocery no result has the brand: its one grocery item is hers already (seen, not recommended).
        assert not any(x.get("entity") for i in c.post("/v1/recommend", json={**body, "platform": "grocery"}).json()[
            "items"] for x in i["reasons"])
        with keyless(c):  # a keyless read must not name another platform's item, not even through a brand
            r = c.post("/v1/recommend", json=body)
            assert r.status_code == 200
            assert not any(x.get("entity") for i in r.json()["items"] for x in i["reasons"])
    assert json.loads((with_kg / "manifest.json").read_text())["kg"] == "kg.npz"


def test_a_bundle_grown_for_benchmarks_keeps_its_kg_table_in_step(bundle_dir: Path, redis_prefix: str,
                                                                   tmp_path: Path) -> None:
    """bench/common.py grow_bundle (what `bench/serve.py --items N` serves) grows kg.npz with the catalog: the
    service refused the 1M copy of a bundle with a knowledge graph ("kg.npz: 36298 rows, items.parquet has
    1000000")."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from common import grow_bundle

    kg = _brand_table(bundle_dir, _alice_newest_grocery_item(bundle_dir))
    with_kg = _with_kg(bundle_dir, tmp_path / "kg", kg)
    grown = grow_bundle(with_kg, tmp_path / "grown", 500, log=lambda _: None)
    loaded = load_bundle(grown, make_settings(grown, redis_prefix, tmp_path / "ev"))
    assert len(loaded.catalog.item_ids) == 500 and loaded.models.kg.n_items == 500
    n = kg.n_items
    assert np.array_equal(loaded.models.kg.offsets[:n + 1], kg.offsets)  # the real items' entities unchanged
    assert np.array_equal(loaded.models.kg.entities, kg.entities)
    assert (np.diff(loaded.models.kg.offsets[n:]) == 0).all()  # synthetic items have none
