"""The trained torch model as a `contract.ranking.Backend`: evaluation ranks through the service's code.

Candidates, scorer features and their order come from `contract.ranking`, the functions the service runs
with ONNX Runtime and FAISS; only the runtime differs here (torch modules, exact search over the platform's
items). `bench/skew.py` holds the two against each other on a real bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from contract import ranking
from contract.als import AlsFactors
from contract.bundle import USER_ENCODER_INPUTS
from contract.features import History, KnnTable, user_encoder_feeds
from contract.kg import ItemEntities
from training.evaluate import Query
from training.model import RoutedScorer, Scorer, TwoTower
from training.sequences import Dataset

OUTSIDE_CANDIDATES = -1e3  # items retrieval did not fetch rank below every re-ranked candidate


def as_contract_query(q: Query) -> ranking.Query:
    return ranking.Query(History.of(q.items, q.platforms, q.ts), q.platform, float(q.now))


@torch.no_grad()
def item_vectors(model: TwoTower, text_vecs: np.ndarray, item_platform: np.ndarray) -> np.ndarray:
    model.eval()
    rows = torch.arange(len(text_vecs))
    v = model.items(torch.from_numpy(text_vecs), torch.from_numpy(item_platform), rows)
    return v.numpy()


@torch.no_grad()
def new_item_vectors(model: TwoTower, text_vecs: np.ndarray, platforms: np.ndarray) -> np.ndarray:
    """What the trained model gives items it never saw: the text path alone, no ID part."""
    model.eval()
    return model.items(torch.from_numpy(text_vecs), torch.from_numpy(np.asarray(platforms, dtype=np.int64)),
                       rows=None).numpy()


@dataclass
class TorchBackend:
    """`contract.ranking.Backend` over the trained modules."""

    model: TwoTower
    scorer: Scorer | RoutedScorer | None
    item_vecs: np.ndarray
    platform_items: dict[int, np.ndarray]

    @property
    def has_scorer(self) -> bool:
        return self.scorer is not None

    @torch.no_grad()
    def user_vectors(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.model.eval()
        return self.model.users(*(torch.from_numpy(feeds[k]) for k in USER_ENCODER_INPUTS)).numpy()

    def search(self, target: int, user_vecs: np.ndarray, n: int, exclude: Sequence[np.ndarray]
               ) -> list[np.ndarray]:
        """Exact inner-product search; ties go to the lower row."""
        cand = self.platform_items[target]
        scores = self.item_vecs[cand] @ user_vecs.T  # [n_items, B]
        out = []
        for i, ex in enumerate(exclude):
            s = scores[:, i].copy()
            if len(ex):
                s[np.isin(cand, ex)] = -np.inf
            k = min(n, int(np.isfinite(s).sum()))
            top = np.sort(np.argpartition(-s, k - 1)[:k]) if k else np.zeros(0, dtype=np.int64)
            out.append(cand[top[np.argsort(-s[top], kind="stable")]])
        return out

    @torch.no_grad()
    def score(self, user_vecs: np.ndarray, item_vecs: np.ndarray, extras: np.ndarray) -> np.ndarray:
        assert self.scorer is not None
        self.scorer.eval()
        return self.scorer(torch.from_numpy(np.ascontiguousarray(user_vecs, dtype=np.float32)),
                           torch.from_numpy(np.ascontiguousarray(item_vecs, dtype=np.float32)),
                           torch.from_numpy(np.ascontiguousarray(extras, dtype=np.float32))).numpy()


@dataclass
class Prepared:
    """One query's scorer inputs (see `Ranker.prepare`)."""

    platform: int
    user: np.ndarray  # [D]
    retrieval: np.ndarray | None  # retrieval scores over the platform's items
    candidates: ranking.Candidates  # rows and scorer features


@dataclass
class Ranker:
    """Two-tower retrieval, optionally re-ranked by the scorer over retrieval's top `candidates` plus up to
    `knn_candidates` items by item-KNN co-occurrence with the history and, for people new to the target
    platform, up to `kg_candidates` sharing knowledge-graph entities with it (`contract.ranking`). `kg`: the
    items' entities (`training.kg.table.item_entities` of the dataset; empty: no KG, its features are 0)."""

    model: TwoTower
    ds: Dataset
    item_vecs: np.ndarray
    popularity: np.ndarray
    knn_index: np.ndarray
    knn_weight: np.ndarray
    knn_decay: float = 0.5
    scorer: Scorer | RoutedScorer | None = None
    candidates: int = 100
    knn_candidates: int = 0
    kg: ItemEntities = field(default_factory=ItemEntities.empty)
    kg_candidates: int = 0
    kg_features: bool = False  # the scorer reads features.KG_EXTRAS too (its width: scorer_features(True))
    als: AlsFactors | None = None  # ALS item factors: the scorer reads features.ALS_EXTRAS last
    als_candidates: int = 0

    def __post_init__(self) -> None:
        self.platform_items = {p: self.ds.platform_items(p) for p in range(len(self.ds.platforms))}
        self.max_pop = {p: float(self.popularity[c].max(initial=1)) for p, c in self.platform_items.items()}

    def backend(self) -> TorchBackend:
        return TorchBackend(self.model, self.scorer, self.item_vecs, self.platform_items)

    def tables(self) -> ranking.Tables:
        knn = KnnTable(self.knn_index, self.knn_weight, self.model.cfg.max_history, self.knn_decay)
        return ranking.Tables(self.item_vecs, self.popularity, self.ds.item_platform, self.max_pop, knn,
                              self.candidates, self.knn_candidates, kg=self.kg, kg_candidates=self.kg_candidates,
                              kg_features=self.kg_features, als=self.als, als_candidates=self.als_candidates)

    def user_vectors(self, queries: Sequence[Query]) -> np.ndarray:
        return ranking.user_vectors(self.backend(), self.tables(), [as_contract_query(q).history for q in queries],
                                    [q.platform for q in queries])

    def retrieval(self, queries: Sequence[Query]) -> list[np.ndarray]:
        u = self.user_vectors(queries)
        return [self.item_vecs[self.platform_items[q.platform]] @ u[i] for i, q in enumerate(queries)]

    def prepare(self, queries: Sequence[Query], keep_retrieval: bool = True) -> list[Prepared]:
        """Everything `final` needs but the scorer: fixed while the scorer trains, so computed once.
        `keep_retrieval=False` leaves out the scores over the whole platform (memory, for training examples)."""
        u = self.user_vectors(queries)
        cands = ranking.candidates(self.backend(), self.tables(), [as_contract_query(q) for q in queries], u)
        return [Prepared(q.platform, u[i],
                         self.item_vecs[self.platform_items[q.platform]] @ u[i] if keep_retrieval else None, c)
                for i, (q, c) in enumerate(zip(queries, cands, strict=True))]

    def rescore(self, prepared: Sequence[Prepared]) -> list[np.ndarray]:
        """`final` from `prepare`d queries: `contract.ranking.rerank` over the candidates, the rest of the
        platform's items by retrieval below them (the full-catalogue protocol needs a score for every item)."""
        ranked = ranking.rerank(self.backend(), self.tables(), np.stack([p.user for p in prepared]),
                                [p.candidates for p in prepared]) if prepared else []
        out = []
        for p, r in zip(prepared, ranked, strict=True):
            final = p.retrieval + OUTSIDE_CANDIDATES
            final[np.searchsorted(self.platform_items[p.platform], r.rows)] = r.scores
            out.append(final)
        return out

    def score_items(self, q: Query, item_vecs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores of given items for one query (rows -1 for items the tables do not hold): offline /v1/rank."""
        cq, backend = as_contract_query(q), self.backend()
        u = self.user_vectors([q])[0]
        x = ranking.features(self.tables(), cq, u, item_vecs, rows)
        if not backend.has_scorer:
            return x[:, 0]
        return backend.score(np.repeat(u[None], len(item_vecs), 0), item_vecs, x)

    def final(self, queries: Sequence[Query]) -> list[np.ndarray]:
        """Scores over each platform's items: re-ranked candidates first, the rest by retrieval."""
        return self.rescore(self.prepare(queries))


def user_vectors(model: TwoTower, item_vecs: np.ndarray, queries: Sequence[Query]) -> np.ndarray:
    """The serving path of the user tower, one vector per query."""
    feeds = user_encoder_feeds([as_contract_query(q).history for q in queries], [q.platform for q in queries],
                               item_vecs, model.cfg.max_history)
    return TorchBackend(model, None, item_vecs, {}).user_vectors(feeds)


def checkpoint_ranker(model: TwoTower, scorer: Scorer | RoutedScorer | None, ckpt: dict, ds: Dataset,
                      text_vecs: np.ndarray) -> Ranker:
    """The Ranker a checkpoint written by `training.train` describes, over these text vectors. A checkpoint
    from before the knowledge graph has no "kg": an empty table, no KG candidates, no KG features; one from
    before ALS has no "als": no ALS feature, no ALS candidates."""
    als = ckpt.get("als")
    return Ranker(model, ds, item_vectors(model, text_vecs, ds.item_platform), ckpt["popularity"],
                  ckpt["knn_index"], ckpt["knn_weight"], ckpt.get("knn_decay", 1.0), scorer,
                  ckpt.get("candidates", 100), ckpt.get("knn_candidates", 0),
                  ItemEntities.from_arrays(ckpt.get("kg"), ds.n_items), ckpt.get("kg_candidates", 0),
                  ckpt.get("kg_features", False),
                  AlsFactors.of(als["items"], als["alpha"], als["reg"], ds.item_platform) if als else None,
                  ckpt.get("als_candidates", 0))
