"""Cleaning rules: every dropped row gets a counted reason; `strict` turns the first bad row into an error."""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from training.data.readers import DataError

# Reasons a row is dropped, in the order the rules are applied.
MALFORMED = "malformed_line"
BLANK_ACCOUNT = "blank_account"
BLANK_ITEM = "blank_item"
BAD_TIMESTAMP = "unparseable_timestamp"
UNKNOWN_ITEM = "unknown_item"
DUPLICATE = "exact_duplicate"
REASONS = (MALFORMED, BLANK_ACCOUNT, BLANK_ITEM, BAD_TIMESTAMP, UNKNOWN_ITEM, DUPLICATE)

EXAMPLES_PER_REASON = 5


def normalize_text(text: str | None) -> str:
    """Unicode NFKC, every run of whitespace one space, trimmed."""
    if not text:
        return ""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def parse_timestamp(value: str | None, fmt: str) -> int:
    """Seconds since the epoch (UTC). Raises ValueError on anything it cannot read."""
    if value is None or not value.strip():
        raise ValueError("empty timestamp")
    value = value.strip()
    if fmt == "epoch_s":
        return int(float(value))
    if fmt == "epoch_ms":
        return int(float(value)) // 1000
    dt = datetime.fromisoformat(value) if fmt == "iso" else datetime.strptime(value, fmt)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


@dataclass
class CleanStats:
    """What happened to one platform's rows."""

    rows_read: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, path: Path, line: int, detail: str, strict: bool) -> None:
        if strict:
            raise DataError(path, line, detail)
        self.dropped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"{path}:{line}: {detail}")

    def as_dict(self) -> dict[str, object]:
        return {
            "rows_read": self.rows_read,
            "dropped": {r: self.dropped.get(r, 0) for r in REASONS},
            "kept": self.kept,
            "examples": self.examples,
        }


@dataclass(frozen=True)
class RawEvent:
    account: str
    item: str
    event: str
    ts: int


class EventCleaner:
    """Applies the rules to one platform's event rows, in file order.

    Duplicates are judged on (account, item, event, timestamp): the same fact logged twice.
    """

    def __init__(self, catalog: set[str], ts_format: str, default_event: str, strict: bool) -> None:
        self.catalog, self.ts_format, self.default_event, self.strict = catalog, ts_format, default_event, strict
        self.stats = CleanStats()
        self._seen: set[tuple[str, str, str, int]] = set()

    def accept(self, path: Path, line: int, values: list[str | None] | None, problem: str | None
               ) -> RawEvent | None:
        """The cleaned event, or None when the row is dropped (and counted)."""
        self.stats.rows_read += 1
        drop = self.stats.drop
        if values is None:
            drop(MALFORMED, path, line, problem or "malformed line", self.strict)
            return None
        account, item, ts_raw, event = (v.strip() if v else "" for v in values)
        if not account:
            drop(BLANK_ACCOUNT, path, line, "blank account id", self.strict)
            return None
        if not item:
            drop(BLANK_ITEM, path, line, "blank item id", self.strict)
            return None
        try:
            ts = parse_timestamp(ts_raw, self.ts_format)
        except (ValueError, OverflowError, OSError):
            drop(BAD_TIMESTAMP, path, line, f"unparseable timestamp {ts_raw!r} (format {self.ts_format})",
                 self.strict)
            return None
        if item not in self.catalog:
            drop(UNKNOWN_ITEM, path, line, f"item {item!r} is not in the catalog", self.strict)
            return None
        event = event or self.default_event
        key = (account, item, event, ts)
        if key in self._seen:
            drop(DUPLICATE, path, line, "exact duplicate of an earlier event", self.strict)
            return None
        self._seen.add(key)
        self.stats.kept += 1
        return RawEvent(account, item, event, ts)
