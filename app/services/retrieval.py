"""The item table and its FAISS indexes: what can be recommended, and nearest-neighbour retrieval.

Rows: an item's row is its position in items.parquet (knn.npz and history lookups use the same rows);
items added online get new rows at the end. A changed item gets a NEW row and its old row is retired,
so a row's vector never changes under a reader.

Copy-on-write: a `Catalog` is never modified. Upserts and deletes build a new one (arrays copied,
changed platform indexes cloned) and the service swaps one reference, so searches never take a lock and
always see a consistent table + index pair.

The indexes come from the bundle (`contract.indexes`: built at export, read here, memory-mapped) or, for a
bundle without index files, are built at load the same way.

Business attributes (`category`, `brand`, a price, …) belong to rows too: a row's attributes never change
(a changed item gets a new row), so their per-attribute columns, built on first use, carry over to the next
catalog. An unavailable item (`available: false`) keeps its row (histories, /v1/rank by id) but is not
*recommendable*: it is left out of its platform's index, the popular lists and the item-KNN candidates.

Filtered search (`Catalog.search` with an `allowed` row mask): exact over the allowed rows when they are
few (at most `filter_exact_max`), else the platform index searched for more than asked, growing the fetch
until enough allowed rows are found or the platform is exhausted (`PlatformIndex.search`, `allowed`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import faiss
import numpy as np

from contract.indexes import (
    HNSW_EF_DEFAULT,
    IVF_RECALL_K,
    IndexParams,
    index_kind,
    owned_copy,
    set_nprobe,
)
from contract.indexes import build as build_index
from contract.top_rows import block_scores, top_rows

__all__ = ["AttributeColumn", "Catalog", "IndexParams", "PlatformIndex"]

# An attribute's value: a string, or a number (compared as a float).
Scalar = str | float
Attributes = dict[str, Scalar]
# Filtered searches with at most this many allowed rows are answered exactly, without the index.
FILTER_EXACT_MAX = 20_000
# A filtered index search first asks for this much more than (wanted / allowed share); then doubles.
_OVERFETCH = 1.5


class PlatformIndex:
    """One platform's live items in FAISS, inner product, FAISS id = item row.

    Exact (IndexFlatIP) up to `hnsw_threshold` items, HNSW above, IVF (IndexIVFFlat) above `ivf_threshold`
    (`contract.indexes`). A flat index holds the vectors and is searched by matrix products over a copy of them
    (`_search_flat`); HNSW and IVF are searched by FAISS. Flat and HNSW are wrapped in IndexIDMap2, IVF keeps
    ids itself: items are added and removed by row. HNSW cannot remove vectors, so removals there are
    tombstones filtered at search time; the index is rebuilt when tombstones pass a quarter of it. IVF searches
    the nprobe chosen when it was built (the bundle's manifest), or `params.ivf_nprobe` when the service sets one.
    """

    def __init__(self, index: faiss.Index, kind: str, dim: int, tombstones: frozenset[int],
                 params: IndexParams, mapped: bool = False) -> None:
        self.index = index
        self.kind = kind
        self.dim = dim
        self.tombstones = tombstones
        self.params = params
        self.mapped = mapped  # its vectors are pages of the bundle's index file (read-only)
        self._flat: tuple[np.ndarray, np.ndarray] | None = None  # `_flat_arrays`, made on first search

    @classmethod
    def build(cls, dim: int, rows: np.ndarray, vecs: np.ndarray, params: IndexParams) -> PlatformIndex:
        """A new index; HNSW keeps the efSearch its build chose (`params.hnsw_ef_search` 0) for its rebuilds."""
        built = build_index(dim, rows, vecs, params)
        if built.kind == "ivf" and params.ivf_nprobe:
            set_nprobe(built.index, params.ivf_nprobe)
        if built.kind == "hnsw":
            params = replace(params, hnsw_ef_search=int(built.ef_search or HNSW_EF_DEFAULT))
        return cls(built.index, built.kind, dim, frozenset(), params)

    @classmethod
    def from_file(cls, index: faiss.Index, kind: str, params: IndexParams, mapped: bool,
                  nprobe: int | None = None) -> PlatformIndex:
        """An index read from the bundle (`contract.indexes.read_index`), searched with `params`' efSearch;
        IVF with `params.ivf_nprobe` if set, else `nprobe` (the manifest's), else the file's own."""
        if kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = params.hnsw_ef_search
        elif kind == "ivf" and (params.ivf_nprobe or nprobe):
            set_nprobe(index, params.ivf_nprobe or int(nprobe or 0))
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
        if self.kind == "hnsw" and len(add_rows):
            # A row hidden earlier (an item made unavailable) is still in the graph: show it again.
            back = tombstones & frozenset(int(r) for r in add_rows)
            if back:
                tombstones -= back
                keep = ~np.isin(add_rows, np.fromiter(back, dtype=np.int64, count=len(back)))
                add_rows, add_vecs = add_rows[keep], add_vecs[keep]
        # Rebuilt when its size calls for another kind; but HNSW above the IVF threshold stays HNSW (export chose it
        # there for vectors IVF serves badly: `contract.indexes.IVF_MAX_SCAN`).
        wanted = index_kind(len(all_rows), self.params)
        crosses = wanted != self.kind and not (wanted == "ivf" and self.kind == "hnsw")
        if crosses or len(tombstones) * 4 > max(len(all_rows), 1):
            return PlatformIndex.build(self.dim, all_rows, all_vecs, self.params)
        index = owned_copy(self.index) if self.mapped else faiss.clone_index(self.index)
        if remove and self.kind != "hnsw":
            index.remove_ids(np.fromiter(remove, dtype=np.int64, count=len(remove)))
        if len(add_rows):
            index.add_with_ids(np.ascontiguousarray(add_vecs, dtype=np.float32),
                               np.asarray(add_rows, dtype=np.int64))
        if self.kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = self.params.hnsw_ef_search
        return PlatformIndex(index, self.kind, self.dim, tombstones, self.params)

    def search(self, user_vecs: np.ndarray, n: int, exclude: Sequence[np.ndarray],
               allowed: np.ndarray | None = None, n_allowed: int | None = None) -> list[np.ndarray]:
        """Per query, up to `n` rows by descending inner product, `exclude[i]` and retired rows left out.

        One batched FAISS call asking for enough extra results to cover the largest exclusion list, so
        an exact index returns exactly the top `n` allowed rows.

        `allowed` (a bool mask over catalog rows, the same for every query of the call; `n_allowed` of this
        platform's indexed rows are True): only those rows. The search asks for about n / (allowed share)
        results and doubles that for the queries still short of `n` until they have `n` or the whole
        platform was fetched — an adaptive over-fetch, so a selective filter loses no recall to the index.
        """
        b = len(user_vecs)
        if b == 0 or self.index.ntotal == 0 or n <= 0:
            return [np.zeros(0, dtype=np.int64) for _ in range(b)]
        extra = max((len(e) for e in exclude), default=0) + len(self.tombstones)
        total = int(self.index.ntotal)
        if allowed is None:
            k = min(total, n + extra)
        else:
            share = max(n_allowed if n_allowed is not None else total, 1) / max(self.size, 1)
            k = min(total, math.ceil((n + extra) / min(share, 1.0) * _OVERFETCH))
        # OpenMP's thread count belongs to each thread: the loader's setting does not reach the threads that
        # search (left at every core, a batched search would spin up threads that compete with the requests).
        if faiss.omp_get_max_threads() != self.params.search_threads:
            faiss.omp_set_num_threads(self.params.search_threads)
        if self.kind == "flat":
            return self._search_flat(user_vecs, n, exclude, allowed)
        dead = np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones))
        out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * b
        todo = list(range(b))
        while todo:
            x = np.ascontiguousarray(user_vecs[todo], dtype=np.float32)
            if self.kind == "hnsw" and k > self.params.hnsw_ef_search:
                # FAISS's HNSW explores efSearch candidates whatever k is: asked for more, it must explore more.
                _, ids = self.index.search(x, k, params=faiss.SearchParametersHNSW(efSearch=k))
            elif self.kind == "ivf" and k > IVF_RECALL_K:
                # nprobe was chosen for the top 100: deeper, probe proportionally more lists (the same share).
                ivf = faiss.extract_index_ivf(self.index)
                nprobe = min(int(ivf.nlist), math.ceil(int(ivf.nprobe) * k / IVF_RECALL_K))
                _, ids = self.index.search(x, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
            else:
                _, ids = self.index.search(x, k)
            short = []
            for j, i in enumerate(todo):
                got = ids[j][ids[j] >= 0]
                if allowed is not None:
                    got = got[allowed[got]]
                drop = np.concatenate([np.asarray(exclude[i], dtype=np.int64), dead]) if len(dead) else exclude[i]
                if len(drop):
                    got = got[~np.isin(got, drop)]
                out[i] = got[:n]
                if allowed is not None and len(got) < n and k < total:
                    short.append(i)
            todo, k = short, min(total, 2 * k)
        return out

    def _flat_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows ascending, their vectors transposed [dim, n], contiguous) of a flat index: what `_search_flat`
        multiplies. A copy (7 MB for 27k items of 64 floats); the index is never changed in place."""
        got = self._flat
        if got is None:
            flat = faiss.downcast_index(self.index.index)
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            xb = faiss.rev_swig_ptr(flat.get_xb(), int(flat.ntotal) * self.dim).reshape(-1, self.dim)
            order = np.argsort(ids, kind="stable")
            got = self._flat = (ids[order], np.ascontiguousarray(xb[order].T, dtype=np.float32))
        return got

    def _search_flat(self, user_vecs: np.ndarray, n: int, exclude: Sequence[np.ndarray],
                     allowed: np.ndarray | None) -> list[np.ndarray]:
        """Exact search of a flat index by matrix products over blocks of queries (`contract.top_rows.block_scores`),
        then `top_rows` (ties to the lower row, as the offline evaluator's exact search): one pass over the
        platform's vectors a block, where FAISS's flat search makes one a query below 20 queries (the pass is
        memory-bound: ~0.5–1 ms a query for 27k items here). A query's scores are the same bits in any block, so
        its answer does not depend on the micro-batch it came in."""
        rows, yt = self._flat_arrays()
        scores = block_scores(user_vecs, yt)
        return [top_rows(rows, scores[i], n, np.asarray(exclude[i], dtype=np.int64), allowed)
                for i in range(len(scores))]


class AttributeColumn:
    """One attribute over every catalog row: a code per row for string values (-1: none) with their
    vocabulary, and the value per row for numbers (NaN: none). Immutable; changes make a new one."""

    __slots__ = ("codes", "numbers", "vocab")

    def __init__(self, codes: np.ndarray, vocab: dict[str, int], numbers: np.ndarray) -> None:
        self.codes = codes
        self.vocab = vocab
        self.numbers = numbers

    @classmethod
    def of(cls, name: str, attributes: Sequence[Attributes | None], n_rows: int) -> AttributeColumn:
        empty = cls(np.full(0, -1, dtype=np.int32), {}, np.zeros(0, dtype=np.float64))
        return empty.with_rows(name, np.arange(n_rows), [attributes[r] if r < len(attributes) else None
                                                         for r in range(n_rows)], n_rows)

    def with_rows(self, name: str, rows: np.ndarray, attrs: Sequence[Attributes | None], n_rows: int
                  ) -> AttributeColumn:
        """A copy grown to `n_rows` rows (new rows: none) with `rows` set from `attrs`."""
        n0 = len(self.codes)
        codes = np.concatenate([self.codes, np.full(n_rows - n0, -1, dtype=np.int32)])
        numbers = np.concatenate([self.numbers, np.full(n_rows - n0, np.nan)])
        vocab = self.vocab
        for row, a in zip(np.asarray(rows).tolist(), attrs, strict=True):
            v = None if a is None else a.get(name)
            codes[row], numbers[row] = -1, np.nan
            if isinstance(v, str):
                code = vocab.get(v)
                if code is None:
                    if vocab is self.vocab:
                        vocab = dict(vocab)
                    code = vocab[v] = len(vocab)
                codes[row] = code
            elif isinstance(v, int | float) and not isinstance(v, bool):
                numbers[row] = float(v)
        return AttributeColumn(codes, vocab, numbers)

    def matches(self, values: Sequence[Scalar] | None, lo: float | None, hi: float | None) -> np.ndarray:
        """bool per row: the value is one of `values` (strings exactly, numbers numerically), or, with no
        `values`, a number within [lo, hi] (either bound may be open)."""
        if values is not None:
            strings = [self.vocab[v] for v in values if isinstance(v, str) and v in self.vocab]
            mask = np.isin(self.codes, np.asarray(strings, dtype=np.int32)) if strings else np.zeros(
                len(self.codes), dtype=bool)
            nums = [float(v) for v in values if not isinstance(v, str)]
            if nums:
                mask |= np.isin(self.numbers, np.asarray(nums, dtype=np.float64))
            return mask
        mask = ~np.isnan(self.numbers)
        with np.errstate(invalid="ignore"):
            if lo is not None:
                mask &= self.numbers >= lo
            if hi is not None:
                mask &= self.numbers <= hi
        return mask


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
    popular: dict[int, np.ndarray]  # per platform: recommendable rows by popularity, most popular first
    version: int = 0  # bumped by every change: cached rankings from an older catalog are stale
    params: IndexParams = field(default_factory=IndexParams)
    attributes: list[Attributes | None] = field(default_factory=list)  # per row (shorter: none)
    available: np.ndarray | None = None  # bool [n_rows]; None: every row
    filter_exact_max: int = FILTER_EXACT_MAX
    # live & available: what may be recommended (in the index, popular lists, item-KNN candidates)
    recommendable: np.ndarray = field(init=False, repr=False, compare=False)
    _columns: dict[str, AttributeColumn] = field(default_factory=dict, repr=False, compare=False)
    # Derived from this catalog and kept with it (e.g. a filter's row mask): a changed catalog starts empty.
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        ok = self.live if self.available is None else self.live & self.available
        object.__setattr__(self, "recommendable", ok)

    @classmethod
    def build(cls, item_ids: list[str], platform: np.ndarray, titles: list[str], vectors: np.ndarray,
              popularity: np.ndarray, n_platforms: int, params: IndexParams,
              indexes: dict[int, PlatformIndex] | None = None,
              attributes: list[Attributes | None] | None = None,
              filter_exact_max: int = FILTER_EXACT_MAX) -> Catalog:
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
                   _popular(platform, popularity, live, n_platforms), 0, params,
                   attributes=list(attributes) if attributes is not None else [],
                   filter_exact_max=filter_exact_max)

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

    def is_available(self, row: int) -> bool:
        return self.available is None or bool(self.available[row])

    def attributes_of(self, row: int) -> Attributes | None:
        return self.attributes[row] if row < len(self.attributes) else None

    def column(self, name: str) -> AttributeColumn:
        """The attribute over every row (built on first use, then kept with this catalog)."""
        col = self._columns.get(name)
        if col is None:
            with self._lock:
                col = self._columns.get(name)
                if col is None:
                    col = self._columns[name] = AttributeColumn.of(name, self.attributes, len(self.item_ids))
        return col

    def index_sizes(self) -> dict[int, int]:
        return {p: idx.size for p, idx in self.indexes.items()}

    def search(self, target: int, user_vecs: np.ndarray, n: int, exclude: Sequence[np.ndarray],
               allowed: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """The target platform's top `n` rows per query (`PlatformIndex.search`); `allowed[i]` (a bool mask
        over rows, recommendable target rows only) restricts query i: answered exactly over the allowed rows
        when there are at most `filter_exact_max` of them, else by the index with an adaptive over-fetch."""
        index = self.indexes[target]
        if allowed is None or all(a is None for a in allowed):
            return index.search(user_vecs, n, exclude)
        out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(user_vecs)
        groups: dict[int, list[int]] = {}
        for i, a in enumerate(allowed):
            groups.setdefault(-1 if a is None else id(a), []).append(i)
        for key, idx in groups.items():
            if key == -1:
                found = index.search(user_vecs[idx], n, [exclude[i] for i in idx])
            else:
                mask = allowed[idx[0]]
                assert mask is not None
                rows = np.flatnonzero(mask)
                if len(rows) <= self.filter_exact_max:
                    found = [self._exact(rows, user_vecs[i], n, exclude[i]) for i in idx]
                else:
                    found = index.search(user_vecs[idx], n, [exclude[i] for i in idx], mask, len(rows))
            for i, rows_i in zip(idx, found, strict=True):
                out[i] = rows_i
        return out

    def _exact(self, rows: np.ndarray, user_vec: np.ndarray, n: int, exclude: np.ndarray) -> np.ndarray:
        """The top `n` of `rows` by inner product with `user_vec` (ties: lower row first), `exclude` left out."""
        if len(exclude):
            rows = rows[~np.isin(rows, exclude)]
        if not len(rows) or n <= 0:
            return np.zeros(0, dtype=np.int64)
        scores = self.vectors[rows] @ np.asarray(user_vec, dtype=np.float32)
        if len(rows) > n:
            top = np.argpartition(-scores, n - 1)[:n]
            rows, scores = rows[top], scores[top]
        return rows[np.lexsort((rows, -scores))].astype(np.int64)

    def with_changes(self, upserts: Sequence[tuple[str, int, str, np.ndarray]], deletes: Sequence[str],
                     updates: Sequence[tuple[str, Attributes | None, bool]] = (),
                     upsert_attributes: Sequence[tuple[Attributes | None, bool]] | None = None) -> Catalog:
        """A new catalog: `upserts` (item_id, platform, title, unit vector) get new rows, replacing any
        live row of the same id, with `upsert_attributes[i]` (attributes, available; default: none,
        available); `deletes` retire their rows; `updates` (item_id, attributes, available) change a live
        row's attributes and availability in place (its vector, title and item-KNN row stay). Unknown
        deletes and updates are ignored."""
        n0 = len(self.item_ids)
        item_ids, titles = list(self.item_ids), list(self.titles)
        attributes = list(self.attributes) + [None] * (n0 - len(self.attributes))
        row_of = dict(self.row_of)
        live = self.live.copy()
        available = np.ones(n0, dtype=bool) if self.available is None else self.available.copy()
        indexed = self.recommendable  # the rows in the platform indexes
        retired: dict[int, list[int]] = {}
        added: dict[int, list[int]] = {}
        changed: list[int] = []
        for item in [u[0] for u in upserts] + list(deletes):
            row = row_of.get(item)
            if row is not None and live[row]:
                live[row] = False
                if indexed[row]:
                    retired.setdefault(int(self.platform[row]), []).append(row)
        for item, attrs, ok in updates:
            row = row_of.get(item)
            if row is None or not live[row]:
                continue
            attributes[row] = attrs
            changed.append(row)
            if bool(ok) != bool(available[row]):
                available[row] = ok
                (added if ok else retired).setdefault(int(self.platform[row]), []).append(row)
        new_platform = np.array([u[1] for u in upserts], dtype=np.int64)
        new_vecs = (np.stack([u[3] for u in upserts]).astype(np.float32) if upserts
                    else np.zeros((0, self.dim), dtype=np.float32))
        extra = list(upsert_attributes) if upsert_attributes is not None else [(None, True)] * len(upserts)
        for i, ((item, _, title, _), (attrs, ok)) in enumerate(zip(upserts, extra, strict=True)):
            item_ids.append(item)
            titles.append(title)
            attributes.append(attrs)
            row_of[item] = n0 + i
            changed.append(n0 + i)
            if ok:
                added.setdefault(int(new_platform[i]), []).append(n0 + i)
        platform = np.concatenate([self.platform, new_platform])
        vectors = np.concatenate([self.vectors, new_vecs])
        popularity = np.concatenate([self.popularity, np.zeros(len(upserts))])
        live = np.concatenate([live, np.ones(len(upserts), dtype=bool)])
        available = np.concatenate([available, np.array([ok for _, ok in extra], dtype=bool)])
        recommendable = live & available
        indexes = dict(self.indexes)
        for p in set(retired) | set(added):
            add = np.asarray(added.get(p, []), dtype=np.int64)
            all_rows = np.flatnonzero((platform == p) & recommendable)
            indexes[p] = self.indexes[p].with_changes(add, vectors[add], retired.get(p, []),
                                                      all_rows, vectors[all_rows])
        n_platforms = len(self.indexes)
        rows = np.asarray(changed, dtype=np.int64)
        new = Catalog(item_ids, platform, titles, vectors, popularity, live, row_of, indexes,
                      self.max_popularity, _popular(platform, popularity, recommendable, n_platforms),
                      self.version + 1, self.params, attributes=attributes,
                      available=None if available.all() else available, filter_exact_max=self.filter_exact_max)
        with self._lock:  # the columns built so far, brought up to date (rows only grow or change in place)
            columns = dict(self._columns)
        for name, col in columns.items():
            new._columns[name] = col.with_rows(name, rows, [attributes[r] for r in changed], len(item_ids))
        return new


def _popular(platform: np.ndarray, popularity: np.ndarray, live: np.ndarray, n_platforms: int
             ) -> dict[int, np.ndarray]:
    out = {}
    for p in range(n_platforms):
        rows = np.flatnonzero((platform == p) & live)
        out[p] = rows[np.argsort(-popularity[rows], kind="stable")]
    return out
