"""The retrieval indexes of a bundle: one FAISS index per platform, built at export, read by the service.

Which index: exact inner product (IndexFlatIP) up to `hnsw_threshold` items of a platform, HNSW above
(IndexHNSWFlat, inner product). Both wrapped in IndexIDMap2: FAISS ids are item rows of items.parquet.
`xrec export` builds them with every core and writes `indexes/<platform position>.faiss`, listed in the
manifest (`Manifest.indexes`, and `files` with their hashes, so `xrec bundle verify` covers them); the service
reads them (memory-mapped where FAISS can) instead of building them at start. A bundle without index files
(an older export) is indexed at start, the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from contract.bundle import IndexFile

INDEX_DIR = "indexes"


@dataclass(frozen=True)
class IndexParams:
    hnsw_threshold: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 256  # search-time settings: the service's own, not the bundle's
    search_threads: int = 1  # FAISS (OpenMP) threads per search; set in the searching thread itself


def build_index(dim: int, rows: np.ndarray, vecs: np.ndarray, params: IndexParams) -> tuple[faiss.Index, str]:
    """(IndexIDMap2 over `vecs` with ids `rows`, "flat" | "hnsw"), using FAISS's current thread count."""
    if len(rows) > params.hnsw_threshold:
        base = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = params.hnsw_ef_construction
        base.hnsw.efSearch = params.hnsw_ef_search
        kind = "hnsw"
    else:
        base = faiss.IndexFlatIP(dim)
        kind = "flat"
    index = faiss.IndexIDMap2(base)
    if len(rows):
        index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), np.asarray(rows, dtype=np.int64))
    return index, kind


def write_indexes(bundle_dir: Path, platforms: list[str], item_platform: np.ndarray, vectors: np.ndarray,
                  params: IndexParams, threads: int | None = None) -> dict[str, IndexFile]:
    """Build and write every platform's index (with `threads`, default every core); the manifest entries."""
    (bundle_dir / INDEX_DIR).mkdir(exist_ok=True)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    try:
        out = {}
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        for p, name in enumerate(platforms):
            rows = np.flatnonzero(np.asarray(item_platform) == p)
            index, kind = build_index(vectors.shape[1], rows, vectors[rows], params)
            file = f"{INDEX_DIR}/{p}.faiss"
            faiss.write_index(index, str(bundle_dir / file))
            out[name] = IndexFile(file=file, kind=kind, items=len(rows), hnsw_threshold=params.hnsw_threshold,
                                  hnsw_m=params.hnsw_m, hnsw_ef_construction=params.hnsw_ef_construction)
        return out
    finally:
        faiss.omp_set_num_threads(before)


def read_index(path: Path, mmap: bool = True) -> faiss.Index:
    """An index file as written by `write_indexes`. `mmap`: the vectors stay in the file's pages (shared
    between processes, nothing copied at load); such an index cannot grow or shrink in place — copy it
    with `owned_copy` first."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)


def owned_copy(index: faiss.Index) -> faiss.Index:
    """A copy in memory that may be changed (`faiss.clone_index` of a memory-mapped index would still point
    at the file, and adding to it aborts the process)."""
    return faiss.deserialize_index(faiss.serialize_index(index))


def index_rows(index: faiss.Index) -> np.ndarray:
    """The item rows (ids) an IndexIDMap2 holds, in insertion order."""
    return faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)
