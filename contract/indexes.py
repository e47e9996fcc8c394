"""The retrieval indexes of a bundle: one FAISS index per platform, built at export, read by the service.

Which index, by the platform's item count n: exact inner product (IndexFlatIP) up to `hnsw_threshold`, HNSW
(IndexHNSWFlat, inner product) above, IVF (IndexIVFFlat, inner product) above `ivf_threshold`. Flat and HNSW
are wrapped in IndexIDMap2; IVF keeps the ids itself (its own `add_with_ids`/`remove_ids`: IndexIDMap2's
removal assumes an index that renumbers what is left, which IVF does not). Either way FAISS ids are item rows
of items.parquet.

IVF: nlist ≈ 4·sqrt(n) lists (at most n/39, so that k-means has 39 points a list, and at most 65,536), k-means
trained on the platform's own vectors; `nprobe` is chosen when the index is built: the smallest of 1, 2, 4, …
(and finally nlist, which is exhaustive) whose recall@100 against exact search reaches `ivf_target_recall`, with
a seeded sample of `recall_sample` of the platform's item vectors as queries. When that means scanning more than
`IVF_MAX_SCAN` vectors a query (vectors with no cluster structure), the platform gets HNSW instead.

HNSW: efSearch is chosen the same way when the index is built (`hnsw_ef_search` 0, the default): the smallest of
128, 256, 512, … `HNSW_EF_MAX` whose recall@100 on that sample reaches `hnsw_target_recall`. Why: the recall of a
fixed efSearch falls as a catalog grows (efSearch 256 gave 0.99 at 36k real items, 0.88 on a 762k platform),
so one number cannot suit every catalog; a set `hnsw_ef_search` (XREC_HNSW_EF_SEARCH) is used as it is.

`xrec export` builds them with every core and writes `indexes/<platform position>.faiss`, listed in the
manifest (`Manifest.indexes`: the kind, IVF's nlist and nprobe or HNSW's efSearch, and the recall measured;
`files` with their hashes, so `xrec bundle verify` covers them); the service reads them instead of building
them at start, memory-mapped where FAISS can (IVF's lists too, with FAISS's IO_FLAG_MMAP_IFC; a mapped read that
fails is retried into memory, with a warning), and searches with the manifest's nprobe or efSearch (or its own
XREC_IVF_NPROBE / XREC_HNSW_EF_SEARCH). A bundle without index files (an older export) is indexed at start, the
same way.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from contract.bundle import IndexFile

INDEX_DIR = "indexes"
# IVF's nprobe is chosen for recall at this depth (the service's retrieval depth); deeper searches probe more.
IVF_RECALL_K = 100
# efSearch below the depth searched buys nothing (FAISS explores max(efSearch, k)); the ladder stops at the max.
HNSW_EF_MIN, HNSW_EF_MAX = 128, 4096
# Search-time efSearch for a bundle from before it was chosen at export.
HNSW_EF_DEFAULT = 256
# IVF that must scan more than this many vectors a query (nprobe/nlist of the platform) for the target recall is
# built as HNSW instead, which visits far fewer: 762k uniform random vectors needed nprobe 2,048 of 3,491 lists
# (about 447k vectors a query; cold requests at 1M fell from 379 to 79 req/s).
IVF_MAX_SCAN = 50_000
# "Never IVF": what the indexes of a bundle from before IVF (no `ivf_threshold` in its manifest) keep to.
NO_IVF = 1 << 62

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexParams:
    hnsw_threshold: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    # 0: chosen when the index is built (reaching hnsw_target_recall); set, it is used as it is
    hnsw_ef_search: int = 0
    hnsw_target_recall: float = 0.97  # the recall@100 against exact that the chosen efSearch must reach
    search_threads: int = 1  # FAISS (OpenMP) threads per search; set in the searching thread itself
    # IVF above this many items. 500k: below it HNSW builds in minutes and searches fastest; above it HNSW's
    # build (the service's own rebuilds are single-threaded: 885 s at 1M) and memory (about twice IVF-Flat's
    # per item at dim 64) outgrow an export or a reload, while IVF's k-means and adds stay cheap.
    ivf_threshold: int = 500_000
    ivf_target_recall: float = 0.97  # the recall@100 against exact that the chosen nprobe must reach
    recall_sample: int = 500  # the platform's item vectors used as queries to choose nprobe/efSearch (seeded)
    ivf_nprobe: int = 0  # search-time override (the service's XREC_IVF_NPROBE); 0: the nprobe chosen at build


@dataclass(frozen=True)
class Built:
    """An index as `build` made it; for IVF also nlist and nprobe, for HNSW efSearch, and for either its
    recall@100 at that setting on the sample (HNSW with a preset efSearch: not measured, None)."""

    index: faiss.Index
    kind: str
    nlist: int | None = None
    nprobe: int | None = None
    recall: float | None = None
    ef_search: int | None = None


def index_kind(n: int, params: IndexParams) -> str:
    """The kind of index ("flat" | "hnsw" | "ivf") for a platform of `n` items."""
    if n > params.ivf_threshold:
        return "ivf"
    return "hnsw" if n > params.hnsw_threshold else "flat"


def ivf_nlist(n: int) -> int:
    """IVF lists for `n` items: ≈ 4·sqrt(n), at most n/39 (k-means wants 39 points a list) and 65,536."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39, 65_536))


def build(dim: int, rows: np.ndarray, vecs: np.ndarray, params: IndexParams) -> Built:
    """The index over `vecs` with ids `rows`, of `index_kind(len(rows))`, using FAISS's current thread count."""
    kind = index_kind(len(rows), params)
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    ids = np.asarray(rows, dtype=np.int64)
    if kind == "ivf":
        nlist = ivf_nlist(len(rows))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vecs)  # k-means; FAISS samples at most 256 points a list itself, seeded
        ivf.add_with_ids(vecs, ids)
        nprobe, recall = tune_nprobe(ivf, ids, vecs, params.ivf_target_recall, params.recall_sample)
        if nprobe * len(rows) <= IVF_MAX_SCAN * nlist:
            ivf.nprobe = nprobe
            return Built(ivf, kind, nlist, nprobe, recall)
        # Vectors without cluster structure: IVF would scan much of the platform per query. HNSW instead.
        log.warning("IVF over %d items needs nprobe %d of %d lists (about %d vectors a query) for recall@100 %.2f:"
                    " HNSW instead", len(rows), nprobe, nlist, nprobe * len(rows) // nlist, params.ivf_target_recall)
        del ivf
        kind = "hnsw"
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = params.hnsw_ef_construction
    else:
        base = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(base)
    if len(rows):
        index.add_with_ids(vecs, ids)
    if kind != "hnsw":
        return Built(index, kind)
    ef, recall = params.hnsw_ef_search, None
    if not ef:
        ef, recall = tune_ef_search(index, ids, vecs, params.hnsw_target_recall, params.recall_sample)
    base.hnsw.efSearch = ef
    return Built(index, kind, recall=recall, ef_search=ef)


def _recall_probe(rows: np.ndarray, vecs: np.ndarray, sample: int, seed: int
                  ) -> tuple[np.ndarray, int, Callable[[np.ndarray], float]]:
    """(queries, k, recall of a search's ids): `sample` of the indexed `vecs` (ids `rows`) as queries,
    seeded; the truth: their exact top k = min(100, n)."""
    n = len(vecs)
    k = min(IVF_RECALL_K, n)
    q = vecs[np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False)]
    exact = faiss.IndexFlatIP(vecs.shape[1])
    exact.add(vecs)
    truth = np.asarray(rows, dtype=np.int64)[exact.search(q, k)[1]]

    def recall(got: np.ndarray) -> float:
        return float(np.mean([len(np.intersect1d(g, t)) / k for g, t in zip(got, truth, strict=True)]))
    return q, k, recall


def tune_nprobe(ivf: faiss.IndexIVF, rows: np.ndarray, vecs: np.ndarray, target: float, sample: int,
                seed: int = 0) -> tuple[int, float]:
    """(the smallest nprobe of 1, 2, 4, …, nlist whose recall@100 against exact search reaches `target`, its
    recall), measured with `_recall_probe`'s queries."""
    nlist = int(ivf.nlist)
    if len(vecs) == 0:
        return 1, 1.0
    q, k, recall_of = _recall_probe(rows, vecs, sample, seed)
    nprobe = 1
    while True:
        recall = recall_of(ivf.search(q, k, params=faiss.SearchParametersIVF(nprobe=nprobe))[1])
        if recall >= target or nprobe >= nlist:
            return nprobe, recall
        nprobe = min(2 * nprobe, nlist)


def tune_ef_search(index: faiss.Index, rows: np.ndarray, vecs: np.ndarray, target: float, sample: int,
                   seed: int = 0) -> tuple[int, float]:
    """(the smallest efSearch of `HNSW_EF_MIN`, twice that, … `HNSW_EF_MAX` whose recall@100 against exact
    search reaches `target`, its recall) for an HNSW index (IndexIDMap2-wrapped), with `_recall_probe`'s queries."""
    if len(vecs) == 0:
        return HNSW_EF_MIN, 1.0
    q, k, recall_of = _recall_probe(rows, vecs, sample, seed)
    ef = HNSW_EF_MIN
    while True:
        recall = recall_of(index.search(q, k, params=faiss.SearchParametersHNSW(efSearch=ef))[1])
        if recall >= target or ef >= HNSW_EF_MAX:
            return ef, recall
        ef = min(2 * ef, HNSW_EF_MAX)


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Search an IVF index (bare or wrapped) with `nprobe` lists."""
    faiss.extract_index_ivf(index).nprobe = nprobe


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
            built = build(vectors.shape[1], rows, vectors[rows], params)
            file = f"{INDEX_DIR}/{p}.faiss"
            faiss.write_index(built.index, str(bundle_dir / file))
            hnsw = built.kind == "hnsw"
            out[name] = IndexFile(file=file, kind=built.kind, items=len(rows), hnsw_threshold=params.hnsw_threshold,
                                  hnsw_m=params.hnsw_m, hnsw_ef_construction=params.hnsw_ef_construction,
                                  hnsw_ef_search=built.ef_search, hnsw_recall=built.recall if hnsw else None,
                                  hnsw_target_recall=params.hnsw_target_recall if hnsw else None,
                                  ivf_threshold=params.ivf_threshold, ivf_target_recall=params.ivf_target_recall,
                                  ivf_nlist=built.nlist, ivf_nprobe=built.nprobe,
                                  ivf_recall=None if hnsw else built.recall)
        return out
    finally:
        faiss.omp_set_num_threads(before)


def read_index(path: Path, mmap: bool = True) -> faiss.Index:
    """An index file as written by `write_indexes`. `mmap`: the vectors (IVF: its lists) stay in the file's
    pages (shared between processes, nothing copied at load); such an index cannot grow or shrink in place —
    copy it with `owned_copy` first. A FAISS that cannot map the file reads it into memory (a warning)."""
    if not mmap:
        return faiss.read_index(str(path))
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as e:
        index = faiss.read_index(str(path))  # a damaged file fails here too, with FAISS's own error
        log.warning("%s: cannot be memory-mapped (%s); read into memory instead", path, str(e).strip()[:200])
        return index


def owned_copy(index: faiss.Index) -> faiss.Index:
    """A copy in memory that may be changed (`faiss.clone_index` of a memory-mapped index would still point
    at the file, and adding to it aborts the process)."""
    return faiss.deserialize_index(faiss.serialize_index(index))


def index_rows(index: faiss.Index) -> np.ndarray:
    """The item rows (ids) an index holds: an IndexIDMap2's in insertion order, an IVF's ascending."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIVF):
        lists = index.invlists
        parts = []
        for i in range(index.nlist):
            size = lists.list_size(i)
            if size:
                ids = lists.get_ids(i)
                parts.append(faiss.rev_swig_ptr(ids, size).astype(np.int64))  # astype copies
                lists.release_ids(i, ids)
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return faiss.vector_to_array(index.id_map).astype(np.int64)
