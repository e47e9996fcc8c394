"""Recommendation with the bundle's ONNX models: `contract.ranking` with ONNX Runtime and FAISS plugged in.

The service calls these for /v1/recommend, /v1/rank and /v1/batch/score; the offline evaluator runs the same
`contract.ranking` functions with the trained torch modules (`training.pipeline`), so the figures it reports
describe what the service does (and `bench/skew.py` checks that they agree on a real bundle):

    bundle  = app.services.model_bundle.load_bundle(bundle_dir, settings)   # models + catalog + indexes
    history = History.from_ids(bundle.catalog, item_ids, platform_ids, ts)  # fused events, oldest first
    query   = Query(history, target_platform_id, now_ts, exclude_seen=True, exclude=excluded_rows)
    ranked  = rank(bundle.models, bundle.catalog, [query],
                   n_candidates=max(bundle.manifest.retrieval_candidates, k))[0]
    ranked.rows[:k], ranked.scores[:k]     # /v1/recommend's items (catalog rows) and scores, in order

A person with an empty history is answered with `popular(catalog, target, k)` instead (cold start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from app.services.retrieval import Catalog
from contract import ranking
from contract.als import AlsFactors
from contract.features import History as _History
from contract.features import KnnTable
from contract.kg import ItemEntities
from contract.ranking import Query, Ranked

__all__ = ["History", "Models", "Query", "Ranked", "popular", "rank", "score_items", "user_vectors"]

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Models:
    """The ONNX sessions and the constants the ranking needs, from one bundle."""

    user_encoder: ort.InferenceSession
    scorer: ort.InferenceSession | None  # None: the bundle has no scorer; retrieval order is served
    retrieval_candidates: int
    knn: KnnTable  # knn.npz with manifest.max_history and manifest.knn_decay
    knn_candidates: int = 0  # manifest.knn_candidates: item-KNN items added to retrieval's candidates
    kg: ItemEntities = field(default_factory=ItemEntities.empty)  # kg.npz; empty: the bundle has no KG
    kg_candidates: int = 0  # manifest.kg_candidates: KG items added for people new to the target platform
    kg_features: bool = False  # manifest.kg_features: the scorer reads the KG features
    als: AlsFactors | None = None  # als.npz: the scorer reads the ALS feature; None: it does not
    als_candidates: int = 0  # manifest.als_candidates: ALS items added to the candidates

    @property
    def max_history(self) -> int:
        return self.knn.max_history


@dataclass(frozen=True)
class History(_History):
    @classmethod
    def from_ids(cls, catalog: Catalog, item_ids: Sequence[str], platforms: Sequence[int],
                 ts: Sequence[int]) -> History:
        """Items unknown to the catalog are left out."""
        rows = catalog.rows_of(item_ids)
        keep = rows >= 0
        return cls(rows[keep], np.asarray(platforms, dtype=np.int64)[keep], np.asarray(ts, dtype=np.int64)[keep])


@dataclass(frozen=True)
class OnnxBackend:
    """`contract.ranking.Backend` over ONNX Runtime sessions and the catalog's FAISS indexes."""

    models: Models
    catalog: Catalog

    @property
    def has_scorer(self) -> bool:
        return self.models.scorer is not None

    def user_vectors(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = trim_padding(feeds)
        if len(feeds["target_platform"]) == 1:
            # ONNX Runtime computes a batch of one another way (matrix-vector kernels) than a larger batch,
            # and the last bits differ. Run it as a batch of two, so a request computed alone gets exactly
            # the vector it gets in a micro-batch.
            feeds = {k: np.concatenate([v, v]) for k, v in feeds.items()}
            return self.models.user_encoder.run(None, feeds)[0][:1]
        return self.models.user_encoder.run(None, feeds)[0]

    def search(self, target: int, user_vecs: np.ndarray, n: int, exclude: Sequence[np.ndarray],
               allowed: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        return self.catalog.search(target, user_vecs, n, list(exclude), allowed)

    def score(self, user_vecs: np.ndarray, item_vecs: np.ndarray, extras: np.ndarray) -> np.ndarray:
        assert self.models.scorer is not None
        feed = {"user_vec": np.ascontiguousarray(user_vecs, dtype=np.float32),
                "item_vec": np.ascontiguousarray(item_vecs, dtype=np.float32),
                "extras": np.ascontiguousarray(extras, dtype=np.float32)}
        return self.models.scorer.run(None, feed)[0].reshape(-1).astype(np.float32, copy=False)


# Left padding is cut from the user encoder's input in whole blocks of this many slots (see `trim_padding`).
PADDING_CUT_STEP = 8


def trim_padding(feeds: dict[str, np.ndarray], step: int = PADDING_CUT_STEP) -> dict[str, np.ndarray]:
    """The user encoder's feeds without the leading slots no history of the batch fills, cut in multiples of
    `step` (at least one slot is left).

    Histories are right-aligned and padded to `max_history` (50), and most are far shorter: the encoder's time
    is roughly proportional to the slots it is given (on Food-Kitchen, about half goes away). A real slot
    never attends to padding and its position counts from the newest slot, so the output is the same. Cutting
    whole blocks of `step` slots keeps each real slot in the same SIMD lane of ONNX Runtime's reductions: the
    vectors are bit-identical too (`tests/export/test_bundle.py`), and a request gets the vector it gets in any
    micro-batch.
    """
    mask = feeds["hist_mask"]
    slots = mask.shape[1]
    used = mask.any(axis=0)
    first = int(used.argmax()) if used.any() else slots - 1
    cut = (first // step) * step
    if cut == 0:
        return feeds
    return {k: v[:, cut:] if v.ndim >= 2 else v for k, v in feeds.items()}


def tables(models: Models, catalog: Catalog) -> ranking.Tables:
    # `live`: what may be recommended (item-KNN and KG candidates): live and available rows.
    return ranking.Tables(catalog.vectors, catalog.popularity, catalog.platform, catalog.max_popularity,
                          models.knn, models.retrieval_candidates, models.knn_candidates, catalog.recommendable,
                          models.kg, models.kg_candidates, models.kg_features, models.als, models.als_candidates)


def user_vectors(models: Models, catalog: Catalog, histories: Sequence[_History], targets: Sequence[int]
                 ) -> np.ndarray:
    """float32 [B, D] unit user vectors: one per (history, target platform)."""
    return ranking.user_vectors(OnnxBackend(models, catalog), tables(models, catalog), histories, targets)


def rank(models: Models, catalog: Catalog, queries: Sequence[Query], user_vecs: np.ndarray | None = None,
         n_candidates: int | None = None) -> list[Ranked]:
    """`contract.ranking.rank` with this bundle's models: every candidate of each query, best first."""
    return ranking.rank(OnnxBackend(models, catalog), tables(models, catalog), queries, user_vecs, n_candidates)


def score_items(models: Models, catalog: Catalog, queries: Sequence[Query], user_vecs: np.ndarray,
                item_vecs: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
    """float32 [B, M]: every query's score for the same M given items (rows -1 for free text)."""
    m = len(item_vecs)
    if not queries or m == 0:
        return np.zeros((len(queries), m), dtype=np.float32)
    backend, tab = OnnxBackend(models, catalog), tables(models, catalog)
    extras = [ranking.features(tab, q, user_vecs[i], item_vecs, item_rows) for i, q in enumerate(queries)]
    if not backend.has_scorer:
        return np.stack([e[:, 0] for e in extras]).astype(np.float32)
    s = backend.score(np.repeat(user_vecs, m, axis=0), np.tile(item_vecs, (len(queries), 1)), np.concatenate(extras))
    return s.reshape(len(queries), m)


def popular(catalog: Catalog, target: int, n: int, exclude: np.ndarray = _EMPTY,
            allowed: np.ndarray | None = None) -> Ranked:
    """The cold-start answer: the platform's most popular recommendable items (`allowed`: only rows it
    marks); score = normalised log popularity."""
    rows = catalog.popular[target]
    if allowed is not None:
        rows = rows[allowed[rows]]
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
