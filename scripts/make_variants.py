"""Robustness variants of the Food-Kitchen data set, each one a raw data set that `xrec data build` reads as is.

    .venv/bin/python scripts/make_variants.py [--out runs/variants] [--variants sparse,order-only,both-platform]
    .venv/bin/xrec data build runs/variants/sparse/sparse.toml --out runs/variants/sparse/dataset

One folder per variant under --out, each with its own mapping file `<variant>.toml`:

  sparse         about 20% of the people (a seeded sample of persons; a linked person keeps all accounts),
                 their events, their identity links and their eval targets; catalogs unchanged.
  order-only     every timestamp replaced by 1,000,000,000 + the row's rank in one global time order over all
                 event and target files (exact duplicates share a rank, so they stay duplicates; targets rank
                 after the events): the order survives, the gaps carry no information.
  both-platform  only persons linked on every platform (their events and links); each one's last event on
                 each platform becomes a held-out target (half the persons valid, half test, seeded), removed
                 from the events and timed after the last event, as the source's targets are; the source's
                 eval files are not used.
  no-text        the last platform's catalog (Food-Kitchen: kitchen) with every item's text blanked, as a shop
                 whose catalog has no usable text exports it; events, links and targets unchanged. Items of
                 that platform are told apart by their IDs and the people who used them, never by text.

Only the files a variant changes are written, in the source's own formats and columns, dirt included (so that
cleaning still has work to do). The mapping file is a copy of the source's with `data_root = "."` (the variant
folder) and the unchanged files' paths pointing back at the source folder, relative to the variant folder:
build it without --data-root, which would override both. A rerun replaces a variant's whole folder (a dataset
built inside it too).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from training.data.build import atomic_dir
from training.data.clean import parse_timestamp
from training.data.sources import Format, PlatformSource, SourceConfig, detect_format, load_sources

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MAPPING = REPO / "configs/food-kitchen.toml"
DEFAULT_DATA_ROOT = Path(os.environ.get("XREC_DATA_ROOT", REPO.parent / "shared/data/food-kitchen"))
VARIANTS = ("sparse", "order-only", "both-platform", "no-text")
ORDER_BASE = 1_000_000_000  # order-only times: epoch seconds from 2001-09-09, one second per rank
Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------------------
# Raw files, read and written back in their own format


@dataclass
class RawFile:
    """One raw file, row by row: enough to write it back in the same format with the same columns."""

    rel: str  # path relative to the data root; a variant writes its version at the same place
    fmt: Format
    columns: list[str]  # CSV header, JSON-lines keys of the first row, Parquet schema names
    rows: list[Row]
    schema: pa.Schema | None = None  # Parquet only: written back with the same types
    malformed: int = 0  # lines that could not be read (bad JSON, wrong field count): not carried over

    def with_rows(self, rows: list[Row]) -> RawFile:
        return RawFile(self.rel, self.fmt, self.columns, rows, self.schema)


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_raw(root: Path, path: Path, fmt: Format) -> RawFile:
    rel = path.relative_to(root).as_posix()
    if fmt == "parquet":
        table = pq.read_table(path)
        return RawFile(rel, fmt, table.schema.names, table.to_pylist(), table.schema)
    rows: list[Row] = []
    columns: list[str] = []
    malformed = 0
    with _open_text(path) as text:
        if fmt == "csv":
            reader = csv.reader(text)
            columns = [c.strip() for c in next(reader, [])]
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(columns):
                    malformed += 1
                    continue
                rows.append(dict(zip(columns, fields, strict=True)))
        else:
            for line in text:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    obj = None
                if not isinstance(obj, dict):
                    malformed += 1
                    continue
                rows.append(obj)
            columns = list(rows[0]) if rows else []
    return RawFile(rel, fmt, columns, rows, malformed=malformed)


def write_raw(f: RawFile, root: Path) -> None:
    path = root / f.rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if f.fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(f.rows, schema=f.schema), path)
        return
    buf = io.StringIO(newline="")
    if f.fmt == "csv":
        w = csv.writer(buf)  # \r\n line ends, like the Food-Kitchen exports
        w.writerow(f.columns)
        w.writerows([row.get(c, "") for c in f.columns] for row in f.rows)
    else:
        buf.writelines(json.dumps(row) + "\n" for row in f.rows)
    data = buf.getvalue().encode("utf-8")
    if path.name.lower().endswith(".gz"):
        with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:  # reproducible bytes
            gz.write(data)
    else:
        path.write_bytes(data)


def _text(value: Any) -> str:
    """A cell as the build's readers see it: None is blank, 12.0 is "12"."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def parse_ts(value: Any, fmt: str) -> int | None:
    try:
        return parse_timestamp(_text(value), fmt)
    except (ValueError, OverflowError, OSError):
        return None


def format_ts(seconds: int, fmt: str, like: Any) -> Any:
    """`seconds` written the way `like` (a value of the same column) is: same format, same type."""
    dt = datetime.fromtimestamp(seconds, UTC)
    if isinstance(like, datetime):
        return dt if like.tzinfo else dt.replace(tzinfo=None)
    if fmt in ("epoch_s", "epoch_ms"):
        value = seconds * (1000 if fmt == "epoch_ms" else 1)
        return str(value) if isinstance(like, str) else value
    if fmt != "iso":
        return dt.strftime(fmt)
    text = like if isinstance(like, str) else "T"
    out = dt.strftime("%Y-%m-%d %H:%M:%S" if text[10:11] == " " else "%Y-%m-%dT%H:%M:%S")
    if text.endswith("Z"):
        return out + "Z"
    return out + "+00:00" if re.search(r"[+-]\d\d:?\d\d$", text) else out  # else naive, read as UTC


# ---------------------------------------------------------------------------------------------------------
# The source data set


@dataclass
class Source:
    """Everything a mapping file names, read once; the variants filter and rewrite copies of these rows."""

    cfg: SourceConfig
    mapping: str  # the mapping file's text, copied into each variant
    events: dict[str, list[RawFile]]  # platform → its event files
    evals: dict[str, list[RawFile]]  # split → its target files
    links: RawFile | None
    catalogs: dict[str, set[str]]  # platform → item ids
    catalog_files: dict[str, list[RawFile]]  # platform → its catalog file(s), rows as read
    linked: dict[tuple[str, str], str] = field(default_factory=dict)  # (platform, account) → link person

    def person(self, platform: str, account: str) -> str | None:
        """The person an account belongs to, as the build fuses them; None for a blank account."""
        if not account:
            return None
        person = self.linked.get((platform, account))
        return f"person:{person}" if person is not None else f"account:{platform}:{account}"

    def event_person(self, platform: str, row: Row) -> str | None:
        return self.person(platform, _text(row.get(self.cfg.platforms[platform].account)))

    def target_person(self, row: Row) -> str | None:
        ev = self.cfg.eval
        assert ev is not None
        return self.person(_text(row.get(ev.platform)), _text(row.get(ev.account)))


def read_source(mapping: Path, data_root: Path) -> Source:
    cfg = load_sources(mapping, data_root=data_root)
    root = cfg.root

    def read_all(patterns: list[str], fmt: Format | None, what: str) -> list[RawFile]:
        paths = [p for pattern in patterns for p in cfg.resolve(pattern, what)]
        return [read_raw(root, p, detect_format(p, fmt)) for p in paths]

    events = {p: read_all(src.events, src.format, f"{p} events") for p, src in cfg.platforms.items()}
    catalogs, catalog_files = {}, {}
    for p, src in cfg.platforms.items():
        files = catalog_files[p] = read_all([src.catalog.file], src.catalog.format, f"{p} catalog")
        catalogs[p] = {_text(row.get(src.catalog.id)) for f in files for row in f.rows}
    evals = {}
    if cfg.eval is not None:
        evals = {s: read_all([pattern], cfg.eval.format, f"eval split {s}") for s, pattern in cfg.eval.splits.items()}
    links = None
    linked: dict[tuple[str, str], str] = {}
    if cfg.identity is not None:
        idn = cfg.identity
        files = read_all([idn.file], idn.format, "identity links")
        if len(files) != 1:
            raise SystemExit(f"identity links: expected one file, found {len(files)}")
        links = files[0]
        for row in links.rows:
            linked[(_text(row.get(idn.platform)), _text(row.get(idn.account)))] = _text(row.get(idn.person))
    return Source(cfg, mapping.read_text(encoding="utf-8"), events, evals, links, catalogs, catalog_files, linked)


# ---------------------------------------------------------------------------------------------------------
# The variants


@dataclass
class Variant:
    """A variant's changed files; None keeps the source's files (the mapping then points back at them)."""

    name: str
    description: str
    events: dict[str, list[RawFile]] | None = None
    evals: dict[str, list[RawFile]] | None = None
    links: RawFile | None = None
    catalogs: dict[str, list[RawFile]] | None = None  # only the platforms whose catalog changed
    notes: list[str] = field(default_factory=list)  # extra figures for the summary line


def _filter(files: list[RawFile], keep: Callable[[Row], bool]) -> list[RawFile]:
    return [f.with_rows([row for row in f.rows if keep(row)]) for f in files]


def _dup_key(src: Source, platform: str, row: Row, ts: int) -> tuple[str, ...]:
    """The build's exact-duplicate key: (platform, account, item, event, time)."""
    s = src.cfg.platforms[platform]
    event = (_text(row.get(s.event)) if s.event else "") or s.default_event
    return (platform, _text(row.get(s.account)), _text(row.get(s.item)), event, str(ts))


def _links_of(src: Source, kept: set[str]) -> RawFile | None:
    """The identity links of the kept persons only: the others' links would count as linked people."""
    if src.links is None or src.cfg.identity is None:
        return None
    person = src.cfg.identity.person
    return src.links.with_rows([r for r in src.links.rows if f"person:{_text(r.get(person))}" in kept])


def sparse(src: Source, seed: int = 0, fraction: float = 0.2) -> Variant:
    """A seeded sample of persons with all their accounts, events, links and eval targets."""
    # Sample persons, not accounts: a linked person's accounts stay together, or cross-platform history breaks.
    people = sorted({person for p, files in src.events.items() for f in files for row in f.rows
                     if (person := src.event_person(p, row)) is not None})
    kept = set(random.Random(seed).sample(people, round(fraction * len(people))))
    events = {p: _filter(files, lambda row, p=p: src.event_person(p, row) in kept) for p, files in src.events.items()}
    evals = {s: _filter(files, lambda row: src.target_person(row) in kept) for s, files in src.evals.items()}
    return Variant("sparse", f"{fraction:.0%} of the persons (seeded sample), their events, links and targets",
                   events, evals, _links_of(src, kept))


def order_only(src: Source) -> Variant:
    """Times replaced by ranks in one global time order: each person's order survives, gaps say nothing."""
    # Every row with a readable time, keyed (time, events before targets, read order). Read order breaks ties
    # the way the build does (platforms in mapping order, then file order), so no person's timeline reorders.
    keyed: list[tuple[int, int, int, Row]] = []
    dedup: dict[int, tuple[str, ...]] = {}  # id(row) → the build's duplicate key, for event rows
    seq = 0
    for p, files in src.events.items():
        s = src.cfg.platforms[p]
        for f in files:
            for row in f.rows:
                ts = parse_ts(row.get(s.timestamp), s.timestamp_format)
                if ts is not None:
                    keyed.append((ts, 0, seq, row))
                    dedup[id(row)] = _dup_key(src, p, row, ts)
                seq += 1
    ev = src.cfg.eval
    for files in src.evals.values():
        for f in files:
            for row in f.rows:
                if ev is not None and (ts := parse_ts(row.get(ev.timestamp), ev.timestamp_format)) is not None:
                    keyed.append((ts, 1, seq, row))
                seq += 1
    keyed.sort(key=lambda k: k[:3])

    # Exact duplicates (same account, item, event, time) share the first one's rank: they stay duplicates,
    # and the build drops the same rows as in the source.
    rank: dict[int, int] = {}  # id(row) → rank
    first: dict[tuple[str, ...], int] = {}
    n = 0
    for *_, row in keyed:
        key = dedup.get(id(row))
        if key is not None and key in first:
            rank[id(row)] = first[key]
            continue
        rank[id(row)] = n
        if key is not None:
            first[key] = n
        n += 1

    def retime(f: RawFile, column: str, fmt: str) -> RawFile:
        # Rows with an unreadable time stay as they are: the build drops them either way.
        return f.with_rows([{**row, column: format_ts(ORDER_BASE + rank[id(row)], fmt, row[column])}
                            if id(row) in rank else row for row in f.rows])

    events = {p: [retime(f, src.cfg.platforms[p].timestamp, src.cfg.platforms[p].timestamp_format) for f in files]
              for p, files in src.events.items()}
    evals = {s: [retime(f, ev.timestamp, ev.timestamp_format) for f in files] for s, files in src.evals.items()
             } if ev is not None else None
    return Variant("order-only", f"times = {ORDER_BASE:,} + global rank in time order (targets after events)",
                   events, evals)


def both_platform(src: Source, seed: int = 0) -> Variant:
    """Persons linked on every platform, each with their last event on each platform held out as a target."""
    platforms = list(src.cfg.platforms)
    ev, idn = src.cfg.eval, src.cfg.identity
    if ev is None or idn is None or not {"valid", "test"} <= set(ev.splits):
        raise SystemExit("both-platform needs [identity] and [eval] with valid and test splits in the mapping")
    on: dict[str, set[str]] = {}
    for (p, _), person in src.linked.items():
        on.setdefault(f"person:{person}", set()).add(p)
    linked = {person for person, ps in on.items() if ps >= set(platforms)}

    # Each linked person's last event per platform, among the events the build keeps (known item, readable
    # time): a target whose item is not in the catalog would stop the build. Equal times: the later row.
    last: dict[tuple[str, str], tuple[int, int, Row]] = {}
    distinct: dict[str, set[tuple[str, ...]]] = {}  # person → the build's duplicate keys of their kept events
    seq = 0
    for p, files in src.events.items():
        s = src.cfg.platforms[p]
        for f in files:
            for row in f.rows:
                seq += 1
                person = src.event_person(p, row)
                if person not in linked or _text(row.get(s.item)) not in src.catalogs[p]:
                    continue
                ts = parse_ts(row.get(s.timestamp), s.timestamp_format)
                if ts is None:
                    continue
                if (ts, seq) > last.get((person, p), (-1, -1, {}))[:2]:
                    last[(person, p)] = (ts, seq, row)
                distinct.setdefault(person, set()).add(_dup_key(src, p, row, ts))
    # Keep a person only with a target on every platform and at least one event left as history: evaluation
    # drops the targets of a person without events.
    people = sorted(person for person in linked
                    if all((person, p) in last for p in platforms) and len(distinct[person]) > len(platforms))
    rng = random.Random(seed)
    rng.shuffle(people)
    split_of = {person: "valid" if i < len(people) // 2 else "test" for i, person in enumerate(people)}

    # The held-out rows leave the events with their exact duplicates (injected dirt), or they would leak back.
    held = {_dup_key(src, p, last[(person, p)][2], last[(person, p)][0]) for person in people for p in platforms}
    events: dict[str, list[RawFile]] = {}
    for p, files in src.events.items():

        def keep(row: Row, p: str = p, s: PlatformSource = src.cfg.platforms[p]) -> bool:
            if src.event_person(p, row) not in split_of:
                return False
            ts = parse_ts(row.get(s.timestamp), s.timestamp_format)
            return ts is None or _dup_key(src, p, row, ts) not in held

        events[p] = _filter(files, keep)

    # Targets are timed after every event (from the next midnight on, one second apart in their original
    # order), like the source's eval targets: no event is at or after the first target.
    newest = 0
    remaining_last: dict[str, int] = {}  # person → time of their newest remaining event that the build keeps
    for p, files in events.items():
        s = src.cfg.platforms[p]
        for row in (r for f in files for r in f.rows):
            ts = parse_ts(row.get(s.timestamp), s.timestamp_format)
            if ts is None:
                continue
            newest = max(newest, ts)
            if _text(row.get(s.item)) in src.catalogs[p]:
                person = src.event_person(p, row) or ""
                remaining_last[person] = max(remaining_last.get(person, ts), ts)
    start = int(datetime.fromtimestamp(newest, UTC).replace(hour=0, minute=0, second=0).timestamp()) + 86400
    targets = sorted((last[(person, p)][:2], person, p) for person in people for p in platforms)
    # Retiming puts a person's earlier target (say their last grocery event) after their later events on the
    # other platform, which evaluation then sees as history: counted, so the figure can be judged.
    earlier = 0
    rows: dict[str, list[Row]] = {"valid": [], "test": []}
    like = {s: _first_value(src.evals.get(s, []), ev.timestamp) for s in rows}
    for i, ((ts, _), person, p) in enumerate(targets):
        earlier += ts < remaining_last.get(person, -1)
        row = last[(person, p)][2]
        s = src.cfg.platforms[p]
        split = split_of[person]
        values = {ev.platform: p, ev.account: _text(row.get(s.account)), ev.item: _text(row.get(s.item)),
                  ev.timestamp: format_ts(start + i, ev.timestamp_format, like[split]),
                  idn.person: person.removeprefix("person:")}
        rows[split].append(values)
    evals = {split: [_target_file(src, split, rows[split])] for split in rows}
    variant = Variant("both-platform", "persons linked on every platform; last event per platform held out",
                      events, evals, _links_of(src, set(people)))
    variant.notes.append(f"{earlier:,} targets precede some of the person's remaining events in source time")
    variant.notes.append(f"targets timed from {datetime.fromtimestamp(start, UTC):%Y-%m-%d}")
    return variant


def no_text(src: Source) -> Variant:
    """The last platform's catalog with every item's text blanked (the ID and attribute columns kept)."""
    platform = list(src.cfg.platforms)[-1]
    cat = src.cfg.platforms[platform].catalog
    files = [f.with_rows([{**row, cat.text: ""} for row in f.rows]) for f in src.catalog_files[platform]]
    n = sum(len(f.rows) for f in files)
    return Variant("no-text", f"{platform}'s catalog text ({cat.text!r}) blanked on all {n:,} rows",
                   catalogs={platform: files})


def _first_value(files: list[RawFile], column: str) -> Any:
    return next((row[column] for f in files for row in f.rows if column in row), None)


def _target_file(src: Source, split: str, rows: list[Row]) -> RawFile:
    """New targets in the shape of the source's file for that split (its columns; blank where we have no value)."""
    ev = src.cfg.eval
    assert ev is not None
    if src.evals.get(split):
        template = src.evals[split][0]
        return template.with_rows([{c: row.get(c, "") for c in template.columns} for row in rows])
    columns = [ev.platform, ev.account, ev.item, ev.timestamp]
    fmt = ev.format or "csv"
    return RawFile(f"eval/{split}.{fmt}", fmt, columns, [{c: row[c] for c in columns} for row in rows])


# ---------------------------------------------------------------------------------------------------------
# Output


def _mapping_text(src: Source, v: Variant, folder: Path) -> str:
    """The source mapping with data_root = the variant folder, and unchanged files read from the source."""
    cfg = src.cfg
    back = Path(os.path.relpath(cfg.root.resolve(), folder.resolve())).as_posix()
    unchanged = [s.catalog.file for p, s in cfg.platforms.items() if p not in (v.catalogs or {})]
    if v.events is None:
        unchanged += [pattern for s in cfg.platforms.values() for pattern in s.events]
    if v.links is None and cfg.identity is not None:
        unchanged.append(cfg.identity.file)
    if v.evals is None and cfg.eval is not None:
        unchanged += list(cfg.eval.splits.values())
    text = src.mapping
    for pattern in dict.fromkeys(unchanged):
        if Path(pattern).is_absolute():
            continue
        new = f"{back}/{pattern}"
        found = 0
        for q in ('"', "'"):  # a TOML basic or literal string
            found += text.count(f"{q}{pattern}{q}")
            text = text.replace(f"{q}{pattern}{q}", f"{q}{new}{q}")
        if not found:
            raise SystemExit(f"cannot find the path {pattern!r} in the mapping file to point it at the source")
    text = re.sub(r'^(name\s*=\s*)(["\'])(.*?)\2', lambda m: f"{m[1]}{m[2]}{m[3]}-{v.name}{m[2]}", text,
                  count=1, flags=re.M)
    if re.search(r"^data_root\s*=", text, flags=re.M):
        text = re.sub(r"^data_root\s*=.*$", 'data_root = "."', text, count=1, flags=re.M)
    else:
        text = re.sub(r"^(name\s*=.*)$", r'\1\ndata_root = "."', text, count=1, flags=re.M)
    header = (f"# Variant {v.name!r}, written by scripts/make_variants.py:\n# {v.description}.\n"
              f"# data_root is this folder (the changed files); the unchanged ones are read from the source,\n"
              f"# {back}. Build it without --data-root, which would override both.\n")
    return header + text


def write_variant(src: Source, v: Variant, out: Path) -> Path:
    """Write the variant's changed files and its mapping file under out/<name>; returns the mapping path."""
    folder = out / v.name
    files = [f for files in (v.events or {}).values() for f in files]
    files += [f for files in (v.evals or {}).values() for f in files]
    files += [v.links] if v.links is not None else []
    files += [f for files in (v.catalogs or {}).values() for f in files]
    mapping = _mapping_text(src, v, folder)  # paths relative to the final folder, not the temp one
    with atomic_dir(folder) as tmp:  # replaced as a whole: a stale dataset built from an older run goes too
        for f in files:
            write_raw(f, tmp)
        (tmp / f"{v.name}.toml").write_text(mapping, encoding="utf-8")
    path = folder / f"{v.name}.toml"
    cfg = load_sources(path)  # every path must resolve, or the build would fail later
    patterns = [q for s in cfg.platforms.values() for q in (*s.events, s.catalog.file)]
    patterns += [cfg.identity.file] if cfg.identity else []
    patterns += list(cfg.eval.splits.values()) if cfg.eval else []
    for pattern in patterns:
        cfg.resolve(pattern, f"{path}")
    return path


def summary(src: Source, v: Variant) -> str:
    """One line: people and event rows (raw, dirt included: the build's report has the clean figures), targets."""
    events = v.events if v.events is not None else src.events
    evals = v.evals if v.evals is not None else src.evals
    people = {person for p, files in events.items() for f in files for row in f.rows
              if (person := src.event_person(p, row)) is not None}
    rows = sum(len(f.rows) for files in events.values() for f in files)
    targets = " / ".join(f"{s} {sum(len(f.rows) for f in files):,}" for s, files in evals.items())
    return "; ".join([f"{v.name}: {len(people):,} people, {rows:,} event rows, targets {targets}", *v.notes])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "runs/variants", help="one subfolder per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="the source data set")
    ap.add_argument("--mapping", type=Path, default=DEFAULT_MAPPING, help="the source's mapping file")
    ap.add_argument("--fraction", type=float, default=0.2, help="share of the persons kept by `sparse`")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    src = read_source(args.mapping, args.data_root)
    bad = {f.rel: f.malformed for files in [*src.events.values(), *src.evals.values()] for f in files if f.malformed}
    if bad:
        print(f"note: unreadable lines left out of every variant: {bad}", file=sys.stderr)
    make: dict[str, Callable[[], Variant]] = {
        "sparse": lambda: sparse(src, args.seed, args.fraction),
        "order-only": lambda: order_only(src),
        "both-platform": lambda: both_platform(src, args.seed),
        "no-text": lambda: no_text(src),
    }
    for name in names:
        v = make[name]()
        path = write_variant(src, v, args.out)
        print(f"{summary(src, v)} → {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
