"""Retrieve, complete with item-KNN and the knowledge graph, re-rank: the one implementation the service and
the evaluator both run.

Only the model runtime differs, and it is plugged in as a `Backend`: ONNX Runtime + FAISS in the service
(`app.services.ranking`), the trained torch modules + exact search offline (`training.pipeline`). Which
candidates are re-ranked, which features the scorer sees and how ties are broken live here, once.

    feeds  = features.user_encoder_feeds(histories, targets, tables.vectors, tables.max_history)
    u      = backend.user_vectors(feeds)
    ranked = rank(backend, tables, queries, u)      # per query: rows best first, scores, candidate set
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from contract.als import AlsFactors
from contract.features import (
    HISTORY_SNAPSHOT,
    History,
    KnnScores,
    KnnTable,
    candidate_features,
    knn_candidates,
    user_encoder_feeds,
)
from contract.kg import ItemEntities, kg_candidates

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Query:
    history: History
    target: int  # platform id
    now: float  # epoch seconds: "days since the last event on the target platform" is measured to it
    exclude_seen: bool = True
    exclude: np.ndarray = field(default_factory=lambda: _EMPTY)  # item rows never to return
    # bool per item row: the only rows it may return (request filters; recommendable target rows), or None
    allowed: np.ndarray | None = None

    def excluded(self) -> np.ndarray:
        seen = self.history.rows[self.history.on(self.target)] if self.exclude_seen else _EMPTY
        return np.concatenate([seen, self.exclude]) if len(self.exclude) else seen


@dataclass(frozen=True)
class Ranked:
    rows: np.ndarray  # int64 item rows, best first
    scores: np.ndarray  # float32 scorer scores (retrieval scores without a scorer), same order
    candidates: np.ndarray  # int64 every re-ranked row, in candidate order


@dataclass(frozen=True)
class Candidates:
    """One query's re-ranking inputs: candidate rows, their vectors' dot with the user, scorer features."""

    rows: np.ndarray
    extras: np.ndarray  # [len(rows), len(features.scorer_features(tables.kg_features))]


@dataclass(frozen=True)
class Tables:
    """What ranking reads besides the models: the item table and the bundle's (or checkpoint's) constants."""

    vectors: np.ndarray  # float32 [n_rows, D] unit item vectors
    popularity: np.ndarray  # [n_rows]
    item_platform: np.ndarray  # int64 [n_rows]
    max_popularity: Mapping[int, float]  # per platform
    knn: KnnTable
    retrieval_candidates: int
    knn_candidates: int = 0
    live: np.ndarray | None = None  # bool [n_rows]; None = every row
    kg: ItemEntities = field(default_factory=ItemEntities.empty)  # items' entities; empty: no knowledge graph
    kg_candidates: int = 0  # for people new to the target platform: items sharing entities with their history
    kg_features: bool = False  # the scorer reads the KG features (features.KG_EXTRAS) after SCORER_EXTRAS
    als: AlsFactors | None = None  # ALS item factors: the scorer reads the ALS feature (features.ALS_EXTRAS) last
    als_candidates: int = 0  # + the N best ALS items the others missed (needs `als`)

    @property
    def max_history(self) -> int:
        return self.knn.max_history


class Backend(Protocol):
    """The model runtime."""

    has_scorer: bool

    def user_vectors(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """float32 [B, D] unit user vectors from `user_encoder_feeds`."""

    def search(self, target: int, user_vecs: np.ndarray, n: int, exclude: Sequence[np.ndarray]
               ) -> list[np.ndarray]:
        """Per user vector: the `n` target-platform rows with the largest inner product, best first,
        never one in its `exclude`. A backend that serves filtered queries (`Query.allowed`) takes a fifth
        argument, `allowed`: per user vector a bool row mask or None; it is passed only when a query has one."""

    def score(self, user_vecs: np.ndarray, item_vecs: np.ndarray, extras: np.ndarray) -> np.ndarray:
        """The scorer over aligned rows: float32 [N]."""


def user_vectors(backend: Backend, tables: Tables, histories: Sequence[History], targets: Sequence[int]
                 ) -> np.ndarray:
    feeds = user_encoder_feeds(histories, targets, tables.vectors, tables.max_history)
    return backend.user_vectors(feeds).astype(np.float32, copy=False)


def candidates(backend: Backend, tables: Tables, queries: Sequence[Query], user_vecs: np.ndarray,
               n: int | None = None) -> list[Candidates]:
    """Retrieval's top `n` (default `tables.retrieval_candidates`) per query, then up to `knn_candidates`
    live, unseen target-platform items by item-KNN co-occurrence with the history, then (a query with no
    history on the target platform) up to `kg_candidates` sharing entities with it (`contract.kg`), then up
    to `als_candidates` by ALS score (`contract.als`); and their features."""
    n = n or tables.retrieval_candidates
    knn_all = [tables.knn.scores(q.history.rows) for q in queries]
    als_user = [tables.als.user_vector(q.history.rows[-HISTORY_SNAPSHOT:]) if tables.als is not None else None
                for q in queries]
    rows_of: list[np.ndarray] = [_EMPTY] * len(queries)
    by_target: dict[int, list[int]] = {}
    for i, q in enumerate(queries):
        by_target.setdefault(q.target, []).append(i)
    for target, idx in by_target.items():
        excl = [queries[i].excluded() for i in idx]
        allowed = [queries[i].allowed for i in idx]
        if all(a is None for a in allowed):
            found = backend.search(target, user_vecs[idx], n, excl)
        else:  # filtered queries: only a backend that filters gets them (the service's)
            found = backend.search(target, user_vecs[idx], n, excl, allowed)  # type: ignore[call-arg]
        als_scores = None  # one product for the group's ALS candidates (`AlsFactors.platform_scores`)
        if tables.als_candidates and tables.als is not None and backend.has_scorer:
            als_scores = tables.als.platform_scores(np.stack([als_user[i] for i in idx]), target)
        for j, (i, ex, rows) in enumerate(zip(idx, excl, found, strict=True)):
            live = queries[i].allowed if queries[i].allowed is not None else tables.live
            if tables.knn_candidates and backend.has_scorer:
                more = knn_candidates(knn_all[i], tables.knn_candidates, tables.item_platform, target,
                                      np.concatenate([ex, rows]), live)
                rows = np.concatenate([rows, more])
            if tables.kg_candidates and backend.has_scorer:  # none unless the target platform is new to them
                h = queries[i].history
                more = kg_candidates(tables.kg, h.rows[-HISTORY_SNAPSHOT:], h.platforms[-HISTORY_SNAPSHOT:],
                                     target, tables.kg_candidates, tables.item_platform, tables.popularity,
                                     np.concatenate([ex, rows]), live)
                rows = np.concatenate([rows, more])
            if als_scores is not None:
                more = tables.als.candidates(als_user[i], target, tables.als_candidates, np.concatenate([ex, rows]),
                                             live, als_scores[j])
                rows = np.concatenate([rows, more])
            rows_of[i] = rows
    return [Candidates(rows, features(tables, q, user_vecs[i], tables.vectors[rows], rows, knn_all[i], als_user[i]))
            for i, (q, rows) in enumerate(zip(queries, rows_of, strict=True))]


def features(tables: Tables, q: Query, user_vec: np.ndarray, item_vecs: np.ndarray, rows: np.ndarray,
             knn_all: KnnScores | None = None, als_user: np.ndarray | None = None) -> np.ndarray:
    """Scorer features of items given by vector and row (-1 for items the tables do not hold, e.g. free text)."""
    rows = np.asarray(rows, dtype=np.int64)
    popularity = np.where(rows >= 0, tables.popularity[np.maximum(rows, 0)], 0.0)
    return candidate_features(q.history, q.target, q.now, item_vecs @ user_vec, rows, popularity,
                              tables.max_popularity[q.target], tables.knn, knn_all,
                              tables.kg if tables.kg_features else None, tables.als, als_user)


def rerank(backend: Backend, tables: Tables, user_vecs: np.ndarray, cands: Sequence[Candidates]) -> list[Ranked]:
    """Scores every query's candidates in one scorer call and orders them (ties keep candidate order).
    Without a scorer the candidates stay in retrieval order, scored by u·v."""
    sizes = [len(c.rows) for c in cands]
    if backend.has_scorer and sum(sizes):
        all_rows = np.concatenate([c.rows for c in cands])
        s = backend.score(np.repeat(user_vecs, sizes, axis=0), tables.vectors[all_rows],
                          np.concatenate([c.extras for c in cands]))
    else:
        s = np.concatenate([c.extras[:, 0] for c in cands]) if sum(sizes) else np.zeros(0, np.float32)
    out, start = [], 0
    for c in cands:
        sc = np.asarray(s[start:start + len(c.rows)], dtype=np.float32)
        start += len(c.rows)
        order = np.argsort(-sc, kind="stable")
        out.append(Ranked(c.rows[order], sc[order], c.rows))
    return out


def rank(backend: Backend, tables: Tables, queries: Sequence[Query], user_vecs: np.ndarray | None = None,
         n_candidates: int | None = None) -> list[Ranked]:
    """Retrieve and re-rank each query: every candidate, best first. `user_vecs`: when the caller has them
    (the service keeps them in a person's profile), they must be `user_vectors` of the same histories."""
    if not queries:
        return []
    if user_vecs is None:
        user_vecs = user_vectors(backend, tables, [q.history for q in queries], [q.target for q in queries])
    return rerank(backend, tables, user_vecs, candidates(backend, tables, queries, user_vecs, n_candidates))
