"""Delimited text other than commas: `.tsv` names and the mapping file's `delimiter` key."""

import gzip
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from training.data.build import build_dataset
from training.data.readers import DataError, read_rows
from training.data.sources import SourceError, detect_format, load_sources

MAPPING = """
name = "delim"
data_root = "."
[identity]
file = "links.txt"
delimiter = "|"
[platforms.shop]
events = "shop.tsv"
account = "user_ref"
item = "product"
event = "kind"
timestamp = "when"
catalog = { file = "shop_items.tsv.gz", id = "product", text = "name" }
[platforms.tv]
events = "tv.csv"
delimiter = ";"
account = "viewer"
item = "show"
timestamp = "t"
timestamp_format = "epoch_s"
catalog = { file = "tv_items.csv", id = "show", text = "title", delimiter = ";" }
[eval]
splits = { test = "test.txt" }
delimiter = "\\t"
"""


@pytest.fixture
def raw(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    (d / "mapping.toml").write_text(MAPPING)
    (d / "links.txt").write_text("person_id|platform|account_id\nP1|shop|s1\nP1|tv|t1\n")
    (d / "shop.tsv").write_text(
        "user_ref\tproduct\tkind\twhen\n"
        "s1\tA\tbuy\t2020-01-01T00:00:00Z\n"
        's2\tB\tbuy\t2020-01-03T00:00:00Z\n'
    )
    with gzip.open(d / "shop_items.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("product\tname\nA\tCoffee grinder, burr\nB\tTea pot; glass\n")
    (d / "tv.csv").write_text("viewer;show;t\nt1;X;1577923200\nt2;Y;1577923300\n")
    (d / "tv_items.csv").write_text('show;title\nX;"Cooking; the show"\nY;News, daily\n')
    (d / "test.txt").write_text("platform\taccount_id\titem_id\ttimestamp\ntv\tt1\tY\t2020-02-01T00:00:00Z\n")
    return d


def test_tsv_name_means_tab_delimited(tmp_path):
    assert detect_format(Path("a/e.tsv")).delimiter == "\t"
    assert detect_format(Path("a/e.TSV.gz")) == "csv" and detect_format(Path("a/e.tsv.gz")).delimiter == "\t"
    assert detect_format(Path("a/e.tsv"), "csv").delimiter == "\t"  # a plain format = "csv" keeps the name's tab
    assert detect_format(Path("a/e.tsv"), "jsonl") == "jsonl"
    assert getattr(detect_format(Path("a/e.csv")), "delimiter", ",") == ","
    f = tmp_path / "e.tsv"
    f.write_text('user_ref\tproduct\tkind\twhen\nu1\t"A, B"\tbuy\t1\n', encoding="utf-8")
    assert list(read_rows(f, detect_format(f), ["user_ref", "product", "when"])) == [(2, ["u1", "A, B", "1"], None)]
    assert list(read_rows(f, "csv", ["user_ref", "when"], delimiter="\t")) == [(2, ["u1", "1"], None)]


def test_tab_file_read_as_commas_says_which_key_to_set(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("user_ref\tproduct\tkind\twhen\nu1\tA\tbuy\t1\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        list(read_rows(f, detect_format(f), ["user_ref", "product"]))
    assert e.value.line == 1 and str(f) in str(e.value)
    assert "'user_ref'" in str(e.value) and 'set delimiter = "\\t"' in str(e.value)


def test_build_reads_tsv_and_declared_delimiters_everywhere(raw, tmp_path):
    cfg = load_sources(raw / "mapping.toml")
    assert cfg.platforms["tv"].delimiter == ";" and cfg.platforms["tv"].catalog.delimiter == ";"
    out = tmp_path / "out"
    report = build_dataset(cfg, out, salt="s").report
    for platform in ("shop", "tv"):
        r = report["platforms"][platform]
        assert r["kept"] == 2 and not any(r["dropped"].values()), r
    items = {i["item_id"]: i["title"] for i in pq.read_table(out / "items.parquet").to_pylist()}
    assert items == {"shop:A": "Coffee grinder, burr", "shop:B": "Tea pot; glass",
                     "tv:X": "Cooking; the show", "tv:Y": "News, daily"}
    events = pq.read_table(out / "events.parquet").to_pylist()
    assert sorted(e["item_id"] for e in events) == ["shop:A", "shop:B", "tv:X", "tv:Y"]
    by_person: dict[str, list[str]] = {}
    for e in events:
        by_person.setdefault(e["person"], []).append(e["item_id"])
    assert ["shop:A", "tv:X"] in by_person.values()  # linked through the "|" identity file
    targets = pq.read_table(out / "targets.parquet").to_pylist()
    assert [(t["split"], t["item_id"]) for t in targets] == [("test", "tv:Y")]


@pytest.mark.parametrize("value, why", [
    ('""', "exactly one character"),
    ('";;"', "exactly one character"),
    ("'\"'", "quote"),
    ('"\\n"', "line-break"),
    ('"\\r"', "line-break"),
])
@pytest.mark.parametrize("where", ["events", "catalog"])
def test_bad_delimiter_names_the_mapping_file_and_key(raw, value, why, where):
    text = MAPPING.replace('delimiter = ";"\naccount', f"delimiter = {value}\naccount") if where == "events" \
        else MAPPING.replace('title", delimiter = ";"', f'title", delimiter = {value}')
    assert text != MAPPING
    (raw / "bad.toml").write_text(text)
    with pytest.raises(SourceError) as e:
        load_sources(raw / "bad.toml")
    key = "platforms.tv.delimiter" if where == "events" else "platforms.tv.catalog.delimiter"
    assert str(raw / "bad.toml") in str(e.value) and key in str(e.value) and why in str(e.value), str(e.value)


def test_delimiter_with_a_non_csv_format_is_refused(raw):
    text = MAPPING.replace('delimiter = ";"\naccount', 'delimiter = ";"\nformat = "jsonl"\naccount')
    assert text != MAPPING
    (raw / "bad.toml").write_text(text)
    with pytest.raises(SourceError, match=r"platforms\.tv: .*delimiter is for CSV-like files, not format = 'jsonl'"):
        load_sources(raw / "bad.toml")
