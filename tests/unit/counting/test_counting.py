"""Counting without Kafka: classification, idempotent increments, retention, event-time bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bucket_app.counting.classify import Classifier
from bucket_app.counting.counter import Counter
from bucket_app.errors import BadInput, DecodeError, TimeError
from bucket_app.settings import load
from tests.support.settings import SEED_INI, replace_line, write_config

NOW = 1_795_828_000.0


@pytest.fixture
def settings(tmp_path: Path):
    ini = replace_line(SEED_INI, "clean_interval", "100s")
    return load(write_config(tmp_path, ini), {})


def msg(**fields) -> bytes:
    return json.dumps(fields).encode()


def count(classifier: Classifier, counter: Counter, table: dict, value: bytes, partition: int,
          offset: int) -> bool:
    """One record as the worker counts it record by record (``BatchCounter._count_each``):
    locate, admit, add. False for a replay; raises BadInput for a record the worker skips."""
    key, start, ts = classifier.locate(value, partition, None, NOW)
    counter.admit_at(counter.partition(partition), start, ts, NOW)
    return counter.add(table, key, [offset]) == 1


def test_key_has_partition_mapped_values_and_faust_window_range(settings):
    key, start, _ = Classifier(settings).locate(
        msg(origin_server="Iceman", topic="Dreams", timestamp=1440179085), 3, None, NOW)
    assert key == ((3, "Iceman", "Dreams"), (1440179080.0, 1440179099.9))
    assert start == 1440179080


def test_record_timestamp_is_the_fallback_and_missing_field_is_none(settings):
    key, _, _ = Classifier(settings).locate(msg(origin_server="Iceman"), 0, 1440179101.5, NOW)
    assert key == ((0, "Iceman", None), (1440179100.0, 1440179119.9))


def test_future_events_beyond_the_skew_are_bad_input(settings):
    classifier = Classifier(settings)
    classifier.locate(msg(timestamp=NOW + 3599), 0, None, NOW)
    with pytest.raises(TimeError) as caught:
        classifier.locate(msg(timestamp=NOW + 3601), 0, None, NOW)
    assert caught.value.reason == "future_time"


def test_bad_bytes_raise_decode_error(settings):
    with pytest.raises(DecodeError):
        Classifier(settings).locate(b"nope", 0, None, NOW)


def test_replayed_offsets_are_skipped_exactly(settings):
    classifier, counter, table = Classifier(settings), Counter(settings), {}
    value = msg(origin_server="a", timestamp=NOW - 50)
    assert count(classifier, counter, table, value, 1, 10)
    assert count(classifier, counter, table, value, 1, 11)
    # a redelivery after a crash: offsets 10 and 11 again, then the new 12
    assert not count(classifier, counter, table, value, 1, 10)
    assert not count(classifier, counter, table, value, 1, 11)
    assert count(classifier, counter, table, value, 1, 12)
    key, _, _ = classifier.locate(value, 1, None, NOW)
    assert table[key] == [3, 12, 0]
    assert (counter.counted, counter.replayed) == (3, 2)


def test_events_past_retention_are_refused_and_the_watermark_only_moves_forward(settings):
    classifier, counter, table = Classifier(settings), Counter(settings), {}
    count(classifier, counter, table, msg(origin_server="a", timestamp=NOW), 0, 1)
    # out of order, within retention: its own bucket
    count(classifier, counter, table, msg(origin_server="a", timestamp=NOW - 60), 0, 2)
    assert counter.partition(0).watermark_s == NOW
    with pytest.raises(BadInput) as caught:
        count(classifier, counter, table, msg(origin_server="a", timestamp=NOW - 200), 0, 3)
    assert caught.value.reason == "expired"
    assert len(table) == 2
    # retention is per partition: partition 1 has its own (empty) watermark
    count(classifier, counter, table, msg(timestamp=NOW - 200), 1, 1)
