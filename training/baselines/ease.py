"""EASE (Steck 2019): a closed-form linear item-item model over fused timelines.

B = I - P / diag(P) with P = (XᵀX + λI)⁻¹ and diag(B) = 0, X the binary person × item matrix; a person's
scores are x · B. A dense inverse over the whole catalog is too big (36k items: 5 GB, ~20 min on 2 cores), so
EASE works on the items with at least `min_count` events: by default the smallest count that keeps at most
`max_items` items on every platform (Food-Kitchen: 10 events, ~11k items in all). The model is solved once
on the kept items of all platforms together, which is the per-target-platform model at once: column j of
B depends only on P, so a platform's outputs are its columns, and their inputs are the person's whole
cross-platform history. Items outside the kept set score below every kept one, in popularity order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from training.baselines.popularity import popularity_tiebreak
from training.evaluate import Query
from training.sequences import Dataset


def default_min_count(ds: Dataset, max_items: int) -> int:
    """The smallest event count such that no platform has more than `max_items` items with that many."""
    pop = ds.popularity()
    need = 1
    for p in range(len(ds.platforms)):
        counts = np.sort(pop[ds.platform_items(p)])[::-1]
        if len(counts) > max_items:
            need = max(need, int(counts[max_items]) + 1)
    return need


def ease_weights(x: sp.csr_matrix, lam: float) -> np.ndarray:
    """B (float32, [n, n], zero diagonal) for a binary person × item matrix, through a Cholesky inverse."""
    n = x.shape[1]
    g = np.asarray((x.T @ x).toarray(), dtype=np.float32)
    g[np.diag_indices(n)] += np.float32(lam)
    # g is symmetric, so its transpose is the same matrix in Fortran order: LAPACK works on it in place.
    c, info = lapack.spotrf(g.T, lower=True, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Cholesky failed (info {info}); is lambda > 0?")
    p, info = lapack.spotri(c, lower=True, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inverse failed (info {info})")
    b = np.tril(p)  # the inverse is in the lower triangle only
    b += np.tril(p, -1).T
    del p, c, g
    b /= -np.diag(b).copy()  # B_ij = -P_ij / P_jj
    np.fill_diagonal(b, 0.0)
    return b


class EASE:
    name = "ease"

    def __init__(self, lam: float = 500.0, min_count: int | None = None, max_items: int = 10_000) -> None:
        self.lam, self.min_count, self.max_items = lam, min_count, max_items

    def fit(self, ds: Dataset, keep: np.ndarray | None = None) -> EASE:
        """`keep` (bool per event) leaves events out of the item-item matrix, e.g. held-out targets."""
        self.ds = ds
        pop = ds.popularity()
        self.min_count_used = self.min_count if self.min_count is not None else default_min_count(ds, self.max_items)
        kept = np.flatnonzero(pop >= max(self.min_count_used, 1))
        kept = kept[np.argsort(ds.item_platform[kept], kind="stable")]  # by platform: each one a column range
        self.kept = kept
        self.col = np.full(ds.n_items, -1, dtype=np.int64)
        self.col[kept] = np.arange(len(kept))

        tl = ds.timelines
        person = np.repeat(np.arange(len(tl)), np.diff(tl.offsets))
        cols = self.col[tl.items]
        use = cols >= 0 if keep is None else (cols >= 0) & keep
        x = sp.csr_matrix((np.ones(int(use.sum()), dtype=np.float32), (person[use], cols[use])),
                          shape=(len(tl), len(kept)))
        x.data[:] = 1.0  # binary: repeats count once
        self.b = ease_weights(x, self.lam)
        self.tiebreak = popularity_tiebreak(ds, 1e-9)

        # Per platform: its columns of B, and where its kept items sit among ds.platform_items(p).
        self.cand: dict[int, np.ndarray] = {}
        self.cols: dict[int, slice] = {}
        self.pos: dict[int, np.ndarray] = {}
        for p in range(len(ds.platforms)):
            cand = ds.platform_items(p)
            mine = np.flatnonzero(ds.item_platform[kept] == p)
            lo, hi = (int(mine[0]), int(mine[-1]) + 1) if len(mine) else (0, 0)
            self.cand[p], self.cols[p] = cand, slice(lo, hi)
            self.pos[p] = np.searchsorted(cand, kept[lo:hi])
        return self

    def score(self, queries: Sequence[Query]) -> list[np.ndarray]:
        out = []
        for q in queries:
            cand, cols, pos = self.cand[q.platform], self.cols[q.platform], self.pos[q.platform]
            hist = self.col[np.unique(q.items)]
            hist = hist[hist >= 0]
            kept_scores = self.b[hist, cols].sum(axis=0, dtype=np.float64) + self.tiebreak[cand[pos]]
            s = self.tiebreak[cand].copy()  # items outside the kept set: below every kept one, by popularity
            if len(kept_scores):
                s += kept_scores.min() - 1.0
                s[pos] = kept_scores
            out.append(s)
        return out

    def neighbours(self, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """B as a neighbour table in `build_neighbours`' layout, so that the scorer's item-KNN feature and
        candidates (and the service, from knn.npz) can use EASE: row h holds, per platform, the k items j
        with the largest positive B[h, j]. Σ over a history of its rows' weights is EASE's score, less the
        weights cut off (and the negative ones)."""
        ds, n_plat = self.ds, len(self.ds.platforms)
        index = np.full((ds.n_items, k * n_plat), -1, dtype=np.int32)
        weight = np.zeros((ds.n_items, k * n_plat), dtype=np.float32)
        for p in range(n_plat):
            cols = self.cols[p]
            block = self.b[:, cols]  # [kept, items of p]
            kk = min(k, block.shape[1])
            if kk == 0:
                continue
            top = np.argpartition(-block, kk - 1, axis=1)[:, :kk]
            w = np.take_along_axis(block, top, axis=1)
            order = np.argsort(-w, axis=1, kind="stable")
            top, w = np.take_along_axis(top, order, axis=1), np.take_along_axis(w, order, axis=1)
            rows = self.kept[cols.start + top]
            rows[w <= 0] = -1
            index[self.kept, p * k:p * k + kk] = rows
            weight[self.kept, p * k:p * k + kk] = np.maximum(w, 0.0)
        return index, weight
