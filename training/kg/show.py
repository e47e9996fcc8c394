"""`xrec kg show ITEM --dataset DIR`: an item's neighbourhood in the knowledge graph.

Its entities (brand, type, category), how each platform names them (the links across platforms), and a few of
the items that share each entity on every platform, the most reviewed/bought first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from training.kg.graph import ENTITY_RELATIONS, KG_DIR
from training.kg.text import clean_title


class KGError(Exception):
    """No knowledge graph in the dataset, or no such item."""


@dataclass
class EntityView:
    relation: str
    node: dict  # the entity's nodes.parquet row
    items: dict[str, list[dict]] = field(default_factory=dict)  # platform → item rows sharing it, best first


@dataclass
class Neighbourhood:
    item: dict  # the item's nodes.parquet row
    entities: list[EntityView]


def resolve_item(nodes_file: Path, item: str) -> str:
    """The node id of an item given as "platform:id", "item:platform:id" or a bare id unique across platforms."""
    wanted = item if item.startswith("item:") else f"item:{item}"
    ids = pq.read_table(nodes_file, columns=["node_id"], filters=[("kind", "=", "item")]).column("node_id")
    if pc.any(pc.equal(ids, wanted)).as_py():
        return wanted
    bare = pc.filter(ids, pc.ends_with(ids, f":{item}")).to_pylist()
    if len(bare) == 1:
        return bare[0]
    if bare:
        raise KGError(f"{item!r} is on several platforms: {', '.join(b.removeprefix('item:') for b in bare)}")
    raise KGError(f"no item {item!r} in {nodes_file.parent.parent}")


def neighbourhood(dataset: Path, item: str, per_platform: int = 3) -> Neighbourhood:
    folder = dataset / KG_DIR
    if not (folder / "nodes.parquet").is_file():
        raise KGError(f"{dataset}: no knowledge graph (kg/nodes.parquet); build it with `xrec data build` "
                      "(without --no-kg)")
    node_id = resolve_item(folder / "nodes.parquet", item)
    relations = sorted(ENTITY_RELATIONS.values())
    own = pq.read_table(folder / "edges.parquet", filters=[("src", "=", node_id)]).to_pylist()
    own = [e for e in own if e["relation"] in relations]
    entity_ids = [e["dst"] for e in own]
    sharing = pq.read_table(folder / "edges.parquet", columns=["src", "dst", "relation", "platform"],
                            filters=[("dst", "in", entity_ids or [""]), ("relation", "in", relations)]).to_pylist()
    wanted = {node_id, *entity_ids, *(e["src"] for e in sharing)}
    rows = {r["node_id"]: r for r in pq.read_table(folder / "nodes.parquet",
                                                   filters=[("node_id", "in", sorted(wanted))]).to_pylist()}
    views = []
    for edge in own:
        view = EntityView(edge["relation"], rows[edge["dst"]])
        for e in sharing:
            if e["dst"] == edge["dst"] and e["src"] != node_id:
                view.items.setdefault(e["platform"], []).append(rows[e["src"]])
        for platform, items in view.items.items():
            items.sort(key=lambda r: (-r["count"], r["node_id"]))
            view.items[platform] = items[:per_platform]
        views.append(view)
    return Neighbourhood(rows[node_id], views)


def format_neighbourhood(n: Neighbourhood) -> list[str]:
    """Plain text lines for the terminal."""
    item = n.item
    lines = [f"{item['node_id'].removeprefix('item:')}  {clean_title(item['name'])}",
             f"  platform {item['platforms'][0]} · {item['count']:,} events · component {item['component']}"]
    if not n.entities:
        lines.append("  no brand, type or category found for this item")
    for v in n.entities:
        node = v.node
        lines.append("")
        lines.append(f"{node['kind']}: {node['name']}  ({node['node_id']}; {v.relation}; "
                     f"{node['count']:,} items on {', '.join(node['platforms'])})")
        for a in node["aliases"] or []:
            how = "" if a["method"] == "anchor" else f", linked by {a['method']}"
            if a["method"] == "vector":
                how += f" (names' cosine {a['score']:.2f})"
            if a["context"] is not None:
                how += f", items alike {a['context']:.2f}"
            lines.append(f"  {a['platform']} calls it \"{a['name']}\" ({a['items']:,} items{how})")
        for platform in sorted(v.items):
            lines.append(f"  also on {platform}:")
            for r in v.items[platform]:
                name = clean_title(r["name"])
                lines.append(f"    {r['node_id'].removeprefix('item:')}  {name}  ({r['count']:,} events)")
    return lines
