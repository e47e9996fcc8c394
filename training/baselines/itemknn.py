"""Item-KNN over fused timelines: items that the same people interacted with, on any platform."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from contract.features import knn_scores
from training.baselines.popularity import popularity_tiebreak, score_per_query
from training.evaluate import Query
from training.sequences import Dataset, Timelines

NEIGHBOUR_TABLES = ("co-occurrence", "sequential", "mixed")


@dataclass(frozen=True)
class TableSpec:
    """One neighbour table: its kind and how its counts are normalised. weight(i → j) = count(i, j) /
    (n_i^alpha · n_j^(1 − alpha) + shrink), n = the items' event counts: alpha 0.5 is the cosine; towards 1
    a popular candidate j is penalised less (an asymmetric cosine). On Food-Kitchen and its variants alpha 0.8
    with shrink 30 lifted the plain mixed ranking by 8–13% on held-out last events, but not the scorer over it
    (docs/results.md); `TrainConfig.knn_normalisations` makes it a choice on valid."""

    kind: str
    alpha: float = 0.5
    shrink: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in NEIGHBOUR_TABLES:
            raise ValueError(f"unknown neighbour table {self.kind!r}: choose from {', '.join(NEIGHBOUR_TABLES)}")

    @property
    def label(self) -> str:
        """The kind alone for the default (cosine, shrink 10), else e.g. "mixed a0.8 s30"."""
        if (self.alpha, self.shrink) == (0.5, 10.0):
            return self.kind
        return f"{self.kind} a{self.alpha:g} s{self.shrink:g}"

    @classmethod
    def parse(cls, label: str) -> TableSpec:
        kind, *norm = label.split()
        if len(norm) not in (0, 2) or any(p[:1] not in "as" for p in norm):
            raise ValueError(f"not a neighbour table: {label!r} (e.g. 'mixed' or 'mixed a0.8 s30')")
        values = {p[0]: float(p[1:]) for p in norm}
        return cls(kind, values.get("a", 0.5), values.get("s", 10.0))


def build_neighbours(timelines: Timelines, n_items: int, k: int = 100, shrink: float = 10.0,
                     keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours per item from person × item co-occurrence (whole timelines, undirected).

    `keep` (bool per event) leaves events out, e.g. held-out targets. Returns (index int32, weight float32),
    both [n_items, k], index -1 where an item has fewer neighbours.
    """
    return _top_k(_normalise(*_co_occurrence_counts(timelines, n_items, keep), 0.5, shrink), k)


def build_transitions(timelines: Timelines, n_items: int, k: int = 100, window: int = 10, shrink: float = 10.0,
                      keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items that *follow* each item in people's timelines (directed "sequential rules").

    A pair (a, then b d events later, d ≤ `window`) counts 1/d, on any platform. For next-item prediction the
    order carries what whole-timeline co-occurrence averages away (Food-Kitchen valid NDCG@10 as a plain
    ranking: 0.1142 vs 0.0873 for co-occurrence). Same normalisation and shape as `build_neighbours`.
    """
    return _top_k(_normalise(*_transition_counts(timelines, n_items, window, keep), 0.5, shrink), k)


def build_mixed(timelines: Timelines, n_items: int, k: int = 100, shrink: float = 10.0,
                keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Co-occurrence and sequential similarities in one table, each scaled to mean 1, sequential counted
    twice: what follows an item, with what people have alongside it as a second opinion. (About the best weight
    on Food-Kitchen valid, 0.1173 vs 0.1142 for sequential alone; each data set still picks its table on valid.)"""
    return TableBuilder(timelines, n_items, keep, k).table(TableSpec("mixed", shrink=shrink))


class TableBuilder:
    """Neighbour tables over one set of events: the raw counts are computed once, then normalised per spec."""

    def __init__(self, timelines: Timelines, n_items: int, keep: np.ndarray | None = None, k: int = 100) -> None:
        self.timelines, self.n_items, self.keep, self.k = timelines, n_items, keep, k
        self._counts: dict[str, tuple[sp.csr_matrix, np.ndarray]] = {}
        self._similarities: dict[TableSpec, sp.csr_matrix] = {}  # mixed reuses its two parts' similarities

    def counts(self, kind: str) -> tuple[sp.csr_matrix, np.ndarray]:
        if kind not in self._counts:
            tl, n, keep = self.timelines, self.n_items, self.keep
            self._counts[kind] = (_co_occurrence_counts(tl, n, keep) if kind == "co-occurrence"
                                  else _transition_counts(tl, n, 10, keep))
        return self._counts[kind]

    def similarity(self, spec: TableSpec) -> sp.csr_matrix:
        if spec not in self._similarities:
            if spec.kind != "mixed":
                sim = _normalise(*self.counts(spec.kind), spec.alpha, spec.shrink)
            else:
                co, seq = (self.similarity(TableSpec(k, spec.alpha, spec.shrink))
                           for k in ("co-occurrence", "sequential"))
                sim = co / _mean_or_one(co) + 2.0 * seq / _mean_or_one(seq)
            self._similarities[spec] = sim
        return self._similarities[spec]

    def table(self, spec: TableSpec) -> tuple[np.ndarray, np.ndarray]:
        """(index int32, weight float32) [n_items, k]: the spec's top-k neighbours per item."""
        return _top_k(self.similarity(spec), self.k)


def build_tables(timelines: Timelines, n_items: int, specs: Sequence[str | TableSpec], k: int = 100,
                 keep: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{label: table} for several specs (a kind alone: the cosine), each count matrix computed once."""
    builder = TableBuilder(timelines, n_items, keep, k)
    specs = [TableSpec.parse(s) if isinstance(s, str) else s for s in specs]
    return {spec.label: builder.table(spec) for spec in specs}


def _mean_or_one(m: sp.csr_matrix) -> float:
    return float(m.data.mean()) if m.nnz and m.data.mean() > 0 else 1.0


def _co_occurrence_counts(timelines: Timelines, n_items: int, keep: np.ndarray | None
                          ) -> tuple[sp.csr_matrix, np.ndarray]:
    """(people who have both i and j, people who have i): whole timelines, repeats counted once."""
    person, items = _kept_events(timelines, keep)
    x = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (person, items)),
                      shape=(len(timelines), n_items))
    x.data[:] = 1.0  # binary: repeats count once
    co = (x.T @ x).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    return co, np.asarray(x.sum(axis=0)).ravel().astype(np.float64)


def _transition_counts(timelines: Timelines, n_items: int, window: int, keep: np.ndarray | None
                       ) -> tuple[sp.csr_matrix, np.ndarray]:
    """(Σ 1/d over j following i d ≤ `window` events later, each item's events)."""
    person, items = _kept_events(timelines, keep)
    src, dst, val = [], [], []
    for d in range(1, window + 1):
        ok = (person[d:] == person[:-d]) & (items[d:] != items[:-d])
        src.append(items[:-d][ok])
        dst.append(items[d:][ok])
        val.append(np.full(int(ok.sum()), 1.0 / d, dtype=np.float32))
    follows = sp.csr_matrix((np.concatenate(val), (np.concatenate(src), np.concatenate(dst))),
                            shape=(n_items, n_items))
    follows.sum_duplicates()
    return follows, np.bincount(items, minlength=n_items).astype(np.float64)


def _kept_events(timelines: Timelines, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    person = np.repeat(np.arange(len(timelines)), np.diff(timelines.offsets))
    if keep is None:
        return person, timelines.items
    return person[keep], timelines.items[keep]


def _normalise(counts: sp.csr_matrix, n: np.ndarray, alpha: float, shrink: float) -> sp.csr_matrix:
    """counts[i, j] / (n_i^alpha n_j^(1 − alpha) + shrink), same sparsity (alpha 0.5: the cosine)."""
    c = counts.tocoo()
    # The cosine as it always was, to the bit: the scorer reads these weights and is chaotic in them (two seed-0
    # Food-Kitchen runs whose tables differed in the last bit: test NDCG@10 0.1144 and 0.1080, while re-training
    # on the same inputs repeats to the digit; docs/results.md)
    base = np.sqrt(n[c.row] * n[c.col]) if alpha == 0.5 else n[c.row] ** alpha * n[c.col] ** (1.0 - alpha)
    sim = c.data / (base + shrink)
    return sp.csr_matrix((sim.astype(np.float32), (c.row, c.col)), shape=counts.shape)


def _top_k(sim: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest entries: (index int32, weight float32) [n_items, k], index -1 where fewer."""
    sim = sim.tocsr()
    n_items = sim.shape[0]
    index = np.full((n_items, k), -1, dtype=np.int32)
    weight = np.zeros((n_items, k), dtype=np.float32)
    for i in range(n_items):
        lo, hi = sim.indptr[i], sim.indptr[i + 1]
        if lo == hi:
            continue
        j, w = sim.indices[lo:hi], sim.data[lo:hi]
        top = np.argsort(-w, kind="stable")[:k]
        index[i, : len(top)] = j[top]
        weight[i, : len(top)] = w[top]
    return index, weight


class ItemKNN:
    name = "item-knn"

    def __init__(self, k: int = 100, decay: float = 0.8, max_history: int = 50, table: str = "co-occurrence"
                 ) -> None:
        """`table`: a `TableSpec` label, e.g. "co-occurrence", "mixed" or "mixed a0.8 s30"."""
        self.k, self.decay, self.max_history, self.table = k, decay, max_history, TableSpec.parse(table)

    def fit(self, ds: Dataset) -> ItemKNN:
        return self.with_table(ds, *TableBuilder(ds.timelines, ds.n_items, k=self.k).table(self.table))

    def with_table(self, ds: Dataset, index: np.ndarray, weight: np.ndarray) -> ItemKNN:
        """Use a neighbour table built elsewhere (e.g. a checkpoint's, or EASE's `neighbours()`)."""
        self.ds, self.index, self.weight = ds, index, weight
        self.tiebreak = popularity_tiebreak(ds, 1e-6)
        return self

    def score(self, queries: Sequence[Query]) -> list[np.ndarray]:
        return score_per_query(self.ds, queries, self.tiebreak, lambda q, cand: knn_scores(
            q.items, cand, self.index, self.weight, self.max_history, self.decay))
