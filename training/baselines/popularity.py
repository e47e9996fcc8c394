"""Most popular items of the target platform, the same list for everyone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.evaluate import Query
from training.sequences import Dataset


class Popularity:
    name = "popularity"

    def fit(self, ds: Dataset) -> Popularity:
        self.ds = ds
        self.pop = ds.popularity().astype(np.float64)
        return self

    def score(self, queries: Sequence[Query]) -> list[np.ndarray]:
        return [self.pop[self.ds.platform_items(q.platform)] for q in queries]
