"""A/B variants: bundles served side by side, each person in exactly one of them.

The split is a keyed hash of the pseudonymous person id (HMAC-SHA256 with `XREC_VARIANT_SALT`), read as a
number in [0, 1) and placed on the variants' cumulative shares in their configured order: the same person
always gets the same variant (on every replica, across restarts), the shares hold over many persons, and
another salt is another, independent split. A person's accounts on every platform share one person id
(linked by the data build), so the person sees one variant everywhere.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from app.services.model_bundle import LoadedBundle


@dataclass(frozen=True)
class Variant:
    name: str
    share: float  # of persons, the shares of all variants summing to 1
    bundle: LoadedBundle


def unit_hash(key: bytes, person: str) -> float:
    """The person's place in [0, 1): the first 8 bytes of HMAC-SHA256(key, person) over 2^64."""
    digest = hmac.new(key, person.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / float(1 << 64)


class Split:
    """Which of the variants (by position) a person is in; shares are weights, scaled to sum to 1."""

    def __init__(self, shares: Sequence[float], key: str) -> None:
        if not shares or any(s <= 0 for s in shares):
            raise ValueError("variant shares must be positive")
        total = float(sum(shares))
        self.shares = [s / total for s in shares]
        edges, acc = [], 0.0
        for s in self.shares[:-1]:
            acc += s
            edges.append(acc)
        self._edges = edges  # the upper edge of every variant but the last
        self._key = key.encode("utf-8")

    def index(self, person: str) -> int:
        return bisect.bisect_right(self._edges, unit_hash(self._key, person))


@dataclass(frozen=True)
class Served:
    """What the service serves: its variants (one, "default", without XREC_VARIANTS) and their split. Swapped
    as one reference by a (re)load, so a request reads one consistent set."""

    variants: tuple[Variant, ...]
    split: Split

    @property
    def primary(self) -> LoadedBundle:
        """The first variant's bundle: the one that resolves accounts for the split, serves /v1/history and
        ingests events (every variant sees them)."""
        return self.variants[0].bundle

    def pick(self, person: str) -> Variant:
        if len(self.variants) == 1:
            return self.variants[0]
        return self.variants[self.split.index(person)]

    def bundles(self) -> list[LoadedBundle]:
        return [v.bundle for v in self.variants]
