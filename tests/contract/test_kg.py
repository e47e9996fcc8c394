"""The knowledge graph as ranking reads it (contract.kg): features, candidates, reasons' entity, on hand-made
tables whose answers are counted by hand; and how contract.ranking and contract.features use them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from contract import ranking
from contract.bundle import Manifest, ModelFile, check_compatible
from contract.features import KG_EXTRAS, SCORER_EXTRAS, History, KnnTable, candidate_features, scorer_features
from contract.kg import ItemEntities, kg_candidates, kg_features, other_platform_entities, shared_entity

KG_OTHER, KG_TARGET = (scorer_features(True).index(name) for name in KG_EXTRAS)

# 8 items. Platform 0 (grocery): rows 0, 1, 2; platform 1 (kitchen): rows 3..7.
#   entity 0 "Melitta" (brand, linked across the shops): rows 0, 3, 4
#   entity 1 "coffee filter" (type, linked):             rows 0, 1, 4, 5
#   entity 2 "OXO" (brand, kitchen only):                rows 5, 6
#   entity 3 "tea" (type, grocery only):                 row 2
#   row 7 has none.
ITEM_PLATFORM = np.array([0, 0, 0, 1, 1, 1, 1, 1])
POPULARITY = np.array([9.0, 8.0, 7.0, 1.0, 1.0, 5.0, 3.0, 2.0])
KITCHEN, GROCERY = 1, 0


@pytest.fixture
def table() -> ItemEntities:
    pairs = [(0, 0), (3, 0), (4, 0), (0, 1), (1, 1), (4, 1), (5, 1), (5, 2), (6, 2), (2, 3), (0, 0)]  # a duplicate
    rows, ents = zip(*pairs, strict=True)
    return ItemEntities.from_pairs(8, np.array(rows), np.array(ents), ["Melitta", "coffee filter", "OXO", "tea"],
                                   ["brand", "type", "brand", "type"])


def test_the_table_is_a_csr_both_ways(table: ItemEntities) -> None:
    assert table.of(0).tolist() == [0, 1] and table.of(4).tolist() == [0, 1] and table.of(7).tolist() == []
    assert table.of(-1).tolist() == [] and table.of(99).tolist() == []  # rows the table does not know
    ent = 1
    assert table.entity_items[table.entity_offsets[ent]:table.entity_offsets[ent + 1]].tolist() == [0, 1, 4, 5]
    assert table.kind(2) == "brand" and table.kind(3) == "type" and str(table.names[2]) == "OXO"


def test_features_count_events_on_other_platforms_and_on_the_target_apart(table: ItemEntities) -> None:
    # Grocery: row 0 twice, row 1, row 2; kitchen: row 6 once.
    rows, platforms = np.array([0, 1, 0, 2, 6]), np.array([0, 0, 0, 0, 1])
    other, target = kg_features(table, rows, platforms, KITCHEN, np.array([3, 4, 5, 6, 7, -1, 99]))
    # Row 3 (Melitta): row 0's 2 events. Row 4 (Melitta + coffee filter): row 0's 2 events counted once though it
    # shares both, + row 1's one. Row 5 (coffee filter + OXO): rows 0 and 1 → 3 on grocery; row 6 (OXO) → 1 on
    # kitchen. Row 6 itself: OXO, its own event. Rows 7, -1, 99: nothing.
    assert other == pytest.approx(np.log1p([2, 3, 3, 0, 0, 0, 0]))
    assert target == pytest.approx(np.log1p([0, 0, 1, 1, 0, 0, 0]))
    # The other way round: recommending on grocery, the grocery events are the target's.
    other, target = kg_features(table, rows, platforms, GROCERY, np.array([0, 1, 2]))
    assert other == pytest.approx(np.log1p([0, 0, 0]))  # OXO (row 6) is shared with no grocery item
    assert target == pytest.approx(np.log1p([3, 3, 1]))  # row 0: itself twice + row 1 (coffee filter)


def test_an_empty_table_gives_zeros_and_no_candidates(table: ItemEntities) -> None:
    empty = ItemEntities.empty()
    rows, platforms = np.array([0, 1, 6]), np.array([0, 0, 1])
    other, target = kg_features(empty, rows, platforms, KITCHEN, np.array([3, 4, 5]))
    assert other.tolist() == [0, 0, 0] and target.tolist() == [0, 0, 0]
    assert kg_candidates(empty, np.array([0, 1]), np.array([0, 0]), KITCHEN, 10, ITEM_PLATFORM, POPULARITY).size == 0
    assert shared_entity(empty, rows, platforms, KITCHEN, 4) is None
    # An empty history: zeros with the real table too.
    assert kg_features(table, np.zeros(0, int), np.zeros(0, int), KITCHEN, np.array([3]))[0].tolist() == [0]


def test_candidates_for_a_person_new_to_the_platform_best_first(table: ItemEntities) -> None:
    rows, platforms = np.array([0, 1, 0, 2]), np.zeros(4, dtype=np.int64)  # grocery only
    # Kitchen items sharing an entity with them: 3 (2 events), 4 (3), 5 (3); 5 before 4 by popularity.
    got = kg_candidates(table, rows, platforms, KITCHEN, 10, ITEM_PLATFORM, POPULARITY)
    assert got.tolist() == [5, 4, 3]
    assert kg_candidates(table, rows, platforms, KITCHEN, 2, ITEM_PLATFORM, POPULARITY).tolist() == [5, 4]
    assert kg_candidates(table, rows, platforms, KITCHEN, 10, ITEM_PLATFORM, POPULARITY,
                         exclude=np.array([5])).tolist() == [4, 3]
    live = np.ones(8, dtype=bool)
    live[4] = False
    assert kg_candidates(table, rows, platforms, KITCHEN, 10, ITEM_PLATFORM, POPULARITY, live=live).tolist() == [5, 3]
    assert kg_candidates(table, rows, platforms, KITCHEN, 0, ITEM_PLATFORM, POPULARITY).tolist() == []
    # Never for someone with history on the target platform (retrieval knows them), never a grocery item.
    with_kitchen = kg_candidates(table, np.array([0, 6]), np.array([0, 1]), KITCHEN, 10, ITEM_PLATFORM, POPULARITY)
    assert with_kitchen.tolist() == []
    # New to grocery, with kitchen row 4 (Melitta + coffee filter): grocery 0 (both) and 1 (coffee filter), each one
    # event; 0 is more popular.
    assert kg_candidates(table, np.array([4]), np.array([1]), GROCERY, 10, ITEM_PLATFORM, POPULARITY).tolist() == [0, 1]


def test_the_entity_behind_a_result_prefers_brands_then_the_newest_event(table: ItemEntities) -> None:
    rows, platforms = np.array([1, 0, 6]), np.array([0, 0, 1])
    assert shared_entity(table, rows, platforms, KITCHEN, 4) == (1, 0)  # Melitta via row 0 (brand before type)
    assert shared_entity(table, rows, platforms, KITCHEN, 5) == (1, 1)  # coffee filter: rows 1 and 0, 0 is newer
    assert shared_entity(table, rows, platforms, KITCHEN, 6) is None  # OXO: only on kitchen, the target itself
    assert shared_entity(table, rows, platforms, KITCHEN, 7) is None
    # Which results can have one: those with an entity of the grocery items (0: Melitta, coffee filter; 1).
    assert other_platform_entities(table, rows, platforms, KITCHEN).tolist() == [0, 1]
    assert other_platform_entities(table, rows, platforms, GROCERY).tolist() == [2]  # row 6 (OXO) on kitchen


def test_save_and_load_keep_the_table(table: ItemEntities, tmp_path: Path) -> None:
    table.save(tmp_path / "kg.npz")
    back = ItemEntities.load(tmp_path / "kg.npz")
    for name, a in table.arrays().items():
        assert np.array_equal(back.arrays()[name], a), name
    assert back.entity_items.tolist() == table.entity_items.tolist()
    assert ItemEntities.from_arrays(None, 5).n_items == 5 and ItemEntities.from_arrays(None, 5).is_empty


def test_candidate_features_append_the_kg_columns_for_a_scorer_with_them(table: ItemEntities) -> None:
    assert scorer_features(False) == SCORER_EXTRAS and scorer_features(True) == SCORER_EXTRAS + KG_EXTRAS
    h = History.of([0, 1, 0, 2, 6], [0, 0, 0, 0, 1], [1, 2, 3, 4, 5])
    knn = KnnTable(np.full((8, 1), -1), np.zeros((8, 1), dtype=np.float32), 10)
    cand = np.array([3, 4, 5])
    args = (h, KITCHEN, 10.0, np.zeros(3), cand, POPULARITY[cand], 5.0, knn)
    x = candidate_features(*args, kg=table)
    assert x.shape == (3, len(scorer_features(True))) and x.dtype == np.float32
    assert x[:, KG_OTHER] == pytest.approx(np.log1p([2, 3, 3]))
    assert x[:, KG_TARGET] == pytest.approx(np.log1p([0, 0, 1]))
    plain = candidate_features(*args)  # a scorer without them: SCORER_EXTRAS only, the same values
    assert plain.shape == (3, len(SCORER_EXTRAS)) and np.array_equal(plain, x[:, :len(SCORER_EXTRAS)])
    # With the features but no knowledge graph (an empty table): zeros.
    assert np.all(candidate_features(*args, kg=ItemEntities.empty())[:, len(SCORER_EXTRAS):] == 0)


def test_a_bundle_may_list_the_kg_features_after_the_others_and_nothing_else() -> None:
    def manifest(extras: list[str]) -> Manifest:
        models = {m: ModelFile(file=f"{m}.onnx", inputs=list(i), outputs=["x"]) for m, i in
                  (("item_encoder", ("input_ids", "attention_mask", "platform")),
                   ("user_encoder", ("hist_vecs", "hist_platform", "hist_bucket", "hist_mask", "target_platform")),
                   ("scorer", ("user_vec", "item_vec", "extras")))}
        return Manifest(model_version="t", dim=4, platforms=["a"], max_history=5, n_time_buckets=16,
                        scorer_extras=extras, models=models)

    plain, with_kg = manifest(list(SCORER_EXTRAS)), manifest(list(SCORER_EXTRAS + KG_EXTRAS))
    assert check_compatible(plain) == [] and not plain.kg_features
    assert check_compatible(with_kg) == [] and with_kg.kg_features
    for bad in (list(SCORER_EXTRAS + KG_EXTRAS[:1]), list(KG_EXTRAS + SCORER_EXTRAS), list(SCORER_EXTRAS[:-1])):
        problems = check_compatible(manifest(bad))
        assert len(problems) == 1 and "kg_other" in problems[0], bad


class _Retrieval:
    """A Backend whose search returns a fixed list per target platform (minus excluded rows); no user encoder."""

    has_scorer = True

    def __init__(self, found: dict[int, list[int]]) -> None:
        self.found = found

    def user_vectors(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.zeros((len(feeds["target_platform"]), 2), dtype=np.float32)

    def search(self, target: int, user_vecs: np.ndarray, n: int, exclude: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.array([r for r in self.found[target] if r not in ex][:n], dtype=np.int64) for ex in exclude]

    def score(self, user_vecs: np.ndarray, item_vecs: np.ndarray, extras: np.ndarray) -> np.ndarray:
        return extras[:, 0]


def _tables(table: ItemEntities, kg_candidates: int, knn_candidates: int = 0, kg_features: bool = True
            ) -> ranking.Tables:
    index = np.full((8, 1), -1)
    index[0, 0] = 7  # item-KNN: grocery row 0 co-occurs with kitchen row 7
    knn = KnnTable(index, np.ones((8, 1), dtype=np.float32), 10)
    return ranking.Tables(np.zeros((8, 2), dtype=np.float32), POPULARITY, ITEM_PLATFORM, {0: 9.0, 1: 5.0}, knn,
                          retrieval_candidates=2, knn_candidates=knn_candidates, kg=table, kg_candidates=kg_candidates,
                          kg_features=kg_features)


def test_ranking_adds_kg_candidates_after_item_knn_ones_for_people_new_to_the_platform(table: ItemEntities) -> None:
    backend = _Retrieval({KITCHEN: [6, 3, 4]})
    new = ranking.Query(History.of([0, 1, 0, 2], [0, 0, 0, 0], [1, 2, 3, 4]), KITCHEN, 10.0)
    known = ranking.Query(History.of([0, 6], [0, 1], [1, 2]), KITCHEN, 10.0)
    u = np.zeros((2, 2), dtype=np.float32)
    # Retrieval 6, 3; item-KNN 7; then KG 5, 4 (3 is retrieved already). The person with kitchen history: none.
    got = ranking.candidates(backend, _tables(table, 10, knn_candidates=5), [new, known], u)
    assert got[0].rows.tolist() == [6, 3, 7, 5, 4]
    assert got[1].rows.tolist() == [3, 4, 7]  # 6 is seen; retrieval's next two, item-KNN's 7, no KG
    assert got[0].extras[:, KG_OTHER] == pytest.approx(np.log1p([0, 2, 0, 3, 3]))
    # kg_candidates 0: the same features, no KG candidates.
    assert ranking.candidates(backend, _tables(table, 0), [new], u[:1])[0].rows.tolist() == [6, 3]
    # KG candidates for a scorer without the KG features: the candidates, SCORER_EXTRAS only.
    plain = ranking.candidates(backend, _tables(table, 10, kg_features=False), [new], u[:1])[0]
    assert plain.rows.tolist() == [6, 3, 5, 4] and plain.extras.shape == (4, len(SCORER_EXTRAS))
