"""Query-time rollups against a real worker: messages across the DST days of Europe/Berlin,
rolled up by local day and hour, compared with counts computed here.

Expected counts come from the timestamps the test chose and the calendar: the local date of each
message (zoneinfo) and that date's local midnights, and for Berlin hours the UTC hour (Berlin's
offsets are whole hours). None of it goes through bucket_app's rollup code.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.support.http import http
from tests.support.kafka import Record, create_topic, produce, unique
from tests.support.worker import Worker

pytestmark = pytest.mark.integration

BERLIN = ZoneInfo("Europe/Berlin")
KOLKATA = ZoneInfo("Asia/Kolkata")
PARTITIONS = 6
HOUR = 3600


def ts(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())


def local_midnight(day: date, zone: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())


def local_day(t: int, zone: ZoneInfo) -> tuple[int, int]:
    """The local calendar day holding instant ``t``, as [midnight, next midnight)."""
    day = datetime.fromtimestamp(t, zone).date()
    return local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone)


def messages_across_dst(seed: int) -> list[tuple[str, str, int]]:
    """(server, topic, event time): spread over the days around both 2026 transitions, and
    thick around the local midnights and the transition hours."""
    rng = random.Random(seed)
    times = [rng.randrange(ts("2026-10-23T00:00Z"), ts("2026-10-27T00:00Z")) for _ in range(1500)]
    times += [rng.randrange(ts("2026-03-28T00:00Z"), ts("2026-03-31T00:00Z")) for _ in range(600)]
    for edge in ("2026-10-24T22:00Z", "2026-10-25T01:00Z", "2026-10-25T23:00Z",
                 "2026-03-28T23:00Z", "2026-03-29T01:00Z", "2026-03-29T22:00Z"):
        times += [ts(edge) + rng.randrange(-2 * HOUR, 2 * HOUR) for _ in range(100)]
    return [(f"s{rng.randrange(3)}", f"t{rng.randrange(2)}", t) for t in times]


@pytest.fixture(scope="module")
def dst_worker(tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[tuple[Worker, list[tuple[str, str, int]]]]:
    topic = unique("rollup")
    create_topic(topic, PARTITIONS)
    # retention long enough for March behind October
    worker = Worker(tmp_path_factory.mktemp("rollup") / "w", topic=topic,
                    app_id=unique("app"), partitions=PARTITIONS,
                    extra={"clean_interval": "400d"})
    messages = messages_across_dst(20261025)
    # then some into buckets that are final by then: counted, and as late
    rng = random.Random(1)
    late = [(f"s{rng.randrange(3)}", "t1", rng.randrange(ts("2026-10-24T10:00Z"),
                                                         ts("2026-10-24T11:00Z")))
            for _ in range(40)]

    def records(batch: list[tuple[str, str, int]]) -> list[Record]:
        return [Record(json.dumps({"origin_server": s, "topic": tp, "timestamp": t}).encode(),
                       rng.randrange(PARTITIONS)) for s, tp, t in batch]

    try:
        worker.start()
        worker.wait_caught_up(produce(topic, records(messages)), timeout_s=180)
        worker.wait_caught_up(produce(topic, records(late)), timeout_s=180)
        yield worker, messages + late
    finally:
        worker.stop()


def buckets(worker: Worker, query: str) -> dict[str, Any]:
    answer = worker.get("/api/v1/buckets?" + query)
    assert answer.status == 200, answer.body[:500]
    body: dict[str, Any] = answer.json()
    assert body["truncated"] is False
    return body


def by_key(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> dict[tuple, dict]:
    found: dict[tuple, dict] = {}
    for row in rows:
        key = (row["bucket_start"], row["bucket_end"], *(row[c] for c in columns))
        assert key not in found, f"duplicate row {key}"
        found[key] = row
    return found


def test_everything_was_counted(dst_worker: tuple[Worker, list[tuple[str, str, int]]]) -> None:
    worker, messages = dst_worker
    rows = worker.get("/a/default").json()
    assert sum(r["count"] for r in rows) == len(messages)
    assert not worker.health()["worker"]["skipped"]


@pytest.mark.parametrize("group_by", [("server_name", "topic"), ("topic",), ()])
def test_local_days_across_dst_match_the_calendar(
        dst_worker: tuple[Worker, list[tuple[str, str, int]]], group_by: tuple[str, ...]) -> None:
    worker, messages = dst_worker
    query = "granularity=1d&tz=Europe/Berlin"
    if group_by != ("server_name", "topic"):  # the default
        query += "&group_by=" + ",".join(group_by)
    body = buckets(worker, query)
    assert body["rollup"] == {"granularity_s": 86_400, "tz": "Europe/Berlin",
                              "group_by": list(group_by)}
    expected: Counter[tuple] = Counter()
    for server, topic, t in messages:
        named = {"server_name": server, "topic": topic}
        expected[(*local_day(t, BERLIN), *(named[c] for c in group_by))] += 1
    got = by_key(body["rows"], group_by)
    assert {key: row["count"] for key, row in got.items()} == dict(expected)
    assert [r["bucket_start"] for r in body["rows"]] == sorted(r["bucket_start"]
                                                              for r in body["rows"])
    lengths = {(r["bucket_start"], r["bucket_end"] - r["bucket_start"]) for r in body["rows"]}
    assert (ts("2026-10-25T00:00+02:00"), 25 * HOUR) in lengths
    assert (ts("2026-03-29T00:00+01:00"), 23 * HOUR) in lengths
    assert {length for _, length in lengths} == {23 * HOUR, 24 * HOUR, 25 * HOUR}


def test_final_and_late_summarise_the_stored_buckets(
        dst_worker: tuple[Worker, list[tuple[str, str, int]]]) -> None:
    worker, _ = dst_worker
    stored = worker.get("/a/default").json()
    expected: dict[tuple, dict[str, int]] = {}
    for row in stored:
        key = (*local_day(row["bucket_start"], BERLIN), row["topic"])
        entry = expected.setdefault(key, {"count": 0, "late": 0, "final": 1})
        entry["count"] += row["count"]
        entry["late"] += row["late"]
        entry["final"] = min(entry["final"], int(row["final"]))
    body = buckets(worker, "granularity=1d&tz=Europe/Berlin&group_by=topic")
    got = {key: {c: row[c] for c in ("count", "late", "final")}
           for key, row in by_key(body["rows"], ("topic",)).items()}
    assert got == expected
    # the data makes both cases: the last days are open, the late records went somewhere
    assert {row["final"] for row in body["rows"]} == {0, 1}
    assert sum(row["late"] for row in body["rows"]) > 0


def test_hours_through_the_fall_back_are_two_distinct_rows(
        dst_worker: tuple[Worker, list[tuple[str, str, int]]]) -> None:
    worker, messages = dst_worker
    lo, hi = ts("2026-10-24T20:00Z"), ts("2026-10-25T04:00Z")
    body = buckets(worker, f"granularity=1h&tz=Europe/Berlin&group_by=&from={lo}&to={hi}")
    expected = Counter(t - t % HOUR for _, _, t in messages if lo <= t < hi)
    got = {row["bucket_start"]: row["count"] for row in body["rows"]}
    assert got == dict(expected)
    assert all(row["bucket_end"] - row["bucket_start"] == HOUR for row in body["rows"])
    # the two hours that both read 02:00 in Berlin
    twice = [ts("2026-10-25T00:00Z"), ts("2026-10-25T01:00Z")]
    assert all(t in got for t in twice)
    assert {datetime.fromtimestamp(t, BERLIN).hour for t in twice} == {2}


def test_filters_and_freshness_work_with_rollups(
        dst_worker: tuple[Worker, list[tuple[str, str, int]]]) -> None:
    worker, messages = dst_worker
    token = worker.get("/api/v1/buckets?limit=1").json()["token"]
    # from/to select the granules they overlap, whole; a column filter selects stored rows
    query = ("granularity=1d&tz=Asia/Kolkata&server_name=s2&from=2026-10-25T06:00:00Z"
             f"&to=2026-10-25T12:00:00Z&min_offsets={token}&wait_ms=5000")
    body = buckets(worker, query)
    day = local_day(ts("2026-10-25T12:00Z"), KOLKATA)
    assert day == (ts("2026-10-24T18:30Z"), ts("2026-10-25T18:30Z"))
    expected = Counter(topic for server, topic, t in messages
                       if server == "s2" and day[0] <= t < day[1])
    assert {(r["bucket_start"], r["bucket_end"], r["server_name"]) for r in body["rows"]} == {
        (*day, "s2")}
    assert {r["topic"]: r["count"] for r in body["rows"]} == dict(expected)
    # limit counts rolled-up rows
    answer = worker.get("/api/v1/buckets?granularity=1h&tz=Europe/Berlin&limit=4")
    assert len(answer.json()["rows"]) == 4 and answer.headers["X-Truncated"] == "true"


@pytest.mark.parametrize(("query", "words"), [
    ("granularity=10s", "finer than bucket_interval"),
    ("granularity=50s", "not a multiple of bucket_interval"),
    ("granularity=1d&tz=Europe/Nowhere", "unknown time zone"),
    ("group_by=RST_ID", "not a mapped column"),
    ("granularity=1d&tz=Asia/Kolkata&group_by=topic,count", "not a mapped column"),
])
def test_bad_rollups_are_400_json(dst_worker: tuple[Worker, list[tuple[str, str, int]]],
                                  query: str, words: str) -> None:
    worker, _ = dst_worker
    answer = http(worker.url + "/api/v1/buckets?" + query)
    assert answer.status == 400
    body = answer.json()
    assert body["status"] == 400 and words in body["error"]
