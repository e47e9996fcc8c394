"""Model inputs computed the SAME way offline (training, evaluation) and online (the service).

numpy only: the service imports this, and it never imports torch.

- `history_inputs()`: a person's fused history → the user encoder's arrays (last `max_len` events,
  right-aligned so the newest event is always at the last position, time-gap buckets, mask).
- `knn_dense()` / `knn_scores()`: item-KNN scores given a history, from any neighbour table (co-occurrence,
  sequential, mixed: a scorer feature and a baseline); `knn_sparse()` (`KnnTable.scores`): the same scores
  where not zero, what the ranking path reads; `knn_candidates()`: the best of them, added to retrieval's
  candidates.
- `scorer_extras()`: the scalar features the re-ranking scorer sees beside the user and item vectors;
  `candidate_features()` computes them from a history and candidate rows (what both sides call), with the
  knowledge-graph ones (`KG_EXTRAS`, `contract.kg`) appended for a scorer trained with them.
- `user_encoder_feeds()`: the user encoder's whole input, for a batch of histories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contract.als import AlsFactors
from contract.kg import ItemEntities, kg_features
from contract.top_rows import top_rows

N_TIME_BUCKETS = 16  # 0 = padding, 1 = first event (no gap), 2.. = log2 of the gap in hours
# Events per person the service keeps (and the bundle's history snapshot holds): more than the user encoder
# reads, so that the scorer's history-length and recency features see what training saw.
HISTORY_SNAPSHOT = 256
_EMPTY = np.zeros(0, dtype=np.int64)
SCORER_EXTRAS = (
    "dot",  # the retrieval score u·v
    "log_popularity",  # log1p(events of the item) / log1p(events of the most popular item)
    "log_history_target",  # log1p(the person's events on the target platform)
    "log_history_all",  # log1p(the person's events on every platform)
    "has_target_history",  # 1 if the person has been on the target platform
    "log_days_since_target",  # log1p(days since their last event there) / 10, 0 when none
    "last_on_target",  # 1 if their latest event was on the target platform
    "log_knn",  # log1p(item-KNN co-occurrence score of the candidate given the whole fused history)
    "log_knn_target",  # the same from the history on the target platform alone: the scorer weighs the parts
)
# Appended to SCORER_EXTRAS for a scorer trained with `kg_features` (off by default: on Food-Kitchen they did
# not lift valid, docs/results.md). Over the last HISTORY_SNAPSHOT events, log1p(events whose item shares a brand,
# type or category with the candidate) on the other platforms (through linked entities) / on the target one.
KG_EXTRAS = ("kg_other", "kg_target")
# Appended last for a scorer trained with `als_features`: the candidate's ALS score, item factors · the person's
# ALS vector solved from their last HISTORY_SNAPSHOT fused events (`contract.als`).
ALS_EXTRAS = ("als",)


def scorer_features(kg: bool, als: bool = False) -> tuple[str, ...]:
    """The scorer's feature names, in column order: SCORER_EXTRAS, + KG_EXTRAS with the knowledge-graph ones,
    + ALS_EXTRAS with the ALS one."""
    return SCORER_EXTRAS + (KG_EXTRAS if kg else ()) + (ALS_EXTRAS if als else ())


@dataclass(frozen=True)
class History:
    """One person's fused events, oldest first: item rows, platform ids (not shifted), epoch seconds."""

    rows: np.ndarray  # int64
    platforms: np.ndarray  # int64
    ts: np.ndarray  # int64

    @classmethod
    def of(cls, rows: Sequence[int] | np.ndarray, platforms: Sequence[int] | np.ndarray,
           ts: Sequence[int] | np.ndarray) -> History:
        return cls(np.asarray(rows, dtype=np.int64), np.asarray(platforms, dtype=np.int64),
                   np.asarray(ts, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def on(self, platform: int) -> np.ndarray:
        """Mask of the events on one platform."""
        return self.platforms == platform


def time_buckets(ts: np.ndarray) -> np.ndarray:
    """Bucket of the gap before each event (ts sorted ascending): 1 for the first, 2.. by log2 hours."""
    ts = np.asarray(ts, dtype=np.int64)
    out = np.ones(len(ts), dtype=np.int64)
    if len(ts) > 1:
        hours = np.maximum(np.diff(ts), 0) / 3600.0
        out[1:] = 2 + np.minimum(np.floor(np.log2(1.0 + hours)), N_TIME_BUCKETS - 3).astype(np.int64)
    return out


def history_inputs(items: np.ndarray, platforms: np.ndarray, ts: np.ndarray, max_len: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(item rows, platform ids, time buckets, mask), each of length `max_len`, right-aligned.

    `items`/`platforms`/`ts` are one person's events, oldest first. Buckets are computed on the whole
    history before truncation, so the oldest kept event still knows its gap. Padding: item row -1,
    platform 0, bucket 0, mask False. Platform ids in the arrays are shifted by one (0 is padding).
    """
    n = min(len(items), max_len)
    out_items = np.full(max_len, -1, dtype=np.int64)
    out_plat = np.zeros(max_len, dtype=np.int64)
    out_bucket = np.zeros(max_len, dtype=np.int64)
    mask = np.zeros(max_len, dtype=bool)
    if n:
        buckets = time_buckets(ts)
        out_items[-n:] = np.asarray(items, dtype=np.int64)[-n:]
        out_plat[-n:] = np.asarray(platforms, dtype=np.int64)[-n:] + 1
        out_bucket[-n:] = buckets[-n:]
        mask[-n:] = True
    return out_items, out_plat, out_bucket, mask


def user_encoder_feeds(histories: Sequence[History], targets: Sequence[int], item_vectors: np.ndarray,
                       max_len: int) -> dict[str, np.ndarray]:
    """The user encoder's inputs (names as in `contract.bundle`) for a batch of (history, target platform)."""
    arrays = [history_inputs(h.rows, h.platforms, h.ts, max_len) for h in histories]
    rows = np.stack([a[0] for a in arrays]) if arrays else np.zeros((0, max_len), dtype=np.int64)
    vecs = item_vectors[np.maximum(rows, 0)] * (rows >= 0)[..., None]
    return {
        "hist_vecs": vecs.astype(np.float32, copy=False),
        "hist_platform": np.stack([a[1] for a in arrays]) if arrays else np.zeros_like(rows),
        "hist_bucket": np.stack([a[2] for a in arrays]) if arrays else np.zeros_like(rows),
        "hist_mask": np.stack([a[3] for a in arrays]) if arrays else np.zeros(rows.shape, dtype=bool),
        "target_platform": np.asarray(targets, dtype=np.int64),
    }


@dataclass(frozen=True)
class KnnTable:
    """Each item's top-K co-occurring items (`knn.npz` in a bundle) and how a history is scored against them."""

    index: np.ndarray  # int [n_items, K] item rows, -1 = none
    weight: np.ndarray  # float32 [n_items, K]
    max_history: int
    decay: float = 1.0

    def scores(self, history_rows: np.ndarray) -> KnnScores:
        return knn_sparse(history_rows, self.index, self.weight, self.max_history, self.decay)


@dataclass(frozen=True)
class KnnScores:
    """`knn_dense` where it is not zero: what the ranking path reads. Its cost grows with the history and K,
    not with the catalog (a dense vector per query cost ~2 ms at 1M items, 0.1 ms at 36k)."""

    rows: np.ndarray  # int64, ascending, unique
    values: np.ndarray  # float64, same length

    def lookup(self, candidates: np.ndarray) -> np.ndarray:
        """float32 score of each candidate row (0 for rows without one, e.g. -1 or unknown)."""
        cand = np.asarray(candidates, dtype=np.int64)
        out = np.zeros(len(cand), dtype=np.float32)
        if len(self.rows) == 0 or len(cand) == 0:
            return out
        pos = np.minimum(np.searchsorted(self.rows, cand), len(self.rows) - 1)
        hit = self.rows[pos] == cand
        out[hit] = self.values[pos[hit]]
        return out


def knn_dense(history_items: np.ndarray, nbr_index: np.ndarray, nbr_weight: np.ndarray, max_history: int = 50,
              decay: float = 1.0) -> np.ndarray:
    """float64 [n_items]: Σ over the last `max_history` history items h of decay^age(h) · sim(h, c), for every c.

    `nbr_index`/`nbr_weight` [n_items, K]: each item's top-K co-occurring items (-1 = none). age is 0 for
    the newest history item; decay < 1 favours what the person did last. Zero where nothing co-occurs.
    """
    idx, w = _neighbour_weights(history_items, nbr_index, nbr_weight, max_history, decay)
    return np.bincount(idx, weights=w, minlength=nbr_index.shape[0]) if len(idx) else np.zeros(nbr_index.shape[0])


def _neighbour_weights(history_items: np.ndarray, nbr_index: np.ndarray, nbr_weight: np.ndarray, max_history: int,
                       decay: float) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour row, decay^age(h) · sim(h, row)) for every neighbour of the last `max_history` history items
    h, in history order: what `knn_dense` and `knn_sparse` add up."""
    n_items = nbr_index.shape[0]
    hist = np.asarray(history_items, dtype=np.int64)[-max_history:]
    age = np.arange(len(hist) - 1, -1, -1)
    valid = (hist >= 0) & (hist < n_items)
    hist, age = hist[valid], age[valid]
    idx = nbr_index[hist].ravel()
    w = (nbr_weight[hist] * (decay ** age)[:, None]).ravel()
    keep = idx >= 0
    return idx[keep].astype(np.int64), w[keep]


def knn_sparse(history_items: np.ndarray, nbr_index: np.ndarray, nbr_weight: np.ndarray, max_history: int = 50,
               decay: float = 1.0) -> KnnScores:
    """`knn_dense` as (rows, values) of the rows some history item has as a neighbour: the same sums, added in
    the same order (bit-identical values)."""
    idx, w = _neighbour_weights(history_items, nbr_index, nbr_weight, max_history, decay)
    rows, inverse = np.unique(idx, return_inverse=True)
    return KnnScores(rows, np.bincount(inverse, weights=w, minlength=len(rows)))


def knn_lookup(dense: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """float32 knn score of each candidate row from `knn_dense` (0 for rows the table does not know)."""
    cand = np.asarray(candidates, dtype=np.int64)
    out = np.zeros(len(cand), dtype=np.float32)
    ok = (cand >= 0) & (cand < len(dense))
    out[ok] = dense[cand[ok]]
    return out


def knn_scores(history_items: np.ndarray, candidates: np.ndarray, nbr_index: np.ndarray,
               nbr_weight: np.ndarray, max_history: int = 50, decay: float = 1.0) -> np.ndarray:
    """Item-KNN co-occurrence score of candidate rows given a history (`knn_dense`, looked up)."""
    return knn_lookup(knn_dense(history_items, nbr_index, nbr_weight, max_history, decay), candidates)


def knn_candidates(scores: KnnScores, n: int, item_platform: np.ndarray, target: int, exclude: np.ndarray,
                   live: np.ndarray | None = None) -> np.ndarray:
    """Up to `n` rows of the target platform with the highest knn score (> 0), best first (ties: lower row).

    `item_platform`/`live`: per row (at least as long as the table); `exclude`: rows never to return (seen,
    excluded by the request, already retrieved). Retrieval's candidates are completed with these so that the
    scorer also sees what co-occurrence alone would rank high.
    """
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    rows, values = scores.rows, scores.values
    return top_rows(rows, values, n, exclude, live, keep=(values > 0) & (item_platform[rows] == target))


def scorer_extras(dot: np.ndarray, popularity: np.ndarray, max_popularity: float, n_target: int,
                  n_all: int, days_since_target: float | None, last_on_target: bool, knn: np.ndarray,
                  knn_target: np.ndarray) -> np.ndarray:
    """[n_candidates, len(SCORER_EXTRAS)] float32, in SCORER_EXTRAS order."""
    c = len(dot)
    out = np.empty((c, len(SCORER_EXTRAS)), dtype=np.float32)
    out[:, 0] = dot
    out[:, 1] = np.log1p(popularity) / np.log1p(max(max_popularity, 1.0))
    out[:, 2] = np.log1p(n_target)
    out[:, 3] = np.log1p(n_all)
    out[:, 4] = float(n_target > 0)
    out[:, 5] = 0.0 if days_since_target is None else np.log1p(max(days_since_target, 0.0)) / 10.0
    out[:, 6] = float(last_on_target)
    out[:, 7] = np.log1p(np.maximum(knn, 0.0))
    out[:, 8] = np.log1p(np.maximum(knn_target, 0.0))
    return out


def candidate_features(history: History, target: int, now: float, dots: np.ndarray, rows: np.ndarray,
                       popularity: np.ndarray, max_popularity: float, knn: KnnTable,
                       knn_all: KnnScores | None = None, kg: ItemEntities | None = None,
                       als: AlsFactors | None = None, als_user: np.ndarray | None = None) -> np.ndarray:
    """`scorer_extras` of candidates for one (history, target platform) query: [n, len(scorer_features(kg is
    not None, als is not None))] float32.

    `dots`: u·v of each candidate; `rows`: their item rows (-1 for an item the tables do not know, e.g. free
    text); `popularity`: theirs (0 when unknown); `knn_all`: `knn.scores(history.rows)` when the caller has it;
    `kg`: for a scorer with the KG features, the items' entities (empty: no knowledge graph, those are 0);
    `als`: for a scorer with the ALS feature, the item factors (`als_user`: the person's vector when the caller
    has it).
    """
    on_target = history.on(target)
    last_ts = int(history.ts[on_target].max()) if on_target.any() else None
    rows = np.asarray(rows, dtype=np.int64)
    knn_whole = (knn.scores(history.rows) if knn_all is None else knn_all).lookup(rows)
    knn_target = knn.scores(history.rows[on_target]).lookup(rows)
    out = scorer_extras(dots, popularity, max_popularity, int(on_target.sum()), len(history),
                        None if last_ts is None else (now - last_ts) / 86400.0,
                        bool(len(history) and history.platforms[-1] == target), knn_whole, knn_target)
    cols = [out]
    if kg is not None:
        # The service keeps a person's last HISTORY_SNAPSHOT events; offline histories can be longer.
        cols += kg_features(kg, history.rows[-HISTORY_SNAPSHOT:], history.platforms[-HISTORY_SNAPSHOT:], target, rows)
    if als is not None:
        user = als.user_vector(history.rows[-HISTORY_SNAPSHOT:]) if als_user is None else als_user
        cols.append(als.scores(user, rows))
    return np.column_stack(cols).astype(np.float32, copy=False) if len(cols) > 1 else out
