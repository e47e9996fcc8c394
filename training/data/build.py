"""`xrec data build`: mapping file → one clean, fused, pseudonymised dataset, written atomically.

Output folder:
  items.parquet     item_id (platform-namespaced), platform, title, and the catalogs' attribute columns (strings)
  events.parquet    person, platform, item_id, ts (epoch seconds, UTC), event — one timeline per person
  accounts.parquet  platform, account (keyed hash), person
  targets.parquet   split, person, platform, item_id, ts — held-out evaluation targets, mapped to persons
  report.json       per platform: rows read, dropped per reason, kept; people, linked people; checks; the KG summary
  kg/               the knowledge graph: nodes.parquet, edges.parquet (training/kg; skipped with kg=False)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from training.data.clean import REASONS, CleanStats, EventCleaner, normalize_text, parse_timestamp
from training.data.fuse import IdentityMap, LinkConflict, account_key, fuse_history
from training.data.readers import DataError, read_rows
from training.data.sources import SourceConfig, SourceError, detect_format
from training.kg.graph import KG_DIR

DATASET_FILES = ("items.parquet", "events.parquet", "accounts.parquet", "targets.parquet", "report.json")


def item_key(platform: str, item: str) -> str:
    """Item ids are namespaced by platform: two shops may reuse one SKU for different things."""
    return f"{platform}:{item}"


@dataclass
class BuildResult:
    out: Path
    report: dict[str, object]
    seconds: float


@dataclass
class _Catalog:
    titles: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, list[str | None]] = field(default_factory=dict)  # per item, one per attribute column
    stats: Counter[str] = field(default_factory=Counter)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and os.environ.get("XREC_PROGRESS") != "1",
    )


def _read_catalog(cfg: SourceConfig, platform: str, strict: bool) -> _Catalog:
    src = cfg.platforms[platform].catalog
    cat = _Catalog()
    names = src.attributes
    for path in cfg.resolve(src.file, f"{platform} catalog"):
        fmt = detect_format(path, src.format)
        # A JSON line may leave out an attribute (null); a CSV header or Parquet schema must have its column.
        optional = frozenset(names) if fmt == "jsonl" else frozenset()
        seen = dict.fromkeys(names, False)
        rows = 0
        for line, values, problem in read_rows(path, fmt, [src.id, src.text, *names], optional):
            cat.stats["rows_read"] += 1
            rows += 1
            if values is None:
                if strict:
                    raise DataError(path, line, problem or "malformed line")
                cat.stats["malformed_line"] += 1
                continue
            item_id = (values[0] or "").strip()
            if not item_id:
                if strict:
                    raise DataError(path, line, "blank item id in catalog")
                cat.stats["blank_id"] += 1
                continue
            if item_id in cat.titles:
                cat.stats["duplicate_id"] += 1  # first one wins
                continue
            title = normalize_text(values[1])
            if not title:
                cat.stats["blank_title"] += 1
            cat.titles[item_id] = title
            if names:
                attrs = [normalize_text(v) or None for v in values[2:]]
                for name, v in zip(names, attrs, strict=True):
                    seen[name] = seen[name] or v is not None
                cat.attributes[item_id] = attrs
        missing = [n for n, found in seen.items() if not found]
        if missing and fmt == "jsonl" and rows:
            raise SourceError(f"{path}: no line has the attribute column {', '.join(map(repr, missing))} "
                              f"named by [platforms.{platform}.catalog] attributes")
    return cat


def _read_links(cfg: SourceConfig, salt: str) -> IdentityMap:
    if cfg.identity is None:
        return IdentityMap(salt, {})
    src = cfg.identity
    rows = []
    for path in cfg.resolve(src.file, "identity links"):
        fmt = detect_format(path, src.format)
        for line, values, problem in read_rows(path, fmt, [src.person, src.platform, src.account]):
            if values is None or not all(v and v.strip() for v in values):
                raise DataError(path, line, problem or "identity link needs person, platform and account")
            person, platform, account = (v.strip() for v in values)  # type: ignore[union-attr]
            if platform not in cfg.platforms:
                raise DataError(path, line, f"unknown platform {platform!r} (mapping has {sorted(cfg.platforms)})")
            rows.append((person, platform, account))
    try:
        return IdentityMap.from_links(salt, rows)
    except LinkConflict as e:
        raise SourceError(f"identity links: {e}") from e


def _read_events(cfg: SourceConfig, platform: str, catalog: set[str], strict: bool, progress: Progress
                 ) -> tuple[list, CleanStats]:
    src = cfg.platforms[platform]
    cleaner = EventCleaner(catalog, src.timestamp_format, src.default_event, strict)
    columns = [src.account, src.item, src.timestamp, src.event or "\x00no-event-column"]
    optional = frozenset({columns[3]})
    kept = []
    paths = [p for pattern in src.events for p in cfg.resolve(pattern, f"{platform} events")]
    for path in paths:
        fmt = detect_format(path, src.format)
        task = progress.add_task(f"{platform}: {path.name}", total=path.stat().st_size)
        for line, values, problem in read_rows(path, fmt, columns, optional,
                                               lambda n, t=task: progress.update(t, completed=n)):
            ev = cleaner.accept(path, line, values, problem)
            if ev is not None:
                kept.append(ev)
        progress.update(task, completed=path.stat().st_size)
    return kept, cleaner.stats


def _read_targets(cfg: SourceConfig, ids: IdentityMap, catalogs: dict[str, set[str]]
                  ) -> tuple[list[tuple[str, str, str, str, int]], dict[str, object]]:
    """(split, person, platform, item_id, ts) rows and their counts. Targets are never dirty in the
    sense of events: a bad target row is an error, since evaluation would silently change."""
    if cfg.eval is None:
        return [], {}
    src = cfg.eval
    rows: list[tuple[str, str, str, str, int]] = []
    counts: dict[str, int] = {}
    for split, pattern in src.splits.items():
        for path in cfg.resolve(pattern, f"eval split {split}"):
            fmt = detect_format(path, src.format)
            cols = [src.platform, src.account, src.item, src.timestamp]
            for line, values, problem in read_rows(path, fmt, cols):
                if values is None:
                    raise DataError(path, line, problem or "malformed line")
                platform, account, item, ts_raw = ((v or "").strip() for v in values)
                if platform not in cfg.platforms:
                    raise DataError(path, line, f"unknown platform {platform!r}")
                if not account or not item:
                    raise DataError(path, line, "target needs an account and an item")
                if item not in catalogs[platform]:
                    raise DataError(path, line, f"target item {item!r} is not in the {platform} catalog")
                try:
                    ts = parse_timestamp(ts_raw, src.timestamp_format)
                except (ValueError, OverflowError, OSError):
                    raise DataError(path, line, f"unparseable timestamp {ts_raw!r}") from None
                rows.append((split, ids.person(platform, account), platform, item_key(platform, item), ts))
                counts[split] = counts.get(split, 0) + 1
    return rows, counts


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A temp folder beside `out` that replaces `out` only if the block finishes; else it vanishes.

    An existing `out` stays intact until the new one is complete.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _table(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    return pa.table(columns, schema=schema)


def build_dataset(cfg: SourceConfig, out: Path, salt: str, strict: bool = False,
                  console: Console | None = None, kg: bool = True) -> BuildResult:
    """Read, clean, fuse and write (with the knowledge graph under kg/ unless `kg` is False). Raises
    DataError / SourceError; leaves no partial output."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    ids = _read_links(cfg, salt)

    catalogs: dict[str, _Catalog] = {p: _read_catalog(cfg, p, strict) for p in cfg.platforms}
    catalog_ids = {p: set(c.titles) for p, c in catalogs.items()}

    events: list[tuple[str, str, str, int, str]] = []
    stats: dict[str, CleanStats] = {}
    accounts: dict[tuple[str, str], str] = {}
    with _progress(console) as progress:
        for platform in cfg.platforms:
            kept, stats[platform] = _read_events(cfg, platform, catalog_ids[platform], strict, progress)
            for ev in kept:
                key = (platform, ev.account)
                person = accounts.get(key)
                if person is None:
                    person = accounts[key] = ids.person(platform, ev.account)
                events.append((person, platform, item_key(platform, ev.item), ev.ts, ev.event))
    events = fuse_history(events)

    # Linked accounts with no events still belong to their person (the service may meet them first).
    for platform, account in ids.links:
        if (platform, account) not in accounts:
            accounts[(platform, account)] = ids.person(platform, account)

    targets, target_counts = _read_targets(cfg, ids, catalog_ids)

    # Leakage checks: a target must not be among the events, and events must all precede the targets.
    event_keys = {(e[0], e[2], e[3]) for e in events}
    targets_in_events = sum(1 for t in targets if (t[1], t[3], t[4]) in event_keys)
    first_target_ts = min((t[4] for t in targets), default=None)
    late_events = 0 if first_target_ts is None else sum(1 for e in events if e[3] >= first_target_ts)

    people = {e[0] for e in events}
    report: dict[str, object] = {
        "name": cfg.name,
        "data_root": str(cfg.root),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "strict": strict,
        "platforms": {
            p: {
                **stats[p].as_dict(),
                "items": len(catalogs[p].titles),
                "catalog": dict(catalogs[p].stats),
                "people": len({e[0] for e in events if e[1] == p}),
            }
            for p in cfg.platforms
        },
        "events": len(events),
        "people": len(people),
        "linked_people": ids.linked_people(),
        "accounts": len(accounts),
        "targets": target_counts,
        "checks": {
            "targets_in_events": targets_in_events,
            "first_target_ts": first_target_ts,
            "last_event_ts": max((e[3] for e in events), default=None),
            "events_at_or_after_first_target": late_events,
        },
    }

    with atomic_dir(out) as tmp:
        s = pa.string()
        items_table = _items_table(cfg, catalogs)
        pq.write_table(items_table, tmp / "items.parquet")
        ev_schema = pa.schema([("person", s), ("platform", s), ("item_id", s), ("ts", pa.int64()),
                               ("event", s)])
        cols = list(zip(*events, strict=True)) if events else [[]] * 5
        events_table = _table(dict(zip(ev_schema.names, map(list, cols), strict=True)), ev_schema)
        pq.write_table(events_table, tmp / "events.parquet")
        acc_items = sorted(accounts.items())
        pq.write_table(_table({"platform": [k[0] for k, _ in acc_items],
                               "account": [account_key(salt, k[0], k[1]) for k, _ in acc_items],
                               "person": [v for _, v in acc_items]},
                              pa.schema([("platform", s), ("account", s), ("person", s)])),
                       tmp / "accounts.parquet")
        t_schema = pa.schema([("split", s), ("person", s), ("platform", s), ("item_id", s), ("ts", pa.int64())])
        tcols = list(zip(*targets, strict=True)) if targets else [[]] * 5
        pq.write_table(_table(dict(zip(t_schema.names, map(list, tcols), strict=True)), t_schema),
                       tmp / "targets.parquet")
        if kg:
            report["kg"] = _build_kg(items_table, events_table, tmp / KG_DIR, console)
        report["seconds"] = round(time.perf_counter() - started, 2)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return BuildResult(out, report, time.perf_counter() - started)


def _items_table(cfg: SourceConfig, catalogs: dict[str, _Catalog]) -> pa.Table:
    """item_id, platform, title, then every catalog's attribute columns (strings; null where a platform has
    no such column or an item no value), in the order the mapping file first names them."""
    names = list(dict.fromkeys(a for p in cfg.platforms for a in cfg.platforms[p].catalog.attributes))
    cols: dict[str, list] = {"item_id": [], "platform": [], "title": [], **{n: [] for n in names}}
    for p, cat in catalogs.items():
        own = cfg.platforms[p].catalog.attributes
        for item, title in cat.titles.items():
            cols["item_id"].append(item_key(p, item))
            cols["platform"].append(p)
            cols["title"].append(title)
            values = dict(zip(own, cat.attributes.get(item, [None] * len(own)), strict=True))
            for n in names:
                cols[n].append(values.get(n))
    return _table(cols, pa.schema([(c, pa.string()) for c in cols]))


def _build_kg(items: pa.Table, events: pa.Table, folder: Path, console: Console) -> dict[str, object]:
    """The knowledge graph of the dataset (training/kg) into `folder`; its summary for the report."""
    started = time.perf_counter()
    from training.kg.context import minilm_title_encoder
    from training.kg.graph import build_graph, write_graph
    from training.kg.link import minilm_encoder

    show = console.is_terminal
    attributes = [c for c in items.column_names if c not in ("item_id", "platform", "title")]
    name_encoder, title_encoder = minilm_encoder(progress=show), minilm_title_encoder(show)  # imports torch
    setup = time.perf_counter() - started
    graph = build_graph(items, events, attributes, name_encoder, title_encoder)
    sizes = write_graph(graph, folder)
    seconds = {**graph.summary["seconds"], "setup": round(setup, 2),  # type: ignore[dict-item]
               "total": round(time.perf_counter() - started, 2)}
    return {**graph.summary, "seconds": seconds, "bytes": sizes}


_SHORT = {"malformed_line": "malformed", "blank_account": "blank acct", "blank_item": "blank item",
          "unparseable_timestamp": "bad time", "unknown_item": "unknown item",
          "exact_duplicate": "duplicate"}


def summary_table(report: dict[str, object]) -> Table:
    """The end-of-build table: what each platform read, dropped and kept."""
    platforms: dict[str, dict] = report["platforms"]  # type: ignore[assignment]
    table = Table(title=f"xrec data build: {report['name']}")
    table.add_column("platform")
    table.add_column("rows read", justify="right")
    for reason in REASONS:
        table.add_column(_SHORT.get(reason, reason), justify="right")
    table.add_column("kept", justify="right")
    table.add_column("items", justify="right")
    table.add_column("people", justify="right")
    for name, p in platforms.items():
        table.add_row(name, f"{p['rows_read']:,}", *(f"{p['dropped'][r]:,}" for r in REASONS),
                      f"{p['kept']:,}", f"{p['items']:,}", f"{p['people']:,}")
    return table
