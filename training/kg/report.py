"""The knowledge graph's lines in the build report: what `xrec data build` prints after its summary table."""

from __future__ import annotations

from rich.table import Table


def kg_table(summary: dict) -> Table:
    """Entities by kind and platform, how many are linked across platforms and how."""
    entities: dict[str, dict] = summary.get("entities", {})
    platforms = sorted({p for e in entities.values() for p in e["by_platform"]})
    links: dict[str, dict[str, int]] = summary.get("links", {})
    table = Table(title="knowledge graph: entities")
    table.add_column("kind")
    for p in platforms:
        table.add_column(p, justify="right")
    table.add_column("nodes", justify="right")
    table.add_column("across platforms", justify="right")
    table.add_column("links: name / vector", justify="right")
    table.add_column("their items", justify="right")
    for kind, e in entities.items():
        k = links.get(kind, {})
        reach = " + ".join(f"{e.get('items_on_linked', {}).get(p, 0):,}" for p in platforms)
        table.add_row(kind, *(f"{e['by_platform'].get(p, 0):,}" for p in platforms), f"{e['nodes']:,}",
                      f"{e['cross_platform']:,}", f"{k.get('name', 0):,} / {k.get('vector', 0):,}", reach)
    return table


def kg_lines(summary: dict) -> list[str]:
    """Coverage, components, size and time, one line each."""
    lines = []
    for p, w in summary.get("items_with", {}).items():
        share = w.get("any", 0) / max(w["items"], 1)
        kinds = ", ".join(f"{k} {v:,}" for k, v in w.items() if k not in ("items", "any"))
        lines.append(f"{p}: {w.get('any', 0):,} of {w['items']:,} items have an entity ({share:.0%}: {kinds})")
    c = summary.get("components", {})
    if c:
        largest = ", ".join(
            f"{x['nodes']:,} ({' + '.join(f'{n:,} {p}' for p, n in x['items'].items())} items, "
            f"{x['entities']:,} {'entity' if x['entities'] == 1 else 'entities'})" for x in c["largest"][:3])
        lines.append(f"item–entity components: {c['count']:,} ({c['isolated_items']:,} items alone); "
                     f"largest: {largest}; {c['items_in_cross_platform']:,} items in "
                     f"{c['cross_platform']:,} component(s) spanning platforms")
    nodes = ", ".join(f"{v:,} {k}" for k, v in summary.get("nodes", {}).items())
    edges = ", ".join(f"{v:,} {k}" for k, v in summary.get("edges", {}).items())
    size = sum(summary.get("bytes", {}).values()) / 1e6
    secs = summary.get("seconds", {})
    lines.append(f"nodes: {nodes}; edges: {edges}; {size:.1f} MB; built in {secs.get('total', 0):.1f}s "
                 f"(MiniLM setup {secs.get('setup', 0):.1f}s, extraction {secs.get('extract', 0):.1f}s, "
                 f"linking {secs.get('link', 0):.1f}s)"
                 + ("" if summary.get("vectors") else "; names only (MiniLM not installed)"))
    return lines
