"""The scorer's neighbour table — its item-KNN feature and candidates — chosen per data set on valid.

Which neighbours predict the next item differs between data sets: on Food-Kitchen what follows an item in
people's timelines (sequential) beats whole-timeline co-occurrence; on sparse shops EASE or unweighted
co-occurrence may win, and on exports whose timestamps carry no information a recency weight only adds
noise. So every run builds each candidate table (co-occurrence cosine; sequential; both mixed; EASE),
scores each with each recency decay as a plain recommender on valid, and keeps the best.
The table travels in the checkpoint and the bundle (`knn.npz`), where the service
reads it with the same `contract.features.KnnTable`, whichever kind it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from training.baselines.ease import EASE
from training.baselines.itemknn import ItemKNN, build_tables
from training.evaluate import Query, metrics_from_ranks, ranks
from training.sequences import Dataset


@dataclass
class Neighbours:
    name: str  # "co-occurrence" | "sequential" | "mixed" | "ease"
    decay: float
    index: np.ndarray
    weight: np.ndarray
    valid_ndcg: float
    tried: dict[str, float] = field(default_factory=dict)  # "name@decay" → NDCG@10 of each candidate
    ease: EASE | None = None  # the fitted EASE (a baseline in its own right), when it was a candidate
    tables: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # every candidate table

    def baseline(self, ds: Dataset, name: str, decay: float, max_history: int) -> ItemKNN:
        """One candidate table as a plain recommender (history → Σ neighbour weights, popularity ties)."""
        return ItemKNN(decay=decay, max_history=max_history).with_table(ds, *self.tables[name])


def choose_neighbours(ds: Dataset, keep: np.ndarray, valid: Sequence[Query], decays: Sequence[float],
                      ease_lambda: float, max_history: int, log: Callable[[str], None] = print,
                      kinds: Sequence[str] = ("co-occurrence", "sequential", "mixed")) -> Neighbours:
    """The best (table, decay) on valid NDCG@10. `keep`: bool per event of `ds.timelines`, False for events
    the tables must not see (the scorer's held-out targets). `kinds`: tables of `NEIGHBOUR_TABLES` to try."""
    tables = build_tables(ds.timelines, ds.n_items, kinds, keep=keep)
    ease = None
    if ease_lambda > 0:
        ease = EASE(lam=ease_lambda).fit(ds, keep=keep)
        tables["ease"] = ease.neighbours()
    best: Neighbours | None = None
    tried: dict[str, float] = {}
    for name, (index, weight) in tables.items():
        for decay in decays:
            knn = ItemKNN(decay=decay, max_history=max_history).with_table(ds, index, weight)
            ndcg = metrics_from_ranks(ranks(ds, valid, knn.score))["ndcg@10"]
            tried[f"{name}@{decay}"] = ndcg
            if best is None or ndcg > best.valid_ndcg:
                best = Neighbours(name, decay, index, weight, ndcg)
    assert best is not None, "no neighbour table to choose from"
    best.tried, best.ease, best.tables = tried, ease, tables
    log("neighbours on valid (NDCG@10): " + ", ".join(f"{k} {v:.4f}" for k, v in tried.items())
        + f" → {best.name}, decay {best.decay}")
    return best
