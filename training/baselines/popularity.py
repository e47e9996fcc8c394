"""Most popular items of the target platform, the same list for everyone."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from training.evaluate import Query
from training.sequences import Dataset


def popularity_tiebreak(ds: Dataset, scale: float) -> np.ndarray:
    """A per-item bonus below any real score difference: ties (e.g. no history) fall back to popularity."""
    pop = ds.popularity().astype(np.float64)
    return scale * pop / max(pop.max(), 1)


def score_per_query(ds: Dataset, queries: Sequence[Query], tiebreak: np.ndarray,
                    score: Callable[[Query, np.ndarray], np.ndarray | None]) -> list[np.ndarray]:
    """The baselines' loop: `score(query, its platform's item rows)` (None: nothing to go on) + `tiebreak`."""
    out = []
    for q in queries:
        cand = ds.platform_items(q.platform)
        s = score(q, cand)
        out.append(tiebreak[cand].copy() if s is None else s + tiebreak[cand])
    return out


class Popularity:
    name = "popularity"

    def fit(self, ds: Dataset) -> Popularity:
        self.ds = ds
        self.pop = ds.popularity().astype(np.float64)
        return self

    def score(self, queries: Sequence[Query]) -> list[np.ndarray]:
        return [self.pop[self.ds.platform_items(q.platform)] for q in queries]
