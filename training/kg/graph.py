"""Assemble the knowledge graph of a built dataset: nodes, edges and a summary, written as Parquet.

Nodes (`kg/nodes.parquet`), one row each:
  node_id    "item:<item_id>", "person:<person>", "brand:<key>", "type:<key>", "category:<path key>" (an
             entity whose key another, unlinked entity also has: "type:<platform>:<key>")
  kind       item | person | brand | type | category
  name       title (item), display name (entity), null (person)
  platforms  the platforms it is on (an entity linked across platforms lists several)
  count      items that have it (entity), events on it (item), events by them (person)
  component  connected component of the item–entity graph (persons: -1)
  aliases    entity only: how each platform's catalog names it — platform, name, key, items, and how it was
             linked into this node (anchor | name | vector) with the names' cosine and the context similarity
Edges (`kg/edges.parquet`): src, dst, relation, platform, weight, source
  item → brand   has_brand    (source: attribute | title)
  item → type    has_type
  item → category in_category; category → parent category part_of
  person → item  the event type (review, purchase, view…); weight = number of such events
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training.kg.context import TitleContext, TitleEncoder
from training.kg.extract import ExtractorConfig, Mention, Tag, TitleExtractor, item_mentions
from training.kg.link import LINK_RULES, Encoder, Link, LinkRule, link_mentions

KG_DIR = "kg"
ENTITY_RELATIONS = {"brand": "has_brand", "type": "has_type", "category": "in_category"}
PARENT_RELATION = "part_of"

ALIAS_TYPE = pa.struct([("platform", pa.string()), ("name", pa.string()), ("key", pa.string()),
                        ("items", pa.int64()), ("method", pa.string()), ("score", pa.float32()),
                        ("context", pa.float32())])
NODE_SCHEMA = pa.schema([("node_id", pa.string()), ("kind", pa.string()), ("name", pa.string()),
                         ("platforms", pa.list_(pa.string())), ("count", pa.int64()),
                         ("component", pa.int64()), ("aliases", pa.list_(ALIAS_TYPE))])
EDGE_SCHEMA = pa.schema([("src", pa.string()), ("dst", pa.string()), ("relation", pa.string()),
                         ("platform", pa.string()), ("weight", pa.float32()), ("source", pa.string())])


@dataclass
class KnowledgeGraph:
    nodes: pa.Table
    edges: pa.Table
    summary: dict[str, object] = field(default_factory=dict)


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected components of an undirected graph on n nodes (vectorised min-label propagation with pointer
    jumping): a label per node, the smallest node index of its component."""
    labels = np.arange(n, dtype=np.int64)
    if len(src) == 0:
        return labels
    while True:
        low = np.minimum(labels[src], labels[dst])
        new = labels.copy()
        np.minimum.at(new, src, low)
        np.minimum.at(new, dst, low)
        new = new[new]  # pointer jumping: follow labels to their own labels
        while True:
            nxt = new[new]
            if np.array_equal(nxt, new):
                break
            new = nxt
        if np.array_equal(new, labels):
            return labels
        labels = new


def build_graph(items: pa.Table, events: pa.Table, attribute_columns: list[str] | None = None,
                encoder: Encoder | None = None, title_encoder: TitleEncoder | None = None,
                rules: dict[str, LinkRule] | None = None,
                extractor: ExtractorConfig | None = None) -> KnowledgeGraph:
    """The knowledge graph of a dataset's items and events (see the module docstring)."""
    started = time.perf_counter()
    tags, by_key, parents = item_mentions(items, list(attribute_columns or []), TitleExtractor(extractor))
    keys = list(by_key)
    mentions = [by_key[k] for k in keys]
    t_extract = time.perf_counter() - started

    rules = dict(rules or LINK_RULES)
    position = {k: i for i, k in enumerate(keys)}
    items_of: dict[int, list[int]] = defaultdict(list)
    for t in tags:
        items_of[position[t.mention]].append(t.item)
    context = (TitleContext(items.column("title").to_pylist(), items_of, title_encoder).similarity
               if title_encoder is not None else None)
    links = link_mentions(mentions, encoder, context, rules)
    cluster = components(len(mentions), np.array([link.a for link in links], dtype=np.int64),
                         np.array([link.b for link in links], dtype=np.int64))
    t_link = time.perf_counter() - started - t_extract

    # One node per cluster, named after its mention with the most items.
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(cluster):
        members[int(c)].append(i)
    joined_by: dict[int, Link] = {}
    for link in links:
        for end in (link.a, link.b):
            old = joined_by.get(end)
            if old is None or link.score > old.score:
                joined_by[end] = link
    groups = [sorted(members[c], key=lambda i: (-mentions[i].items, mentions[i].platform, mentions[i].key))
              for c in sorted(members)]
    # A node's id is kind:key of its anchor; where two nodes would share one (the same name on two platforms,
    # not linked: a grocery "cracker" and a kitchen "cracker"), each is kind:platform:key instead.
    taken = Counter((mentions[g[0]].kind, mentions[g[0]].key) for g in groups)
    node_of_mention: list[str] = [""] * len(mentions)
    entity_rows: list[dict[str, object]] = []
    for group in groups:
        anchor = mentions[group[0]]
        node_id = (f"{anchor.kind}:{anchor.key}" if taken[(anchor.kind, anchor.key)] == 1
                   else f"{anchor.kind}:{anchor.platform}:{anchor.key}")
        aliases = []
        for i in group:
            m, link = mentions[i], joined_by.get(i)
            method = "anchor" if i == group[0] else (link.method if link else "anchor")
            linked = link is not None and method != "anchor"
            aliases.append({"platform": m.platform, "name": m.name, "key": m.key, "items": m.items,
                            "method": method, "score": link.score if linked else 1.0,
                            "context": link.context if linked and link.context == link.context else None})
            node_of_mention[i] = node_id
        entity_rows.append({"node_id": node_id, "kind": anchor.kind, "name": anchor.name,
                            "platforms": sorted({mentions[i].platform for i in group}),
                            "count": sum(mentions[i].items for i in group), "aliases": aliases})
    mention_node = dict(zip(keys, node_of_mention, strict=True))

    # Edges: item → entity, category → parent, person → item.
    item_ids = items.column("item_id").to_pylist()
    item_platforms = items.column("platform").to_pylist()
    e_src = [f"item:{item_ids[t.item]}" for t in tags]
    e_dst = [mention_node[t.mention] for t in tags]
    e_rel = [ENTITY_RELATIONS[t.kind] for t in tags]
    e_plat = [item_platforms[t.item] for t in tags]
    e_source = [t.source for t in tags]
    for child, parent in sorted(parents):
        e_src.append(mention_node[child])
        e_dst.append(mention_node[parent])
        e_rel.append(PARENT_RELATION)
        e_plat.append(child[1])
        e_source.append("attribute")
    entity_edges = pa.table({"src": e_src, "dst": e_dst, "relation": e_rel, "platform": e_plat,
                             "weight": pa.array(np.ones(len(e_src), np.float32)), "source": e_source},
                            schema=EDGE_SCHEMA)
    # (An item gets at most one brand and one type; a category path's edges repeat for each item: dedupe.)
    entity_edges = entity_edges.group_by(["src", "dst", "relation", "platform", "source"], use_threads=False) \
        .aggregate([("weight", "max")]).rename_columns(["src", "dst", "relation", "platform", "source", "weight"]) \
        .select(EDGE_SCHEMA.names).cast(EDGE_SCHEMA)

    per = events.group_by(["person", "item_id", "platform", "event"], use_threads=False) \
        .aggregate([("ts", "count")])
    person_edges = pa.table({
        "src": pc.binary_join_element_wise("person", per.column("person"), ":"),
        "dst": pc.binary_join_element_wise("item", per.column("item_id"), ":"),
        "relation": per.column("event"),
        "platform": per.column("platform"),
        "weight": pc.cast(per.column("ts_count"), pa.float32()),
        "source": pa.array(["events"] * per.num_rows, pa.string()),
    }, schema=EDGE_SCHEMA)
    edges = pa.concat_tables([entity_edges, person_edges])

    # Components of the item–entity graph (persons left out: through them everything would touch).
    n_items = len(item_ids)
    index = {f"item:{x}": i for i, x in enumerate(item_ids)}
    for r, row in enumerate(entity_rows):
        index[str(row["node_id"])] = n_items + r
    src_idx = np.array([index[x] for x in entity_edges.column("src").to_pylist()], dtype=np.int64)
    dst_idx = np.array([index[x] for x in entity_edges.column("dst").to_pylist()], dtype=np.int64)
    comp = components(n_items + len(entity_rows), src_idx, dst_idx)

    item_events = events.group_by("item_id", use_threads=False).aggregate([("ts", "count")])
    events_of = dict(zip(item_events.column("item_id").to_pylist(), item_events.column("ts_count").to_pylist(),
                         strict=True))
    people = events.group_by("person", use_threads=False).aggregate([("ts", "count"), ("platform", "distinct")])
    n_people = people.num_rows
    nodes = pa.table({
        "node_id": [row["node_id"] for row in entity_rows] + [f"item:{x}" for x in item_ids]
        + pc.binary_join_element_wise("person", people.column("person"), ":").to_pylist(),
        "kind": [row["kind"] for row in entity_rows] + ["item"] * n_items + ["person"] * n_people,
        "name": [row["name"] for row in entity_rows] + items.column("title").to_pylist() + [None] * n_people,
        "platforms": [row["platforms"] for row in entity_rows] + [[p] for p in item_platforms]
        + [sorted(p) for p in people.column("platform_distinct").to_pylist()],
        "count": [row["count"] for row in entity_rows] + [events_of.get(x, 0) for x in item_ids]
        + people.column("ts_count").to_pylist(),
        "component": np.concatenate([comp[n_items:], comp[:n_items], np.full(n_people, -1, np.int64)]),
        "aliases": [row["aliases"] for row in entity_rows] + [None] * (n_items + n_people),
    }, schema=NODE_SCHEMA)

    summary = _summary(mentions, entity_rows, links, comp, n_items, item_platforms, tags, nodes, edges)
    summary.update({"rules": {k: {"name": r.name, "context": r.context} for k, r in rules.items()},
                    "vectors": encoder is not None, "context": title_encoder is not None,
                    "seconds": {"extract": round(t_extract, 2), "link": round(t_link, 2),
                                "total": round(time.perf_counter() - started, 2)}})
    return KnowledgeGraph(nodes, edges, summary)


def _summary(mentions: list[Mention], entity_rows: list[dict[str, object]], links: list[Link], comp: np.ndarray,
             n_items: int, item_platforms: list[str], tags: list[Tag], nodes: pa.Table, edges: pa.Table
             ) -> dict[str, object]:
    platforms = sorted(set(item_platforms))
    entities: dict[str, dict[str, object]] = {}
    for kind in sorted({m.kind for m in mentions}):
        rows = [r for r in entity_rows if r["kind"] == kind]
        linked = [r for r in rows if len(r["platforms"]) > 1]  # type: ignore[arg-type]
        entities[kind] = {
            "nodes": len(rows),
            "by_platform": {p: sum(1 for m in mentions if m.kind == kind and m.platform == p) for p in platforms},
            "cross_platform": len(linked),
            # Items that reach another platform through one of this kind's linked entities.
            "items_on_linked": {p: sum(a["items"] for r in linked for a in r["aliases"]  # type: ignore[attr-defined]
                                       if a["platform"] == p) for p in platforms},
        }
    link_counts: dict[str, Counter[str]] = defaultdict(Counter)
    for link in links:
        link_counts[mentions[link.a].kind][link.method] += 1
    have: dict[str, dict[str, set[int]]] = {p: defaultdict(set) for p in platforms}
    for t in tags:
        have[item_platforms[t.item]][t.kind].add(t.item)
        have[item_platforms[t.item]]["any"].add(t.item)
    items_with = {p: {k: len(v) for k, v in sorted(have[p].items())} | {
        "items": sum(1 for x in item_platforms if x == p)} for p in platforms}

    # Components: sizes, how many items of each platform, whether they span platforms.
    labels, sizes = np.unique(comp, return_counts=True)
    item_comp = comp[:n_items]
    plat_arr = np.array(item_platforms, dtype=object)
    per_comp_items: dict[int, Counter[str]] = defaultdict(Counter)
    for c, p in zip(item_comp.tolist(), plat_arr.tolist(), strict=True):
        per_comp_items[c][p] += 1
    spanning = {c for c, cnt in per_comp_items.items() if len(cnt) > 1}
    order = np.argsort(-sizes, kind="stable")
    largest = []
    for j in order[:5]:
        c = int(labels[j])
        largest.append({"nodes": int(sizes[j]), "items": dict(sorted(per_comp_items[c].items())),
                        "entities": int(sizes[j]) - sum(per_comp_items[c].values())})
    return {
        "entities": entities,
        "items_with": items_with,
        "links": {k: dict(v) for k, v in sorted(link_counts.items())},
        "components": {
            "count": len(labels),
            "isolated_items": int(np.isin(item_comp, labels[sizes == 1]).sum()),
            "cross_platform": len(spanning),
            "items_in_cross_platform": int(sum(1 for c in item_comp.tolist() if c in spanning)),
            "largest": largest,
        },
        "nodes": dict(sorted(Counter(nodes.column("kind").to_pylist()).items())),
        "edges": dict(sorted(Counter(edges.column("relation").to_pylist()).items())),
    }


def write_graph(kg: KnowledgeGraph, folder: Path) -> dict[str, int]:
    """nodes.parquet and edges.parquet under `folder` (created); returns their sizes in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(kg.nodes, folder / "nodes.parquet")
    pq.write_table(kg.edges, folder / "edges.parquet")
    return {name: (folder / name).stat().st_size for name in ("nodes.parquet", "edges.parquet")}
