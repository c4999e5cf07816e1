"""When a bucket is final, and which records count as late."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiokafka.structs import ConsumerRecord

from bucket_app.counting.batch import BatchCounter
from bucket_app.counting.classify import Classifier
from bucket_app.counting.lifecycle import NEVER, Lifecycle
from bucket_app.settings import load
from tests.support.settings import make_settings, scratch_dir

BASE = scratch_dir("lifecycle")
NOW = 1_795_828_000.0


@dataclass
class At:
    watermark_s: float
    seen_at_s: float


def test_every_partition_must_pass_the_end_plus_grace() -> None:
    life = Lifecycle(interval_s=60, grace_s=30, idle_close_s=None)
    progress = {0: At(1000, NOW), 1: At(900, NOW)}
    assert life.closing_time(progress, 2, NOW) == 900  # the slowest partition
    assert life.closing_time(progress, 3, NOW) == NEVER  # partition 2 has nothing yet
    assert life.closing_time({}, 0, NOW) == NEVER
    # [780, 840) ends at 840; + 30 s grace = 870 <= 900: final. [840, 900): 930 > 900: open
    assert life.is_final(780, 900) and not life.is_final(840, 900)
    assert life.last_final_start(900) == 810


def test_an_idle_partition_stops_holding_buckets_open() -> None:
    life = Lifecycle(interval_s=60, grace_s=60, idle_close_s=300)
    busy, idle = At(NOW - 10, NOW - 1), At(NOW - 5000, NOW - 301)
    assert life.closing_time({0: busy, 1: idle}, 2, NOW) == NOW - 10
    # a partition that never counted anything is idle too: the wall clock stands in for it
    assert life.closing_time({0: busy}, 2, NOW) == NOW - 10
    assert life.closing_time({}, 2, NOW) == NOW
    # without idle_close the idle partition holds everything after its watermark open
    strict = Lifecycle(interval_s=60, grace_s=60, idle_close_s=None)
    assert strict.closing_time({0: busy, 1: idle}, 2, NOW) == NOW - 5000


def test_a_partition_with_records_still_to_count_is_never_idle() -> None:
    """A backlog (at start-up, after an outage) holds buckets open until it is counted, or
    every record of it older than the other partitions' watermark would be late."""
    life = Lifecycle(interval_s=60, grace_s=60, idle_close_s=300)
    busy, quiet = At(NOW - 10, NOW - 1), At(NOW - 5000, NOW - 301)
    assert life.closing_time({0: busy, 1: quiet}, 2, NOW, waiting={1}) == NOW - 5000
    # never counted, records waiting (or not known not to be): holds everything open
    assert life.closing_time({0: busy}, 2, NOW, waiting={1}) == NEVER
    assert life.closing_time({0: busy}, 2, NOW, waiting={0, 1}) == NEVER
    # nothing waiting: the quiet one stands at the wall clock
    assert life.closing_time({0: busy, 1: quiet}, 2, NOW, waiting=set()) == NOW - 10


def test_idle_close_defaults_to_three_bucket_intervals(tmp_path) -> None:
    settings = make_settings(tmp_path)
    assert settings.idle_close_s == 3 * settings.bucket_interval_s
    assert load(settings.source, {"BUCKET_APP_IDLE_CLOSE": "off"}).idle_close_s is None
    assert load(settings.source, {"BUCKET_APP_IDLE_CLOSE": "45s"}).idle_close_s == 45
    assert load(settings.source, {"BUCKET_APP_IDLE_CLOSE": "AUTO"}).idle_close_s == 60


def record(offset: int, ts: float, server: str = "a") -> ConsumerRecord[Any, Any]:
    value = json.dumps({"origin_server": server, "topic": "t", "timestamp": ts}).encode()
    return ConsumerRecord("test", 0, offset, None, 0, None, value, None, 0, len(value), ())


def test_records_for_a_final_bucket_are_counted_and_counted_late() -> None:
    """Both ways of counting a batch (grouped, record by record) count the late ones."""
    settings = make_settings(BASE / "late", clean_interval="1d", clean_freq="1d")
    interval = settings.bucket_interval_s
    for batches in (True, False):
        closing = [NEVER]
        counter = BatchCounter(settings, {}, clock=lambda: NOW,
                               classifier=Classifier(settings, batches=batches),
                               closing_time=lambda now_s, at=closing: at[0])
        old = NOW - 10 * interval  # its bucket ends 9 intervals before NOW
        counter.count_batch(0, [record(0, old), record(1, old)])
        closing[0] = NOW  # every partition has reached NOW: old's bucket is final
        counter.count_batch(0, [record(2, old), record(3, NOW - 1), record(4, old, "b")])
        table = counter.table
        start = int(old // interval * interval)
        window = (float(start), start + interval - 0.1)
        assert table[((0, "a", "t"), window)][0::2] == [3, 1]  # [count, _, late]
        assert table[((0, "b", "t"), window)][0::2] == [1, 1]
        now_start = int((NOW - 1) // interval * interval)
        assert table[((0, "a", "t"), (float(now_start), now_start + interval - 0.1))][2] == 0
        assert counter.counter.late == 2 and counter.counter.counted == 5
