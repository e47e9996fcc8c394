"""ALS in the ranking path (contract.als): the user solve against the library that trained the factors, the
candidates against a brute-force ranking, and how contract.features / contract.ranking / the manifest use it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from contract import ranking
from contract.als import AlsFactors
from contract.bundle import Manifest, ModelFile, check_compatible
from contract.features import (
    ALS_EXTRAS,
    KG_EXTRAS,
    SCORER_EXTRAS,
    History,
    KnnTable,
    candidate_features,
    scorer_features,
)

N_ITEMS = 60
ITEM_PLATFORM = np.array([0] * 25 + [1] * 35)


@pytest.fixture(scope="module")
def fitted() -> tuple[object, sp.csr_matrix, AlsFactors]:
    from implicit.cpu.als import AlternatingLeastSquares

    x = sp.random(120, N_ITEMS, density=0.08, random_state=1, format="csr", dtype=np.float32)
    x.data[:] = 1.0
    model = AlternatingLeastSquares(factors=6, regularization=0.05, alpha=10.0, iterations=4, random_state=0,
                                    use_cg=False)
    model.fit(x, show_progress=False)
    return model, x, AlsFactors.of(np.asarray(model.item_factors), 10.0, 0.05, ITEM_PLATFORM)


def test_the_user_solve_is_the_one_implicit_trains_with(fitted) -> None:
    model, x, als = fitted
    for person in range(0, 120, 7):
        rows = x[person].indices
        # repeats and rows the table does not hold (items added after export) change nothing
        history = np.concatenate([rows, rows[:2], [N_ITEMS + 3, -1]])
        assert als.user_vector(history) == pytest.approx(model.recalculate_user(person, x[person]), abs=1e-4)
    assert not als.user_vector(np.array([], dtype=np.int64)).any()


def test_scores_are_item_factors_dot_the_person_and_zero_for_unknown_rows(fitted) -> None:
    _, x, als = fitted
    u = als.user_vector(x[0].indices)
    got = als.scores(u, np.array([3, -1, 40, N_ITEMS + 1]))
    assert got[[0, 2]] == pytest.approx(als.items[[3, 40]] @ u) and got[1] == 0 and got[3] == 0


def test_candidates_are_the_platforms_best_unseen_live_rows(fitted) -> None:
    _, x, als = fitted
    u = als.user_vector(x[5].indices)
    platform_rows = np.flatnonzero(ITEM_PLATFORM == 1)
    brute = platform_rows[np.argsort(-(als.items[platform_rows] @ u), kind="stable")]
    assert als.candidates(u, 1, 5, np.zeros(0, dtype=np.int64)).tolist() == brute[:5].tolist()
    live = np.ones(N_ITEMS + 10, dtype=bool)  # longer than the table: items added after export
    live[brute[1]] = False
    got = als.candidates(u, 1, 4, np.array([brute[0], 2]), live)
    assert got.tolist() == brute[2:6].tolist()
    assert set(als.candidates(u, 0, 100, np.zeros(0, dtype=np.int64)).tolist()) == set(range(25))
    assert len(als.candidates(np.zeros_like(u), 1, 5, np.zeros(0, dtype=np.int64))) == 0  # no history: none
    assert len(als.candidates(u, 7, 5, np.zeros(0, dtype=np.int64))) == 0  # a platform it has no rows of


def test_save_and_load_keep_the_factors(fitted, tmp_path: Path) -> None:
    _, x, als = fitted
    als.save(tmp_path / "als.npz")
    back = AlsFactors.load(tmp_path / "als.npz", ITEM_PLATFORM)
    assert np.array_equal(back.items, als.items) and (back.alpha, back.reg) == (als.alpha, als.reg)
    assert np.array_equal(back.user_vector(x[3].indices), als.user_vector(x[3].indices))


def test_candidate_features_append_the_als_column_last(fitted) -> None:
    _, x, als = fitted
    assert scorer_features(True, True) == SCORER_EXTRAS + KG_EXTRAS + ALS_EXTRAS
    h = History.of(x[9].indices, ITEM_PLATFORM[x[9].indices], np.arange(len(x[9].indices)))
    knn = KnnTable(np.full((N_ITEMS, 1), -1), np.zeros((N_ITEMS, 1), dtype=np.float32), 10)
    cand = np.array([30, 31, -1])
    args = (h, 1, 10.0, np.zeros(3), cand, np.ones(3), 5.0, knn)
    x_als = candidate_features(*args, als=als)
    assert x_als.shape == (3, len(scorer_features(False, True))) and x_als.dtype == np.float32
    assert x_als[:, -1] == pytest.approx(als.scores(als.user_vector(h.rows), cand))
    assert np.array_equal(x_als[:, :-1], candidate_features(*args))


class _Retrieval:
    """A Backend whose search returns the first rows of the target platform (minus excluded ones)."""

    def __init__(self, has_scorer: bool = True) -> None:
        self.has_scorer = has_scorer

    def user_vectors(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.zeros((len(feeds["target_platform"]), 2), dtype=np.float32)

    def search(self, target: int, user_vecs: np.ndarray, n: int, exclude: Sequence[np.ndarray]) -> list[np.ndarray]:
        rows = np.flatnonzero(target == ITEM_PLATFORM)
        return [np.array([r for r in rows if r not in ex][:n], dtype=np.int64) for ex in exclude]

    def score(self, user_vecs: np.ndarray, item_vecs: np.ndarray, extras: np.ndarray) -> np.ndarray:
        return extras[:, -1]


def test_ranking_adds_als_candidates_the_others_missed_and_ranks_by_the_feature(fitted) -> None:
    _, x, als = fitted
    knn = KnnTable(np.full((N_ITEMS, 1), -1), np.zeros((N_ITEMS, 1), dtype=np.float32), 10)
    tables = ranking.Tables(np.zeros((N_ITEMS, 2), dtype=np.float32), np.ones(N_ITEMS), ITEM_PLATFORM,
                            {0: 1.0, 1: 1.0}, knn, retrieval_candidates=3, als=als, als_candidates=4)
    hist = x[11].indices
    q = ranking.Query(History.of(hist, ITEM_PLATFORM[hist], np.arange(len(hist))), 1, 10.0)
    u = np.zeros((1, 2), dtype=np.float32)
    got = ranking.candidates(_Retrieval(), tables, [q], u)[0]
    retrieved = got.rows[:3]
    seen = hist[ITEM_PLATFORM[hist] == 1]
    expected_als = als.candidates(als.user_vector(hist), 1, 4, np.concatenate([seen, retrieved]))
    assert got.rows[3:].tolist() == expected_als.tolist() and len(set(got.rows)) == 7
    assert got.extras[:, -1] == pytest.approx(als.scores(als.user_vector(hist), got.rows))
    ranked = ranking.rank(_Retrieval(), tables, [q], u)[0]
    assert np.all(np.diff(ranked.scores) <= 0) and set(ranked.rows) == set(got.rows)
    # Without a scorer nothing re-ranks: no ALS candidates.
    assert len(ranking.candidates(_Retrieval(has_scorer=False), tables, [q], u)[0].rows) == 3


def test_a_bundle_with_the_als_feature_must_name_its_file() -> None:
    models = {m: ModelFile(file=f"{m}.onnx", inputs=list(i), outputs=["x"]) for m, i in
              (("item_encoder", ("input_ids", "attention_mask", "platform")),
               ("user_encoder", ("hist_vecs", "hist_platform", "hist_bucket", "hist_mask", "target_platform")),
               ("scorer", ("user_vec", "item_vec", "extras")))}

    def manifest(extras: Sequence[str], als: str | None) -> Manifest:
        return Manifest(model_version="t", dim=4, platforms=["a"], max_history=5, n_time_buckets=16,
                        scorer_extras=list(extras), models=models, als=als)

    ok = manifest(scorer_features(True, True), "als.npz")
    assert check_compatible(ok) == [] and ok.als_features and ok.kg_features
    plain = manifest(SCORER_EXTRAS, None)
    assert check_compatible(plain) == [] and not plain.als_features
    assert any("no ALS file" in p for p in check_compatible(manifest(scorer_features(False, True), None)))
    assert check_compatible(manifest(ALS_EXTRAS + SCORER_EXTRAS, "als.npz"))  # out of order: refused


def test_a_persons_candidate_scores_do_not_depend_on_who_is_scored_with_them() -> None:
    """`platform_scores` runs queries in blocks (`contract.top_rows.block_scores`): a person gets the same bits
    alone, in any micro-batch of the service and in the evaluator's batches, so the same ALS candidates (a real
    table's size: the matrix product takes another kernel than for a tiny one)."""
    rng = np.random.default_rng(0)
    n_items, k = 6_000, 64
    platform = (rng.random(n_items) < 0.7).astype(np.int64)
    als = AlsFactors.of(rng.standard_normal((n_items, k)).astype(np.float32) * 0.1, 10.0, 0.05, platform)
    users = rng.standard_normal((40, k)).astype(np.float32)
    alone = [als.platform_scores(users[i:i + 1], 1)[0] for i in range(40)]
    for batch in (2, 3, 5, 8, 9, 13, 40):  # blocks of every size from 2 to 8, and a lone query padded to 2
        for start in (0, 7):
            got = als.platform_scores(users[start:start + batch], 1)
            assert all(np.array_equal(got[j], alone[start + j]) for j in range(len(got))), (batch, start)
    rows = np.flatnonzero(platform == 1)
    assert alone[3] == pytest.approx(als.items[rows] @ users[3], rel=1e-5, abs=1e-5)
    none = np.zeros(0, dtype=np.int64)
    assert als.candidates(users[3], 1, 10, none).tolist() == als.candidates(users[3], 1, 10, none, None,
                                                                             alone[3]).tolist()
