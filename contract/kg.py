"""The knowledge graph as ranking reads it: each item's entities (brand, product type, category), and what a
person's history says about a candidate through them.

numpy only: the service imports this, and it never imports torch or training/. `training.kg.table` builds the
table from a dataset's kg/ folder; the checkpoint and the bundle (`kg.npz`) carry it. An entity that the graph
linked across platforms is one entity id on both, so items of two shops meet only through linked entities.

- `ItemEntities`: item row → entity ids (CSR), entity names and kinds (for reasons), entity → item rows.
- `kg_features()`: the scorer's KG features of candidate rows given a history (`contract.features`).
- `kg_candidates()`: target-platform items reached from the history on other platforms, for people new to
  the target platform (`contract.ranking` adds them to retrieval's candidates).
- `shared_entity()`: the history event and entity behind a result, for its reason (`app.services.recommender`;
  `other_platform_entities()` tells first, once per person, which results can have one).

An empty table (a dataset built with --no-kg; a checkpoint or bundle from before the KG) gives zero features,
no candidates and no reasons, so everything trained or exported without a KG still works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("brand", "type", "category")  # entity kinds, in the order a reason prefers them
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class ItemEntities:
    """Item row r has entities `entities[offsets[r]:offsets[r + 1]]`; rows outside the table have none (new
    items the service adds after export, free text)."""

    offsets: np.ndarray  # int64 [n_items + 1]
    entities: np.ndarray  # int32 [n_links]
    names: np.ndarray  # str [n_entities]: the entity's display name
    kinds: np.ndarray  # int8 [n_entities]: index into KINDS
    # entity e is had by items `entity_items[entity_offsets[e]:entity_offsets[e + 1]]` (ascending rows)
    entity_offsets: np.ndarray = field(init=False, repr=False)
    entity_items: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        item_of_link = np.repeat(np.arange(self.n_items, dtype=np.int64), np.diff(self.offsets))
        order = np.lexsort((item_of_link, self.entities))
        counts = np.bincount(self.entities, minlength=self.n_entities) if len(self.entities) else \
            np.zeros(self.n_entities, dtype=np.int64)
        object.__setattr__(self, "entity_offsets", np.r_[0, np.cumsum(counts)].astype(np.int64))
        object.__setattr__(self, "entity_items", item_of_link[order])

    @classmethod
    def empty(cls, n_items: int = 0) -> ItemEntities:
        return cls(np.zeros(n_items + 1, dtype=np.int64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=str),
                   np.zeros(0, dtype=np.int8))

    @classmethod
    def from_pairs(cls, n_items: int, item_rows: np.ndarray, entity_ids: np.ndarray, names: list[str] | np.ndarray,
                   kinds: list[str] | np.ndarray) -> ItemEntities:
        """From (item row, entity id) pairs (duplicates dropped); `kinds` as names from KINDS."""
        rows, ents = np.asarray(item_rows, dtype=np.int64), np.asarray(entity_ids, dtype=np.int64)
        if len(rows):
            key = np.unique(rows * (len(names) + 1) + ents)  # sorted by row, then entity
            rows, ents = key // (len(names) + 1), key % (len(names) + 1)
        offsets = np.r_[0, np.cumsum(np.bincount(rows, minlength=n_items))].astype(np.int64)
        kind_ids = np.array([KINDS.index(k) for k in kinds], dtype=np.int8)
        return cls(offsets, ents.astype(np.int32), np.asarray(names, dtype=str), kind_ids)

    @property
    def n_items(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_entities(self) -> int:
        return len(self.names)

    @property
    def is_empty(self) -> bool:
        return len(self.entities) == 0

    def of(self, row: int) -> np.ndarray:
        """Entity ids of one item row (none outside the table)."""
        if not 0 <= row < self.n_items:
            return np.zeros(0, dtype=np.int32)
        return self.entities[self.offsets[row]:self.offsets[row + 1]]

    def kind(self, entity: int) -> str:
        return KINDS[int(self.kinds[entity])]

    def links(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `rows`, entity id) of every entity of every row; rows outside the table have none."""
        rows = np.asarray(rows, dtype=np.int64)
        ok = (rows >= 0) & (rows < self.n_items)
        safe = np.where(ok, rows, 0)
        starts = np.where(ok, self.offsets[safe], 0)
        lens = np.where(ok, self.offsets[safe + 1] - starts, 0)
        return np.repeat(np.arange(len(rows)), lens), self.entities[_ranges(starts, lens)].astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """What `kg.npz` (and the checkpoint's "kg") holds."""
        return {"offsets": self.offsets, "entities": self.entities, "names": self.names, "kinds": self.kinds}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray] | np.lib.npyio.NpzFile | None, n_items: int = 0) -> ItemEntities:
        """From `arrays()` (a dict, or a loaded npz); None (a checkpoint from before the KG) → empty."""
        if a is None:
            return cls.empty(n_items)
        return cls(np.asarray(a["offsets"], dtype=np.int64), np.asarray(a["entities"], dtype=np.int32),
                   np.asarray(a["names"], dtype=str), np.asarray(a["kinds"], dtype=np.int8))

    def save(self, path: Path) -> None:
        np.savez(path, **self.arrays())

    @classmethod
    def load(cls, path: Path) -> ItemEntities:
        with np.load(path, allow_pickle=False) as f:  # names are a fixed-width str array: no pickle needed
            return cls.from_arrays(f)


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated aranges [starts[i], starts[i] + lens[i]) (CSR expansion without a Python loop)."""
    total = int(lens.sum())
    if total == 0:
        return _EMPTY
    first = np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(starts, lens) + np.arange(total) - first


def _shared_pairs(table: ItemEntities, hist_items: np.ndarray, cand_rows: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Unique (candidate position, history-item position) pairs whose items share at least one entity."""
    hp, he = table.links(hist_items)
    cp, ce = table.links(cand_rows)
    if len(hp) == 0 or len(cp) == 0:
        return _EMPTY, _EMPTY
    order = np.argsort(he, kind="stable")
    he, hp = he[order], hp[order]
    lo, hi = np.searchsorted(he, ce, "left"), np.searchsorted(he, ce, "right")
    cand = np.repeat(cp, hi - lo)
    hist = hp[_ranges(lo, hi - lo)]
    # Two entities shared with one history item (same brand AND type) still count that item's events once.
    key = np.unique(cand * len(hist_items) + hist)
    return key // len(hist_items), key % len(hist_items)


def kg_features(table: ItemEntities, hist_rows: np.ndarray, hist_platforms: np.ndarray, target: int,
                cand_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kg_other, kg_target), float32 per candidate row: log1p of the number of history events on other
    platforms (resp. on the target platform) whose item shares a brand, type or category with the candidate.

    The first is the cross-platform signal (through linked entities only); the second is brand/type loyalty
    within the shop. Rows -1 (free text) or outside the table get 0.
    """
    n = len(cand_rows)
    if table.is_empty or n == 0 or len(hist_rows) == 0:
        return np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
    items, first, counts = np.unique(np.asarray(hist_rows, dtype=np.int64), return_index=True, return_counts=True)
    on_target = np.asarray(hist_platforms)[first] == target  # an item row belongs to one platform
    cand, hist = _shared_pairs(table, items, np.asarray(cand_rows, dtype=np.int64))
    w = counts[hist].astype(np.float64)
    other = np.bincount(cand, weights=np.where(on_target[hist], 0.0, w), minlength=n)
    own = np.bincount(cand, weights=np.where(on_target[hist], w, 0.0), minlength=n)
    return np.log1p(other).astype(np.float32), np.log1p(own).astype(np.float32)


def kg_candidates(table: ItemEntities, hist_rows: np.ndarray, hist_platforms: np.ndarray, target: int, n: int,
                  item_platform: np.ndarray, popularity: np.ndarray, exclude: np.ndarray = _EMPTY,
                  live: np.ndarray | None = None) -> np.ndarray:
    """Up to `n` rows of the target platform that share an entity with the history on other platforms, best
    first: by the number of such history events, then popularity, then lower row. Only for a person with no
    event on the target platform (whom retrieval knows least); none for anyone else, or without a KG.

    `item_platform`/`popularity`/`live`: per row; `exclude`: rows never to return (retrieved, request excludes).
    """
    hist_rows = np.asarray(hist_rows, dtype=np.int64)
    hist_platforms = np.asarray(hist_platforms, dtype=np.int64)
    if n <= 0 or table.is_empty or len(hist_rows) == 0 or (hist_platforms == target).any():
        return _EMPTY
    items, counts = np.unique(hist_rows, return_counts=True)
    _, ents = table.links(items)
    ents = np.unique(ents)
    starts = table.entity_offsets[ents]
    rows = np.unique(table.entity_items[_ranges(starts, table.entity_offsets[ents + 1] - starts)])
    rows = rows[rows < len(item_platform)]
    ok = item_platform[rows] == target
    if live is not None:
        ok &= live[rows]
    rows = rows[ok]
    if len(exclude):
        rows = rows[~np.isin(rows, exclude)]
    if len(rows) == 0:
        return _EMPTY
    cand, hist = _shared_pairs(table, items, rows)
    score = np.bincount(cand, weights=counts[hist].astype(np.float64), minlength=len(rows))
    order = np.lexsort((rows, -np.asarray(popularity, dtype=np.float64)[rows], -score))
    return rows[order[:n]].astype(np.int64)


def other_platform_entities(table: ItemEntities, hist_rows: np.ndarray, hist_platforms: np.ndarray, target: int
                            ) -> np.ndarray:
    """The entities of the history's items on platforms other than the target (unique, ascending): a result
    can have an entity reason (`shared_entity`) only if it has one of them."""
    other = np.asarray(hist_platforms) != target
    return np.unique(table.links(np.asarray(hist_rows, dtype=np.int64)[other])[1])


def shared_entity(table: ItemEntities, hist_rows: np.ndarray, hist_platforms: np.ndarray, target: int,
                  row: int) -> tuple[int, int] | None:
    """(history position, entity id) behind a result row: the newest event on another platform whose item
    shares an entity with it, brand before type before category; None when there is none."""
    mine = table.of(row)
    if len(mine) == 0:
        return None
    hist_rows = np.asarray(hist_rows, dtype=np.int64)
    other = np.flatnonzero(np.asarray(hist_platforms) != target)
    if len(other) == 0:
        return None
    pos, ents = table.links(hist_rows[other])
    hit = np.isin(ents, mine)
    if not hit.any():
        return None
    pos, ents = other[pos[hit]], ents[hit]
    best = np.lexsort((-pos, table.kinds[ents]))[0]  # the preferred kind, then the newest event
    return int(pos[best]), int(ents[best])
