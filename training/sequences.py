"""A built dataset as integer arrays: item rows, platform ids and one time-ordered timeline per person."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


@dataclass
class Timelines:
    """Every person's fused history, concatenated (CSR-style: person p owns rows offsets[p]:offsets[p+1])."""

    persons: list[str]
    offsets: np.ndarray  # int64 [n_persons + 1]
    items: np.ndarray  # int64 [n_events] row in the item table
    platforms: np.ndarray  # int64 [n_events] platform id
    ts: np.ndarray  # int64 [n_events] epoch seconds

    def __len__(self) -> int:
        return len(self.persons)

    def span(self, p: int) -> slice:
        return slice(int(self.offsets[p]), int(self.offsets[p + 1]))


@dataclass
class Targets:
    person: np.ndarray  # int64 row in Timelines.persons
    platform: np.ndarray  # int64
    item: np.ndarray  # int64
    ts: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.person)


@dataclass
class Dataset:
    platforms: list[str]
    item_ids: list[str]
    item_platform: np.ndarray  # int64 [n_items]
    titles: list[str]
    timelines: Timelines
    targets: dict[str, Targets]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def platform_items(self, p: int) -> np.ndarray:
        """Item rows of platform p, ascending."""
        return np.flatnonzero(self.item_platform == p)

    def popularity(self) -> np.ndarray:
        """Events per item over all timelines."""
        return np.bincount(self.timelines.items, minlength=self.n_items)


def load_dataset(path: Path) -> Dataset:
    """Read `xrec data build` output into arrays. Item rows follow items.parquet order."""
    items = pq.read_table(path / "items.parquet").to_pydict()
    platforms = sorted(set(items["platform"]))
    pid = {p: i for i, p in enumerate(platforms)}
    item_row = {item: i for i, item in enumerate(items["item_id"])}
    item_platform = np.array([pid[p] for p in items["platform"]], dtype=np.int64)

    ev = pq.read_table(path / "events.parquet", columns=["person", "platform", "item_id", "ts"]).to_pydict()
    persons_col = ev["person"]
    # events.parquet is sorted by person then time: person boundaries are where the id changes.
    persons: list[str] = []
    starts: list[int] = []
    last = None
    for i, p in enumerate(persons_col):
        if p != last:
            persons.append(p)
            starts.append(i)
            last = p
    offsets = np.array([*starts, len(persons_col)], dtype=np.int64)
    timelines = Timelines(
        persons=persons,
        offsets=offsets,
        items=np.fromiter((item_row[i] for i in ev["item_id"]), dtype=np.int64, count=len(persons_col)),
        platforms=np.fromiter((pid[p] for p in ev["platform"]), dtype=np.int64, count=len(persons_col)),
        ts=np.asarray(ev["ts"], dtype=np.int64),
    )

    person_row = {p: i for i, p in enumerate(persons)}
    targets: dict[str, Targets] = {}
    tpath = path / "targets.parquet"
    if tpath.is_file():
        t = pq.read_table(tpath).to_pydict()
        for split in sorted(set(t["split"])):
            rows = [i for i, s in enumerate(t["split"]) if s == split and t["person"][i] in person_row]
            targets[split] = Targets(
                person=np.array([person_row[t["person"][i]] for i in rows], dtype=np.int64),
                platform=np.array([pid[t["platform"][i]] for i in rows], dtype=np.int64),
                item=np.array([item_row[t["item_id"][i]] for i in rows], dtype=np.int64),
                ts=np.array([t["ts"][i] for i in rows], dtype=np.int64),
            )
    return Dataset(platforms, items["item_id"], item_platform, items["title"], timelines, targets)
