"""Business rules of one request (/v1/recommend, /v1/rank, /v1/batch/score), applied around the ranking:

- **filters**: which catalog items may be returned, by their attributes (`Catalog.column`): `include` (every
  condition holds) and `exclude` (none does); a condition is a list of values or a numeric range. They become
  one bool mask over catalog rows (recommendable rows of the target platform only), which retrieval searches
  within (`Catalog.search`: exact over a small allowed set, else the index with an adaptive over-fetch) and the
  item-KNN candidates and popular lists are cut to. Unavailable items are never recommendable, rules or not.
- **diversity**: at most N results per value of an attribute (greedy: down the ranked list, an item over a cap
  is skipped for the next), and no item the person had a "bought" event for in the last D days (those rows
  are excluded like `exclude_items`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.services.ranking import Ranked
from app.services.retrieval import Catalog, Scalar

_DAY = 86_400


@dataclass(frozen=True)
class Condition:
    values: tuple[Scalar, ...] | None = None  # one of these; else a numeric range
    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class Rules:
    include: tuple[tuple[str, Condition], ...] = ()
    exclude: tuple[tuple[str, Condition], ...] = ()
    caps: tuple[tuple[str, int], ...] = ()  # attribute → at most this many results per value
    bought_days: int | None = None
    bought_event: str = "purchase"

    @property
    def filters(self) -> bool:
        return bool(self.include or self.exclude)

    @classmethod
    def of(cls, filters: Any, diversity: Any, default_event: str) -> Rules | None:
        """From a request's `filters` / `diversity` (app.schemas); None when they ask for nothing."""
        def conditions(d: dict[str, Any]) -> tuple[tuple[str, Condition], ...]:
            out = []
            for name, c in sorted(d.items()):
                if isinstance(c, list):
                    out.append((name, Condition(tuple(c))))
                else:
                    out.append((name, Condition(None, c.min, c.max)))
            return tuple(out)

        include = conditions(filters.include) if filters is not None else ()
        exclude = conditions(filters.exclude) if filters is not None else ()
        caps = tuple(sorted(diversity.max_per_value.items())) if diversity is not None else ()
        days = diversity.exclude_bought_days if diversity is not None else None
        event = (diversity.bought_event if diversity is not None else None) or default_event
        rules = cls(include, exclude, caps, days, event)
        return rules if rules.filters or rules.caps or rules.bought_days else None


def allowed_mask(catalog: Catalog, target: int, rules: Rules | None) -> np.ndarray | None:
    """bool per catalog row: recommendable rows of the target platform that pass the filters; None when the
    rules filter nothing. The same mask object for the same filters on the same catalog (kept with it), so
    requests with one filter share a search."""
    if rules is None or not rules.filters:
        return None
    key = ("filter", target, rules.include, rules.exclude)
    mask = catalog.memo.get(key)
    if mask is not None:
        return mask
    mask = catalog.recommendable & (catalog.platform == target)
    for name, c in rules.include:
        mask &= catalog.column(name).matches(c.values, c.lo, c.hi)
    for name, c in rules.exclude:
        mask &= ~catalog.column(name).matches(c.values, c.lo, c.hi)
    if len(catalog.memo) >= 64:  # a handful of filters in use at a time; a new catalog starts afresh
        catalog.memo.clear()
    catalog.memo[key] = mask
    return mask


def bought_rows(catalog: Catalog, rules: Rules | None, item_ids: Sequence[str], kinds: Sequence[str | None],
                ts: Sequence[int], now: float) -> np.ndarray:
    """Rows of the items with a `bought_event` event at or after now − D days (none without the rule)."""
    if rules is None or not rules.bought_days:
        return np.zeros(0, dtype=np.int64)
    since = now - rules.bought_days * _DAY
    ids = [i for i, k, t in zip(item_ids, kinds, ts, strict=True) if k == rules.bought_event and since <= t]
    rows = catalog.rows_of(ids)
    return np.unique(rows[rows >= 0])


def diversify(catalog: Catalog, ranked: Ranked, k: int, rules: Rules | None) -> Ranked:
    """The first `k` of the ranking, each attribute value at most its cap: greedy down the list."""
    if rules is None or not rules.caps:
        return Ranked(ranked.rows[:k], ranked.scores[:k], ranked.candidates)
    keep = capped(catalog, ranked.rows, rules, k)
    return Ranked(ranked.rows[keep], ranked.scores[keep], ranked.candidates)


def capped(catalog: Catalog, rows: np.ndarray, rules: Rules, k: int | None = None) -> list[int]:
    """Positions in `rows` (in order) kept under the caps, at most `k` of them; rows -1 (not catalog items)
    have no attributes and are never capped."""
    counts: dict[tuple[str, Scalar], int] = {}
    keep: list[int] = []
    for j, row in enumerate(np.asarray(rows).tolist()):
        attrs = catalog.attributes_of(row) if row >= 0 else None
        keys = []
        ok = True
        for name, cap in rules.caps:
            v = attrs.get(name) if attrs else None
            if v is None:
                continue
            key = (name, v)
            if counts.get(key, 0) >= cap:
                ok = False
                break
            keys.append(key)
        if not ok:
            continue
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        keep.append(j)
        if k is not None and len(keep) >= k:
            break
    return keep
