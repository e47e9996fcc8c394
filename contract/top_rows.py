"""The best rows of a scored, sorted row set: how every extra candidate source (item-KNN, ALS) picks its items.

numpy only: the service imports this.
"""

from __future__ import annotations

import numpy as np

# Above this many rows, `top_rows` first keeps the rows at or above a threshold read off a sample of the values:
# a comparison pass instead of a selection over every row (27k kitchen items, n = 50: ~60 µs instead of ~200).
_SAMPLE_FROM = 4096
_SAMPLE_SIZE = 1024
# Queries are scored against a catalog in blocks of at most SCORE_BLOCK and at least MIN_BLOCK rows (`block_scores`;
# zero rows pad a lone query): OpenBLAS gives a query's row the same bits in any block of 2 to 8 rows, whatever the
# other rows and its place, but not alone (one row takes the matrix-vector kernel). So a query gets the same
# scores alone, in any micro-batch of the service, and offline. A block reads the catalog once; one query at a
# time read it for each (27k × 64 floats, memory-bound: ~240 µs a query here). A lone query pads to 2 rows, not 8.
SCORE_BLOCK = 8
MIN_BLOCK = 2


def block_scores(queries: np.ndarray, matrix_t: np.ndarray) -> np.ndarray:
    """float32 [len(queries), n]: `queries` [B, k] times `matrix_t` [k, n] (contiguous), 2 to SCORE_BLOCK queries a
    product: a query's row has the same bits whatever else is scored with it."""
    queries = np.asarray(queries, dtype=np.float32).reshape(-1, matrix_t.shape[0])
    out = np.empty((len(queries), matrix_t.shape[1]), dtype=np.float32)
    for start in range(0, len(queries), SCORE_BLOCK):
        m = min(SCORE_BLOCK, len(queries) - start)
        block = np.zeros((max(m, MIN_BLOCK), matrix_t.shape[0]), dtype=np.float32)
        block[:m] = queries[start:start + m]
        out[start:start + m] = (block @ matrix_t)[:m]
    return out


def top_rows(rows: np.ndarray, values: np.ndarray, n: int, exclude: np.ndarray, live: np.ndarray | None = None,
             keep: np.ndarray | None = None) -> np.ndarray:
    """Up to `n` of `rows` (ascending, unique) with the highest `values`, best first (ties: lower row); never
    one in `exclude`, one that is not `live` (bool per row id), or one where `keep` (bool per position) is False.

    Exact: the answer is the first `n` of the eligible rows in (value descending, row ascending) order, however
    they are found. A large set is first cut to the rows at or above a threshold (a high quantile of every
    k-th value); when fewer than `n` eligible rows pass it, the whole set is ranked."""
    if n <= 0 or len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    values = np.asarray(values)
    if len(rows) >= _SAMPLE_FROM and 8 * n < len(rows):
        pos = np.flatnonzero(values >= _threshold(values, n + len(exclude)))
        got = _best(rows[pos], values[pos], n, exclude, live, None if keep is None else keep[pos])
        if len(got) == n:  # n eligible rows at or above the threshold: every better row is among them
            return got
    return _best(rows, values, n, exclude, live, keep)


def _threshold(values: np.ndarray, want: int) -> float:
    """A value that about 4 × `want` of `values` reach, read off an evenly spaced sample (deterministic)."""
    step = max(len(values) // _SAMPLE_SIZE, 1)
    sample = values[::step]
    r = min(len(sample) - 1, int(np.ceil(len(sample) * 4.0 * want / len(values))) + 4)
    return float(np.partition(sample, len(sample) - 1 - r)[len(sample) - 1 - r])


def _best(rows: np.ndarray, values: np.ndarray, n: int, exclude: np.ndarray, live: np.ndarray | None,
          keep: np.ndarray | None) -> np.ndarray:
    ok = np.ones(len(rows), dtype=bool) if keep is None else keep.copy()
    if live is not None:
        ok &= live[rows]
    if len(exclude) and len(rows):  # rows are sorted: find each excluded row by binary search
        ex = np.asarray(exclude, dtype=np.int64)
        pos = np.minimum(np.searchsorted(rows, ex), len(rows) - 1)
        ok[pos[rows[pos] == ex]] = False
    rows, values = rows[ok], values[ok]
    if len(rows) > n:
        # The n-th best value, then every row above it and the lowest rows tied with it: ties at the cut go to
        # the lower row whichever way the selection algorithm visits them.
        cut = np.partition(values, len(values) - n)[len(values) - n]
        pick = values >= cut
        rows, values = rows[pick], values[pick]
    return rows[np.lexsort((rows, -values))][:n].astype(np.int64)
