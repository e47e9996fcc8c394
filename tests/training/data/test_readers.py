import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.data.readers import DataError, read_rows
from training.data.sources import SourceError, detect_format


def test_csv_maps_columns_by_name_and_counts_lines(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text('ts,item,user\n1,"A, with comma",u1\n2,B,u2\n', encoding="utf-8")
    rows = list(read_rows(f, "csv", ["user", "item", "ts"]))
    assert rows == [(2, ["u1", "A, with comma", "1"], None), (3, ["u2", "B", "2"], None)]


def test_csv_missing_column_names_file_and_header(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user,item\nu1,A\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        list(read_rows(f, "csv", ["user", "item", "ts"]))
    assert e.value.line == 1 and "'ts'" in str(e.value) and str(f) in str(e.value)


def test_csv_wrong_field_count_is_a_malformed_row(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user,item\nu1,A,extra\nu2,B\n", encoding="utf-8")
    rows = list(read_rows(f, "csv", ["user", "item"]))
    assert rows[0][0] == 2 and rows[0][1] is None and "3 fields" in rows[0][2]
    assert rows[1] == (3, ["u2", "B"], None)


def test_csv_optional_column_absent_gives_none(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user,item\nu1,A\n", encoding="utf-8")
    assert list(read_rows(f, "csv", ["user", "event"], optional=frozenset({"event"}))) == [(2, ["u1", None], None)]


def test_jsonl_gz_reads_values_as_strings(tmp_path):
    f = tmp_path / "e.jsonl.gz"
    with gzip.open(f, "wt", encoding="utf-8") as out:
        out.write(json.dumps({"c": "u1", "sku": 123, "ts": 1700000000}) + "\n")
        out.write("\n")
        out.write(json.dumps({"c": "u2", "sku": "X", "ts": 1.7e9}) + "\n")
    rows = list(read_rows(f, detect_format(f), ["c", "sku", "ts"]))
    assert rows == [(1, ["u1", "123", "1700000000"], None), (3, ["u2", "X", "1700000000"], None)]


def test_jsonl_bad_line_and_missing_field_are_malformed_rows(tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_text('{"c": "u1", "sku": "A"}\n{"c": "u2", "sku": \n{"c": "u3"}\n[1, 2]\n', encoding="utf-8")
    rows = list(read_rows(f, "jsonl", ["c", "sku"]))
    assert rows[0] == (1, ["u1", "A"], None)
    assert rows[1][:2] == (2, None) and "invalid JSON" in rows[1][2]
    assert rows[2][:2] == (3, None) and "'sku'" in rows[2][2]
    assert rows[3][:2] == (4, None) and "JSON object" in rows[3][2]


def test_truncated_gzip_is_a_file_error(tmp_path):
    f = tmp_path / "e.jsonl.gz"
    data = gzip.compress(("\n".join(json.dumps({"c": i}) for i in range(5000)) + "\n").encode())
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        list(read_rows(f, "jsonl", ["c"]))


def test_parquet_rows_and_missing_column(tmp_path):
    f = tmp_path / "e.parquet"
    pq.write_table(pa.table({"u": ["a", "b"], "i": ["x", None], "t": [1, 2]}), f)
    assert list(read_rows(f, "parquet", ["u", "i", "t"])) == [(1, ["a", "x", "1"], None), (2, ["b", None, "2"], None)]
    with pytest.raises(DataError, match="'ev'"):
        list(read_rows(f, "parquet", ["u", "ev"]))


def test_format_detection():
    from pathlib import Path

    assert detect_format(Path("a/b.jsonl.gz")) == "jsonl"
    assert detect_format(Path("a/b.CSV")) == "csv"
    assert detect_format(Path("b.parquet")) == "parquet"
    assert detect_format(Path("b.txt"), "csv") == "csv"
    with pytest.raises(SourceError, match="format"):
        detect_format(Path("b.txt"))
