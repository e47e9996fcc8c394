"""The item table and its FAISS indexes: what can be recommended, and nearest-neighbour retrieval.

Rows: an item's row is its position in items.parquet (knn.npz and history lookups use the same rows);
items added online get new rows at the end. A changed item gets a NEW row and its old row is retired,
so a row's vector never changes under a reader.

Copy-on-write: a `Catalog` is never modified. Upserts and deletes build a new one (arrays copied,
changed platform indexes cloned) and the service swaps one reference, so searches never take a lock and
always see a consistent table + index pair.

The indexes come from the bundle (`contract.indexes`: built at export, read here, memory-mapped) or, for a
bundle without index files, are built at load the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from contract.indexes import IndexParams, build_index, owned_copy

__all__ = ["Catalog", "IndexParams", "PlatformIndex"]


class PlatformIndex:
    """One platform's live items in FAISS, inner product, FAISS id = item row.

    Exact (IndexFlatIP) up to `hnsw_threshold` items, HNSW above. Both are wrapped in IndexIDMap2 so
    items are added by row. HNSW cannot remove vectors, so removals there are tombstones filtered at
    search time; the index is rebuilt when tombstones pass a quarter of it.
    """

    def __init__(self, index: faiss.Index, kind: str, dim: int, tombstones: frozenset[int],
                 params: IndexParams, mapped: bool = False) -> None:
        self.index = index
        self.kind = kind
        self.dim = dim
        self.tombstones = tombstones
        self.params = params
        self.mapped = mapped  # its vectors are pages of the bundle's index file (read-only)

    @classmethod
    def build(cls, dim: int, rows: np.ndarray, vecs: np.ndarray, params: IndexParams) -> PlatformIndex:
        index, kind = build_index(dim, rows, vecs, params)
        return cls(index, kind, dim, frozenset(), params)

    @classmethod
    def from_file(cls, index: faiss.Index, kind: str, params: IndexParams, mapped: bool) -> PlatformIndex:
        """An index read from the bundle (`contract.indexes.read_index`), searched with `params`' efSearch."""
        if kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = params.hnsw_ef_search
        return cls(index, kind, int(index.d), frozenset(), params, mapped)

    @property
    def size(self) -> int:
        """Live items (tombstones not counted)."""
        return int(self.index.ntotal) - len(self.tombstones)

    def with_changes(self, add_rows: np.ndarray, add_vecs: np.ndarray, remove_rows: Sequence[int],
                     all_rows: np.ndarray, all_vecs: np.ndarray) -> PlatformIndex:
        """A new index with rows added and removed; `all_rows`/`all_vecs` (the platform's live items after
        the change) are used when rebuilding is cheaper or needed."""
        remove = frozenset(int(r) for r in remove_rows)
        tombstones = self.tombstones | remove if self.kind == "hnsw" else frozenset()
        crosses = (len(all_rows) > self.params.hnsw_threshold) != (self.kind == "hnsw")
        if crosses or len(tombstones) * 4 > max(len(all_rows), 1):
            return PlatformIndex.build(self.dim, all_rows, all_vecs, self.params)
        index = owned_copy(self.index) if self.mapped else faiss.clone_index(self.index)
        if remove and self.kind == "flat":
            index.remove_ids(np.fromiter(remove, dtype=np.int64, count=len(remove)))
        if len(add_rows):
            index.add_with_ids(np.ascontiguousarray(add_vecs, dtype=np.float32),
                               np.asarray(add_rows, dtype=np.int64))
        if self.kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = self.params.hnsw_ef_search
        return PlatformIndex(index, self.kind, self.dim, tombstones, self.params)

    def search(self, user_vecs: np.ndarray, n: int, exclude: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per query, up to `n` rows by descending inner product, `exclude[i]` and retired rows left out.

        One batched FAISS call asking for enough extra results to cover the largest exclusion list, so
        an exact index returns exactly the top `n` allowed rows.
        """
        b = len(user_vecs)
        if b == 0 or self.index.ntotal == 0 or n <= 0:
            return [np.zeros(0, dtype=np.int64) for _ in range(b)]
        extra = max((len(e) for e in exclude), default=0) + len(self.tombstones)
        k = min(int(self.index.ntotal), n + extra)
        # OpenMP's thread count belongs to each thread: the loader's setting does not reach the threads that
        # search (left at every core, a batched search would spin up threads that compete with the requests).
        if faiss.omp_get_max_threads() != self.params.search_threads:
            faiss.omp_set_num_threads(self.params.search_threads)
        _, ids = self.index.search(np.ascontiguousarray(user_vecs, dtype=np.float32), k)
        out = []
        dead = np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones))
        for i in range(b):
            got = ids[i][ids[i] >= 0]
            drop = np.concatenate([np.asarray(exclude[i], dtype=np.int64), dead]) if len(dead) else exclude[i]
            if len(drop):
                got = got[~np.isin(got, drop)]
            out.append(got[:n])
        return out


@dataclass(frozen=True)
class Catalog:
    """The item table (rows) and one index per platform. Immutable: see the module docstring."""

    item_ids: list[str]
    platform: np.ndarray  # int64 [n_rows]
    titles: list[str]
    vectors: np.ndarray  # float32 [n_rows, D], unit rows
    popularity: np.ndarray  # float64 [n_rows]; items added online have 0
    live: np.ndarray  # bool [n_rows]: False for deleted and replaced rows
    row_of: dict[str, int]  # item id → its live (or last) row
    indexes: dict[int, PlatformIndex]
    max_popularity: dict[int, float]  # per platform, as in training (at least 1)
    popular: dict[int, np.ndarray]  # per platform: live rows by popularity, most popular first
    version: int = 0  # bumped by every change: cached rankings from an older catalog are stale
    params: IndexParams = field(default_factory=IndexParams)

    @classmethod
    def build(cls, item_ids: list[str], platform: np.ndarray, titles: list[str], vectors: np.ndarray,
              popularity: np.ndarray, n_platforms: int, params: IndexParams,
              indexes: dict[int, PlatformIndex] | None = None) -> Catalog:
        """The catalog with `indexes` (read from the bundle), building those of platforms it lacks."""
        live = np.ones(len(item_ids), dtype=bool)
        dim = vectors.shape[1]
        indexes = dict(indexes or {})
        for p in range(n_platforms):
            if p not in indexes:
                rows = np.flatnonzero(platform == p)
                indexes[p] = PlatformIndex.build(dim, rows, vectors[rows], params)
        max_pop = {p: float(popularity[platform == p].max(initial=1)) for p in range(n_platforms)}
        return cls(item_ids, platform, titles, vectors, popularity, live,
                   {item: i for i, item in enumerate(item_ids)}, indexes, max_pop,
                   _popular(platform, popularity, live, n_platforms), 0, params)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Rows of known items (live or not: a deleted item in a history still has its vector), -1 else."""
        get = self.row_of.get
        return np.fromiter((get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def is_live(self, item_id: str) -> bool:
        row = self.row_of.get(item_id)
        return row is not None and bool(self.live[row])

    def index_sizes(self) -> dict[int, int]:
        return {p: idx.size for p, idx in self.indexes.items()}

    def with_changes(self, upserts: Sequence[tuple[str, int, str, np.ndarray]], deletes: Sequence[str]
                     ) -> Catalog:
        """A new catalog: `upserts` (item_id, platform, title, unit vector) get new rows, replacing any
        live row of the same id; `deletes` retire their rows. Unknown deletes are ignored."""
        n0 = len(self.item_ids)
        item_ids, titles = list(self.item_ids), list(self.titles)
        row_of = dict(self.row_of)
        live = self.live.copy()
        retired: dict[int, list[int]] = {}
        for item in [u[0] for u in upserts] + list(deletes):
            row = row_of.get(item)
            if row is not None and live[row]:
                live[row] = False
                retired.setdefault(int(self.platform[row]), []).append(row)
        new_platform = np.array([u[1] for u in upserts], dtype=np.int64)
        new_vecs = (np.stack([u[3] for u in upserts]).astype(np.float32) if upserts
                    else np.zeros((0, self.dim), dtype=np.float32))
        for i, (item, _, title, _) in enumerate(upserts):
            item_ids.append(item)
            titles.append(title)
            row_of[item] = n0 + i
        platform = np.concatenate([self.platform, new_platform])
        vectors = np.concatenate([self.vectors, new_vecs])
        popularity = np.concatenate([self.popularity, np.zeros(len(upserts))])
        live = np.concatenate([live, np.ones(len(upserts), dtype=bool)])
        indexes = dict(self.indexes)
        for p in set(retired) | set(new_platform.tolist()):
            added = n0 + np.flatnonzero(new_platform == p)
            all_rows = np.flatnonzero((platform == p) & live)
            indexes[p] = self.indexes[p].with_changes(added, vectors[added], retired.get(p, []),
                                                      all_rows, vectors[all_rows])
        n_platforms = len(self.indexes)
        return Catalog(item_ids, platform, titles, vectors, popularity, live, row_of, indexes,
                       self.max_popularity, _popular(platform, popularity, live, n_platforms),
                       self.version + 1, self.params)


def _popular(platform: np.ndarray, popularity: np.ndarray, live: np.ndarray, n_platforms: int
             ) -> dict[int, np.ndarray]:
    out = {}
    for p in range(n_platforms):
        rows = np.flatnonzero((platform == p) & live)
        out[p] = rows[np.argsort(-popularity[rows], kind="stable")]
    return out
