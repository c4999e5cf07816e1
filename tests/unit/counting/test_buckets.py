"""Tests for bucket_app.counting.buckets: bucket edges, time parsing, field mapping, event time."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from bucket_app.counting.buckets import (
    MAX_TS_S,
    MIN_TS_S,
    FieldMap,
    TimeField,
    bucket_start,
    make_time_parser,
    parse_epoch,
    parse_iso,
)
from bucket_app.errors import BadInput, TimeError


def utc_s(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def offset_s(tz_hours: int, tz_minutes: int, *, hour: int, minute: int, second: int) -> float:
    """Epoch seconds of 2015-08-21 hour:minute:second at a fixed UTC offset, via datetime."""
    tz = timezone(timedelta(hours=tz_hours, minutes=tz_minutes))
    return datetime(2015, 8, 21, hour, minute, second, tzinfo=tz).timestamp()


# --- bucket_start ---------------------------------------------------------------------


def test_seed_example() -> None:
    # bucket_interval 20: 1440179085 is in [1440179080, 1440179100).
    start = bucket_start(1440179085, 20)
    assert start == 1440179080
    assert start + 20 == 1440179100
    assert type(start) is int


@pytest.mark.parametrize(
    ("ts_s", "expected"),
    [
        (1440179080, 1440179080),  # start belongs to its own bucket
        (1440179080.0, 1440179080),
        (1440179100 - 1e-6, 1440179080),  # last instant before the end
        (1440179099.999, 1440179080),
        (1440179099.999999, 1440179080),
        (1440179100, 1440179100),  # the end is the next bucket's start (half-open)
        (1440179100.0, 1440179100),
        (1440179085.5, 1440179080),
        (0, 0),
        (0.0, 0),
        (19.999999, 0),
        (-0.0, 0),
        (-1e-6, -20),
        (-1, -20),
        (-20, -20),
        (-20.000001, -40),
        (-21, -40),
    ],
)
def test_bucket_start_edges(ts_s: float, expected: int) -> None:
    assert bucket_start(ts_s, 20) == expected
    assert type(bucket_start(ts_s, 20)) is int


def test_bucket_start_aligns_to_utc_day() -> None:
    day_start = int(utc_s(2015, 8, 21))
    noon = utc_s(2015, 8, 21, 12, 0, 1)
    assert bucket_start(noon, 86400) == day_start
    assert bucket_start(noon, 3600) == int(utc_s(2015, 8, 21, 12))
    assert bucket_start(utc_s(2015, 8, 21, 12, 14, 59) + 0.999, 900) == int(utc_s(2015, 8, 21, 12))
    # Before the epoch too.
    assert bucket_start(utc_s(1969, 12, 31, 23, 30), 3600) == -3600


# --- parse_epoch ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1440179085, 1440179085.0),
        (1440179085.5, 1440179085.5),
        (0, 0.0),
        (-5, -5.0),
        ("1440179085", 1440179085.0),
        ("1440179085.5", 1440179085.5),
        (" 1440179085 ", 1440179085.0),
        ("-12.25", -12.25),
        ("1.44e9", 1440000000.0),
    ],
)
def test_parse_epoch(value: Any, expected: float) -> None:
    result = parse_epoch(value)
    assert result == expected
    assert type(result) is float


def test_parse_epoch_datetime() -> None:
    # fastavro yields datetimes for Avro timestamp-millis / timestamp-micros.
    assert parse_epoch(datetime(2015, 8, 21, 17, 44, 45, tzinfo=UTC)) == 1440179085.0
    assert parse_epoch(datetime(2015, 8, 21, 17, 44, 45)) == 1440179085.0


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        math.nan,
        math.inf,
        -math.inf,
        "nan",
        "inf",
        "",
        "abc",
        "1_440_179_085",
        "0x10",
        "2015-08-21",
        [1440179085],
        {"ts": 1},
        b"1440179085",
        1440179085000,  # milliseconds: year ~47600, outside the accepted range
        10**400,
        MAX_TS_S + 1,
        MIN_TS_S - 1,
    ],
)
def test_parse_epoch_bad(value: Any) -> None:
    with pytest.raises(TimeError) as info:
        parse_epoch(value)
    assert info.value.reason == "bad_time"


def test_parse_epoch_range_edges() -> None:
    assert parse_epoch(MIN_TS_S) == MIN_TS_S
    assert parse_epoch(MAX_TS_S) == MAX_TS_S
    assert MIN_TS_S == utc_s(1, 1, 1)
    assert MAX_TS_S == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC).timestamp()


# --- parse_iso ------------------------------------------------------------------------

BASE_UTC = utc_s(2015, 8, 21, 17, 44, 40)  # 1440179080.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2015-08-21T17:44:40Z", BASE_UTC),
        ("2015-08-21T17:44:40z", BASE_UTC),
        ("2015-08-21t17:44:40Z", BASE_UTC),
        ("2015-08-21T17:44:40+00:00", BASE_UTC),
        ("2015-08-21T17:44:40-00:00", BASE_UTC),
        ("2015-08-21T17:44:40", BASE_UTC),  # no zone: UTC, not local time
        ("2015-08-21 17:44:40", BASE_UTC),
        ("2015-08-21 17:44:40Z", BASE_UTC),
        (" 2015-08-21T17:44:40Z\n", BASE_UTC),
        ("2015-08-21T17:44:40+02:00", offset_s(2, 0, hour=17, minute=44, second=40)),
        ("2015-08-21T17:44:40+0200", offset_s(2, 0, hour=17, minute=44, second=40)),
        ("2015-08-21T17:44:40-0530", offset_s(-5, -30, hour=17, minute=44, second=40)),
        ("2015-08-21T17:44:40-05:30", offset_s(-5, -30, hour=17, minute=44, second=40)),
        ("2015-08-21T17:44:40+05", offset_s(5, 0, hour=17, minute=44, second=40)),
        ("2015-08-21T17:44", utc_s(2015, 8, 21, 17, 44)),
        ("2015-08-21", utc_s(2015, 8, 21)),
        ("1969-12-31T23:59:59Z", -1.0),
        ("1970-01-01T00:00:00Z", 0.0),
    ],
)
def test_parse_iso(text: str, expected: float) -> None:
    result = parse_iso(text)
    assert result == expected
    assert type(result) is float


def test_parse_iso_offsets_against_known_epoch() -> None:
    # Independent of datetime: 17:44:40Z is 1440179080; +02:00 is two hours earlier in UTC.
    assert parse_iso("2015-08-21T17:44:40Z") == 1440179080.0
    assert parse_iso("2015-08-21T17:44:40+02:00") == 1440179080.0 - 7200
    assert parse_iso("2015-08-21T17:44:40-0530") == 1440179080.0 + 5 * 3600 + 30 * 60


@pytest.mark.parametrize(
    ("fraction", "micros"),
    [
        ("1", 100000),
        ("12", 120000),
        ("123", 123000),
        ("1234", 123400),
        ("12345", 123450),
        ("123456", 123456),
        ("1234567", 123456),  # beyond microseconds: truncated, not rounded
        ("12345678", 123456),
        ("123456789", 123456),
        ("999999999", 999999),
    ],
)
@pytest.mark.parametrize("zone", ["Z", "", "+02:00"])
def test_parse_iso_fractions(fraction: str, micros: int, zone: str) -> None:
    tz = timezone(timedelta(hours=2)) if zone == "+02:00" else UTC
    expected = datetime(2015, 8, 21, 17, 44, 40, micros, tzinfo=tz).timestamp()
    assert parse_iso(f"2015-08-21T17:44:40.{fraction}{zone}") == expected


def test_parse_iso_fraction_and_bucket_edge() -> None:
    ts_s = parse_iso("2015-08-21T17:44:59.999999Z")
    assert bucket_start(ts_s, 20) == 1440179080
    assert bucket_start(parse_iso("2015-08-21T17:45:00Z"), 20) == 1440179100


def test_parse_iso_datetime_object() -> None:
    assert parse_iso(datetime(2015, 8, 21, 17, 44, 40, tzinfo=UTC)) == 1440179080.0
    assert parse_iso(datetime(2015, 8, 21, 17, 44, 40)) == 1440179080.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "not a time",
        "1440179085",
        "2015-08-21T25:00:00Z",
        "2015-08-21T24:00:00Z",
        "2015-02-30",
        "2015-13-01",
        "2015-08-21T17:44:40+25:00",
        "2015-08-21T17:44:40 UTC",
        "21/08/2015 17:44:40",
        "Fri, 21 Aug 2015 17:44:40 GMT",
        "2015-08-21T17:44:60Z",
        "2015-08-21TZ",
    ],
)
def test_parse_iso_bad_strings(value: str) -> None:
    with pytest.raises(TimeError) as info:
        parse_iso(value)
    assert info.value.reason == "bad_time"
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [1440179085, 1440179085.0, None, True, b"2015-08-21", ["x"]])
def test_parse_iso_non_strings(value: Any) -> None:
    with pytest.raises(TimeError) as info:
        parse_iso(value)
    assert info.value.reason == "bad_time"


def test_parse_iso_truncates_echoed_value() -> None:
    value = "x" * 5000
    with pytest.raises(TimeError) as info:
        parse_iso(value)
    assert len(str(info.value)) < 150


def test_make_time_parser() -> None:
    assert make_time_parser("epoch") is parse_epoch
    assert make_time_parser("iso") is parse_iso
    with pytest.raises(ValueError, match="bucket_type must be one of"):
        make_time_parser("millis")


# --- FieldMap -------------------------------------------------------------------------


def test_field_map_columns_in_map_order() -> None:
    fields = FieldMap({"origin_server": "server_name", "meta.host": "host"})
    assert fields.columns == ("server_name", "host")
    assert fields.paths == ("origin_server", "meta.host")


def test_field_map_nested_and_missing() -> None:
    fields = FieldMap({"origin_server": "server_name", "meta.host": "host", "a.b.c": "deep"})
    msg = {"origin_server": "web-1", "meta": {"host": "h1"}, "a": {"b": {"c": 3}}}
    assert fields.extract(msg) == ("web-1", "h1", 3)
    assert fields.extract({}) == (None, None, None)
    assert fields.extract({"origin_server": "web-1", "meta": {}}) == ("web-1", None, None)
    # A path through a non-dict is missing, not an error.
    assert fields.extract({"meta": "h1", "a": {"b": [1]}}) == (None, None, None)
    assert fields.extract({"meta": None, "a": {"b": None}}) == (None, None, None)


def test_field_map_literal_dotted_key_wins() -> None:
    fields = FieldMap({"meta.host": "host"})
    assert fields.extract({"meta.host": "literal", "meta": {"host": "nested"}}) == ("literal",)
    assert fields.extract({"meta.host": None, "meta": {"host": "nested"}}) == (None,)
    assert fields.extract({"meta": {"host": "nested"}}) == ("nested",)


def test_field_map_keeps_scalars() -> None:
    fields = FieldMap({"s": "s", "i": "i", "f": "f", "b": "b", "n": "n"})
    assert fields.extract({"s": "x", "i": 1, "f": 1.5, "b": True, "n": None}) == (
        "x",
        1,
        1.5,
        True,
        None,
    )


def test_field_map_renders_compound_values_as_json_text() -> None:
    fields = FieldMap({"meta": "meta", "tags": "tags"})
    msg = {"meta": {"b": 1, "a": [1, "x"]}, "tags": ["x", {"k": None}]}
    assert fields.extract(msg) == ('{"a":[1,"x"],"b":1}', '["x",{"k":null}]')
    # Equal objects give equal text (keys sorted), so they count as one group.
    assert fields.extract({"meta": {"a": [1, "x"], "b": 1}, "tags": []})[0] == (
        '{"a":[1,"x"],"b":1}'
    )
    # Avro bytes inside a record do not break the rendering.
    assert fields.extract({"meta": {"raw": b"\x01"}, "tags": None}) == (
        '{"raw":"b\'\\\\x01\'"}',
        None,
    )


def test_field_map_empty_and_invalid() -> None:
    assert FieldMap({}).columns == ()
    assert FieldMap({}).extract({"a": 1}) == ()
    with pytest.raises(ValueError, match="mapped twice"):
        FieldMap({"a": "col", "b": "col"})
    with pytest.raises(ValueError, match="empty segment"):
        FieldMap({"meta..host": "host"})
    with pytest.raises(ValueError, match="non-empty string"):
        FieldMap({"": "x"})
    with pytest.raises(ValueError, match="non-empty string"):
        FieldMap({"a": ""})


# --- TimeField: the event time and its fallback ------------------------------------------


def test_event_time_reads_field() -> None:
    msg = {"timestamp": 1440179085, "meta": {"at": "2015-08-21T17:44:45Z"}}
    assert TimeField("timestamp", "epoch").get(msg, None) == 1440179085.0
    assert TimeField("meta.at", "iso").get(msg, 1.0) == 1440179085.0


@pytest.mark.parametrize("msg", [{}, {"timestamp": None}, {"meta": 5}])
def test_event_time_fallback(msg: dict[str, Any]) -> None:
    assert TimeField("timestamp", "epoch").get(msg, 1440179090.5) == 1440179090.5
    assert TimeField("meta.at", "iso").get(msg, 1440179090.5) == 1440179090.5


@pytest.mark.parametrize("msg", [{}, {"timestamp": None}])
def test_event_time_missing(msg: dict[str, Any]) -> None:
    with pytest.raises(TimeError) as info:
        TimeField("timestamp", "epoch").get(msg, None)
    assert info.value.reason == "missing_time"
    assert isinstance(info.value, BadInput)


def test_event_time_bad_value_does_not_fall_back() -> None:
    with pytest.raises(TimeError) as info:
        TimeField("timestamp", "epoch").get({"timestamp": "soon"}, 1440179090.0)
    assert info.value.reason == "bad_time"


def test_time_field() -> None:
    field = TimeField("meta.ts", "epoch")
    assert field.parse is parse_epoch
    assert field.get({"meta": {"ts": "1440179085"}}) == 1440179085.0
    assert field.get({"meta.ts": 7, "meta": {"ts": 9}}) == 7.0
    assert field.get({}, 1440179090.0) == 1440179090.0
    with pytest.raises(TimeError) as info:
        field.get({})
    assert info.value.reason == "missing_time"
    iso = TimeField("at", "iso")
    assert iso.get({"at": "2015-08-21T17:44:45+00:00"}) == 1440179085.0
    with pytest.raises(ValueError, match="bucket_type"):
        TimeField("at", "local")


def test_seed_pipeline() -> None:
    # Message -> event time -> bucket -> group key, as the agent will chain them.
    fields = FieldMap({"origin_server": "server_name"})
    time_field = TimeField("timestamp", "epoch")
    msg = {"origin_server": "web-1", "timestamp": 1440179085}
    start = bucket_start(time_field.get(msg), 20)
    assert (start, *fields.extract(msg)) == (1440179080, "web-1")
