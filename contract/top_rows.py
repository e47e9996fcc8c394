"""The best rows of a scored, sorted row set: how every extra candidate source (item-KNN, ALS) picks its items.

numpy only: the service imports this.
"""

from __future__ import annotations

import numpy as np


def top_rows(rows: np.ndarray, values: np.ndarray, n: int, exclude: np.ndarray, live: np.ndarray | None = None,
             keep: np.ndarray | None = None) -> np.ndarray:
    """Up to `n` of `rows` (ascending, unique) with the highest `values`, best first (ties: lower row); never
    one in `exclude`, one that is not `live` (bool per row id), or one where `keep` (bool per position) is False."""
    ok = np.ones(len(rows), dtype=bool) if keep is None else keep
    if live is not None:
        ok &= live[rows]
    if len(exclude) and len(rows):  # rows are sorted: find each excluded row by binary search
        ex = np.asarray(exclude, dtype=np.int64)
        pos = np.minimum(np.searchsorted(rows, ex), len(rows) - 1)
        ok[pos[rows[pos] == ex]] = False
    rows, values = rows[ok], values[ok]
    if len(rows) > n:
        top = np.argpartition(-values, n - 1)[:n]
        rows, values = rows[top], values[top]
    return rows[np.lexsort((rows, -values))].astype(np.int64)
