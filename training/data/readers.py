"""Read CSV (any one-character delimiter), JSON-lines and Parquet files (optionally gzipped) as rows of named
columns, with line numbers.

A reader yields `(line, values, problem)`: `values` holds one string (or None) per requested column, or is
None when the line itself is malformed, in which case `problem` says why. A missing column in a header or
schema is not a bad row but a bad file: it raises `DataError` at once.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pyarrow.parquet as pq

from training.data.sources import Format

Row = tuple[int, list[str | None] | None, str | None]
ProgressFn = Callable[[int], None]  # called with the bytes of the file consumed so far

_PROGRESS_EVERY = 8192  # rows between progress callbacks: cheap enough, smooth enough


class DataError(Exception):
    """A problem in an input file, located by file and line."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        self.path, self.line, self.message = str(path), line, message
        super().__init__(f"{path}:{line}: {message}")


def _open_text(raw: BinaryIO, path: Path) -> io.TextIOWrapper:
    stream: BinaryIO = gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw
    return io.TextIOWrapper(stream, encoding="utf-8", errors="strict", newline="")


def _value(v: object) -> str | None:
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return v if isinstance(v, str) else str(v)


def _delimiter_hint(header: list[str], delimiter: str) -> str:
    """For a one-column header that looks delimited by something else: which key to set."""
    if len(header) != 1:
        return ""
    for d in ("\t", ";", "|", ","):
        if d != delimiter and d in header[0]:
            return f" (one column: is the file delimited by {d!r}? set delimiter = {json.dumps(d)} in the mapping)"
    return ""


def read_csv(path: Path, columns: Sequence[str], optional: frozenset[str] = frozenset(),
             progress: ProgressFn | None = None, delimiter: str = ",") -> Iterator[Row]:
    with path.open("rb") as raw, _open_text(raw, path) as text:
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(path, 1, "empty file: no header line") from None
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
            raise DataError(path, 1, f"unreadable: {e}") from e
        index = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in columns if c not in index and c not in optional]
        if missing:
            raise DataError(path, 1, f"missing column {', '.join(map(repr, missing))}; header has {header}"
                                     + _delimiter_hint(header, delimiter))
        positions = [index.get(c) for c in columns]
        width = len(header)
        n = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as e:
                yield reader.line_num, None, f"malformed line: {e}"
                continue
            except (gzip.BadGzipFile, EOFError, OSError) as e:
                raise DataError(path, reader.line_num + 1, f"unreadable (truncated or corrupt file): {e}") from e
            n += 1
            if progress and n % _PROGRESS_EVERY == 0:
                progress(raw.tell())
            if not fields:
                continue  # blank line
            if len(fields) != width:
                yield reader.line_num, None, f"malformed line: {len(fields)} fields, header has {width}"
                continue
            yield reader.line_num, [None if p is None else fields[p] for p in positions], None
        if progress:
            progress(raw.tell())


def read_jsonl(path: Path, columns: Sequence[str], optional: frozenset[str] = frozenset(),
               progress: ProgressFn | None = None) -> Iterator[Row]:
    with path.open("rb") as raw, _open_text(raw, path) as text:
        line_no = 0
        while True:
            try:
                line = text.readline()
            except UnicodeDecodeError as e:
                raise DataError(path, line_no + 1, f"not UTF-8: {e}") from e
            except (gzip.BadGzipFile, EOFError, OSError) as e:
                raise DataError(path, line_no + 1, f"unreadable (truncated or corrupt file): {e}") from e
            if not line:
                break
            line_no += 1
            if progress and line_no % _PROGRESS_EVERY == 0:
                progress(raw.tell())
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield line_no, None, f"malformed line: invalid JSON ({e.msg} at column {e.colno})"
                continue
            if not isinstance(obj, dict):
                yield line_no, None, f"malformed line: expected a JSON object, got {type(obj).__name__}"
                continue
            missing = [c for c in columns if c not in obj and c not in optional]
            if missing:
                yield line_no, None, f"malformed line: missing field {', '.join(map(repr, missing))}"
                continue
            yield line_no, [_value(obj.get(c)) for c in columns], None
        if progress:
            progress(raw.tell())


def read_parquet(path: Path, columns: Sequence[str], optional: frozenset[str] = frozenset(),
                 progress: ProgressFn | None = None) -> Iterator[Row]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(path, 1, f"unreadable Parquet file: {e}") from e
    names = set(pf.schema_arrow.names)
    missing = [c for c in columns if c not in names and c not in optional]
    if missing:
        raise DataError(path, 1, f"missing column {', '.join(map(repr, missing))}; schema has {sorted(names)}")
    present = [c for c in columns if c in names]
    size, total = path.stat().st_size, max(pf.metadata.num_rows, 1)
    row_no = 0
    for batch in pf.iter_batches(columns=present, batch_size=65536):
        cols = {name: batch.column(name).to_pylist() for name in present}
        for i in range(batch.num_rows):
            row_no += 1
            yield row_no, [_value(cols[c][i]) if c in cols else None for c in columns], None
        if progress:
            progress(int(size * row_no / total))


_READERS = {"csv": read_csv, "jsonl": read_jsonl, "parquet": read_parquet}


def read_rows(path: Path, fmt: Format, columns: Sequence[str], optional: frozenset[str] = frozenset(),
              progress: ProgressFn | None = None, delimiter: str | None = None) -> Iterator[Row]:
    """Rows of `columns` from `path` in the given format; see the module docstring.

    A CSV file is split at `delimiter`, else at the one its format carries (`sources.Delimited`), else at commas.
    """
    if not path.is_file():
        raise DataError(path, 0, "file not found")
    if fmt == "csv":
        return read_csv(path, columns, optional, progress, delimiter or getattr(fmt, "delimiter", ","))
    return _READERS[fmt](path, columns, optional, progress)
