"""The dataset's knowledge graph as the table ranking reads: `contract.kg.ItemEntities` from kg/ (graph.py).

Only what the scorer features, the KG candidates and the reasons need: each item's brand, type and category
entities (not their parents, not the person → item edges, which the timelines already hold), with the
entities' names and kinds. Entity ids are positions in this table, not node ids: they mean nothing outside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contract.kg import KINDS, ItemEntities
from training.kg.graph import ENTITY_RELATIONS, KG_DIR


def item_entities(dataset: Path, item_ids: list[str]) -> ItemEntities:
    """The items' entities, rows in `item_ids` order; empty when the dataset has no kg/ (built with --no-kg)."""
    folder = Path(dataset) / KG_DIR
    if not (folder / "edges.parquet").is_file() or not (folder / "nodes.parquet").is_file():
        return ItemEntities.empty(len(item_ids))
    edges = pq.read_table(folder / "edges.parquet", columns=["src", "dst", "relation"],
                          filters=[("relation", "in", sorted(ENTITY_RELATIONS.values()))])
    nodes = pq.read_table(folder / "nodes.parquet", columns=["node_id", "kind", "name"],
                          filters=[("kind", "in", list(KINDS))])
    entity_of = {n: i for i, n in enumerate(nodes.column("node_id").to_pylist())}
    row_of = {item: i for i, item in enumerate(item_ids)}
    rows, ents = [], []
    for src, dst in zip(pc.utf8_slice_codeunits(edges.column("src"), 5).to_pylist(),  # drop "item:"
                        edges.column("dst").to_pylist(), strict=True):
        row, ent = row_of.get(src), entity_of.get(dst)
        if row is not None and ent is not None:  # an item the dataset no longer has is left out
            rows.append(row)
            ents.append(ent)
    names = [n or "" for n in nodes.column("name").to_pylist()]
    return ItemEntities.from_pairs(len(item_ids), np.array(rows, dtype=np.int64), np.array(ents, dtype=np.int64),
                                   names, nodes.column("kind").to_pylist())
