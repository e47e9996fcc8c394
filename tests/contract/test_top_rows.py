"""contract.top_rows against a brute-force ranking: exact whichever way it finds the rows (the sampled threshold
of a large set, or the whole set), ties to the lower row."""

from __future__ import annotations

import numpy as np
import pytest

from contract.top_rows import top_rows


def brute(rows: np.ndarray, values: np.ndarray, n: int, exclude: np.ndarray, live: np.ndarray | None,
          keep: np.ndarray | None) -> list[int]:
    ok = [(float(-v), int(r)) for i, (r, v) in enumerate(zip(rows, values, strict=True))
          if r not in set(exclude.tolist()) and (live is None or live[r]) and (keep is None or keep[i])]
    return [r for _, r in sorted(ok)[:n]]


@pytest.mark.parametrize("size", [50, 6_000, 30_000])
@pytest.mark.parametrize("n", [1, 10, 100])
def test_top_rows_is_the_brute_force_order_with_exclusions_filters_and_ties(size: int, n: int) -> None:
    rng = np.random.default_rng(size + n)
    rows = np.sort(rng.choice(3 * size, size, replace=False)).astype(np.int64)
    values = rng.integers(0, 40, size).astype(np.float32) / 7.0  # many ties, also across the cut
    best = rows[np.argsort(-values, kind="stable")]
    exclude = np.concatenate([best[:n // 2 + 1], rng.choice(3 * size, 20)]).astype(np.int64)  # top rows, and others
    live = rng.random(3 * size) > 0.2
    keep = rng.random(size) > 0.1
    for ex, lv, kp in ((np.zeros(0, dtype=np.int64), None, None), (exclude, live, keep), (exclude, None, None)):
        got = top_rows(rows, values, n, ex, lv, kp)
        assert got.tolist() == brute(rows, values, n, ex, lv, kp)
        assert got.dtype == np.int64


def test_a_threshold_too_high_for_the_filters_falls_back_to_the_whole_set() -> None:
    """Every row the sample puts above the threshold is excluded: the answer comes from below it."""
    rows = np.arange(10_000, dtype=np.int64)
    values = np.linspace(0.0, 1.0, 10_000, dtype=np.float32)
    exclude = rows[-2_000:]  # far more than the threshold keeps
    assert top_rows(rows, values, 5, exclude).tolist() == [7_999, 7_998, 7_997, 7_996, 7_995]
    assert top_rows(rows, values, 5, np.zeros(0, dtype=np.int64), keep=values < 0.5).tolist() == \
        brute(rows, values, 5, np.zeros(0, dtype=np.int64), None, values < 0.5)
    assert len(top_rows(rows, values, 0, exclude)) == 0 and len(top_rows(rows[:0], values[:0], 5, exclude)) == 0
