"""Rollups (bucket_app.web.rollup): granule edges across DST, the SQL in the real sandbox,
parameter validation, and GET /api/v1/buckets rolled up on the real views.

Expected granules come from :func:`reference_edges`, a brute-force reading of the definition
(an edge wherever the zone's wall clock reaches or jumps past a multiple of the granularity),
minute by minute through zoneinfo; it shares no code with the module under test.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucket_app.errors import HttpError
from bucket_app.sql.sandbox import SqlSandbox, quote_identifier
from bucket_app.web import rollup
from bucket_app.web.declare import Invalid
from bucket_app.web.rollup import Granules, Rollup, parse_rollup
from tests.support.web import (
    INTERVAL,
    Served,
    assert_error_shape,
    client,
    dst_rows,
    make_snapshot,
    serve_snapshot,
    ts,
)

BERLIN = ZoneInfo("Europe/Berlin")
KOLKATA = ZoneInfo("Asia/Kolkata")
UTC = ZoneInfo("UTC")
DAY, HOUR = 86_400, 3_600
COLUMNS = ["server_name", "topic", "bucket_start", "bucket_end", "count", "RST_ID", "late",
           "final"]


def wall(zone: ZoneInfo, t: int) -> int:
    """Seconds since 1970-01-01 00:00 on the zone's wall clock at instant ``t``."""
    offset = datetime.fromtimestamp(t, zone).utcoffset()
    assert offset is not None
    return t + int(offset.total_seconds())


def reference_edges(zone: ZoneInfo, granularity_s: int, lo: int, hi: int,
                    step: int = 60) -> list[int]:
    """Every minute in [lo, hi) at which the wall clock reads a multiple of the granularity
    or has passed one since the minute before."""
    edges = []
    before = wall(zone, lo - step)
    for t in range(lo, hi, step):
        now = wall(zone, t)
        if now % granularity_s == 0 or before // granularity_s < now // granularity_s:
            edges.append(t)
        before = now
    return edges


def reference_granule(edges: Sequence[int], t: int) -> tuple[int, int]:
    index = bisect.bisect_right(edges, t) - 1
    assert 0 <= index < len(edges) - 1, "reference range too short"
    return edges[index], edges[index + 1]


# --- granule edges --------------------------------------------------------------------------

def test_berlin_spring_forward_day_is_one_23_hour_granule() -> None:
    granules = Granules(BERLIN, DAY, ts("2026-03-27T00:00Z"), ts("2026-03-31T00:00Z"))
    noon = ts("2026-03-29T12:00+02:00")
    assert granules.start_of(noon) == ts("2026-03-29T00:00+01:00")
    assert granules.end_of(noon) == ts("2026-03-30T00:00+02:00")
    assert granules.end_of(noon) - granules.start_of(noon) == 23 * HOUR
    for day in ("2026-03-28T12:00+01:00", "2026-03-30T12:00+02:00"):
        assert granules.end_of(ts(day)) - granules.start_of(ts(day)) == 24 * HOUR


def test_berlin_fall_back_day_is_one_25_hour_granule() -> None:
    granules = Granules(BERLIN, DAY, ts("2026-10-23T00:00Z"), ts("2026-10-27T00:00Z"))
    # the repeated 02:00-03:00 local, first and second time, belongs to the same day
    for t in (ts("2026-10-25T00:30Z"), ts("2026-10-25T01:30Z"), ts("2026-10-25T22:59:40Z")):
        assert granules.start_of(t) == ts("2026-10-25T00:00+02:00")
        assert granules.end_of(t) == ts("2026-10-26T00:00+01:00")
    assert ts("2026-10-26T00:00+01:00") - ts("2026-10-25T00:00+02:00") == 25 * HOUR
    assert granules.start_of(ts("2026-10-25T23:00Z")) == ts("2026-10-26T00:00+01:00")


def test_berlin_repeated_hour_is_two_hourly_granules() -> None:
    granules = Granules(BERLIN, HOUR, ts("2026-10-24T00:00Z"), ts("2026-10-26T00:00Z"))
    first, second = ts("2026-10-25T00:00Z"), ts("2026-10-25T01:00Z")  # both 02:00 local
    assert (granules.start_of(first + 1800), granules.end_of(first + 1800)) == (first, second)
    assert (granules.start_of(second + 1800), granules.end_of(second + 1800)) == (
        second, second + HOUR)
    # and the skipped 02:00-03:00 of spring has no granule: 01:00 is followed by 03:00
    spring = Granules(BERLIN, HOUR, ts("2026-03-28T00:00Z"), ts("2026-03-30T00:00Z"))
    one = ts("2026-03-29T01:00+01:00")
    assert spring.end_of(one) == ts("2026-03-29T03:00+02:00") == one + HOUR


def test_kolkata_half_hour_offset_puts_edges_at_half_past_utc() -> None:
    hourly = Granules(KOLKATA, HOUR, ts("2026-06-01T00:00Z"), ts("2026-06-03T00:00Z"))
    t = ts("2026-06-01T10:10Z")
    assert (hourly.start_of(t), hourly.end_of(t)) == (ts("2026-06-01T09:30Z"),
                                                      ts("2026-06-01T10:30Z"))
    daily = Granules(KOLKATA, DAY, ts("2026-06-01T00:00Z"), ts("2026-06-03T00:00Z"))
    assert (daily.start_of(t), daily.end_of(t)) == (ts("2026-05-31T18:30Z"),
                                                    ts("2026-06-01T18:30Z"))


def test_utc_days_are_utc_midnights() -> None:
    granules = Granules(UTC, DAY, ts("2026-10-24T00:00Z"), ts("2026-10-27T00:00Z"))
    t = ts("2026-10-25T13:14:20Z")
    assert (granules.start_of(t), granules.end_of(t)) == (ts("2026-10-25T00:00Z"),
                                                          ts("2026-10-26T00:00Z"))
    assert len(granules.stretches) == 1


@pytest.mark.parametrize(("zone", "granularity_s", "first_day", "days"), [
    ("Europe/Berlin", DAY, "2026-03-27", 4),
    ("Europe/Berlin", DAY, "2026-10-23", 4),
    ("Europe/Berlin", HOUR, "2026-10-24", 2),
    ("Europe/Berlin", 2 * HOUR, "2026-03-28", 2),
    ("Europe/Berlin", 3 * HOUR, "2026-10-24", 2),
    ("Europe/Berlin", 7 * DAY, "2026-10-10", 30),
    ("Asia/Kolkata", HOUR, "2026-10-24", 2),
    ("Asia/Kathmandu", 900, "2026-01-01", 1),
    ("UTC", DAY, "2026-10-24", 3),
    ("America/Santiago", DAY, "2026-09-04", 4),  # DST begins at midnight: 00:00 never shows
    ("Pacific/Apia", DAY, "2011-12-28", 4),  # 2011-12-30 was skipped whole
    ("Australia/Lord_Howe", 1800, "2026-10-03", 2),  # a 30-minute DST shift
    ("America/St_Johns", DAY, "2026-10-31", 3),  # -03:30
])
def test_granules_match_the_brute_force_definition(zone: str, granularity_s: int,
                                                   first_day: str, days: int) -> None:
    tz = ZoneInfo(zone)
    lo = ts(first_day + "T00:00Z")
    hi = lo + days * DAY
    granules = Granules(tz, granularity_s, lo, hi)
    edges = reference_edges(tz, granularity_s, lo - granularity_s - 2 * DAY,
                            hi + granularity_s + 2 * DAY)
    for t in range(lo, hi, 60):
        assert (granules.start_of(t), granules.end_of(t)) == reference_granule(edges, t), t


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["Europe/Berlin", "Asia/Kolkata", "America/New_York", "UTC",
                        "Australia/Lord_Howe"]),
       st.sampled_from([1800, HOUR, 6 * HOUR, DAY, 7 * DAY]),
       st.integers(ts("2000-01-01T00:00Z"), ts("2040-01-01T00:00Z")))
def test_every_instant_lies_in_exactly_one_granule(zone: str, granularity_s: int,
                                                   t: int) -> None:
    granules = Granules(ZoneInfo(zone), granularity_s, t - DAY, t + DAY)
    start, end = granules.start_of(t), granules.end_of(t)
    assert start <= t < end
    assert granules.start_of(start) == start and granules.start_of(end) == end
    assert granules.end_of(end - 1) == end and granules.start_of(start - 1) < start


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "seconds"), [
    ("20s", 20), ("5m", 300), ("1h", HOUR), ("1d", DAY), ("1w", 7 * DAY), ("60", 60),
    ("1.5h", 5400),
])
def test_granularities_that_hold_whole_buckets(raw: str, seconds: int) -> None:
    assert rollup.parse_granularity(raw, INTERVAL) == seconds


@pytest.mark.parametrize(("raw", "words"), [
    ("10s", "finer than bucket_interval"),
    ("500ms", "finer than bucket_interval"),
    ("30s", "not a multiple of bucket_interval"),
    ("20.5s", "not a multiple of bucket_interval"),
    ("soon", "not a duration"),
    ("-1h", "not a duration"),
    ("0", "longer than 0"),
    ("400d", "at most 366d"),
    ("9" * 400 + "d", "at most 366d"),
])
def test_bad_granularities_are_invalid_saying_why(raw: str, words: str) -> None:
    with pytest.raises(Invalid) as caught:
        rollup.parse_granularity(raw, INTERVAL)
    assert words in caught.value.message


@pytest.mark.parametrize("raw", ["Mars/Olympus_Mons", "Europe", "../../etc/passwd",
                                 "/etc/localtime", "", "Europe/Berlin\x00", "x" * 100,
                                 "zone.tab", "Europe//Berlin", "CEST+2"])
def test_unknown_time_zones_are_invalid(raw: str) -> None:
    with pytest.raises(Invalid) as caught:
        rollup.parse_zone(raw)
    assert "tz" in caught.value.message


def test_group_by_names_mapped_columns_only() -> None:
    mapped = ["server_name", "topic"]
    assert rollup.parse_group_by(["topic, server_name", "topic"], mapped) == (
        "topic", "server_name")
    assert rollup.parse_group_by([""], mapped) == ()
    for bad in ("count", "bucket_start", "RST_ID", "nope"):
        with pytest.raises(Invalid) as caught:
            rollup.parse_group_by([bad], mapped)
        assert "not a mapped column" in caught.value.message


def test_rollup_defaults() -> None:
    assert parse_rollup(None, None, None, INTERVAL, ["a"]) is None
    plan = parse_rollup(None, None, [("a",)], INTERVAL, ["a", "b"])
    assert plan == Rollup(INTERVAL, UTC, ("a",))
    plan = parse_rollup(DAY, BERLIN, None, INTERVAL, ["a", "b"])
    assert plan is not None and plan.group_by == ("a", "b") and plan.zone.key == "Europe/Berlin"


def test_granule_edges_inside_a_bucket_are_refused() -> None:
    lo, hi = ts("2026-06-01T00:00Z"), ts("2026-06-02T00:00Z")
    hourly = Granules(KOLKATA, HOUR, lo, hi)
    with pytest.raises(HttpError) as caught:
        hourly.check_aligned(lo, hi, HOUR)
    assert caught.value.status == 400 and "inside a stored bucket of 3600 s" in (
        caught.value.message)
    hourly.check_aligned(lo, hi, 1800)
    # Berlin midnight is 23:00 UTC in winter: inside a 2-hour bucket
    daily = Granules(BERLIN, DAY, ts("2026-10-20T00:00Z"), ts("2026-10-30T00:00Z"))
    with pytest.raises(HttpError):
        daily.check_aligned(ts("2026-10-20T00:00Z"), ts("2026-10-30T00:00Z"), 7200)
    daily.check_aligned(ts("2026-10-20T00:00Z"), ts("2026-10-30T00:00Z"), HOUR)


# --- the SQL, in the real sandbox -----------------------------------------------------------

def expected_rollup(rows: Sequence[tuple[Any, ...]], edges: Sequence[int],
                    group_by: Sequence[str]) -> list[dict[str, Any]]:
    sums: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        named = dict(zip(COLUMNS, row, strict=True))
        start, end = reference_granule(edges, named["bucket_start"])
        key = (start, *(("" if named[c] is None else "~" + named[c]) for c in group_by))
        entry = sums.setdefault(key, {
            **{c: named[c] for c in group_by}, "bucket_start": start, "bucket_end": end,
            "count": 0, "late": 0, "final": 1})
        entry["count"] += named["count"]
        entry["late"] += named["late"]
        entry["final"] = min(entry["final"], named["final"])
    return [sums[key] for key in sorted(sums)]


def run_rollup(path: Path, plan: Rollup, where: list[str], params: dict[str, Any],
               limit: int = 10_000) -> tuple[list[dict[str, Any]], bool]:
    sandbox = SqlSandbox(str(path), "default", row_limit=limit, time_limit_ms=5000)
    with sqlite3.connect(path) as conn:
        first, last = conn.execute(
            'SELECT min(bucket_start), max(bucket_start) FROM "default"').fetchone()
    granules = Granules(plan.zone, plan.granularity_s, first, last)
    lo, end = granules.start_of(first), granules.end_of(granules.start_of(last))
    sql = rollup.rollup_sql("default", plan, granules, lo, end - 1, where, params, limit + 1)
    result = sandbox.execute(sql, params)
    return result.rows, result.truncated


@pytest.fixture
def berlin_fall(tmp_path: Path) -> Iterator[tuple[Path, list[tuple[Any, ...]]]]:
    rows = dst_rows(25, ts("2026-10-23T00:00Z"), ts("2026-10-27T00:00Z"))
    path = tmp_path / "snap.sqlite3"
    writer = make_snapshot(path, rows)
    yield path, rows
    writer.close()


@pytest.mark.parametrize("group_by", [("server_name", "topic"), ("topic",), ()])
@pytest.mark.parametrize(("zone", "granularity_s"), [
    ("Europe/Berlin", DAY), ("Europe/Berlin", HOUR), ("Asia/Kolkata", DAY), ("UTC", 6 * HOUR),
])
def test_sql_rollup_in_the_sandbox_matches_the_reference(
        berlin_fall: tuple[Path, list[tuple[Any, ...]]], zone: str, granularity_s: int,
        group_by: tuple[str, ...]) -> None:
    path, rows = berlin_fall
    plan = Rollup(granularity_s, ZoneInfo(zone), group_by)
    edges = reference_edges(plan.zone, granularity_s, ts("2026-10-20T00:00Z"),
                            ts("2026-10-30T00:00Z"))
    got, truncated = run_rollup(path, plan, [], {})
    assert got == expected_rollup(rows, edges, group_by)
    assert not truncated
    if zone == "Europe/Berlin" and granularity_s == DAY:
        lengths = [r["bucket_end"] - r["bucket_start"] for r in got]
        assert 25 * HOUR in lengths and set(lengths) == {24 * HOUR, 25 * HOUR}


def test_sql_rollup_with_a_filter_and_a_limit(
        berlin_fall: tuple[Path, list[tuple[Any, ...]]]) -> None:
    path, rows = berlin_fall
    plan = Rollup(HOUR, BERLIN, ("server_name",))
    edges = reference_edges(BERLIN, HOUR, ts("2026-10-20T00:00Z"), ts("2026-10-30T00:00Z"))
    where = [f"{quote_identifier('topic')} = :f0"]
    got, truncated = run_rollup(path, plan, where, {"f0": "t1"}, limit=7)
    want = expected_rollup([r for r in rows if r[1] == "t1"], edges, ("server_name",))
    assert truncated and len(want) > 7
    assert got == want[:7]


# --- the view ------------------------------------------------------------------------------

@pytest.fixture
async def served_rollups(tmp_path: Path) -> AsyncIterator[tuple[Served, list[tuple[Any, ...]]]]:
    rows = dst_rows(1025, ts("2026-10-24T00:00Z"), ts("2026-10-27T00:00Z"), step=INTERVAL * 61)
    async with serve_snapshot(tmp_path, rows) as served:
        yield served, rows


async def test_view_rolls_up_by_local_day_with_filters(
        served_rollups: tuple[Served, list[tuple[Any, ...]]]) -> None:
    served, rows = served_rollups
    edges = reference_edges(BERLIN, DAY, ts("2026-10-20T00:00Z"), ts("2026-10-30T00:00Z"))
    url = served.url + "/api/v1/buckets?granularity=1d&tz=Europe/Berlin"
    async with client() as session:
        async with session.get(url) as answer:
            assert answer.status == 200
            body = await answer.json()
            assert answer.headers["X-Truncated"] == "false"
        assert body["rows"] == expected_rollup(rows, edges, ("server_name", "topic"))
        assert body["rollup"] == {"granularity_s": DAY, "tz": "Europe/Berlin",
                                  "group_by": ["server_name", "topic"]}
        # a filter, group_by, and from/to selecting whole granules they overlap
        url = (served.url + "/api/v1/buckets?granularity=1d&tz=Europe/Berlin&group_by=topic"
               "&server_name=s1&from=2026-10-25T12:00:00Z&to=2026-10-25T13:00:00Z")
        async with session.get(url) as answer:
            body = await answer.json()
        want = [r for r in expected_rollup([r for r in rows if r[0] == "s1"], edges, ("topic",))
                if r["bucket_start"] == ts("2026-10-25T00:00+02:00")]
        assert body["rows"] == want and want
        assert {r["bucket_end"] - r["bucket_start"] for r in want} == {25 * HOUR}
        # late and final filter the stored rows too
        url = served.url + "/api/v1/buckets?granularity=1d&group_by=&final=0"
        async with session.get(url) as answer:
            body = await answer.json()
        open_rows = [r for r in rows if r[7] == 0]
        assert open_rows and body["rows"] == expected_rollup(
            open_rows, reference_edges(UTC, DAY, ts("2026-10-20T00:00Z"),
                                       ts("2026-10-30T00:00Z")), ())
        assert {r["final"] for r in body["rows"]} == {0}
        # limit counts rolled-up rows
        async with session.get(served.url + "/api/v1/buckets?granularity=1h&limit=5") as answer:
            body = await answer.json()
            assert len(body["rows"]) == 5 and body["truncated"] is True
            assert answer.headers["X-Truncated"] == "true"
        # nothing selected: no rows, no error
        async with session.get(served.url + "/api/v1/buckets?granularity=1h&topic=none") as a:
            assert a.status == 200 and (await a.json())["rows"] == []


@pytest.mark.parametrize(("query", "words"), [
    ("granularity=10s", "finer than bucket_interval"),
    ("granularity=30s", "not a multiple of bucket_interval"),
    ("granularity=1h&tz=Mars/Base", "unknown time zone"),
    ("tz=", "IANA"),
    ("group_by=count", "not a mapped column"),
    ("group_by=server_name,bogus", "not a mapped column"),
    ("granularity=1h&bogus=1", "unknown filter"),
])
async def test_view_refuses_bad_rollups_with_400_json(
        served_rollups: tuple[Served, list[tuple[Any, ...]]], query: str, words: str) -> None:
    served, _ = served_rollups
    async with client() as session, session.get(served.url + "/api/v1/buckets?" + query) as a:
        assert a.status == 400 and a.content_type == "application/json"
        body = await a.json()
    assert_error_shape(body, 400)
    assert words in body["error"]
