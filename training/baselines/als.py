"""ALS matrix factorisation (the `implicit` library) over person × item; a person's vector is re-solved from
the history in each query, so hidden history (new-to-platform) is really hidden."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from contract.als import AlsFactors
from training.baselines.popularity import popularity_tiebreak
from training.evaluate import Query
from training.sequences import Dataset


class ALS:
    name = "als"

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 10.0,
                 iterations: int = 15, seed: int = 0) -> None:
        self.factors, self.reg, self.alpha = factors, regularization, alpha
        self.iterations, self.seed = iterations, seed

    def fit(self, ds: Dataset, keep: np.ndarray | None = None) -> ALS:
        """`keep` (bool per event) leaves events out of the person × item matrix, e.g. held-out targets."""
        from implicit.cpu.als import AlternatingLeastSquares

        self.ds = ds
        tl = ds.timelines
        person = np.repeat(np.arange(len(tl)), np.diff(tl.offsets))
        items = tl.items
        if keep is not None:
            person, items = person[keep], items[keep]
        x = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (person, items)), shape=(len(tl), ds.n_items))
        x.data[:] = 1.0
        model = AlternatingLeastSquares(factors=self.factors, regularization=self.reg, alpha=self.alpha,
                                        iterations=self.iterations, random_state=self.seed)
        model.fit(x, show_progress=False)
        # The item factors and the user solve the scorer's ALS feature uses too (contract.als)
        self.fitted = AlsFactors.of(np.asarray(model.item_factors), self.alpha, self.reg, ds.item_platform)
        self.tiebreak = popularity_tiebreak(ds, 1e-9)
        return self

    def score(self, queries: Sequence[Query]) -> list[np.ndarray]:
        out = []
        for q in queries:
            cand = self.ds.platform_items(q.platform)
            out.append(self.fitted.scores(self.fitted.user_vector(q.items), cand) + self.tiebreak[cand])
        return out
