import numpy as np

from training.evaluate import (
    Query,
    bootstrap_ratio,
    bucket_of,
    metrics_from_ranks,
    ndcg_per_query,
    ranks,
    sampled_metrics,
)
from training.sequences import Dataset, Targets, Timelines


def test_metrics_match_hand_computed_values():
    # ranks 0, 1, 9, 10, 60 (0-based)
    m = metrics_from_ranks(np.array([0, 1, 9, 10, 60]))
    assert m["recall@10"] == 3 / 5
    assert m["recall@20"] == 4 / 5
    assert m["recall@50"] == 4 / 5
    expected_ndcg10 = (1 / np.log2(2) + 1 / np.log2(3) + 1 / np.log2(11)) / 5
    assert abs(m["ndcg@10"] - expected_ndcg10) < 1e-12
    assert abs(m["ndcg@20"] - (expected_ndcg10 * 5 + 1 / np.log2(12)) / 5) < 1e-12
    assert abs(m["mrr"] - (1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 61) / 5) < 1e-12
    s = sampled_metrics(np.array([0, 12]))
    assert s["hr@10"] == 0.5 and abs(s["ndcg@10"] - 0.5) < 1e-12


def test_buckets():
    assert [bucket_of(n) for n in (0, 1, 2, 3, 9, 10, 500)] == ["0", "1-2", "1-2", "3-9", "3-9", "10+", "10+"]


def _tiny_ds():
    tl = Timelines(["p"], np.array([0, 2]), np.array([0, 1]), np.array([0, 0]), np.array([1, 2]))
    return Dataset(["a"], ["a:0", "a:1", "a:2", "a:3"], np.zeros(4, dtype=np.int64), ["t"] * 4, tl,
                   {"test": Targets(np.array([0]), np.array([0]), np.array([3]), np.array([10]))})


def test_rank_excludes_seen_items_but_never_the_target_and_counts_ties_against_it():
    ds = _tiny_ds()
    q = Query(0, 0, np.array([0, 1]), np.array([0, 0]), np.array([1, 2]), 10, target=3)
    # seen items 0 and 1 score highest but are excluded; item 2 ties with the target: rank 1
    assert ranks(ds, [q], lambda qs: [np.array([9.0, 8.0, 0.5, 0.5])]).tolist() == [1]
    assert ranks(ds, [q], lambda qs: [np.array([9.0, 8.0, 0.4, 0.5])]).tolist() == [0]
    assert ranks(ds, [q], lambda qs: [np.array([9.0, 8.0, 0.4, 0.5])], exclude_seen=False).tolist() == [2]
    # a target the person has seen before stays rankable
    q2 = Query(0, 0, np.array([0, 3]), np.array([0, 0]), np.array([1, 2]), 10, target=3)
    assert ranks(ds, [q2], lambda qs: [np.array([9.0, 8.0, 0.4, 0.5])]).tolist() == [1]


def test_per_query_ndcg_and_the_paired_bootstrap_interval():
    assert np.allclose(ndcg_per_query(np.array([0, 1, 9, 10]), 10), [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0])
    # a is exactly twice b on every query: every resample has ratio 2.
    b = np.array([0.1, 0.5, 0.2, 0.0, 0.3])
    assert np.allclose(bootstrap_ratio(2 * b, b, n=200), (2.0, 2.0))
    # Noisy pairs: the interval contains the full-sample ratio and has width.
    rng = np.random.default_rng(1)
    a, b = rng.random(200), rng.random(200)
    lo, hi = bootstrap_ratio(a, b, n=2000)
    assert lo < a.mean() / b.mean() < hi and hi - lo > 0.05
