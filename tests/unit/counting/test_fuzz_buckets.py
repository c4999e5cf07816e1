"""Property tests of event-time parsing, bucket arithmetic and field mapping.

Every value a message can hold either parses to a time in range or raises ``TimeError`` with
reason ``bad_time``; bucket starts match an exact rational floor; mapped fields match a plain
dictionary walk.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from bucket_app.counting.buckets import (
    MAX_TS_S,
    MIN_TS_S,
    FieldMap,
    TimeField,
    bucket_start,
    parse_epoch,
    parse_iso,
)
from bucket_app.errors import BadInput, TimeError
from tests.support.fuzz import (
    awkward_text,
    decodable_text,
    decodable_values,
    deeply_nested,
    edge_numbers,
    epoch_oracle,
    floor_start,
    iso_oracle,
    json_values,
    lookup_oracle,
)

DAY_DIVISORS = [d for d in range(1, 86_401) if 86_400 % d == 0]
in_range = st.one_of(
    st.floats(min_value=MIN_TS_S, max_value=MAX_TS_S),
    st.integers(min_value=int(MIN_TS_S), max_value=int(MAX_TS_S)),
    st.sampled_from([MIN_TS_S, MAX_TS_S, 0, -0.0, -1e-300, 5e-324, 1_795_828_000.0]),
)
any_value = st.one_of(json_values, edge_numbers, st.datetimes(), st.binary(max_size=4))


def parsed_or_reason(parse: Any, value: Any) -> float | str:
    try:
        ts = parse(value)
    except TimeError as exc:
        assert len(str(exc)) < 300 and "\n" not in str(exc)
        return exc.reason
    assert type(ts) is float and MIN_TS_S <= ts <= MAX_TS_S
    return ts


# --- bucket arithmetic ----------------------------------------------------------------------


@given(in_range, st.sampled_from(DAY_DIVISORS))
@example(-1, 20)
@example(-1e-300, 20)
@example(MAX_TS_S, 86_400)
@example(1_795_828_019.9999998, 20)
def test_bucket_start_is_the_exact_floor_and_holds_the_time(ts: float, interval_s: int) -> None:
    start = bucket_start(ts, interval_s)
    assert type(start) is int
    assert start == floor_start(ts, interval_s)
    assert start <= Fraction(ts) < start + interval_s  # half-open [start, start + interval)


@given(st.integers(min_value=int(MIN_TS_S) // 86_400, max_value=int(MAX_TS_S) // 86_400 - 1),
       st.sampled_from(DAY_DIVISORS))
def test_bucket_edges_are_half_open(day: int, interval_s: int) -> None:
    edge = day * 86_400 + interval_s  # aligned to the day and to the interval
    assert bucket_start(edge, interval_s) == edge
    assert bucket_start(float(edge), interval_s) == edge
    assert bucket_start(math.nextafter(float(edge), -math.inf), interval_s) == edge - interval_s


# --- epoch times -----------------------------------------------------------------------------


@given(any_value)
@example(True)
@example("1_440_179_085")
@example(" 1440179085.5 ")
@example("nan")
@example("1e400")
@example(10**400)
@example(MAX_TS_S)
@example(math.nextafter(MAX_TS_S, math.inf))
@example("\x00")
def test_epoch_times_parse_or_are_bad_time(value: Any) -> None:
    expected = epoch_oracle(value)
    answer = parsed_or_reason(parse_epoch, value)
    if expected != "datetime":
        assert answer == expected or (answer != answer and expected != expected)


@given(in_range.map(str))
def test_epoch_times_as_text_read_as_numbers(text: str) -> None:
    assert parse_epoch(text) == float(text)


@pytest.mark.parametrize("parse", [parse_epoch, parse_iso])
@pytest.mark.parametrize("depth", [10, 990, 1010, 1023])
def test_deeply_nested_times_are_bad_time(parse: Any, depth: int) -> None:
    """Regression: the repr() quoted in the error ran out of stack for JSON nested ~1000 deep
    (orjson reads up to 1024 levels), and the RecursionError escaped instead of a TimeError.
    Not a hypothesis example: hypothesis' own printer runs out of stack on such a value."""
    assert parsed_or_reason(parse, deeply_nested(depth)) == "bad_time"


# --- ISO-8601 times --------------------------------------------------------------------------

offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes)))


@given(st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), offsets)),
       st.sampled_from(["T", " ", "t"]),
       st.sampled_from(["auto", "seconds", "milliseconds", "microseconds"]),
       st.booleans())
@example(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), "T", "auto", False)
@example(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-1))),
         "T", "auto", False)
@example(datetime(1970, 1, 1, tzinfo=UTC), "T", "auto", True)
def test_iso_times_parse_to_the_exact_instant_or_are_out_of_range(
        dt: datetime, sep: str, timespec: str, zulu: bool) -> None:
    text = dt.isoformat(sep=sep, timespec=timespec)
    if zulu and text.endswith("+00:00"):
        text = text[:-6] + "Z"
    exact = iso_oracle(dt.replace(microsecond=dt.microsecond if timespec in (
        "auto", "microseconds") else (dt.microsecond // 1000 * 1000 if timespec ==
                                      "milliseconds" else 0)))
    answer = parsed_or_reason(parse_iso, text)
    if MIN_TS_S <= exact <= MAX_TS_S:
        assert answer == float(exact), text
    else:
        assert answer == "bad_time", text
    assert parsed_or_reason(parse_iso, f" {text.lower()} ") in (answer, "bad_time")


@given(st.one_of(awkward_text, st.text(max_size=40), any_value))
@example("2026-01-01T00:00:00.1234567Z")
@example("0001-01-01T00:00:00+23:59")
@example("9999-12-31T23:59:59-23:59")
@example("2026-01-01T24:00:00")
@example("2026-01-01\x00")
def test_iso_anything_parses_or_is_bad_time(value: Any) -> None:
    answer = parsed_or_reason(parse_iso, value)
    if not isinstance(value, str | datetime):
        assert answer == "bad_time"


# --- the time field and its fallback ---------------------------------------------------------


@given(st.one_of(st.none(), edge_numbers), st.sampled_from(["epoch", "iso"]))
@example(-9.223372036854776e15, "epoch")  # CreateTime -2**63 ms: the producer sets it
@example(9.223372036854776e15, "iso")
@example(-0.001, "epoch")
def test_record_time_fallback_is_range_checked_like_a_message_time(
        fallback: float | None, bucket_type: str) -> None:
    try:
        ts = TimeField("timestamp", bucket_type).get({"other": 1}, fallback)
    except TimeError as exc:
        assert exc.reason == ("missing_time" if fallback is None else "bad_time")
        if fallback is not None:
            assert not MIN_TS_S <= fallback <= MAX_TS_S
    else:
        assert fallback is not None and ts == float(fallback) and MIN_TS_S <= ts <= MAX_TS_S


# --- field mapping -------------------------------------------------------------------------


def valid_path(path: str) -> bool:
    return bool(path) and "" not in path.split(".")


def nested_message(paths: list[str], values: list[Any]) -> dict[str, Any]:
    """A message holding ``values`` at ``paths``, by hand, the way a producer nests them."""
    msg: dict[str, Any] = {}
    for path, value in zip(paths, values, strict=True):
        node = msg
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[parts[-1]] = value
    return msg


@given(st.lists(awkward_text, min_size=1, max_size=4, unique=True),
       st.lists(decodable_values, min_size=4, max_size=4), st.booleans(), st.data())
@example(["a.b", "a"], [1, 2, 3, 4], False, None)
@example(["a..b"], [1, 2, 3, 4], False, None)
@example(["\x00.é"], [{"z": 1, "a": [2]}, 2, 3, 4], False, None)
def test_field_map_reads_what_a_plain_walk_reads(paths: list[str], values: list[Any],
                                                 literal: bool, data: Any) -> None:
    columns = {path: f"c{i}" for i, path in enumerate(paths)}
    if not all(map(valid_path, paths)):
        with pytest.raises(ValueError):
            FieldMap(columns)
        return
    fields = FieldMap(columns)
    msg = nested_message(paths, values[:len(paths)])
    if literal:  # a literal top-level key with dots beside (or instead of) the nested one
        msg[paths[0]] = values[-1]
    if data is not None:
        msg.update(data.draw(st.dictionaries(decodable_text, decodable_values, max_size=3)))
    got = fields.extract(msg)
    for path, value in zip(paths, got, strict=True):
        expected = lookup_oracle(msg, path)
        if isinstance(expected, dict | list):
            assert isinstance(value, str)
            assert json.loads(value) == expected
        else:
            assert value is expected


@given(st.dictionaries(decodable_text, decodable_values, min_size=2, max_size=6))
def test_equal_objects_fall_in_one_group_whatever_their_key_order(obj: dict[str, Any]) -> None:
    fields = FieldMap({"v": "value"})
    reordered = dict(reversed(list(obj.items())))
    assume(list(reordered) != list(obj))
    assert fields.extract({"v": obj}) == fields.extract({"v": reordered})


@pytest.mark.parametrize("depth", [1, 250, 260, 1000])
def test_field_map_refuses_values_too_deep_to_render_as_bad_input(depth: int) -> None:
    """Regression: orjson renders 254 levels at most; beyond that its TypeError escaped
    FieldMap.extract, and the worker died on the message instead of skipping it."""
    fields = FieldMap({"meta.tags": "tags"})
    try:
        (value,) = fields.extract({"meta": {"tags": deeply_nested(depth)}})
    except BadInput as exc:
        assert exc.reason == "bad_field" and depth > 250
    else:
        assert isinstance(value, str) and depth < 260
