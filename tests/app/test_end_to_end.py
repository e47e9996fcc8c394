"""The whole pipeline on demo data: build → train a few steps → export → serve → recommend → events.

Also the train/serve skew check: for evaluation persons, the service's top-10 equals what the offline
evaluator's ranking (torch model, same features code) puts first.
"""

import csv

import numpy as np
import pytest

from export.write_bundle import export_bundle
from tests.app.conftest import AUTH, make_settings, running
from training.checkpoint import load_checkpoint
from training.data.build import build_dataset
from training.data.demo import write_demo
from training.data.sources import load_sources
from training.evaluate import make_queries
from training.model import ModelConfig
from training.report import model_rankers
from training.skew import expected_top, new_item_case
from training.train import TrainConfig, train

SALT = "e2e-salt"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_text_model):
    root = tmp_path_factory.mktemp("e2e")
    mapping = write_demo(root / "raw", people=300, items_per_platform=40, seed=5)
    build_dataset(load_sources(mapping), root / "ds", salt=SALT)
    # 10 retrieval + up to 10 item-KNN + 5 ALS candidates of 40 items per platform: every source reaches the
    # scorer, which reads the ALS feature too (so the skew check covers contract.als in the service).
    ckpt = train(TrainConfig(dataset=root / "ds", out=root / "run", epochs=2, batch_tokens=256, scorer_epochs=2,
                             text_cache=root / "cache",
                             model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model),
                             candidates=10, knn_candidates=10, als_features=True, als_candidates=5))
    bundle = export_bundle(ckpt, root / "bundles", version="e2e", salt=SALT, measure_variants=False)
    return root, ckpt, bundle


def test_service_top10_equals_the_offline_ranking(pipeline, redis_prefix, tmp_path):
    root, ckpt, bundle = pipeline
    ds, ranker = model_rankers(ckpt)
    queries = [q for q in make_queries(ds, "test") if len(q.items)][:8]
    offline = ranker.final(queries)
    # The union is exercised: some query re-ranks item-KNN candidates beyond retrieval's 10.
    sizes = [len(p.candidates.rows) for p in ranker.prepare(queries, keep_retrieval=False)]
    assert max(sizes) > 10, sizes
    settings = make_settings(bundle, redis_prefix, tmp_path / "events", id_salt=SALT)
    with running(settings) as client:
        for q, scores in zip(queries, offline, strict=True):
            r = client.post("/v1/recommend", json={"person_id": ds.timelines.persons[q.person],
                                                   "platform": ds.platforms[q.platform], "k": 10, "now_ts": q.now})
            assert r.status_code == 200, r.text
            assert [i["item_id"] for i in r.json()["items"]] == expected_top(ranker, q, 10, scores)


def test_events_change_the_next_recommendation(pipeline, redis_prefix, tmp_path):
    root, _, bundle = pipeline
    with (root / "raw" / "eval" / "test.csv").open() as f:
        row = next(csv.DictReader(f))
    platform, account = row["platform"], row["account_id"]
    settings = make_settings(bundle, redis_prefix, tmp_path / "events", id_salt=SALT)
    with running(settings) as client:
        body = {"account_id": account, "platform": platform, "k": 10}
        before = client.post("/v1/recommend", json=body).json()
        assert not before["cold_start"]
        new_items = [i["item_id"] for i in before["items"][:3]]
        events = [{"event_id": f"e2e-{k}", "platform": platform, "account_id": account, "item_id": item,
                   "event": "view", "ts": 1717300000 + k} for k, item in enumerate(new_items)]
        r = client.post("/v1/events", json={"events": events}, headers={"X-API-Key": "test-key-1"})
        assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
        after = client.post("/v1/recommend", json=body).json()
    got = [i["item_id"] for i in after["items"]]
    assert not set(new_items) & set(got)  # what the person just did is now seen: not recommended again
    assert got != [i["item_id"] for i in before["items"]]
    reasons = {r["item_id"] for i in after["items"] for r in i["reasons"]}
    assert reasons & set(new_items)  # the new events drive the new results


def test_a_new_item_ranks_where_the_offline_text_only_ranking_puts_it(pipeline, redis_prefix, tmp_path):
    """A catalog title sent through PUT /v1/items under a new id is scored by the service (item encoder
    ONNX → features → scorer ONNX) as the trained model scores an item it never saw (text path alone)."""
    root, ckpt, bundle = pipeline
    ds, ranker = model_rankers(ckpt)
    cfg = load_checkpoint(ckpt).cfg
    queries = [q for q in make_queries(ds, "test") if len(q.items)][:6]
    settings = make_settings(bundle, redis_prefix, tmp_path / "events", id_salt=SALT)
    with running(settings) as client:
        for n, q in enumerate(queries):
            platform = ds.platforms[q.platform]
            case = new_item_case(ranker, q, int(ds.platform_items(q.platform)[(7 * n) % 40]), f"{platform}:new-{n}",
                                 cfg.text_max_length, cfg.text_model)
            r = client.put("/v1/items", json={"items": [{"item_id": case.new_id, "platform": platform,
                                                         "title": case.title}]}, headers=AUTH)
            assert r.status_code == 200, r.text
            r = client.post("/v1/rank", json={"person_id": ds.timelines.persons[q.person], "platform": platform,
                                              "now_ts": q.now, "items": [{"item_id": i} for i in case.ids]})
            assert r.status_code == 200, r.text
            got = r.json()["items"]
            assert [i["item_id"] for i in got] == case.expected
            served = {i["item_id"]: i["score"] for i in got}
            np.testing.assert_allclose(served[case.new_id], case.new_score, rtol=1e-4, atol=1e-4)
