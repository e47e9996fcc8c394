"""Zero-shot text: pretrained MiniLM item vectors, a person = the mean of their history's vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.baselines.popularity import popularity_tiebreak
from training.evaluate import Query
from training.sequences import Dataset


class TextZeroShot:
    name = "text-zeroshot"

    def __init__(self, text_vectors: np.ndarray, max_history: int = 50) -> None:
        self.vectors, self.max_history = text_vectors, max_history

    def fit(self, ds: Dataset) -> TextZeroShot:
        self.ds = ds
        self.tiebreak = popularity_tiebreak(ds, 1e-6)
        return self

    def score(self, queries: Sequence[Query]) -> list[np.ndarray]:
        out = []
        for q in queries:
            cand = self.ds.platform_items(q.platform)
            hist = q.items[-self.max_history:]
            if len(hist) == 0:
                out.append(self.tiebreak[cand].copy())
                continue
            u = self.vectors[hist].mean(axis=0)
            out.append(self.vectors[cand] @ u + self.tiebreak[cand])
        return out
