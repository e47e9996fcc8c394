from pathlib import Path

import pytest

from training.data.clean import (
    BAD_TIMESTAMP,
    BLANK_ACCOUNT,
    BLANK_ITEM,
    DUPLICATE,
    MALFORMED,
    UNKNOWN_ITEM,
    EventCleaner,
    normalize_text,
    parse_timestamp,
)
from training.data.readers import DataError

F = Path("events.csv")


def cleaner(strict=False, fmt="iso"):
    return EventCleaner({"A", "B"}, fmt, "view", strict)


def test_each_rule_drops_with_its_reason_and_keeps_good_rows():
    c = cleaner()
    rows = [
        (2, ["u1", "A", "2020-01-01T00:00:00Z", "buy"], None),
        (3, None, "malformed line: bad"),
        (4, ["  ", "A", "2020-01-01T00:00:00Z", None], None),
        (5, ["u1", "", "2020-01-01T00:00:00Z", None], None),
        (6, ["u1", "A", "yesterday", None], None),
        (7, ["u1", "Z", "2020-01-01T00:00:00Z", None], None),
        (8, ["u1", "A", "2020-01-01T00:00:00+00:00", "buy"], None),  # same instant: duplicate
        (9, ["u1", "A", "2020-01-01T00:00:00Z", "view"], None),  # other event type: kept
        (10, ["u2", "B", "2020-01-02T00:00:00Z", None], None),
    ]
    kept = [ev for line, v, p in rows if (ev := c.accept(F, line, v, p))]
    assert [(e.account, e.item, e.event) for e in kept] == [
        ("u1", "A", "buy"), ("u1", "A", "view"), ("u2", "B", "view")]
    d = c.stats.as_dict()
    assert d["rows_read"] == 9 and d["kept"] == 3
    assert d["dropped"] == {MALFORMED: 1, BLANK_ACCOUNT: 1, BLANK_ITEM: 1, BAD_TIMESTAMP: 1, UNKNOWN_ITEM: 1,
                            DUPLICATE: 1}
    assert d["examples"][BAD_TIMESTAMP] == ["events.csv:6: unparseable timestamp 'yesterday' (format iso)"]


def test_examples_are_capped_per_reason():
    c = cleaner()
    for line in range(20):
        c.accept(F, line, ["u", "Z", "2020-01-01", None], None)
    assert c.stats.dropped[UNKNOWN_ITEM] == 20 and len(c.stats.examples[UNKNOWN_ITEM]) == 5


def test_strict_fails_at_first_bad_row_with_file_and_line():
    c = cleaner(strict=True)
    assert c.accept(F, 2, ["u1", "A", "2020-01-01", None], None)
    with pytest.raises(DataError) as e:
        c.accept(F, 3, ["u1", "A", "not a time", None], None)
    assert (e.value.path, e.value.line) == ("events.csv", 3) and "unparseable timestamp" in str(e.value)


@pytest.mark.parametrize(("value", "fmt", "expected"), [
    ("2018-10-01T00:00:00Z", "iso", 1538352000),
    ("2018-10-01 02:00:00+02:00", "iso", 1538352000),
    ("2018-10-01", "iso", 1538352000),
    ("1538352000", "epoch_s", 1538352000),
    ("1538352000.9", "epoch_s", 1538352000),
    ("1538352000123", "epoch_ms", 1538352000),
    ("01/10/2018 00:00", "%d/%m/%Y %H:%M", 1538352000),
])
def test_parse_timestamp(value, fmt, expected):
    assert parse_timestamp(value, fmt) == expected


@pytest.mark.parametrize(("value", "fmt"), [("", "iso"), ("2018-13-01", "iso"), ("abc", "epoch_s"), (None, "iso")])
def test_parse_timestamp_rejects(value, fmt):
    with pytest.raises(ValueError):
        parse_timestamp(value, fmt)


def test_normalize_text_nfkc_and_whitespace():
    assert normalize_text("  Ｆｕｌｌ\u00a0width\t\n title  ") == "Full width title"
    assert normalize_text("ﬁne ½") == "fine 1⁄2"
    assert normalize_text(None) == ""
