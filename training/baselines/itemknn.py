"""Item-KNN over fused timelines: items that the same people interacted with, on any platform."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from contract.features import knn_scores
from training.baselines.popularity import popularity_tiebreak, score_per_query
from training.evaluate import Query
from training.sequences import Dataset, Timelines


def build_neighbours(timelines: Timelines, n_items: int, k: int = 100, shrink: float = 10.0,
                     keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours per item from person × item co-occurrence.

    `keep` (bool per event) leaves events out, e.g. held-out targets. Returns (index int32, weight float32),
    both [n_items, k], index -1 where an item has fewer neighbours.
    """
    person_of_event = np.repeat(np.arange(len(timelines)), np.diff(timelines.offsets))
    items = timelines.items
    if keep is not None:
        person_of_event, items = person_of_event[keep], items[keep]
    x = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (person_of_event, items)),
                      shape=(len(timelines), n_items))
    x.data[:] = 1.0  # binary: repeats count once
    co = (x.T @ x).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    n = np.asarray(x.sum(axis=0)).ravel()
    index = np.full((n_items, k), -1, dtype=np.int32)
    weight = np.zeros((n_items, k), dtype=np.float32)
    for i in range(n_items):
        lo, hi = co.indptr[i], co.indptr[i + 1]
        if lo == hi:
            continue
        j = co.indices[lo:hi]
        c = co.data[lo:hi]
        sim = c / (np.sqrt(n[i] * n[j]) + shrink)
        top = np.argsort(-sim)[:k]
        index[i, : len(top)] = j[top]
        weight[i, : len(top)] = sim[top]
    return index, weight


class ItemKNN:
    name = "item-knn"

    def __init__(self, k: int = 100, decay: float = 0.8, max_history: int = 50) -> None:
        self.k, self.decay, self.max_history = k, decay, max_history

    def fit(self, ds: Dataset) -> ItemKNN:
        return self.with_table(ds, *build_neighbours(ds.timelines, ds.n_items, self.k))

    def with_table(self, ds: Dataset, index: np.ndarray, weight: np.ndarray) -> ItemKNN:
        """Use a neighbour table built elsewhere (e.g. a checkpoint's, or EASE's `neighbours()`)."""
        self.ds, self.index, self.weight = ds, index, weight
        self.tiebreak = popularity_tiebreak(ds, 1e-6)
        return self

    def score(self, queries: Sequence[Query]) -> list[np.ndarray]:
        return score_per_query(self.ds, queries, self.tiebreak, lambda q, cand: knn_scores(
            q.items, cand, self.index, self.weight, self.max_history, self.decay))
