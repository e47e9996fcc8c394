"""The scorer's neighbour table — its item-KNN feature and candidates — chosen per data set on valid.

Which neighbours predict the next item differs between data sets: on Food-Kitchen what follows an item in
people's timelines (sequential) beats whole-timeline co-occurrence; on sparse shops EASE or unweighted
co-occurrence may win, and on exports whose timestamps carry no information a recency weight only adds
noise. So every run builds each candidate table (co-occurrence cosine; sequential; both mixed; EASE),
scores each with each recency decay as a plain recommender on valid, and keeps the best; then, for that
table, how its counts are normalised (`TableSpec`: how much a popular candidate is penalised), and the
decay once more for the chosen normalisation.
The table travels in the checkpoint and the bundle (`knn.npz`), where the service
reads it with the same `contract.features.KnnTable`, whichever kind it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from training.baselines.ease import EASE
from training.baselines.itemknn import ItemKNN, TableBuilder, TableSpec
from training.evaluate import Query, metrics_from_ranks, ranks
from training.sequences import Dataset

# (alpha, shrink) worth trying for the best table kind (`TableSpec`; `TrainConfig.knn_normalisations`), the cosine first
NORMALISATIONS = ((0.5, 10.0), (0.8, 10.0), (1.0, 10.0), (0.5, 30.0), (0.8, 30.0), (1.0, 30.0))


@dataclass
class Neighbours:
    name: str  # a `TableSpec` label ("co-occurrence", "mixed a0.8 s30", …) or "ease"
    decay: float
    index: np.ndarray
    weight: np.ndarray
    valid_ndcg: float
    tried: dict[str, float] = field(default_factory=dict)  # "label@decay" → NDCG@10 of each candidate
    ease: EASE | None = None  # the fitted EASE (a baseline in its own right), when it was a candidate
    tables: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # every candidate table

    def baseline(self, ds: Dataset, name: str, decay: float, max_history: int) -> ItemKNN:
        """One candidate table as a plain recommender (history → Σ neighbour weights, popularity ties)."""
        return ItemKNN(decay=decay, max_history=max_history).with_table(ds, *self.tables[name])


def choose_neighbours(ds: Dataset, keep: np.ndarray, valid: Sequence[Query], decays: Sequence[float],
                      ease_lambda: float, max_history: int, log: Callable[[str], None] = print,
                      kinds: Sequence[str] = ("co-occurrence", "sequential", "mixed"),
                      normalisations: Sequence[tuple[float, float]] = ((0.5, 10.0),)) -> Neighbours:
    """The best (table, decay) on valid NDCG@10. `keep`: bool per event of `ds.timelines`, False for events
    the tables must not see (the scorer's held-out targets). `kinds`: `NEIGHBOUR_TABLES` to try, each as a
    cosine; `normalisations`: (alpha, shrink) then tried for the best kind (not for EASE; e.g. `NORMALISATIONS`)."""
    builder = TableBuilder(ds.timelines, ds.n_items, keep)
    tables = {kind: builder.table(TableSpec(kind)) for kind in kinds}
    ease = None
    if ease_lambda > 0:
        ease = EASE(lam=ease_lambda).fit(ds, keep=keep)
        tables["ease"] = ease.neighbours()
    tried: dict[str, float] = {}

    def score(name: str, decay: float) -> float:
        key = f"{name}@{decay}"
        if key not in tried:
            knn = ItemKNN(decay=decay, max_history=max_history).with_table(ds, *tables[name])
            tried[key] = metrics_from_ranks(ranks(ds, valid, knn.score))["ndcg@10"]
        return tried[key]

    def best() -> tuple[str, float]:
        key = max(tried, key=tried.get)
        name, decay = key.rsplit("@", 1)
        return name, float(decay)

    for name in list(tables):
        for decay in decays:
            score(name, decay)
    name, decay = best()
    if name != "ease":  # the winner's normalisation at its decay, then every decay for the best normalisation
        kind = TableSpec.parse(name).kind
        for alpha, shrink in normalisations:
            spec = TableSpec(kind, alpha, shrink)
            if spec.label not in tables:
                tables[spec.label] = builder.table(spec)
            score(spec.label, decay)
        name, _ = best()
        for d in decays:
            score(name, d)
        name, decay = best()
    chosen = Neighbours(name, decay, *tables[name], tried[f"{name}@{decay}"], tried, ease, tables)
    log("neighbours on valid (NDCG@10): " + ", ".join(f"{k} {v:.4f}" for k, v in tried.items())
        + f" → {name}, decay {decay}")
    return chosen
