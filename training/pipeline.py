"""Retrieval + re-ranking for evaluation queries, with the trained torch model.

Inputs are built by `contract.features` exactly as the service builds them, so offline figures describe
what the service does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contract.features import history_inputs, knn_candidates, knn_dense, knn_lookup, scorer_extras
from training.evaluate import Query
from training.model import Scorer, TwoTower
from training.sequences import Dataset

OUTSIDE_CANDIDATES = -1e3  # items retrieval did not fetch rank below every re-ranked candidate


@torch.no_grad()
def item_vectors(model: TwoTower, text_vecs: np.ndarray, item_platform: np.ndarray) -> np.ndarray:
    model.eval()
    rows = torch.arange(len(text_vecs))
    v = model.items(torch.from_numpy(text_vecs), torch.from_numpy(item_platform), rows)
    return v.numpy()


@torch.no_grad()
def user_vectors(model: TwoTower, item_vecs: np.ndarray, queries: Sequence[Query]) -> np.ndarray:
    """The serving path of the user tower, one vector per query."""
    model.eval()
    n = model.cfg.max_history
    arrays = [history_inputs(q.items, q.platforms, q.ts, n) for q in queries]
    rows = np.stack([a[0] for a in arrays])
    vecs = item_vecs[np.maximum(rows, 0)] * (rows >= 0)[..., None]
    u = model.users(torch.from_numpy(vecs.astype(np.float32)),
                    torch.from_numpy(np.stack([a[1] for a in arrays])),
                    torch.from_numpy(np.stack([a[2] for a in arrays])),
                    torch.from_numpy(np.stack([a[3] for a in arrays])),
                    torch.tensor([q.platform for q in queries]))
    return u.numpy()


@dataclass
class Ranker:
    """Two-tower retrieval, optionally re-ranked by the scorer over retrieval's top `candidates` plus up to
    `knn_candidates` items by item-KNN co-occurrence with the history."""

    model: TwoTower
    ds: Dataset
    item_vecs: np.ndarray
    popularity: np.ndarray
    knn_index: np.ndarray
    knn_weight: np.ndarray
    knn_decay: float = 0.5
    scorer: Scorer | None = None
    candidates: int = 100
    knn_candidates: int = 0  # the best item-KNN items added to retrieval's candidates (unseen, same platform)

    def __post_init__(self) -> None:
        self.platform_items = {p: self.ds.platform_items(p) for p in range(len(self.ds.platforms))}
        self.max_pop = {p: float(self.popularity[c].max(initial=1)) for p, c in self.platform_items.items()}

    def retrieval(self, queries: Sequence[Query]) -> list[np.ndarray]:
        u = user_vectors(self.model, self.item_vecs, queries)
        return [self.item_vecs[self.platform_items[q.platform]] @ u[i] for i, q in enumerate(queries)]

    def _knn(self, items: np.ndarray) -> np.ndarray:
        return knn_dense(items, self.knn_index, self.knn_weight, self.model.cfg.max_history, self.knn_decay)

    def candidates_for(self, q: Query, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item rows, their knn scores) to re-rank: retrieval's top `candidates` over the platform's items
        (`scores`), then up to `knn_candidates` more by item-KNN; seen items excluded."""
        s = scores.copy()
        cand = self.platform_items[q.platform]
        seen = np.isin(cand, q.items)
        s[seen] = -np.inf
        k = min(self.candidates, len(s) - 1)
        top = np.argpartition(-s, k)[:k]
        rows = cand[top[np.argsort(-s[top])]]
        dense = self._knn(q.items)
        if self.knn_candidates:
            more = knn_candidates(dense, self.knn_candidates, self.ds.item_platform, q.platform,
                                  np.concatenate([q.items, rows]))
            rows = np.concatenate([rows, more])
        return rows, knn_lookup(dense, rows)

    def extras(self, q: Query, u: np.ndarray, rows: np.ndarray, knn: np.ndarray) -> np.ndarray:
        on_target = q.platforms == q.platform
        last_ts = q.ts[on_target].max() if on_target.any() else None
        knn_target = knn_lookup(self._knn(q.items[on_target]), rows)
        return scorer_extras(self.item_vecs[rows] @ u, self.popularity[rows], self.max_pop[q.platform],
                             int(on_target.sum()), len(q.items),
                             None if last_ts is None else (q.now - last_ts) / 86400.0,
                             bool(len(q.platforms) and q.platforms[-1] == q.platform), knn, knn_target)

    @torch.no_grad()
    def prepare(self, queries: Sequence[Query]) -> list[Prepared]:
        """Everything `final` needs but the scorer: fixed while the scorer trains, so computed once."""
        u = user_vectors(self.model, self.item_vecs, queries)
        out = []
        for i, q in enumerate(queries):
            scores = self.item_vecs[self.platform_items[q.platform]] @ u[i]
            rows, knn = self.candidates_for(q, scores)
            out.append(Prepared(q.platform, u[i], scores, rows, self.extras(q, u[i], rows, knn)))
        return out

    @torch.no_grad()
    def rescore(self, prepared: Sequence[Prepared]) -> list[np.ndarray]:
        """`final` from `prepare`d queries: the scorer over the candidates, the rest by retrieval below them."""
        assert self.scorer is not None
        self.scorer.eval()
        out = []
        for p in prepared:
            s = self.scorer(torch.from_numpy(np.repeat(p.user[None], len(p.rows), 0)),
                            torch.from_numpy(self.item_vecs[p.rows]), torch.from_numpy(p.extras)).numpy()
            final = p.retrieval + OUTSIDE_CANDIDATES
            final[np.searchsorted(self.platform_items[p.platform], p.rows)] = s
            out.append(final)
        return out

    def final(self, queries: Sequence[Query]) -> list[np.ndarray]:
        """Scores over each platform's items: re-ranked candidates first, the rest by retrieval."""
        return self.rescore(self.prepare(queries))


@dataclass
class Prepared:
    """One query's scorer inputs (see `Ranker.prepare`)."""

    platform: int
    user: np.ndarray  # [D]
    retrieval: np.ndarray  # retrieval scores over the platform's items
    rows: np.ndarray  # candidate item rows
    extras: np.ndarray  # [len(rows), E]


def checkpoint_ranker(model: TwoTower, scorer: Scorer | None, ckpt: dict, ds: Dataset, text_vecs: np.ndarray
                      ) -> Ranker:
    """The Ranker a checkpoint written by `training.train` describes, over these text vectors."""
    return Ranker(model, ds, item_vectors(model, text_vecs, ds.item_platform), ckpt["popularity"],
                  ckpt["knn_index"], ckpt["knn_weight"], ckpt.get("knn_decay", 1.0), scorer,
                  ckpt.get("candidates", 100), ckpt.get("knn_candidates", 0))
