"""Recommendation as plain functions over numpy arrays and the loaded models: the one implementation.

The service calls these for /v1/recommend, /v1/rank and /v1/batch/score, and the offline evaluator calls
the same ones, so the figures it reports describe exactly what the service does (no train/serve skew):

    bundle  = app.services.model_bundle.load_bundle(bundle_dir, settings)   # models + catalog + indexes
    history = History.from_ids(bundle.catalog, item_ids, platform_ids, ts)  # fused events, oldest first
    query   = Query(history, target_platform_id, now_ts, exclude_seen=True, exclude=excluded_rows)
    ranked  = rank(bundle.models, bundle.catalog, [query],
                   n_candidates=max(bundle.manifest.retrieval_candidates, k))[0]
    ranked.rows[:k], ranked.scores[:k]     # /v1/recommend's items (catalog rows) and scores, in order

A person with an empty history is answered with `popular(catalog, target, k)` instead (cold start).

Steps (the semantics of `training.pipeline.Ranker.final`, with the bundle's ONNX models):
1. user vector: user_encoder.onnx over `contract.features.history_inputs` of the history;
2. retrieval: the target platform's FAISS index, top `retrieval_candidates` by inner product, leaving out
   items the person has seen (if `exclude_seen`) and the request's excluded items; then up to
   `knn_candidates` more: the live items with the best item-KNN score given the history;
3. re-rank: scorer.onnx over [user, item, extras] with `contract.features.scorer_extras`; best first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from app.services.retrieval import Catalog
from contract.features import history_inputs, knn_candidates, knn_dense, knn_lookup, scorer_extras

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Models:
    """The ONNX sessions and the constants the ranking needs, from one bundle."""

    user_encoder: ort.InferenceSession
    scorer: ort.InferenceSession
    max_history: int
    retrieval_candidates: int
    knn_index: np.ndarray  # int32 [n_items, K] rows of items.parquet, -1 = none
    knn_weight: np.ndarray  # float32 [n_items, K]
    knn_decay: float  # manifest.knn_decay
    knn_candidates: int = 0  # manifest.knn_candidates: item-KNN items added to retrieval's candidates


@dataclass(frozen=True)
class History:
    """One person's fused events, oldest first, as item rows (items unknown to the catalog left out)."""

    rows: np.ndarray  # int64
    platforms: np.ndarray  # int64 platform ids (not shifted)
    ts: np.ndarray  # int64 epoch seconds

    @classmethod
    def empty(cls) -> History:
        return cls(_EMPTY, _EMPTY, _EMPTY)

    @classmethod
    def from_ids(cls, catalog: Catalog, item_ids: Sequence[str], platforms: Sequence[int],
                 ts: Sequence[int]) -> History:
        rows = catalog.rows_of(item_ids)
        keep = rows >= 0
        return cls(rows[keep], np.asarray(platforms, dtype=np.int64)[keep],
                   np.asarray(ts, dtype=np.int64)[keep])

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class Query:
    history: History
    target: int  # platform id
    now: float  # epoch seconds: "days since the last event on the target platform" is measured to it
    exclude_seen: bool = True
    exclude: np.ndarray = field(default_factory=lambda: _EMPTY)  # item rows never to return


@dataclass(frozen=True)
class Ranked:
    rows: np.ndarray  # int64 item rows, best first
    scores: np.ndarray  # float32 scorer scores, same order
    candidates: np.ndarray  # int64 every retrieved row (the set the scores re-ranked), retrieval order


def user_vectors(models: Models, catalog: Catalog, histories: Sequence[History], targets: Sequence[int]
                 ) -> np.ndarray:
    """float32 [B, D] unit user vectors: one per (history, target platform)."""
    n = models.max_history
    arrays = [history_inputs(h.rows, h.platforms, h.ts, n) for h in histories]
    rows = np.stack([a[0] for a in arrays])
    vecs = catalog.vectors[np.maximum(rows, 0)] * (rows >= 0)[..., None]
    feed = {
        "hist_vecs": vecs.astype(np.float32, copy=False),
        "hist_platform": np.stack([a[1] for a in arrays]),
        "hist_bucket": np.stack([a[2] for a in arrays]),
        "hist_mask": np.stack([a[3] for a in arrays]),
        "target_platform": np.asarray(targets, dtype=np.int64),
    }
    return models.user_encoder.run(None, feed)[0].astype(np.float32, copy=False)


def history_knn(models: Models, rows: np.ndarray) -> np.ndarray:
    """`features.knn_dense` of history item rows: item-KNN scores of every item row the bundle's table knows."""
    return knn_dense(rows, models.knn_index, models.knn_weight, models.max_history, models.knn_decay)


def candidate_extras(models: Models, catalog: Catalog, history: History, target: int, now: float,
                     user_vec: np.ndarray, item_vecs: np.ndarray, item_rows: np.ndarray,
                     knn: np.ndarray | None = None) -> np.ndarray:
    """Scorer features [C, E] for candidates given by vector (and table row, -1 for items not in it).
    `knn`: `history_knn` of the whole history, when the caller has it already."""
    on_target = history.platforms == target
    last_ts = int(history.ts[on_target].max()) if on_target.any() else None
    rows = np.asarray(item_rows, dtype=np.int64)
    knn = knn_lookup(history_knn(models, history.rows) if knn is None else knn, rows)
    knn_target = knn_lookup(history_knn(models, history.rows[on_target]), rows)
    popularity = np.where(rows >= 0, catalog.popularity[np.maximum(rows, 0)], 0.0)
    return scorer_extras(item_vecs @ user_vec, popularity, catalog.max_popularity[target],
                         int(on_target.sum()), len(history),
                         None if last_ts is None else (now - last_ts) / 86400.0,
                         bool(len(history) and history.platforms[-1] == target), knn, knn_target)


def score(models: Models, user_vecs: np.ndarray, item_vecs: np.ndarray, extras: np.ndarray) -> np.ndarray:
    """scorer.onnx over aligned rows: float32 [N]."""
    if len(item_vecs) == 0:
        return np.zeros(0, dtype=np.float32)
    feed = {"user_vec": np.ascontiguousarray(user_vecs, dtype=np.float32),
            "item_vec": np.ascontiguousarray(item_vecs, dtype=np.float32),
            "extras": np.ascontiguousarray(extras, dtype=np.float32)}
    return models.scorer.run(None, feed)[0].reshape(-1).astype(np.float32, copy=False)


def score_items(models: Models, catalog: Catalog, queries: Sequence[Query], user_vecs: np.ndarray,
                item_vecs: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
    """float32 [B, M]: every query's scorer score for the same M given items (one scorer call)."""
    m = len(item_vecs)
    if not queries or m == 0:
        return np.zeros((len(queries), m), dtype=np.float32)
    extras = [candidate_extras(models, catalog, q.history, q.target, q.now, user_vecs[i], item_vecs,
                               item_rows) for i, q in enumerate(queries)]
    s = score(models, np.repeat(user_vecs, m, axis=0), np.tile(item_vecs, (len(queries), 1)),
              np.concatenate(extras))
    return s.reshape(len(queries), m)


def seen_rows(history: History, target: int) -> np.ndarray:
    return history.rows[history.platforms == target]


def rank(models: Models, catalog: Catalog, queries: Sequence[Query], user_vecs: np.ndarray | None = None,
         n_candidates: int | None = None) -> list[Ranked]:
    """Retrieve and re-rank for each query: every retrieved candidate, best first.

    `user_vecs` may be given (the service keeps them in the person's profile; they are what
    `user_vectors` returns for the same history). `n_candidates` defaults to the bundle's
    `retrieval_candidates`. The first k of a `Ranked` are the top k.
    """
    if not queries:
        return []
    if user_vecs is None:
        user_vecs = user_vectors(models, catalog, [q.history for q in queries], [q.target for q in queries])
    n = n_candidates or models.retrieval_candidates
    by_target: dict[int, list[int]] = {}
    for i, q in enumerate(queries):
        by_target.setdefault(q.target, []).append(i)
    cands: list[np.ndarray] = [_EMPTY] * len(queries)
    knn = [history_knn(models, q.history.rows) for q in queries]
    for target, idx in by_target.items():
        excl = [np.concatenate([seen_rows(queries[i].history, target) if queries[i].exclude_seen else _EMPTY,
                                queries[i].exclude]) for i in idx]
        for j, (i, rows) in enumerate(zip(idx, catalog.indexes[target].search(user_vecs[idx], n, excl),
                                          strict=True)):
            if models.knn_candidates:
                more = knn_candidates(knn[i], models.knn_candidates, catalog.platform, target,
                                      np.concatenate([excl[j], rows]), catalog.live)
                rows = np.concatenate([rows, more])
            cands[i] = rows
    extras = [candidate_extras(models, catalog, q.history, q.target, q.now, user_vecs[i],
                               catalog.vectors[cands[i]], cands[i], knn[i]) for i, q in enumerate(queries)]
    all_rows = np.concatenate(cands)
    s = score(models, np.repeat(user_vecs, [len(c) for c in cands], axis=0), catalog.vectors[all_rows],
              np.concatenate(extras) if extras else np.zeros((0, 0), dtype=np.float32))
    out, start = [], 0
    for c in cands:
        sc = s[start:start + len(c)]
        start += len(c)
        order = np.argsort(-sc, kind="stable")  # ties keep retrieval order
        out.append(Ranked(c[order], sc[order], c))
    return out


def popular(catalog: Catalog, target: int, n: int, exclude: np.ndarray = _EMPTY) -> Ranked:
    """The cold-start answer: the platform's most popular live items; score = normalised log popularity."""
    rows = catalog.popular[target]
    if len(exclude):
        rows = rows[~np.isin(rows, exclude)]
    rows = rows[:n]
    scores = (np.log1p(catalog.popularity[rows]) / np.log1p(max(catalog.max_popularity[target], 1.0)))
    return Ranked(rows, scores.astype(np.float32), rows)


def explain(catalog: Catalog, history: History, result_vecs: np.ndarray, n_reasons: int, max_history: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Why each result: the recent history items whose vectors agree most with it.

    (reason rows [R, n] with -1 padding, weights [R, n] summing to 1 per result): the `n_reasons`
    history items (of the last `max_history`, i.e. those the user encoder saw) with the largest positive
    dot product with the result's vector, weights proportional to those dot products.
    """
    hist = np.unique(history.rows[-max_history:])
    r = len(result_vecs)
    out_rows = np.full((r, n_reasons), -1, dtype=np.int64)
    out_w = np.zeros((r, n_reasons), dtype=np.float32)
    if r == 0 or len(hist) == 0 or n_reasons == 0:
        return out_rows, out_w
    sims = result_vecs @ catalog.vectors[hist].T  # [R, H]
    take = min(n_reasons, len(hist))
    top = np.argsort(-sims, axis=1, kind="stable")[:, :take]
    top_sims = np.take_along_axis(sims, top, axis=1)
    positive = top_sims > 0
    w = np.where(positive, top_sims, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    out_rows[:, :take] = np.where(positive, hist[top], -1)
    out_w[:, :take] = w
    return out_rows, out_w
