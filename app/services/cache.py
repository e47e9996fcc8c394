"""Bounded in-process caches: a thread-safe LRU, and the ranked-list cache that makes warm requests cheap."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most `maxsize` entries, least recently used evicted first; entries older than `ttl` seconds
    count as absent. One lock: every operation is a few dict operations."""

    def __init__(self, maxsize: int, ttl: float | None = None) -> None:
        self.maxsize = max(int(maxsize), 0)
        self.ttl = ttl
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            if self.ttl is not None and time.monotonic() - item[0] > self.ttl:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return item[1]

    def put(self, key: K, value: V) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = (time.monotonic(), value)
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class Fragments:
    """Result JSON fragments made on first use by `render(indices) -> [bytes]`, then kept. (Two threads may
    render the same one at once: both make the same bytes.)"""

    __slots__ = ("_made", "_render")

    def __init__(self, n: int, render: Callable[[list[int]], list[bytes]]) -> None:
        self._made: list[bytes | None] = [None] * n
        self._render = render

    def __len__(self) -> int:
        return len(self._made)

    def get(self, indices: list[int]) -> list[bytes]:
        missing = [i for i in indices if self._made[i] is None]
        if missing:
            for i, frag in zip(missing, self._render(missing), strict=True):
                self._made[i] = frag
        return [self._made[i] for i in indices]  # type: ignore[misc]


@dataclass(frozen=True)
class RankedEntry:
    """A person's re-ranked candidates for one platform, ready to send.

    `fragments.get([i])` is the JSON of result i (item, title, score, reasons), rendered when first sent: a
    request sends k of the `depth` results an entry keeps. `candidate_rows` is every item
    the ranking re-ranked (catalog rows of `catalog_version`): a request's excluded items that are not
    among them cannot change the ranking, so such a request is still answered from here (exactly as a fresh
    computation would answer it). Rows in an array, not ids in a set: thousands of entries stay cheap for
    the garbage collector to walk.
    """

    catalog_version: int
    profile_seq: int
    item_ids: tuple[str, ...]
    fragments: Fragments
    candidate_rows: np.ndarray
    cold_start: bool
    complete: bool  # the fragments cover every result there was (a shorter answer is the whole answer)


# model version, person, target platform, exclude_seen, whether reasons may name other platforms' items
RankedKey = tuple[str, str, int, bool, bool]


class RankedCache:
    """Ranked lists by (model version, person, platform, exclude_seen, all-platform reasons).

    Invalidation races: a list computed from a profile read before an event arrived must not be stored
    after that event invalidated the person. `epoch()` is taken before computing; `put` drops the entry
    if the person was invalidated since.
    """

    def __init__(self, maxsize: int, ttl: float) -> None:
        self._lru: LRU[RankedKey, RankedEntry] = LRU(maxsize, ttl)
        self._invalidated: LRU[str, int] = LRU(max(maxsize, 1000))
        self._epoch = 0
        self._lock = threading.Lock()

    def epoch(self) -> int:
        return self._epoch

    def get(self, key: RankedKey, catalog_version: int) -> RankedEntry | None:
        entry = self._lru.get(key)
        if entry is None or entry.catalog_version != catalog_version:
            return None
        return entry

    def put(self, key: RankedKey, entry: RankedEntry, since_epoch: int) -> None:
        with self._lock:
            if (self._invalidated.get(key[1]) or -1) > since_epoch:
                return
            self._lru.put(key, entry)

    def invalidate_person(self, model_version: str, person: str, n_platforms: int) -> None:
        with self._lock:
            self._epoch += 1
            self._invalidated.put(person, self._epoch)
            for target in range(n_platforms):
                for exclude_seen in (True, False):
                    for all_reasons in (True, False):
                        self._lru.pop((model_version, person, target, exclude_seen, all_reasons))

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)
