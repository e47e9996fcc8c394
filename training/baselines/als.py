"""ALS matrix factorisation (the `implicit` library) over person × item; a person's vector is re-solved from
the history in each query, so hidden history (new-to-platform) is really hidden."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from training.baselines.popularity import popularity_tiebreak
from training.evaluate import Query
from training.sequences import Dataset


class ALS:
    name = "als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 10.0,
                 iterations: int = 15, seed: int = 0) -> None:
        self.factors, self.reg, self.alpha = factors, regularization, alpha
        self.iterations, self.seed = iterations, seed

    def fit(self, ds: Dataset) -> ALS:
        from implicit.cpu.als import AlternatingLeastSquares

        self.ds = ds
        tl = ds.timelines
        person = np.repeat(np.arange(len(tl)), np.diff(tl.offsets))
        x = sp.csr_matrix((np.ones(len(tl.items), dtype=np.float32), (person, tl.items)),
                          shape=(len(tl), ds.n_items))
        x.data[:] = 1.0
        model = AlternatingLeastSquares(factors=self.factors, regularization=self.reg, alpha=self.alpha,
                                        iterations=self.iterations, random_state=self.seed)
        model.fit(x, show_progress=False)
        self.y = np.asarray(model.item_factors, dtype=np.float64)
        self.yty = self.y.T @ self.y
        self.tiebreak = popularity_tiebreak(ds, 1e-9)
        return self

    def user_vector(self, items: np.ndarray) -> np.ndarray:
        """The ALS user solve for confidence 1 + alpha on the history items."""
        items = np.unique(items)
        if len(items) == 0:
            return np.zeros(self.y.shape[1])
        yi = self.y[items]
        a = self.yty + self.alpha * yi.T @ yi + self.reg * np.eye(self.y.shape[1])
        b = (1.0 + self.alpha) * yi.sum(axis=0)
        return np.linalg.solve(a, b)

    def score(self, queries: Sequence[Query]) -> list[np.ndarray]:
        out = []
        for q in queries:
            cand = self.ds.platform_items(q.platform)
            out.append(self.y[cand] @ self.user_vector(q.items) + self.tiebreak[cand])
        return out
