"""Property tests of classification and per-batch counting against an independent oracle.

The oracle reads a message the plain way - the standard library's strict JSON, a dictionary
walk for dotted paths, an exact rational floor for the bucket - and says where it counts or
why it is skipped. The classifier must agree on every message (a key, or a ``BadInput`` with
the oracle's reason), and the worker's batch path (:meth:`BatchCounter.count_batch`, no Kafka)
must count exactly what the oracle counts, however the records are split into batches.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter as Tally
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from fastavro import schemaless_writer
from hypothesis import example, given
from hypothesis import strategies as st

from bucket_app.counting.batch import BatchCounter
from bucket_app.counting.buckets import MAX_TS_S, MIN_TS_S
from bucket_app.counting.classify import Classifier
from bucket_app.counting.keys import PROGRESS_KEY, WINDOW_END_EPSILON_S
from bucket_app.errors import BadInput
from bucket_app.settings import Settings
from tests.support.counting import (
    AVRO,
    BASE,
    FLAT,
    ISO,
    NESTED,
    NOW,
    RETENTION,
    JsonKeyed,
    aliased_values,
    batch_values,
)
from tests.support.fuzz import (
    INT64,
    SCHEMA,
    decodable_text,
    decodable_values,
    deeply_nested,
    dumps,
    edge_numbers,
    epoch_oracle,
    floor_start,
    iso_oracle,
    lookup_oracle,
    strict_json,
)
from tests.support.settings import make_settings

CLASSIFIERS = {id(s): Classifier(s) for s in (FLAT, NESTED, ISO, AVRO)}


def time_values(now: float) -> st.SearchStrategy[Any]:
    """Event times a producer may write: near ``now``, at the skew edge, at the range edges,
    far ahead, as text, and values that are no time at all."""
    near = st.one_of(st.floats(min_value=now - 1e6, max_value=now + 1e4),
                     st.integers(min_value=int(now) - 10**6, max_value=int(now) + 10**4))
    return st.one_of(
        near, near, near.map(repr),
        st.sampled_from([now + 3600, now + 3600.001, now + 3601, MIN_TS_S, MAX_TS_S, 0, -1,
                         True, False, None, "", "1_795_828_000", " 1795828000 ", "nan", [1]]),
        edge_numbers, decodable_values,
    )


def messages(now: float = NOW) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects with the fields of every configuration (``timestamp``, ``meta.ts``,
    ``origin_server``, ``topic``, ``meta.host``, also as a literal dotted key) present,
    missing, nested, compound or odd, among other keys."""
    meta = st.one_of(
        st.fixed_dictionaries({}, optional={"ts": time_values(now), "host": decodable_values}),
        decodable_values)

    def build(extra: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        return {**extra, **fields}

    return st.builds(build, st.dictionaries(decodable_text, decodable_values, max_size=3),
                     st.fixed_dictionaries({}, optional={
                         "origin_server": decodable_values, "topic": decodable_values,
                         "timestamp": time_values(now), "meta": meta,
                         "meta.host": decodable_values}))


def orjson_reading(value: Any) -> Any:
    """The stdlib's reading as orjson's: integers beyond 64 bits become floats."""
    if isinstance(value, bool) or not isinstance(value, int | list | dict):
        return value
    if isinstance(value, int):
        return value if -INT64 - 1 <= value <= 2**64 - 1 else float(value)
    if isinstance(value, list):
        return [orjson_reading(each) for each in value]
    return {key: orjson_reading(each) for key, each in value.items()}


def oracle(settings: Settings, msg: Any, partition: int, record_ts: float | None,
           now: float) -> tuple[tuple[Any, ...], int, float] | str:
    """``(mapped values, bucket start, event time)`` of a decoded message, or the reason it
    is skipped. Compound values are left as they are; the caller compares them as JSON."""
    if not isinstance(msg, dict):
        return "not_object"
    raw = lookup_oracle(msg, settings.bucket_field)
    ts: Any
    if raw is None:  # the Kafka record time stands in, with the same range check
        if record_ts is None:
            return "missing_time"
        if not MIN_TS_S <= record_ts <= MAX_TS_S:
            return "bad_time"
        ts = float(record_ts)
    elif settings.bucket_type == "epoch":
        ts = epoch_oracle(raw)
    else:
        ts = ISO_TEXTS.get(raw, "bad_time") if isinstance(raw, str) else (
            "bad_time" if not isinstance(raw, datetime) else float(iso_oracle(raw)))
    if isinstance(ts, str):
        return ts
    if ts > now + settings.max_future_skew_s:
        return "future_time"
    values = tuple(lookup_oracle(msg, path) for path in settings.msg_map)
    if any(nesting(value) > 254 for value in values):  # more than a JSON renderer takes
        return "bad_field"
    return values, floor_start(ts, settings.bucket_interval_s), ts


def nesting(value: Any) -> int:
    """Levels of lists and objects in ``value``; a scalar has none."""
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return 0
    return 1 + max(map(nesting, value), default=0)


ISO_TEXTS: dict[str, float] = {}  # ISO spellings drawn by the ISO test and their instants


def check(settings: Settings, value: bytes | None, expected: Any, partition: int,
          record_ts: float | None, now: float) -> None:
    """The classifier's answer for ``value`` is the oracle's ``expected``."""
    classifier = CLASSIFIERS[id(settings)]
    try:
        got = classifier.locate(value, partition, record_ts, now)
    except BadInput as exc:
        assert exc.reason == expected, (value, exc)
        assert "\n" not in str(exc) and len(str(exc)) < 500  # logged per record
        return
    assert not isinstance(expected, str), (value, got)
    values, start, ts = expected
    interval = settings.bucket_interval_s
    key, got_start, got_ts = got
    assert got_start == start and got_ts == ts
    assert key[1] == (float(start), start + interval - WINDOW_END_EPSILON_S)
    assert key[0][0] == partition
    for want, have in zip(values, key[0][1:], strict=True):
        if isinstance(want, dict | list):  # rendered as JSON text, equal when read back
            assert isinstance(have, str) and json.loads(have) == want
        else:
            assert have == want and type(have) is type(want)


def json_expected(settings: Settings, data: bytes | None, partition: int,
                  record_ts: float | None, now: float) -> Any:
    if not data:
        return "empty"
    try:
        msg = orjson_reading(strict_json(data))
    except ValueError:
        return "not_json"
    return oracle(settings, msg, partition, record_ts, now)


record_times = st.one_of(
    st.none(), st.floats(min_value=NOW - 1e5, max_value=NOW + 1e4),
    st.sampled_from([-0.001, 0.0, -9.223372036854776e15, 9.223372036854776e15, NOW + 3601]))


@given(st.sampled_from(["flat", "nested"]), st.data(), st.integers(0, 1023), record_times)
def test_json_messages_classify_as_the_oracle_says(config: str, data: Any, partition: int,
                                                   record_ts: float | None) -> None:
    settings = FLAT if config == "flat" else NESTED
    msg = data.draw(messages())
    value = dumps(msg)
    check(settings, value, json_expected(settings, value, partition, record_ts, NOW),
          partition, record_ts, NOW)


@pytest.mark.parametrize("settings", [FLAT, NESTED], ids=["flat", "nested"])
def test_a_mapped_field_too_deep_to_render_is_skipped_as_bad_field(settings: Settings) -> None:
    """Regression: this TypeError escaped the classifier, and the worker died on the record."""
    value = dumps({"origin_server": deeply_nested(300), "timestamp": NOW,
                   "meta": {"ts": NOW}})
    assert json_expected(settings, value, 0, None, NOW) == "bad_field"
    check(settings, value, "bad_field", 0, None, NOW)


@given(st.one_of(st.none(), st.binary(max_size=60)), st.integers(0, 7), record_times)
@example(b'{"timestamp": 1795828000, "origin_server": [[[[1]]]]}', 0, None)
@example(b'{"timestamp": 1e400}', 0, None)  # the stdlib reads inf, orjson refuses
def test_any_bytes_classify_or_are_skipped_with_a_known_reason(
        value: bytes | None, partition: int, record_ts: float | None) -> None:
    reasons = {"empty", "not_json", "not_object", "missing_time", "bad_time", "future_time"}
    for settings in (FLAT, NESTED, ISO, AVRO):
        try:
            CLASSIFIERS[id(settings)].locate(value, partition, record_ts, NOW)
        except BadInput as exc:
            assert exc.reason in reasons | {"avro_mismatch", "bad_field"}
            assert "\n" not in str(exc) and len(str(exc)) < 500


iso_offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes)))


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.one_of(st.none(), st.just(UTC), iso_offsets)),
       st.sampled_from(["T", " "]), decodable_values, record_times)
@example(datetime(2026, 11, 28, 0, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-1))),
         "T", "Iceman", None)
def test_iso_messages_classify_to_the_exact_bucket(dt: datetime, sep: str, server: Any,
                                                   record_ts: float | None) -> None:
    text = dt.isoformat(sep=sep)
    ISO_TEXTS[text] = float(iso_oracle(dt))
    value = dumps({"origin_server": server, "topic": "t", "timestamp": text})
    try:
        check(ISO, value, json_expected(ISO, value, 1, record_ts, NOW), 1, record_ts, NOW)
    finally:
        del ISO_TEXTS[text]


avro_records = st.fixed_dictionaries({
    "origin_server": st.text(max_size=10),
    "topic": st.text(max_size=5),
    "timestamp": st.one_of(st.integers(min_value=-INT64 - 1, max_value=INT64),
                           st.integers(min_value=int(NOW) - 10**6, max_value=int(NOW) + 10**4)),
    "meta": st.fixed_dictionaries({"host": st.text(max_size=10)}),
})


@given(avro_records, st.booleans(), record_times)
def test_avro_messages_classify_as_the_oracle_says(record: dict[str, Any], framed: bool,
                                                   record_ts: float | None) -> None:
    buf = io.BytesIO()
    schemaless_writer(buf, SCHEMA, record)
    value = (b"\x00\x00\x00\x00\x01" if framed else b"") + buf.getvalue()
    check(AVRO, value, oracle(AVRO, record, 5, record_ts, NOW), 5, record_ts, NOW)


# --- the worker's per-batch counting, without Kafka --------------------------------------------

@given(st.data(), st.integers(0, 3))
def test_batches_count_what_the_oracle_counts_and_skip_the_rest_by_reason(
        data: Any, partition: int) -> None:
    now = int(time.time())
    batches = data.draw(st.lists(st.one_of(
        st.lists(batch_values(now), min_size=1, max_size=30),
        st.lists(batch_values(now).filter(lambda v: v is not None and v.startswith(
            b'{"origin_server"')), min_size=1, max_size=30),  # clean: the whole-batch path
    ), min_size=1, max_size=8))
    table: dict[Any, Any] = {}
    processor = BatchCounter(RETENTION, table)
    record_ts_ms = data.draw(st.one_of(st.none(), st.just(now * 1000 - 5000)))
    expected, reasons = Tally[tuple[Any, ...]](), Tally[str]()
    watermark, offset = float("-inf"), 0
    all_records: list[ConsumerRecord] = []
    for batch in batches:
        records = []
        for value in batch:
            records.append(ConsumerRecord("test", partition, offset, record_ts_ms, 0, None,
                                          value, None, 0, len(value or b""), ()))
            offset += 1
            answer = json_expected(RETENTION, value, partition,
                                   None if record_ts_ms is None else record_ts_ms / 1000, now)
            if not isinstance(answer, str):
                values, start, ts = answer
                if start + 20 <= watermark - RETENTION.clean_interval_s:
                    answer = "expired"
                else:
                    watermark = max(watermark, ts)
                    rendered = tuple(json.dumps(v, sort_keys=True, separators=(",", ":"))
                                     if isinstance(v, dict | list) else v for v in values)
                    expected[(partition, *rendered, start)] += 1
            if isinstance(answer, str):
                reasons[answer] += 1
        processor.count_batch(partition, records)
        all_records += records
    counter = processor.counter
    assert counter.counted + sum(counter.skipped.values()) == offset
    assert counter.replayed == 0
    assert counter.skipped == reasons
    found = Tally[tuple[Any, ...]]()
    for key, (count, *_) in table.items():
        if key[0] != PROGRESS_KEY:
            found[(*key[0], int(key[1][0]))] += count
    assert found == expected
    assert table[(PROGRESS_KEY, partition)][0] == offset - 1

    # Redelivered after a crash (progress in memory lost), in one batch: nothing changes.
    before, counted = dict(table), counter.counted
    processor.forget({partition})
    processor.count_batch(partition, all_records)
    assert table == before and counter.counted == counted


@pytest.mark.parametrize("whole_batch", [True, False])
def test_an_event_ahead_within_the_skew_does_not_expire_live_events(whole_batch: bool) -> None:
    """Regression: the watermark followed event time past the wall clock. One record timed
    58 minutes ahead (allowed: max_future_skew is 1 h) put it 3500 s ahead, so with the seed's
    10 minutes of retention every live record after it was skipped as `expired` (and the next
    sweep would have deleted the partition's current buckets)."""
    settings = make_settings(BASE / "skew", clean_freq="1d")  # seed: clean_interval 10 min
    assert settings.clean_interval_s < settings.max_future_skew_s
    table: dict[Any, Any] = {}
    processor = BatchCounter(settings, table,
                             classifier=Classifier(settings, batches=whole_batch))
    now = int(time.time())

    def record(offset: int, ts: float) -> ConsumerRecord:
        value = json.dumps({"origin_server": "a", "topic": "t", "timestamp": ts}).encode()
        return ConsumerRecord("test", 0, offset, None, 0, None, value, None, 0, len(value), ())

    processor.count_batch(0, [record(0, now - 5)])
    processor.count_batch(0, [record(1, now + 3500)])  # counted, in its own (future) bucket
    processor.count_batch(0, [record(2, now), record(3, now + 1)])  # live traffic
    assert processor.counter.skipped == {}
    assert processor.counter.counted == 4
    assert processor.counter.partition(0).watermark_s <= time.time()


@given(st.data(), st.integers(0, 3))
def test_the_batch_optimisation_counts_as_the_definition_does(data: Any, partition: int) -> None:
    """:meth:`Classifier.group` is an optimisation of :meth:`Classifier.locate`: counting
    generated batches (well-formed, bad, past retention, aliased values, redelivered from an
    earlier offset) with it on and with it off gives the same table, counters and progress,
    and the same table as counting each record in a batch of its own."""
    now = int(time.time())
    values = data.draw(st.one_of(
        st.lists(st.one_of(batch_values(now), aliased_values(now)), min_size=1, max_size=120),
        st.lists(aliased_values(now), min_size=1, max_size=60)))
    records = [ConsumerRecord("test", partition, offset, None, 0, None, value, None, 0,
                              len(value or b""), ()) for offset, value in enumerate(values)]
    fast = BatchCounter(RETENTION, JsonKeyed(), clock=lambda: now)
    definition = BatchCounter(RETENTION, JsonKeyed(), clock=lambda: now,
                              classifier=Classifier(RETENTION, batches=False))
    assert fast.classifier.groups_batches and not definition.classifier.groups_batches
    at = 0
    while at < len(records):
        size = data.draw(st.integers(1, 40))
        back = data.draw(st.sampled_from([0, 0, 0, 3, 50]))  # a redelivery after a crash
        first = max(0, at - back)
        if back:
            fast.forget({partition})
            definition.forget({partition})
        batch = records[first:at + size]
        fast.count_batch(partition, batch)
        definition.count_batch(partition, batch)
        at += size
        assert fast.table == definition.table
        for name in ("counted", "replayed", "skipped"):
            assert getattr(fast.counter, name) == getattr(definition.counter, name), name
    assert fast.counter.counted + sum(fast.counter.skipped.values()) == len(records)
    one_by_one = BatchCounter(RETENTION, JsonKeyed(), clock=lambda: now)
    for record in records:
        one_by_one.count_batch(partition, [record])
    assert one_by_one.table == fast.table


def shape_values(config: str, now: int) -> st.SearchStrategy[bytes | None]:
    """Records of one payload shape near ``now``, with odd and bad ones among them."""
    junk = st.one_of(st.none(), st.binary(max_size=12), st.sampled_from([b"[1]", b"{}"]))
    if config == "avro":
        near = st.fixed_dictionaries({
            "origin_server": st.sampled_from(["a", "b", ""]), "topic": st.sampled_from(["t"]),
            "timestamp": st.integers(min_value=now - 2000, max_value=now + 7200),
            "meta": st.fixed_dictionaries({"host": st.sampled_from(["h1", "h2"])})})

        def encode(record: dict[str, Any], framed: bool) -> bytes:
            buf = io.BytesIO()
            schemaless_writer(buf, SCHEMA, record)
            return (b"\x00\x00\x00\x00\x01" if framed else b"") + buf.getvalue()

        good = st.builds(encode, st.one_of(near, avro_records), st.booleans())
    elif config == "iso":
        when = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                            timezones=st.one_of(st.none(), st.just(UTC), iso_offsets))
        good = st.builds(lambda dt, server, sep: dumps(
            {"origin_server": server, "topic": "t", "timestamp": dt.isoformat(sep=sep)}),
            when, st.sampled_from(["a", "b", None, 1, True]), st.sampled_from(["T", " "]))
    else:
        good = st.one_of(batch_values(now), messages(now).map(dumps))
    return st.one_of(good, good, good, messages(now).map(dumps), junk)


SHAPES = {"flat": RETENTION, "nested": NESTED, "iso": ISO, "avro": AVRO}
CLOCK = int(time.time())


@pytest.mark.parametrize("config", list(SHAPES))
@given(data=st.data(), partition=st.integers(0, 3))
def test_every_shape_counts_by_batch_as_by_the_definition(config: str, data: Any,
                                                          partition: int) -> None:
    """The batch path of every payload shape - nested fields, ISO-8601 times, Avro - gives the
    table, counters and progress of locating each record, bad and odd records among them."""
    settings = SHAPES[config]
    now = CLOCK  # fixed: the strategies depend on it
    values = data.draw(st.lists(shape_values(config, now), min_size=1, max_size=80))
    stamps = data.draw(st.lists(st.one_of(st.none(), st.just((now - 30) * 1000)),
                                min_size=len(values), max_size=len(values)))
    records = [ConsumerRecord("test", partition, offset, stamp, 0, None, value, None, 0,
                              len(value or b""), ())
               for offset, (value, stamp) in enumerate(zip(values, stamps, strict=True))]
    batch = BatchCounter(settings, JsonKeyed(), clock=lambda: now)
    each = BatchCounter(settings, JsonKeyed(), clock=lambda: now,
                        classifier=Classifier(settings, batches=False))
    at = 0
    while at < len(records):
        size = data.draw(st.integers(1, 50))
        for counter in (batch, each):
            counter.count_batch(partition, records[at:at + size])
        at += size
    assert batch.table == each.table
    for name in ("counted", "replayed", "skipped"):
        assert getattr(batch.counter, name) == getattr(each.counter, name), name
