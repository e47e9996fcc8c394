"""The service's side of IVF indexes: the loader searches them with the manifest's nprobe (or XREC_IVF_NPROBE),
catalog changes (PUT/DELETE /v1/items) add and remove by row on them, filtered searches keep their recall."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np

from app.core.config import Settings
from app.services.model_bundle import _read_indexes
from app.services.retrieval import Catalog, IndexParams, PlatformIndex
from app.services.rules import Condition, Rules, allowed_mask
from contract.indexes import HNSW_EF_DEFAULT, NO_IVF, write_indexes
from tests.contract.test_indexes import DIM, SMALL, centers, clustered

NONE = [np.zeros(0, dtype=np.int64)]


def _bundle_indexes(tmp_path: Path) -> tuple[SimpleNamespace, np.ndarray, np.ndarray]:
    """Index files for two platforms (HNSW, IVF) as export writes them, and the manifest's part a loader reads."""
    platform = np.concatenate([np.zeros(600, dtype=np.int64), np.ones(3000, dtype=np.int64)])
    vectors = clustered(len(platform), centers(), 3)
    indexes = write_indexes(tmp_path, ["a", "b"], platform, vectors, SMALL, threads=1)
    return SimpleNamespace(platforms=["a", "b"], dim=DIM, indexes=indexes), platform, vectors


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def nprobe(index: PlatformIndex) -> int:
    return int(faiss.extract_index_ivf(index.index).nprobe)


def ef_search(index: PlatformIndex) -> int:
    return int(faiss.downcast_index(index.index.index).hnsw.efSearch)


def test_the_loader_searches_ivf_with_the_manifests_nprobe(tmp_path: Path) -> None:
    manifest, platform, _ = _bundle_indexes(tmp_path)
    entry = manifest.indexes["b"]
    assert entry.kind == "ivf" and entry.ivf_nprobe
    loaded = _read_indexes(tmp_path, manifest, platform, _settings())
    assert loaded[0].kind == "hnsw" and loaded[1].kind == "ivf" and loaded[1].mapped
    assert nprobe(loaded[1]) == entry.ivf_nprobe
    assert loaded[1].params.ivf_threshold == 1000 and loaded[1].params.ivf_nprobe == 0
    # the manifest's value is the one applied (not only the same number the file carries) ...
    manifest.indexes["b"] = entry.model_copy(update={"ivf_nprobe": entry.ivf_nprobe + 3})
    assert nprobe(_read_indexes(tmp_path, manifest, platform, _settings())[1]) == entry.ivf_nprobe + 3
    # ... unless the service sets its own (XREC_IVF_NPROBE), as XREC_HNSW_EF_SEARCH does for HNSW
    loaded = _read_indexes(tmp_path, manifest, platform, _settings(ivf_nprobe=5, hnsw_ef_search=32, index_mmap=False))
    assert nprobe(loaded[1]) == 5 and not loaded[1].mapped
    # HNSW alike: the manifest's efSearch, unless XREC_HNSW_EF_SEARCH is set; 256 for an entry from before
    hnsw_entry = manifest.indexes["a"]
    assert hnsw_entry.hnsw_ef_search and ef_search(loaded[0]) == 32
    assert ef_search(_read_indexes(tmp_path, manifest, platform, _settings())[0]) == hnsw_entry.hnsw_ef_search
    manifest.indexes["a"] = hnsw_entry.model_copy(update={"hnsw_ef_search": hnsw_entry.hnsw_ef_search * 2})
    again = _read_indexes(tmp_path, manifest, platform, _settings())[0]
    assert ef_search(again) == again.params.hnsw_ef_search == hnsw_entry.hnsw_ef_search * 2
    manifest.indexes["a"] = hnsw_entry.model_copy(update={"hnsw_ef_search": None})
    assert ef_search(_read_indexes(tmp_path, manifest, platform, _settings())[0]) == HNSW_EF_DEFAULT
    manifest.indexes["a"] = hnsw_entry
    # an entry from before IVF keeps its platform off IVF whatever it grows to
    manifest.indexes["a"] = manifest.indexes["a"].model_copy(update={"ivf_threshold": None})
    assert _read_indexes(tmp_path, manifest, platform, _settings())[0].params.ivf_threshold == NO_IVF


def test_items_are_added_and_removed_on_a_memory_mapped_ivf_index(tmp_path: Path) -> None:
    """What PUT and DELETE /v1/items do: `Catalog.with_changes` on the bundle's (memory-mapped) IVF index."""
    manifest, platform, vectors = _bundle_indexes(tmp_path)
    indexes = _read_indexes(tmp_path, manifest, platform, _settings())
    ids = [f"{'ab'[p]}:{i}" for i, p in enumerate(platform)]
    catalog = Catalog.build(ids, platform, ["t"] * len(ids), vectors, np.zeros(len(ids)), 2, indexes[1].params,
                            indexes)
    gone = "b:700"
    new_vec = clustered(1, centers(), 77)[0]
    changed = catalog.with_changes([("b:new", 1, "new", new_vec)], [gone])
    index = changed.indexes[1]
    assert index.kind == "ivf" and not index.mapped and catalog.indexes[1].mapped
    assert index.size == 3000 and catalog.indexes[1].size == 3000  # one in, one out; the old one unchanged
    assert nprobe(index) == manifest.indexes["b"].ivf_nprobe, "a copy keeps the bundle's nprobe"
    (top,) = changed.search(1, new_vec[None], 10, NONE)
    assert top[0] == changed.row_of["b:new"]
    (top,) = changed.search(1, vectors[700][None], 100, NONE)
    assert 700 not in top and len(top) == 100
    (top,) = catalog.search(1, vectors[700][None], 1, NONE)
    assert top[0] == 700
    # a replaced item (PUT of a known id) moves to a new row; its old row is gone from the index
    again = changed.with_changes([("b:new", 1, "new again", vectors[701])], [])
    (top,) = again.search(1, vectors[701][None], 100, NONE)
    assert changed.row_of["b:new"] not in top and again.row_of["b:new"] in top


def test_an_ivf_platform_shrunk_below_ivf_threshold_is_rebuilt_as_hnsw() -> None:
    vecs = clustered(1200, centers(), 4)
    rows = np.arange(1200)
    idx = PlatformIndex.build(DIM, rows, vecs, SMALL)
    assert idx.kind == "ivf"
    keep = rows[:900]
    small = idx.with_changes(np.zeros(0, dtype=np.int64), vecs[:0], rows[900:].tolist(), keep, vecs[keep])
    assert small.kind == "hnsw" and small.size == 900  # below ivf_threshold again, as HNSW<->flat already did


def test_filtered_search_on_ivf_probes_more_lists_for_deeper_searches() -> None:
    """A filter keeping ~10% of an IVF platform, answered by the index (filter_exact_max 0): recall@100 against
    exact filtered search, through the over-fetch (k ≫ 100, so proportionally more lists are probed)."""
    n = 6000
    vecs = clustered(n, centers(), 5)
    cats = np.random.default_rng(6).integers(0, 10, size=n)
    catalog = Catalog.build([f"a:{i}" for i in range(n)], np.zeros(n, dtype=np.int64), ["t"] * n, vecs,
                            np.zeros(n), 1, IndexParams(hnsw_threshold=100, ivf_threshold=1000),
                            attributes=[{"category": f"c{c}"} for c in cats.tolist()], filter_exact_max=0)
    assert catalog.indexes[0].kind == "ivf"
    mask = allowed_mask(catalog, 0, Rules(include=(("category", Condition(("c3",))),)))
    assert mask is not None
    rows = np.flatnonzero(mask)
    q = clustered(60, centers(), 8)
    found = catalog.search(0, q, 100, NONE * len(q), [mask] * len(q))
    truth = rows[np.argsort(-(q @ vecs[rows].T), axis=1)[:, :100]]
    got = np.mean([len(np.intersect1d(f, t)) / 100 for f, t in zip(found, truth, strict=True)])
    print(f"\nIVF filtered recall@100: {got:.4f}")
    assert all(mask[f].all() and len(f) == 100 for f in found)
    assert got >= 0.95
