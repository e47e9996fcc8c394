"""contract.indexes: the index kind by platform size, IVF's nlist and export-time nprobe, the manifest entries,
and reading the files back (memory-mapped)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest

from contract import indexes
from contract.bundle import IndexFile
from contract.indexes import (
    HNSW_EF_MAX,
    HNSW_EF_MIN,
    IVF_RECALL_K,
    IndexParams,
    build,
    index_kind,
    index_rows,
    ivf_nlist,
    owned_copy,
    read_index,
    write_indexes,
)

DIM = 16
SMALL = IndexParams(hnsw_threshold=100, hnsw_m=8, hnsw_ef_construction=40, ivf_threshold=1000)


def clustered(n: int, centers: np.ndarray, seed: int) -> np.ndarray:
    """Unit vectors around `centers` (item vectors are clustered; uniform random ones would not be)."""
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, len(centers), n)] + 0.35 * rng.standard_normal((n, centers.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def centers(seed: int = 100, k: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, DIM))


def recall(index: faiss.Index, rows: np.ndarray, vecs: np.ndarray, q: np.ndarray, **kw: object) -> float:
    exact = faiss.IndexFlatIP(vecs.shape[1])
    exact.add(vecs)
    truth = rows[exact.search(q, IVF_RECALL_K)[1]]
    got = index.search(q, IVF_RECALL_K, **kw)[1]
    return float(np.mean([len(np.intersect1d(g, t)) / IVF_RECALL_K for g, t in zip(got, truth, strict=True)]))


def test_index_kind_by_size_defaults_unchanged_below_the_ivf_threshold() -> None:
    p = IndexParams()
    assert [index_kind(n, p) for n in (0, 50_000, 50_001, 500_000, 500_001)] == [
        "flat", "flat", "hnsw", "hnsw", "ivf"]
    assert index_kind(10, IndexParams(hnsw_threshold=100, ivf_threshold=5)) == "ivf"  # IVF's threshold first
    assert [ivf_nlist(n) for n in (1, 100, 4000, 500_001, 10**6)] == [1, 2, 102, 2828, 4000]
    for n, kind, cls in ((60, "flat", faiss.IndexFlatIP), (600, "hnsw", faiss.IndexHNSWFlat)):
        rows = np.arange(n) + 3
        b = build(DIM, rows, clustered(n, centers(), 0), SMALL)
        assert b.kind == kind and b.nlist is b.nprobe is None
        assert (b.recall is None) == (kind == "flat") and (b.ef_search is None) == (kind == "flat")
        assert isinstance(b.index, faiss.IndexIDMap2) and isinstance(faiss.downcast_index(b.index.index), cls)
        assert np.array_equal(index_rows(b.index), rows)


def test_ivf_nprobe_is_the_smallest_reaching_the_target_recall_on_held_out_queries() -> None:
    c = centers()
    vecs, held_out = clustered(4000, c, 0), clustered(300, c, 50)
    rows = np.arange(4000) * 2 + 5  # ids are item rows, not positions
    b = build(DIM, rows, vecs, SMALL)
    ivf = faiss.downcast_index(b.index)
    assert b.kind == "ivf" and isinstance(ivf, faiss.IndexIVFFlat) and ivf.metric_type == faiss.METRIC_INNER_PRODUCT
    assert b.nlist == ivf.nlist == ivf_nlist(4000) and ivf.nprobe == b.nprobe
    assert 1 < b.nprobe < b.nlist and b.nprobe & (b.nprobe - 1) == 0, "from the doubling ladder, not exhaustive"
    assert b.recall is not None and b.recall >= SMALL.ivf_target_recall
    held = recall(b.index, rows, vecs, held_out)
    print(f"\nIVF nlist {b.nlist} nprobe {b.nprobe}: recall@100 sample {b.recall:.4f}, held-out {held:.4f}")
    assert held >= SMALL.ivf_target_recall
    # the smallest: half as many lists misses the target on the same sample queries
    sample = vecs[np.random.default_rng(0).choice(4000, size=500, replace=False)]
    half = recall(b.index, rows, vecs, sample, params=faiss.SearchParametersIVF(nprobe=b.nprobe // 2))
    assert half < SMALL.ivf_target_recall
    assert np.array_equal(index_rows(b.index), rows)
    # a higher target takes more lists
    strict = build(DIM, rows, vecs, IndexParams(hnsw_threshold=100, ivf_threshold=1000, ivf_target_recall=0.999))
    assert strict.nprobe is not None and strict.nprobe > b.nprobe


def test_hnsw_ef_search_is_the_smallest_reaching_the_target_recall_on_held_out_queries() -> None:
    """The efSearch chosen at build: from the ladder 128, 256, …, reaching the target on the sample of its own
    items and on held-out queries from the same distribution; half of it misses; a preset one is kept."""
    c = centers(k=256)
    vecs, held_out = clustered(6000, c, 0), clustered(300, c, 50)
    rows = np.arange(6000) * 3 + 1
    params = IndexParams(hnsw_threshold=100, hnsw_m=4, hnsw_ef_construction=16, ivf_threshold=10**6,
                         hnsw_target_recall=0.98)
    b = build(DIM, rows, vecs, params)
    hnsw = faiss.downcast_index(b.index.index)
    assert b.kind == "hnsw" and isinstance(hnsw, faiss.IndexHNSWFlat)
    assert b.ef_search is not None and b.ef_search > HNSW_EF_MIN, "this small graph needs more than the floor"
    assert b.ef_search & (b.ef_search - 1) == 0 and b.ef_search <= HNSW_EF_MAX and hnsw.hnsw.efSearch == b.ef_search
    assert b.recall is not None and b.recall >= 0.98
    held = recall(b.index, rows, vecs, held_out)
    print(f"\nHNSW M 4: efSearch {b.ef_search}, recall@100 sample {b.recall:.4f}, held-out {held:.4f}")
    assert held >= 0.98 - 0.01
    sample = vecs[np.random.default_rng(0).choice(6000, size=500, replace=False)]
    half = recall(b.index, rows, vecs, sample, params=faiss.SearchParametersHNSW(efSearch=b.ef_search // 2))
    assert half < 0.98
    # set by the operator: used as it is, nothing measured
    preset = build(DIM, rows, vecs, replace(params, hnsw_ef_search=200))
    assert preset.ef_search == 200 == faiss.downcast_index(preset.index.index).hnsw.efSearch
    assert preset.recall is None


def test_vectors_without_clusters_get_hnsw_where_ivf_would_scan_most_lists(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uniform random unit vectors (what bench/serve.py --items grows a catalog with) have no cluster structure:
    IVF reaches the target only by probing most lists, so the platform gets HNSW, its efSearch chosen. (The scan
    limit is lowered to this test's size: 1,000 vectors a query, a quarter of the platform.)"""
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((4000, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    monkeypatch.setattr(indexes, "IVF_MAX_SCAN", 1000)
    with caplog.at_level(logging.WARNING, logger="contract.indexes"):
        b = build(DIM, np.arange(4000), vecs, SMALL)
    assert b.kind == "hnsw" and b.nlist is b.nprobe is None and b.ef_search and b.recall
    assert isinstance(faiss.downcast_index(b.index.index), faiss.IndexHNSWFlat)
    assert "HNSW instead" in caplog.text
    assert b.recall >= SMALL.hnsw_target_recall or b.ef_search == HNSW_EF_MAX
    # clustered vectors of the same size keep IVF, scanning less than that
    c = build(DIM, np.arange(4000), clustered(4000, centers(), 0), SMALL)
    assert c.kind == "ivf" and c.nprobe is not None and c.nlist and c.nprobe * 4000 <= 1000 * c.nlist


def test_write_indexes_records_kind_nlist_nprobe_and_reads_back_memory_mapped(tmp_path: Path) -> None:
    c = centers()
    sizes = {"a": 60, "b": 600, "c": 3000}  # flat, HNSW, IVF
    platform = np.concatenate([np.full(n, p) for p, n in enumerate(sizes.values())])
    vectors = clustered(len(platform), c, 1)
    entries = write_indexes(tmp_path, list(sizes), platform, vectors, SMALL, threads=1)
    assert {p: e.kind for p, e in entries.items()} == {"a": "flat", "b": "hnsw", "c": "ivf"}
    for name in ("a", "b"):
        e = entries[name]
        assert e.ivf_threshold == 1000 and e.ivf_nlist is e.ivf_nprobe is e.ivf_recall is None
    assert entries["a"].hnsw_ef_search is entries["a"].hnsw_recall is entries["a"].hnsw_target_recall is None
    hnsw = entries["b"]
    assert hnsw.hnsw_ef_search and hnsw.hnsw_recall and hnsw.hnsw_recall >= 0.97 and hnsw.hnsw_target_recall == 0.97
    assert faiss.downcast_index(read_index(tmp_path / hnsw.file).index).hnsw.efSearch == hnsw.hnsw_ef_search
    assert entries["c"].hnsw_ef_search is entries["c"].hnsw_recall is None
    e = entries["c"]
    assert e.ivf_nlist == ivf_nlist(3000) and e.ivf_nprobe and e.ivf_recall and e.ivf_recall >= 0.97
    assert e.ivf_threshold == 1000 and e.ivf_target_recall == 0.97 and e.items == 3000
    assert IndexFile.model_validate_json(e.model_dump_json()) == e

    rows = np.flatnonzero(platform == 2)
    mapped, plain = read_index(tmp_path / e.file), read_index(tmp_path / e.file, mmap=False)
    for index in (mapped, plain):
        ivf = faiss.extract_index_ivf(index)
        assert (ivf.nlist, ivf.nprobe, index.ntotal) == (e.ivf_nlist, e.ivf_nprobe, 3000)
        assert np.array_equal(index_rows(index), rows)
    q = clustered(50, c, 9)
    assert np.array_equal(mapped.search(q, 20)[1], plain.search(q, 20)[1])
    # a mapped IVF is changed through a copy in memory: its own add and remove, by row
    copy = owned_copy(mapped)
    copy.remove_ids(rows[:10])
    copy.add_with_ids(q[:1], np.array([99_999], dtype=np.int64))
    assert copy.ntotal == 2991 and mapped.ntotal == 3000
    got = copy.search(vectors[rows[:10]], 5)[1]
    assert not np.isin(got, rows[:10]).any() and copy.search(q[:1], 1)[1][0, 0] == 99_999


def test_an_older_manifest_entry_has_no_ivf() -> None:
    old = {"file": "indexes/0.faiss", "kind": "hnsw", "items": 60_000, "hnsw_threshold": 50_000, "hnsw_m": 32,
           "hnsw_ef_construction": 200}
    e = IndexFile.model_validate(old)
    assert e.ivf_threshold is e.ivf_nlist is e.ivf_nprobe is e.ivf_recall is e.ivf_target_recall is None
    assert e.hnsw_ef_search is e.hnsw_recall is e.hnsw_target_recall is None


def test_a_file_faiss_cannot_map_is_read_into_memory_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    entries = write_indexes(tmp_path, ["c"], np.zeros(2000, dtype=np.int64), clustered(2000, centers(), 2), SMALL,
                            threads=1)
    real = faiss.read_index

    def no_mmap(path: str, flags: int = 0) -> faiss.Index:
        if flags & faiss.IO_FLAG_MMAP_IFC:
            raise RuntimeError("Error in read_index: cannot mmap this")
        return real(path, flags)

    monkeypatch.setattr(faiss, "read_index", no_mmap)
    with caplog.at_level(logging.WARNING, logger="contract.indexes"):
        index = read_index(tmp_path / entries["c"].file)
    assert index.ntotal == 2000 and faiss.extract_index_ivf(index).nprobe == entries["c"].ivf_nprobe
    assert "cannot be memory-mapped" in caplog.text
