"""What the service must answer, computed offline with the trained model: the train/serve skew checks.

Used by the end-to-end tests and `bench/skew.py` (a real bundle). Two cases:
- `expected_top`: /v1/recommend's top k for a query (the evaluator's final ranking, seen items left out);
- `new_item_case`: a catalog title sent as a brand-new item id; /v1/rank over it and the query's top 10
  must order and score them as the trained model does for an item it never saw (its text path alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.evaluate import Query
from training.pipeline import Ranker, new_item_vectors
from training.text_vectors import encode_texts, text_model_path


def expected_top(ranker: Ranker, q: Query, k: int, scores: np.ndarray | None = None) -> list[str]:
    """Item ids of the offline top k (`scores`: the query's `ranker.final`, when the caller has it)."""
    ds = ranker.ds
    s = (ranker.final([q])[0] if scores is None else scores).copy()
    cand = ds.platform_items(q.platform)
    s[np.isin(cand, q.items)] = -np.inf
    return [ds.item_ids[cand[j]] for j in np.argsort(-s, kind="stable")[:k]]


@dataclass
class NewItemCase:
    new_id: str
    title: str
    ids: list[str]  # the query's offline top 10, then the new item: what to send to /v1/rank
    expected: list[str]  # `ids` in the order the trained model scores them
    new_score: float  # the trained model's score of the new item


def new_item_case(ranker: Ranker, q: Query, source_row: int, new_id: str, text_max_length: int,
                  text_model: str | Path | None) -> NewItemCase:
    ds = ranker.ds
    title = ds.titles[source_row]
    text = encode_texts([title], text_max_length, cache_dir=None, progress=False,
                        model_path=text_model_path(text_model))
    new_vec = new_item_vectors(ranker.model, text, np.array([q.platform]))
    top = np.array([ds.item_ids.index(i) for i in expected_top(ranker, q, 10)], dtype=np.int64)
    scores = ranker.score_items(q, np.vstack([ranker.item_vecs[top], new_vec]), np.r_[top, -1])
    ids = [ds.item_ids[r] for r in top] + [new_id]
    return NewItemCase(new_id, title, ids, [ids[j] for j in np.argsort(-scores, kind="stable")], float(scores[-1]))
