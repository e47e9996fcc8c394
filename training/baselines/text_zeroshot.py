"""Zero-shot text: pretrained MiniLM item vectors, a person = the mean of their history's vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.baselines.popularity import popularity_tiebreak, score_per_query
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
        def text_match(q: Query, cand: np.ndarray) -> np.ndarray | None:
            hist = q.items[-self.max_history:]
            return self.vectors[cand] @ self.vectors[hist].mean(axis=0) if len(hist) else None

        return score_per_query(self.ds, queries, self.tiebreak, text_match)
