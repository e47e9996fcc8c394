"""Popularity-bias metrics of the top-k lists: hand-computed values, the top lists `ranks` fills, and the
metrics in evaluate_models' output, the markdown report and the PNG."""

import json
from math import log2

import numpy as np
import pytest

from training.evaluate import (
    Query,
    bias_metrics,
    evaluate_models,
    gini,
    long_tail_mask,
    markdown_table,
    ranks,
    top_positions,
    write_results,
)
from training.sequences import Dataset, Targets, Timelines


def _dataset(platform_of_item: list[int], timelines: list[list[int]], targets: Targets | None = None) -> Dataset:
    """Items (rows in order) on the given platforms; one person per timeline, events one second apart."""
    plat = np.array(platform_of_item, dtype=np.int64)
    offsets = np.cumsum([0] + [len(t) for t in timelines])
    items = np.array([i for t in timelines for i in t], dtype=np.int64)
    tl = Timelines([f"p{k}" for k in range(len(timelines))], offsets, items, plat[items],
                   np.arange(len(items), dtype=np.int64))
    names = [f"i{i}" for i in range(len(plat))]
    n_plat = int(plat.max()) + 1
    return Dataset([chr(ord("a") + p) for p in range(n_plat)], names, plat, names, tl,
                   {"test": targets} if targets is not None else {})


def _q(platform: int, target: int = 0, seen: tuple[int, ...] = ()) -> Query:
    hist = np.array(seen, dtype=np.int64)
    return Query(0, platform, hist, np.full(len(hist), platform, dtype=np.int64),
                 np.zeros(len(hist), dtype=np.int64), 100, target)


# One platform, 5 items with 4, 3, 2, 1, 0 training events (10 in all).
FIVE = [[0, 1, 2, 3], [0, 1, 2], [0, 1], [0]]


def test_gini_hand_computed():
    assert gini(np.array([3, 3, 3, 3])) == 0.0  # even
    assert gini(np.array([0, 0, 0, 5])) == 1.0  # everything on one item
    # ascending [0, 0, 1, 1, 2]: sum (2j - 6) x_j = 2 + 8 = 10, over (n - 1) * total = 4 * 4
    assert gini(np.array([2, 1, 1, 0, 0])) == pytest.approx(10 / 16)
    assert gini(np.array([0, 0])) == 0.0 and gini(np.array([7])) == 0.0


def test_long_tail_is_the_bottom_80_percent_by_popularity():
    assert long_tail_mask(np.array([4, 3, 2, 1, 0])).tolist() == [False, True, True, True, True]
    assert long_tail_mask(np.array([0, 9, 1, 1, 5, 0, 0, 2, 3, 1])).tolist() == \
        [True, False, True, True, False, True, True, True, True, True]  # head: the 2 most popular of 10
    # equal counts: the lower item row counts as more popular
    assert long_tail_mask(np.array([1, 1, 0, 0, 0])).tolist() == [False, True, True, True, True]


def test_bias_metrics_on_two_hand_made_lists():
    ds = _dataset([0] * 5, FIVE)
    assert ds.popularity().tolist() == [4, 3, 2, 1, 0]
    top = np.array([[0, 1], [0, 2]])  # 2 queries, top 2 each: exposure [2, 1, 1, 0, 0]
    m = bias_metrics(ds, [_q(0), _q(0)], top)
    assert m["platform"] == {"a": m["overall"]}
    o = m["overall"]
    assert o["coverage@2"] == pytest.approx(3 / 5)
    assert o["gini@2"] == pytest.approx(10 / 16)
    assert o["long_tail@2"] == pytest.approx(2 / 4)  # items 1 and 2 are in the tail, item 0 is the head
    # p(i) = (c + 1) / (10 + 5): 5/15, 4/15, 3/15
    assert o["novelty@2"] == pytest.approx((2 * log2(15 / 5) + log2(15 / 4) + log2(15 / 3)) / 4)


def test_bias_metrics_short_lists_and_extremes():
    ds = _dataset([0] * 5, FIVE)
    # every query gets the same single item (padding -1 is no slot): all exposure on one item
    m = bias_metrics(ds, [_q(0)] * 3, np.array([[4, -1], [4, -1], [4, -1]]))["overall"]
    assert m["coverage@2"] == pytest.approx(1 / 5) and m["gini@2"] == pytest.approx(1.0)
    assert m["long_tail@2"] == 1.0 and m["novelty@2"] == pytest.approx(log2(15))
    # every item shown equally often
    m = bias_metrics(ds, [_q(0)] * 5, np.array([[0, 1], [2, 3], [4, 0], [1, 2], [3, 4]]))["overall"]
    assert m["coverage@2"] == 1.0 and m["gini@2"] == pytest.approx(0.0) and m["long_tail@2"] == pytest.approx(0.8)


def test_bias_metrics_per_platform_and_overall():
    # platform a: items 0-4 (4, 3, 2, 1, 0 events); platform b: items 5, 6 (1 and 0 events); no query on c
    ds = _dataset([0] * 5 + [1, 1, 2], [*FIVE, [5], [7]])
    queries = [_q(0), _q(0), _q(1)]
    top = np.array([[0, 1], [0, 2], [6, 5]])
    m = bias_metrics(ds, queries, top)
    assert set(m["platform"]) == {"a", "b"}
    b = m["platform"]["b"]
    assert b["coverage@2"] == 1.0 and b["gini@2"] == 0.0
    assert b["long_tail@2"] == pytest.approx(1 / 2)  # 2 items: floor(1.6) = 1 in the tail, item 6
    assert b["novelty@2"] == pytest.approx((log2(3 / 1) + log2(3 / 2)) / 2)  # p = 1/3 (item 6), 2/3 (item 5)
    o = m["overall"]
    assert o["coverage@2"] == pytest.approx(5 / 7)  # items of a and b side by side: exposure [2,1,1,0,0,1,1]
    assert o["gini@2"] == pytest.approx(gini(np.array([2, 1, 1, 0, 0, 1, 1])))
    assert o["long_tail@2"] == pytest.approx(3 / 6)
    assert o["novelty@2"] == pytest.approx((2 * log2(3) + log2(15 / 4) + log2(5) + log2(3) + log2(1.5)) / 6)


def test_top_positions_orders_by_score_then_position_and_skips_excluded():
    s = np.array([0.5, 2.0, 0.5, -np.inf, 1.0, 0.5])
    assert top_positions(s, 3).tolist() == [1, 4, 0]
    assert top_positions(s, 4).tolist() == [1, 4, 0, 2]
    assert top_positions(s, 10).tolist() == [1, 4, 0, 2, 5]  # -inf never listed
    assert top_positions(np.zeros(4), 2).tolist() == [0, 1]


def test_ranks_fills_the_top_lists_with_seen_items_excluded_and_the_same_ranks():
    ds = _dataset([0] * 4, [[0, 1]])
    q = _q(0, target=3, seen=(0, 1))
    score = lambda qs: [np.array([9.0, 8.0, 0.5, 0.5])]  # noqa: E731
    top = np.zeros((1, 3), dtype=np.int64)
    assert ranks(ds, [q], score, top=top).tolist() == [1]
    assert top.tolist() == [[2, 3, -1]]  # seen 0 and 1 excluded, the target listed, padded
    assert ranks(ds, [q], score, exclude_seen=False, top=top).tolist() == [3]
    assert top.tolist() == [[0, 1, 2]]
    # a seen target: its rank is still measured, but a seen item is never recommended
    q2 = _q(0, target=3, seen=(0, 3))
    assert ranks(ds, [q2], lambda qs: [np.array([9.0, 8.0, 0.4, 0.5])], top=top).tolist() == [1]
    assert top.tolist() == [[1, 2, -1]]


def test_top_lists_do_not_change_ranks_and_match_a_full_sort():
    rng = np.random.default_rng(3)
    n_items = 300
    ds = _dataset([0] * 200 + [1] * 100, [[0]])
    queries = [_q(int(p), target=int(t), seen=tuple(rng.choice(100, size=5, replace=False) + 200 * int(p)))
               for p, t in zip(rng.integers(0, 2, 50), rng.integers(0, 100, 50), strict=True)]
    queries = [Query(q.person, q.platform, q.items, q.platforms, q.ts, q.now, q.target + 200 * q.platform)
               for q in queries]
    table = rng.integers(0, 20, size=n_items).astype(np.float64)  # many ties

    def score(qs):
        return [table[ds.platform_items(q.platform)] for q in qs]

    top = np.full((len(queries), 10), -1, dtype=np.int64)
    assert ranks(ds, queries, score, batch=7, top=top).tolist() == ranks(ds, queries, score).tolist()
    for q, row in zip(queries, top, strict=True):
        items = ds.platform_items(q.platform)
        keep = [int(i) for i in items if int(i) not in set(q.items.tolist())]
        expected = sorted(keep, key=lambda i: (-table[i], i))[:10]
        assert row.tolist() == expected


@pytest.fixture
def tiny_eval():
    # platform a: items 0-4 with 4, 3, 2, 1, 0 events; platform b: items 5-7 with 2, 1, 0 events
    tls = [[0, 1, 2, 3, 5], [0, 1, 2, 5], [0, 1, 6], [0]]
    targets = Targets(np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1]), np.array([4, 3, 7, 7]),
                      np.array([100, 100, 100, 100]))
    ds = _dataset([0] * 5 + [1] * 3, tls, targets)
    pop = ds.popularity().astype(np.float64)
    models = {"popular": lambda qs: [pop[ds.platform_items(q.platform)] for q in qs],
              "unpopular": lambda qs: [-pop[ds.platform_items(q.platform)] for q in qs]}
    return ds, models


def test_evaluate_models_reports_bias_per_platform_and_overall(tiny_eval):
    ds, models = tiny_eval
    logged: list[str] = []
    res = evaluate_models(ds, models, "test", log=logged.append)
    keys = {"coverage@10", "gini@10", "long_tail@10", "novelty@10"}
    for name in models:
        full = res[name]["full"]
        assert keys <= set(full["overall"]) and "ndcg@10" in full["overall"]
        assert keys <= set(full["platform"]["a"]) and keys <= set(full["platform"]["b"])
        assert not keys & set(res[name]["new_to_platform"]["overall"])  # `full` only
    # Top 10 = every unseen item of the platform. Platform a: person 0 sees 0-3 -> [4]; person 1 sees 0-2 ->
    # [3, 4] (popular) / [4, 3]; platform b: person 2 sees 6 -> [5, 7]; person 3 sees nothing -> [5, 6, 7].
    a = res["popular"]["full"]["platform"]["a"]
    assert a["coverage@10"] == pytest.approx(2 / 5) and a["long_tail@10"] == 1.0
    assert a["gini@10"] == pytest.approx(gini(np.array([0, 0, 0, 1, 2])))
    b = res["popular"]["full"]["platform"]["b"]
    assert b["coverage@10"] == 1.0 and b["gini@10"] == pytest.approx(gini(np.array([2, 1, 2])))
    assert b["long_tail@10"] == pytest.approx(3 / 5)  # 3 items: floor(2.4) = 2 in the tail (6, 7)
    # the same items in another order: the same bias (it depends on the set of 10, not its order)
    for k in keys:
        assert res["unpopular"]["full"]["overall"][k] == pytest.approx(res["popular"]["full"]["overall"][k])
    assert any("coverage@10" in line for line in logged)


def test_write_results_writes_the_bias_table_json_and_png(tiny_eval, tmp_path):
    ds, models = tiny_eval
    res = evaluate_models(ds, models, "test", protocols=("full",), log=lambda _: None)
    md = markdown_table(res, "test")
    assert "popularity bias of the top 10" in md
    assert "| popular | all |" in md and "| unpopular | b |" in md
    write_results(res, "test", tmp_path)
    saved = json.loads((tmp_path / "metrics-test.json").read_text())
    assert saved["popular"]["full"]["overall"]["coverage@10"] == res["popular"]["full"]["overall"]["coverage@10"]
    assert "Gini of exposure" in (tmp_path / "metrics-test.md").read_text()
    png = tmp_path / "bias-test.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "buckets-test.png").is_file()


def test_a_popularity_ranker_shows_less_long_tail_and_novelty_than_its_reverse():
    # 30 items, item i with 30 - i events (head: the 6 most popular, items 0-5); person k (0-2) has seen item k
    n = 30
    tls = [[i] * (n - i) for i in range(n)]
    targets = Targets(np.array([0, 1, 2]), np.array([0, 0, 0]), np.array([29, 28, 27]), np.full(3, 10**6))
    ds = _dataset([0] * n, tls, targets)
    pop = ds.popularity().astype(np.float64)
    res = evaluate_models(ds, {"popular": lambda qs: [pop for _ in qs], "unpopular": lambda qs: [-pop for _ in qs]},
                          "test", protocols=("full",), log=lambda _: None)
    hi, lo = res["popular"]["full"]["overall"], res["unpopular"]["full"]["overall"]
    # popular: person k's list is items 0-10 without k (5 head items); unpopular: items 29-20 for everyone
    assert lo["coverage@10"] == pytest.approx(10 / 30) and lo["gini@10"] == pytest.approx(gini(
        np.array([3] * 10 + [0] * 20)))
    assert lo["long_tail@10"] == 1.0
    assert hi["coverage@10"] == pytest.approx(11 / 30)  # items 0-10 minus each person's own seen item
    assert hi["long_tail@10"] == pytest.approx((3 * 10 - 3 * 5) / 30)  # 5 head items in each list
    assert lo["novelty@10"] > hi["novelty@10"]
