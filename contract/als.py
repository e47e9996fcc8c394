"""ALS item factors in the ranking path: a scorer feature and candidates, the same offline and online.

A person's ALS vector is solved from their history at query time (the implicit-feedback ALS user step, Hu, Koren
& Volinsky 2008, as the `implicit` library trains it), so it needs no per-person state and a person new to a
platform gets one from their other platforms. Matrix factorisation carries collaborative signal that neither
item-KNN (only items that co-occur with the history) nor the two-tower (trained on next-item targets) has: on
Food-Kitchen variants and the kept-aside two-shop sets it was the strongest ranking for people new to a
platform.

numpy only: the service imports this (`als.npz` in a bundle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.top_rows import block_scores, top_rows


@dataclass(frozen=True)
class AlsFactors:
    items: np.ndarray  # float32 [n_rows, k]: rows past the end (items added after export) have no factors
    alpha: float  # confidence of an event, as `implicit` trains it: C = alpha · X (X binary)
    reg: float
    gram: np.ndarray  # float64 [k, k]: itemsᵀ items + reg · I, shared by every person's solve
    platform_rows: tuple[np.ndarray, ...]  # per platform id, its rows (ascending): where candidates come from
    platform_items_t: tuple[np.ndarray, ...]  # per platform id, items[its rows]ᵀ [k, n_p], contiguous

    @classmethod
    def of(cls, items: np.ndarray, alpha: float, reg: float, item_platform: np.ndarray) -> AlsFactors:
        """`item_platform`: the platform id of each of `items`' rows."""
        y = np.ascontiguousarray(items, dtype=np.float32)
        y64 = y.astype(np.float64)
        plat = np.asarray(item_platform, dtype=np.int64)[:len(y)]
        rows = tuple(np.flatnonzero(plat == p) for p in range(int(plat.max(initial=-1)) + 1))
        return cls(y, float(alpha), float(reg), y64.T @ y64 + reg * np.eye(y.shape[1]), rows,
                   tuple(np.ascontiguousarray(y[r].T) for r in rows))

    @property
    def n_rows(self) -> int:
        return self.items.shape[0]

    def user_vector(self, history_rows: np.ndarray) -> np.ndarray:
        """float32 [k]: the ALS user solve, (YᵀY + reg·I + (alpha - 1)·YᵢᵀYᵢ) x = alpha · Σ yᵢ over the distinct
        history items i (zeros for an empty history): the equation `implicit` solves for a person in training.
        Rows the table does not hold are left out."""
        rows = np.unique(np.asarray(history_rows, dtype=np.int64))
        rows = rows[(rows >= 0) & (rows < self.n_rows)]
        if len(rows) == 0:
            return np.zeros(self.items.shape[1], dtype=np.float32)
        yi = self.items[rows].astype(np.float64)
        a = self.gram + (self.alpha - 1.0) * (yi.T @ yi)
        return np.linalg.solve(a, self.alpha * yi.sum(axis=0)).astype(np.float32)

    def scores(self, user: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """float32 ALS score of each row (0 for -1 and rows the table does not hold)."""
        rows = np.asarray(rows, dtype=np.int64)
        ok = (rows >= 0) & (rows < self.n_rows)
        out = np.zeros(len(rows), dtype=np.float32)
        out[ok] = self.items[rows[ok]] @ user
        return out

    def platform_scores(self, users: np.ndarray, platform: int) -> np.ndarray:
        """float32 [len(users), rows of `platform`]: every query's ALS score of each of the platform's rows, in
        blocks (`contract.top_rows.block_scores`: the same bits for a query whatever else is scored with it)."""
        users = np.asarray(users, dtype=np.float32).reshape(-1, self.items.shape[1])
        if platform >= len(self.platform_rows):
            return np.zeros((len(users), 0), dtype=np.float32)
        return block_scores(users, self.platform_items_t[platform])

    def candidates(self, user: np.ndarray, platform: int, n: int, exclude: np.ndarray,
                   live: np.ndarray | None = None, scores: np.ndarray | None = None) -> np.ndarray:
        """Up to `n` rows of `platform` with the highest ALS score, best first (ties: lower row), never one in
        `exclude` nor one that is not `live`. `scores`: the user's `platform_scores` row when the caller
        computed a batch of them. A dense pass over the platform's rows: k multiply-adds per row. Items added
        after export have no factors and are never ALS candidates."""
        if n <= 0 or not user.any() or platform >= len(self.platform_rows):
            return np.zeros(0, dtype=np.int64)
        if scores is None:
            scores = self.platform_scores(user[None], platform)[0]
        return top_rows(self.platform_rows[platform], scores, n, exclude, live)

    def save(self, path: Path) -> None:
        np.savez(path, items=self.items, alpha=np.float64(self.alpha), reg=np.float64(self.reg))

    @classmethod
    def load(cls, path: Path, item_platform: np.ndarray) -> AlsFactors:
        with np.load(path) as z:
            return cls.of(z["items"], float(z["alpha"]), float(z["reg"]), item_platform)
