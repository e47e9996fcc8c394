"""Every baseline through the one interface (fit → score) on the demo data, compared on the same queries."""

import numpy as np
import pytest

from training.baselines import ALS, ItemKNN, Popularity, TextZeroShot
from training.data.build import build_dataset
from training.data.demo import write_demo
from training.data.sources import load_sources
from training.evaluate import evaluate_models, make_queries
from training.sequences import load_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    build_dataset(load_sources(write_demo(root / "raw", people=600, items_per_platform=60, seed=4)), root / "ds",
                  salt="s")
    return load_dataset(root / "ds")


@pytest.fixture(scope="module")
def models(ds):
    text = np.random.default_rng(0).standard_normal((ds.n_items, 8)).astype(np.float32)
    return {"popularity": Popularity().fit(ds), "item-knn": ItemKNN(decay=0.5).fit(ds),
            "als": ALS(factors=8, iterations=3).fit(ds), "text": TextZeroShot(text).fit(ds)}


def test_every_baseline_scores_each_platform_item_once(ds, models):
    qs = make_queries(ds, "valid")[:20]
    for name, m in models.items():
        out = m.score(qs)
        assert len(out) == len(qs), name
        for q, s in zip(qs, out, strict=True):
            assert s.shape == (len(ds.platform_items(q.platform)),) and np.all(np.isfinite(s)), name


def test_collaborative_baselines_beat_popularity_on_topic_data(ds, models):
    res = evaluate_models(ds, {k: m.score for k, m in models.items()}, "valid", protocols=("full",))
    ndcg = {k: r["full"]["overall"]["ndcg@10"] for k, r in res.items()}
    assert ndcg["item-knn"] > ndcg["popularity"] and ndcg["als"] > ndcg["popularity"], ndcg
