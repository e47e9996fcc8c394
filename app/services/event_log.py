"""The durable event log: append-only JSONL files, fsync'd before an event is acknowledged.

Redis may run without persistence, so these files are the system of record for ingested events: Redis
is rebuilt from them (`replay` offsets in Redis say how far each file was applied) and
`xrec data export-events` turns them into input for the next training run.

Privacy decision: records keep the RAW account id (besides its keyed hash and the person id). The next
`xrec data build` must fuse these events with the platforms' own exports and the identity-link table,
which name raw accounts; a keyed hash there would make every exported account a new, unlinked person.
So the files hold the same kind of data as the raw platform logs and get the same protection (mode 0600,
directory 0700). Raw ids never go to application logs, the Redis stream or Redis keys (those carry the
keyed hash and the pseudonymous person only).

One file per UTC day and process (`events-YYYYMMDD-<host>-<pid>.jsonl`): writers never share a file, so a
crashed writer can leave at most its own last line incomplete; readers skip incomplete lines.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

EVENTS_GLOB = "events-*.jsonl"
CATALOG_GLOB = "catalog-*.jsonl"


@dataclass(frozen=True)
class LoggedEvent:
    event_id: str
    platform: str
    account: str  # raw: see the module docstring
    account_key: str
    person: str
    item_id: str
    event: str
    ts: int
    received: float = 0.0
    variant: str | None = None  # the A/B variant whose recommendation this event answers, if the client says

    def to_json(self) -> str:
        d = asdict(self)
        if self.variant is None:  # lines as before for events that name no variant
            del d["variant"]
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"))

    def history_entry(self) -> str:
        """What a person's Redis history list holds: no account, raw or hashed."""
        return json.dumps([self.item_id, self.platform, self.ts, self.event_id, self.event], separators=(",", ":"))

    def stream_fields(self) -> list[str]:
        return ["event_id", self.event_id, "person", self.person, "platform", self.platform,
                "account_key", self.account_key, "item_id", self.item_id, "event", self.event,
                "ts", str(self.ts)]


@dataclass(frozen=True)
class CatalogChange:
    op: str  # upsert | delete
    item_id: str
    platform: str = ""
    title: str = ""
    at: float = field(default_factory=time.time)
    attributes: dict[str, str | float] | None = None  # the item's attributes after the change
    available: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str | bytes) -> CatalogChange:
        return cls(**json.loads(line))


class AppendLog:
    """Append whole batches of lines to this process's file of the day, fsync'd."""

    def __init__(self, directory: Path, stem: str) -> None:
        self.directory = Path(directory)
        self.stem = stem
        self._lock = threading.Lock()
        self._tag = f"{socket.gethostname()}-{os.getpid()}"
        self._dir_checked = False

    def path_for(self, when: float) -> Path:
        day = datetime.fromtimestamp(when, UTC).strftime("%Y%m%d")
        return self.directory / f"{self.stem}-{day}-{self._tag}.jsonl"

    def append(self, lines: list[str]) -> tuple[Path, int, int]:
        """Write the lines in one go and fsync; (file, byte offset before, byte offset after)."""
        data = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self._dir_checked:
                _restrict(self.directory, 0o700)  # mkdir's mode only applies to a folder it creates
                self._dir_checked = True
            path = self.path_for(time.time())
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                st = os.fstat(fd)
                if st.st_mode & 0o077:  # a file that was there before, with a wider mode
                    _restrict(path, 0o600, fd)
                start = st.st_size
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
        return path, start, start + len(data)


def _restrict(path: Path, mode: int, fd: int | None = None) -> None:
    """Set the mode the module docstring promises; a folder or file the service may not chmod (another
    owner) is used as it is, with a warning, rather than refusing events."""
    try:
        if fd is None:
            os.chmod(path, mode)
        else:
            os.fchmod(fd, mode)
    except PermissionError:
        log.warning("%s: could not set mode %o (not the service user's); check its permissions", path, mode)


class EventLog(AppendLog):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "events")

    def write(self, events: list[LoggedEvent]) -> tuple[Path, int, int]:
        return self.append([e.to_json() for e in events])


class CatalogLog(AppendLog):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "catalog")

    def write(self, changes: list[CatalogChange]) -> tuple[Path, int, int]:
        return self.append([c.to_json() for c in changes])


def read_lines(path: Path, offset: int = 0) -> tuple[list[bytes], int]:
    """Complete lines from byte `offset` on, and the offset after the last complete line."""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return [line for line in data[:end].split(b"\n") if line.strip()], offset + end


def parse_events(lines: list[bytes], source: Path) -> list[LoggedEvent]:
    out = []
    for line in lines:
        try:
            out.append(LoggedEvent(**json.loads(line)))
        except (ValueError, TypeError):
            log.warning("%s: skipped an unreadable event line", source.name)
    return out


def log_files(directory: Path, pattern: str = EVENTS_GLOB) -> list[Path]:
    return sorted(Path(directory).glob(pattern)) if Path(directory).is_dir() else []


def read_events(directory: Path) -> Iterator[LoggedEvent]:
    """Every logged event, file by file (duplicates included: the log is at-least-once)."""
    for path in log_files(directory):
        lines, _ = read_lines(path)
        yield from parse_events(lines, path)


def read_catalog_changes(directory: Path) -> list[CatalogChange]:
    out = []
    for path in log_files(directory, CATALOG_GLOB):
        lines, _ = read_lines(path)
        for line in lines:
            try:
                out.append(CatalogChange.from_json(line))
            except (ValueError, TypeError):
                log.warning("%s: skipped an unreadable catalog line", path.name)
    return out


# ---- export for the next training run ---------------------------------------------------------------


@dataclass(frozen=True)
class PlatformColumns:
    """How the next `xrec data build` reads one platform (a `[platforms.X]` table of a mapping file)."""

    account: str = "account_id"
    item: str = "item_id"
    event: str = "event"
    timestamp: str = "timestamp"
    timestamp_format: str = "epoch_s"
    format: str | None = None  # the mapping's explicit format, if it declares one for all its files
    events: tuple[str, ...] = ()  # the platform's own event files (kept in the snippet)
    catalog: dict[str, str] | None = None
    default_event: str | None = None


@dataclass
class ExportResult:
    files: dict[str, Path]
    snippet: Path
    counts: dict[str, int]
    duplicates: int


def format_ts(ts: int, fmt: str) -> str | int:
    if fmt == "epoch_s":
        return int(ts)
    if fmt == "epoch_ms":
        return int(ts) * 1000
    dt = datetime.fromtimestamp(ts, UTC)
    if fmt == "iso":
        return dt.isoformat()
    return dt.replace(tzinfo=None).strftime(fmt)  # a strptime pattern: the build reads naive times as UTC


def raw_item_id(platform: str, item_id: str) -> str:
    """Platform catalogs use their own ids; the service's ids are namespaced `platform:id`."""
    prefix = platform + ":"
    return item_id[len(prefix):] if item_id.startswith(prefix) else item_id


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _write_rows(path: Path, fmt: str, rows: list[dict[str, object]], columns: list[str]) -> None:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(buf.getvalue(), encoding="utf-8")
    elif fmt == "parquet":
        pq.write_table(pa.table({c: [str(r[c]) for r in rows] for c in columns}), path)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def export_events(events_dir: Path, out: Path, mapping: dict[str, PlatformColumns] | None = None,
                  since: int | None = None, until: int | None = None) -> ExportResult:
    """Logged events → one file per platform plus `mapping-snippet.toml` for `xrec data build`.

    Duplicates (an event id seen before) are dropped, events sorted by time. With `mapping` (the
    platforms of the mapping file the next build uses), each file uses that platform's column names,
    timestamp format and file format, and the snippet lists it after the platform's own files.
    """
    mapping = mapping or {}
    seen: set[str] = set()
    by_platform: dict[str, list[LoggedEvent]] = {}
    duplicates = 0
    for ev in read_events(events_dir):
        if ev.event_id in seen:
            duplicates += 1
            continue
        seen.add(ev.event_id)
        if (since is not None and ev.ts < since) or (until is not None and ev.ts >= until):
            continue
        by_platform.setdefault(ev.platform, []).append(ev)

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    counts: dict[str, int] = {}
    snippet = ["# Events ingested by the xrec service, exported by `xrec data export-events`.",
               f"# From {Path(events_dir).resolve()} at {datetime.now(UTC).isoformat(timespec='seconds')}.",
               "# Merge these [platforms.*] tables into the mapping file of the next `xrec data build`:",
               "# each lists the platform's own event files (if a mapping was given) and then the export.",
               ""]
    for platform in sorted(by_platform):
        events = sorted(by_platform[platform], key=lambda e: e.ts)
        cols = mapping.get(platform, PlatformColumns())
        fmt = cols.format or "jsonl"
        path = out / f"{platform}.events.{fmt}"
        names = [cols.account, cols.item, cols.event, cols.timestamp]
        rows = [{cols.account: e.account, cols.item: raw_item_id(platform, e.item_id), cols.event: e.event,
                 cols.timestamp: format_ts(e.ts, cols.timestamp_format)} for e in events]
        _write_rows(path, fmt, rows, names)
        files[platform], counts[platform] = path, len(events)
        snippet.append(f"[platforms.{_toml_str(platform)}]")
        snippet.append("events = [" + ", ".join(_toml_str(p) for p in (*cols.events, str(path))) + "]")
        if cols.format:
            snippet.append(f"format = {_toml_str(cols.format)}")
        snippet.append(f"account = {_toml_str(cols.account)}")
        snippet.append(f"item = {_toml_str(cols.item)}")
        snippet.append(f"event = {_toml_str(cols.event)}")
        snippet.append(f"timestamp = {_toml_str(cols.timestamp)}")
        snippet.append(f"timestamp_format = {_toml_str(cols.timestamp_format)}")
        if cols.default_event:
            snippet.append(f"default_event = {_toml_str(cols.default_event)}")
        if cols.catalog:
            inner = ", ".join(f"{k} = {_toml_str(v)}" for k, v in cols.catalog.items())
            snippet.append(f"catalog = {{ {inner} }}")
        else:
            snippet.append("# catalog = { file = \"...\", id = \"...\", text = \"...\" }  "
                           "(required: this platform's catalog)")
        snippet.append("")
    snippet_path = out / "mapping-snippet.toml"
    snippet_path.write_text("\n".join(snippet), encoding="utf-8")
    return ExportResult(files, snippet_path, counts, duplicates)
