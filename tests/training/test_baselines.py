"""Every baseline through the one interface (fit → score) on the demo data, compared on the same queries."""

import numpy as np
import pytest

from training.baselines import ALS, EASE, ItemKNN, Popularity, TextZeroShot, build_neighbours, build_transitions
from training.baselines.itemknn import TableBuilder, TableSpec, build_mixed, build_tables
from training.data.build import build_dataset
from training.data.demo import write_demo
from training.data.sources import load_sources
from training.evaluate import Query, evaluate_models, make_queries
from training.sequences import Dataset, Timelines, load_dataset


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
            "als": ALS(factors=8, iterations=3).fit(ds), "text": TextZeroShot(text).fit(ds),
            "ease": EASE(lam=50.0).fit(ds), "sequential": ItemKNN(decay=0.65, table="sequential").fit(ds)}


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
    assert ndcg["ease"] > ndcg["popularity"], ndcg


def _hand_made(n_pairs: int = 4, people_per_pair: int = 5, loners: int = 0) -> Dataset:
    """Platform 0 items a0..a{n-1}, platform 1 items b0..b{n-1}: whoever has a_i also has b_i; item a_i has
    more events the larger i is. `loners` extra items on platform 1 (rows 2n..) are seen once each."""
    n = n_pairs
    ids = [f"a{i}" for i in range(n)] + [f"b{i}" for i in range(n)] + [f"c{i}" for i in range(loners)]
    plat = np.array([0] * n + [1] * (n + loners), dtype=np.int64)
    timelines: list[list[int]] = []
    for i in range(n):
        timelines += [[i, n + i]] * (people_per_pair + i)
    timelines += [[2 * n + j] for j in range(loners)]
    offsets = np.cumsum([0] + [len(t) for t in timelines])
    items = np.array([i for t in timelines for i in t], dtype=np.int64)
    tl = Timelines([f"p{k}" for k in range(len(timelines))], offsets, items, plat[items],
                   np.arange(len(items), dtype=np.int64))
    return Dataset(["a", "b"], ids, plat, ids, tl, {})


def _query(platform: int, items: list[int], ds: Dataset) -> Query:
    hist = np.array(items, dtype=np.int64)
    return Query(0, platform, hist, ds.item_platform[hist], np.zeros(len(hist), dtype=np.int64), 1, -1)


def test_ease_recovers_co_occurrence_across_platforms():
    ds = _hand_made()
    m = EASE(lam=1.0).fit(ds)
    n = 4
    out = m.score([_query(1, [i], ds) for i in range(n)] + [_query(0, [n + i], ds) for i in range(n)])
    for i in range(n):
        assert np.argmax(out[i]) == i and np.argmax(out[n + i]) == i, (i, out[i], out[n + i])
    # No history: popularity order (a3 has the most events).
    assert np.argsort(-m.score([_query(0, [], ds)])[0]).tolist() == [3, 2, 1, 0]


def test_ease_keeps_popular_items_and_ranks_the_rest_below_by_popularity():
    ds = _hand_made(loners=3)
    m = EASE(lam=1.0, max_items=4).fit(ds)  # platform 1 has 7 items: the loners (1 event each) go
    assert m.min_count_used == 2
    assert sorted(ds.item_ids[i] for i in m.kept) == [f"{x}{i}" for x in "ab" for i in range(4)]
    assert EASE(max_items=100).fit(ds).min_count_used == 1
    cand = ds.platform_items(1)
    s = m.score([_query(1, [2], ds)])[0]
    kept = np.isin(cand, m.kept)
    assert kept.sum() == 4 and s[~kept].max() < s[kept].min() and np.argmax(s) == 2
    # A loner has no co-occurrence: it sits below the kept items whatever the history.
    assert m.score([_query(1, [8], ds)])[0][~kept].max() < m.score([_query(1, [8], ds)])[0][kept].min()


def test_ease_matches_the_closed_form():
    ds = _hand_made()
    m = EASE(lam=2.0).fit(ds)
    x = np.zeros((len(ds.timelines), ds.n_items))
    for p in range(len(ds.timelines)):
        x[p, ds.timelines.items[ds.timelines.span(p)]] = 1
    inv = np.linalg.inv(x.T @ x + 2.0 * np.eye(ds.n_items))
    b = np.eye(ds.n_items) - inv / np.diag(inv)
    order = m.kept
    assert np.allclose(m.b, b[np.ix_(order, order)], atol=1e-5) and np.all(np.diag(m.b) == 0)


def _timelines(people: list[list[int]]) -> Timelines:
    items = np.array([i for p in people for i in p], dtype=np.int64)
    offsets = np.r_[0, np.cumsum([len(p) for p in people])].astype(np.int64)
    zeros = np.zeros(len(items), dtype=np.int64)
    return Timelines([f"p{i}" for i in range(len(people))], offsets, items, zeros, zeros)


def test_sequential_table_follows_order_and_distance():
    # 0 → 1 → 2 for two people; 3 only ever comes before 0
    tl = _timelines([[3, 0, 1, 2], [0, 1, 2]])
    index, weight = build_transitions(tl, 4, k=3, window=2, shrink=0.0)
    row0 = dict(zip(index[0].tolist(), weight[0].tolist(), strict=True))
    assert set(row0) - {-1} == {1, 2}  # what follows 0; never 3, which only precedes it
    assert row0[1] > row0[2] > 0  # the next event counts 1, two events on counts 1/2
    assert set(index[2].tolist()) == {-1}  # nothing ever follows 2
    # window 1 leaves out pairs two apart; `keep` leaves out events
    index, _ = build_transitions(tl, 4, k=3, window=1, shrink=0.0)
    assert set(index[0].tolist()) - {-1} == {1}
    keep = np.array([True, True, False, True, True, True, True])
    index, _ = build_transitions(tl, 4, k=3, window=1, shrink=0.0, keep=keep)
    assert 2 in index[0].tolist()  # person 0's 1 is left out: 0 is then followed by 2 there


def test_mixed_table_holds_both_opinions():
    # 0 is followed by 1; 0 and 2 are owned by the same people but 2 comes first
    tl = _timelines([[2, 0, 1], [2, 0, 1], [2, 0]])
    co, _ = build_neighbours(tl, 3, k=2, shrink=0.0)
    seq, _ = build_transitions(tl, 3, k=2, window=1, shrink=0.0)
    mixed, weight = build_mixed(tl, 3, k=2, shrink=0.0)
    assert set(co[0].tolist()) == {1, 2} and set(seq[0].tolist()) - {-1} == {1}
    assert mixed[0].tolist() == [1, 2] and weight[0, 0] > weight[0, 1] > 0  # sequential counts more


def test_building_every_table_at_once_gives_each_builders_table():
    tl = _timelines([[3, 0, 1, 2], [0, 1, 2], [2, 3, 0], [1, 3]])
    keep = np.ones(len(tl.items), dtype=bool)
    keep[4] = False
    at_once = build_tables(tl, 4, ("co-occurrence", "sequential", "mixed"), k=3, keep=keep)
    alone = {"co-occurrence": build_neighbours(tl, 4, k=3, keep=keep),
             "sequential": build_transitions(tl, 4, k=3, keep=keep), "mixed": build_mixed(tl, 4, k=3, keep=keep)}
    for kind, (index, weight) in alone.items():
        assert np.array_equal(at_once[kind][0], index) and np.allclose(at_once[kind][1], weight), kind
    with pytest.raises(ValueError, match="unknown neighbour table"):
        build_tables(tl, 4, ("co-occurrence", "cosine"))


def test_asymmetric_normalisation_penalises_a_popular_candidate_less():
    # 0 co-occurs once with popular 1 (in 4 timelines) and once with rare 2 (in 1): the cosine prefers 2,
    # alpha 1 (count / n_source: how often 1 or 2 follows 0's owners) ties them, and the weights are the formula's
    tl = _timelines([[0, 1], [1], [1], [1], [0, 2]])
    builder = TableBuilder(tl, 3, k=2)
    cosine = builder.similarity(TableSpec("co-occurrence", 0.5, 0.0)).toarray()
    assert np.isclose(cosine[0, 1], 1 / np.sqrt(2 * 4)) and np.isclose(cosine[0, 2], 1 / np.sqrt(2 * 1))
    skewed = builder.similarity(TableSpec("co-occurrence", 1.0, 0.0)).toarray()
    assert np.isclose(skewed[0, 1], 0.5) and np.isclose(skewed[0, 2], 0.5)
    shrunk = builder.similarity(TableSpec("co-occurrence", 0.8, 30.0)).toarray()
    assert np.isclose(shrunk[0, 1], 1 / (2**0.8 * 4**0.2 + 30))
    # the default spec is the cosine the older builders give
    assert np.array_equal(builder.table(TableSpec("mixed"))[0], build_mixed(tl, 3, k=2)[0])


def test_table_labels_round_trip_and_bad_ones_are_refused():
    for spec in (TableSpec("mixed"), TableSpec("sequential", 0.8, 30.0), TableSpec("co-occurrence", 1.0, 10.0)):
        assert TableSpec.parse(spec.label) == spec
    assert TableSpec("mixed").label == "mixed" and TableSpec("mixed", 0.8, 30.0).label == "mixed a0.8 s30"
    for bad in ("cosine", "mixed a0.8", "mixed x1 s3"):
        with pytest.raises(ValueError, match="neighbour table"):
            TableSpec.parse(bad)
    assert ItemKNN(table="mixed a0.8 s30").table == TableSpec("mixed", 0.8, 30.0)


def test_choose_neighbours_tries_normalisations_of_the_best_kind_only(ds):
    from training.evaluate import make_queries
    from training.neighbours import choose_neighbours

    keep = np.ones(len(ds.timelines.items), dtype=bool)
    valid = make_queries(ds, "valid")
    nb = choose_neighbours(ds, keep, valid, [1.0, 0.5], 0.0, 50, log=lambda _: None,
                           kinds=("co-occurrence", "sequential"), normalisations=((0.5, 10.0), (1.0, 30.0)))
    kinds = {TableSpec.parse(k.rsplit("@", 1)[0]).kind for k in nb.tried if " " in k}
    assert len(kinds) == 1  # only the winning kind gets other normalisations
    assert nb.valid_ndcg == max(nb.tried.values()) and nb.tried[f"{nb.name}@{nb.decay}"] == nb.valid_ndcg
    assert np.array_equal(nb.index, nb.tables[nb.name][0])
