"""Counting: one Kafka record in, one idempotent increment of one window-key out.

The :class:`Classifier` turns a record's bytes into the window-key it counts toward (pure: codecs,
field map, time parsing and bucket arithmetic, no I/O). The :class:`Counter` applies a
classified record to a table-like mapping with the offset watermark that makes replays harmless:
each value is ``[count, max_source_offset]`` and a record at or below the stored offset is
skipped. Keys carry the source partition, so a window-key lives in exactly one partition and the
watermark is exact under at-least-once delivery. The agent owns the I/O around both.

Table keys follow Faust's windowed-table layout, ``((partition, *mapped_values), (start,
start + interval - 0.1))``, so Faust's own windowed readers and tooling understand them.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections import Counter as Tally
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Any, Protocol

import orjson

from bucket_app.counting.buckets import MAX_TS_S, MIN_TS_S, FieldMap, TimeField, bucket_start
from bucket_app.counting.decode import JsonDecoder, make_decoder
from bucket_app.errors import BadInput, TimeError
from bucket_app.settings import Settings

log = logging.getLogger(__name__)

_loads = orjson.loads

# Faust's TumblingWindow stores a window as (start, start + size - 0.1); we write the same.
WINDOW_END_EPSILON_S = 0.1

WindowKey = tuple[tuple[Any, ...], tuple[float, float]]

_NUMBERS = frozenset((int, float))

#: Records decoded and grouped per C loop: about 1 ms of holding the interpreter lock.
GROUP_CHUNK = 1000


class KeyValues(Protocol):
    """What counting needs of a table: the Faust table, a TableBatch, or a dict in tests."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...

    def __delitem__(self, key: Any) -> None: ...


@dataclass
class Grouped:
    """A batch of well-formed records grouped by window-key, in order of first appearance."""

    keys: list[WindowKey]
    counts: list[int]  # records of each key
    lasts: list[int]  # highest offset of each key
    min_start_s: int  # earliest bucket start in the batch
    max_time_s: float  # latest event time in the batch, at most the wall clock
    first_offset: int
    _groups: list[Any]  # each record's group, for :meth:`count_after`
    _offsets: list[int]

    def count_after(self, index: int, offset: int) -> int:
        """Records of key ``index`` above ``offset`` (the rare replay of a partly counted
        batch: the key's stored offset is inside this batch)."""
        group = self._groups[self._offsets.index(self.lasts[index])]
        return sum(1 for each, at in zip(self._groups, self._offsets, strict=True)
                   if at > offset and each == group)


class Classifier:
    """Decode, read the event time and the mapped fields, and name the window-key."""

    def __init__(self, settings: Settings) -> None:
        decoder = make_decoder(settings.avro_schema)
        self._decode = decoder.decode
        self._fields = FieldMap(settings.msg_map)
        self._time = TimeField(settings.bucket_field, settings.bucket_type)
        self._interval_s = settings.bucket_interval_s
        self._max_future_skew_s = settings.max_future_skew_s
        plain = "." not in settings.bucket_field and not any("." in p for p in self._fields.paths)
        #: :meth:`group_json_epoch` where it applies, else None
        self.group: Any = None
        if isinstance(decoder, JsonDecoder) and settings.bucket_type == "epoch" and plain:
            self.locate = self._locate_json_epoch  # type: ignore[method-assign]
            self.group = self.group_json_epoch
            self._get_time = methodcaller("get", self._time.path)
            self._getters = [methodcaller("get", path) for path in self._fields.paths]

    def _locate_json_epoch(
        self, value: bytes | None, partition: int, record_ts_s: float | None, now_s: float,
    ) -> tuple[WindowKey, int, float]:
        """:meth:`locate` for the common configuration: JSON, epoch times, top-level fields.

        Handles the well-formed record in one flat function (about half the time of the
        general path, which goes through the decoder, time-field and field-map layers); any
        record it is not sure of - not JSON, not an object, a time that is not a plain number
        in range or too far ahead, a dict or list field - goes to the general path, which
        gives the answer and the error. Tests check both agree.
        """
        try:
            msg = _loads(value)  # type: ignore[arg-type]
        except (orjson.JSONDecodeError, TypeError):
            return self._locate(value, partition, record_ts_s, now_s)
        if msg.__class__ is not dict:
            return self._locate(value, partition, record_ts_s, now_s)
        ts: Any = msg.get(self._time.path)
        cls = ts.__class__
        if (cls is not int and cls is not float) or not (
            MIN_TS_S <= ts <= now_s + self._max_future_skew_s and ts <= MAX_TS_S
        ):
            return self._locate(value, partition, record_ts_s, now_s)
        values = tuple(map(msg.get, self._fields.paths))
        for each in values:
            if each.__class__ is dict or each.__class__ is list:
                return self._locate(value, partition, record_ts_s, now_s)
        interval = self._interval_s
        start = int(ts // interval) * interval
        # (start + interval) - 0.1 in Faust's order: start + 19.9 differs for start = -20
        end = start + interval - WINDOW_END_EPSILON_S
        return ((partition, *values), (float(start), end)), start, float(ts)

    def group_json_epoch(self, values: list[Any], offsets: list[int], partition: int,
                         now_s: float) -> Grouped | None:
        """Group a batch by window-key, or None unless every record is well-formed.

        :meth:`_locate_json_epoch` for a whole batch at once: decoding, field reads, type and
        range checks run as C loops (``map``, ``set``, ``min``, ``Counter``) over the batch
        instead of Python code per record, which took 1 µs of a record's 2.5 µs here. The
        checks are the ones that send a record to the general path there; a batch failing
        any of them is counted record by record, which gives each record its own answer.

        The loops run over GROUP_CHUNK records at a time: a C loop holds the interpreter lock
        from start to end, and over a whole fetch (8,000 records a partition) it kept the web
        server's thread waiting for 7 ms at a time.
        """
        groups: list[tuple[Any, ...]] = []
        tally: Tally[tuple[Any, ...]] = Tally()  # in order of first appearance
        lasts: dict[tuple[Any, ...], int] = {}  # the last offset of each group wins
        min_start, max_time = MAX_TS_S, MIN_TS_S
        for first in range(0, len(values), GROUP_CHUNK):
            chunk = self._group_chunk(values[first:first + GROUP_CHUNK], now_s)
            if chunk is None:
                return None
            chunk_groups, chunk_min_start, chunk_max_time = chunk
            groups.extend(chunk_groups)
            tally.update(chunk_groups)
            lasts.update(zip(chunk_groups, offsets[first:first + GROUP_CHUNK], strict=True))
            min_start, max_time = min(min_start, chunk_min_start), max(max_time, chunk_max_time)
        interval = self._interval_s
        keys = [((partition, *group[:-1]),
                 (float(group[-1]), group[-1] + interval - WINDOW_END_EPSILON_S))
                for group in tally]
        return Grouped(keys=keys, counts=list(tally.values()), lasts=[lasts[g] for g in tally],
                       # the watermark it may move to: capped at the clock, as in admit_at
                       min_start_s=int(min_start), max_time_s=float(min(max_time, now_s)),
                       first_offset=offsets[0], _groups=groups, _offsets=offsets)

    def _group_chunk(self, values: list[Any], now_s: float,
                     ) -> tuple[list[tuple[Any, ...]], int, float] | None:
        """Each record's group ``(*mapped values, bucket start)``, the earliest bucket start and
        the latest event time; None unless every record is well-formed."""
        try:
            msgs = list(map(_loads, values))
            times = list(map(self._get_time, msgs))
            columns = [list(map(get, msgs)) for get in self._getters]
        except (orjson.JSONDecodeError, TypeError, AttributeError):  # not all JSON objects
            return None
        if not set(map(type, times)) <= _NUMBERS:  # exact types: bool is not a time here
            return None
        low, high = min(times), max(times)
        if not (MIN_TS_S <= low and high <= MAX_TS_S and high <= now_s + self._max_future_skew_s):
            return None
        for column in columns:
            kinds = set(map(type, column))
            if dict in kinds or list in kinds:
                return None
        interval = self._interval_s
        distinct = dict.fromkeys(times)
        if len(distinct) * 4 < len(times):  # whole seconds, say: once per distinct time
            start_of = {ts: int(ts // interval) * interval for ts in distinct}
            starts = list(map(start_of.__getitem__, times))
        else:
            starts = [int(ts // interval) * interval for ts in times]
        return list(zip(*columns, starts, strict=True)), min(starts), high

    def _locate(
        self, value: bytes | None, partition: int, record_ts_s: float | None, now_s: float,
    ) -> tuple[WindowKey, int, float]:
        """Where one record counts: ``(key, bucket_start_s, event_time_s)``; raises a
        :class:`BadInput` subclass when the record cannot be counted."""
        msg = self._decode(value or b"")
        ts = self._time.get(msg, record_ts_s)
        if ts > now_s + self._max_future_skew_s:
            raise TimeError(
                f"event time {ts:.0f} is more than {self._max_future_skew_s:.0f} s ahead of "
                "the wall clock", reason="future_time",
            )
        start = bucket_start(ts, self._interval_s)
        end = start + self._interval_s - WINDOW_END_EPSILON_S
        key = ((partition, *self._fields.extract(msg)), (float(start), end))
        return key, start, ts

    # The general path; an instance using the JSON/epoch path has its own ``locate``.
    locate = _locate


@dataclass
class PartitionProgress:
    """What one source partition has reached: offset, event-time watermark, last sweep."""

    offset: int = -1
    watermark_s: float = float("-inf")
    last_sweep_mono: float = field(default_factory=time.monotonic)


class Counter:
    """Apply classified records to the windowed table exactly once per source offset."""

    def __init__(self, settings: Settings) -> None:
        self.interval_s = settings.bucket_interval_s
        self.retention_s = settings.clean_interval_s
        self.progress: dict[int, PartitionProgress] = {}
        self.skipped: Tally[str] = Tally()
        self.counted = 0
        self.replayed = 0
        self.batches = 0

    def partition(self, partition: int) -> PartitionProgress:
        try:
            return self.progress[partition]
        except KeyError:
            state = self.progress[partition] = PartitionProgress()
            return state

    def expired_before_s(self, partition: int) -> float:
        """Buckets ending at or before this event time are past retention in ``partition``."""
        return self.partition(partition).watermark_s - self.retention_s

    def admit_at(self, state: PartitionProgress, bucket_start_s: int, event_time_s: float,
                 now_s: float) -> None:
        """Refuse a record of the partition whose progress is ``state`` if its bucket is past
        retention; else move the watermark with it, up to ``now_s`` (the batch's wall clock,
        as :meth:`Classifier.group_json_epoch` caps it)."""
        if bucket_start_s + self.interval_s <= state.watermark_s - self.retention_s:
            raise BadInput(
                f"bucket {bucket_start_s} is older than the retention "
                f"({self.retention_s:.0f} s behind the watermark)", reason="expired",
            )
        if event_time_s > state.watermark_s:
            # Never past the wall clock: one event timed within max_future_skew ahead (a
            # producer's clock 50 minutes fast) made every live event `expired`, and the sweep
            # delete the partition's current buckets, whenever clean_interval < the skew.
            state.watermark_s = max(state.watermark_s, min(event_time_s, now_s))

    def add(self, table: KeyValues, key: WindowKey, offsets: list[int]) -> int:
        """Count the records at ``offsets`` (ascending) toward ``key``, once each.

        The stored value is ``[count, highest offset counted]``; offsets at or below it were
        counted before (a replay after a crash or rebalance) and are skipped. One read and at
        most one write per key, however many records the batch had for it.
        """
        current = table.get(key)
        done = -1 if current is None else current[1]
        fresh = len(offsets) - bisect_right(offsets, done)
        self._credit(table, key, current, len(offsets), fresh, offsets[-1])
        return fresh

    def _credit(self, table: KeyValues, key: WindowKey, current: list[int] | None, n: int,
                fresh: int, last: int) -> None:
        """Of ``n`` records for ``key``, ``fresh`` were not counted before: add them to its
        stored value (``current``), with ``last`` as its highest offset counted."""
        self.replayed += n - fresh
        if fresh:
            table[key] = [(0 if current is None else current[0]) + fresh, last]
            self.counted += fresh

    def admits_all(self, state: PartitionProgress, grouped: Grouped) -> bool:
        """No record of ``grouped`` is past retention, however the watermark moves within
        it (it never passes the batch's latest event time)."""
        watermark_s = max(state.watermark_s, grouped.max_time_s)
        return grouped.min_start_s + self.interval_s > watermark_s - self.retention_s

    def add_grouped(self, table: KeyValues, grouped: Grouped) -> None:
        """:meth:`add` for every key of a grouped batch."""
        first = grouped.first_offset
        get = table.get
        for index, key in enumerate(grouped.keys):
            current = get(key)
            n = grouped.counts[index]
            if current is None or current[1] < first:
                fresh = n
            else:
                fresh = grouped.count_after(index, current[1])
            self._credit(table, key, current, n, fresh, grouped.lasts[index])

    def record_skip(self, reason: str) -> None:
        self.skipped[reason] += 1


class RateLimitedLog:
    """Log the first few bad records per reason, then at most one line per interval."""

    def __init__(self, burst: int = 10, interval_s: float = 10.0) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self._seen: Tally[str] = Tally()
        self._last_mono: dict[str, float] = {}
        self._suppressed: Tally[str] = Tally()

    def bad_record(self, exc: BadInput, topic: str, partition: int, offset: int) -> None:
        reason = exc.reason
        self._seen[reason] += 1
        now = time.monotonic()
        if self._seen[reason] > self.burst and now - self._last_mono.get(reason, 0.0) < (
            self.interval_s
        ):
            self._suppressed[reason] += 1
            return
        self._last_mono[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        log.warning(
            "skipped bad record topic=%s partition=%d offset=%d reason=%s: %s%s",
            topic, partition, offset, reason, exc,
            f" ({suppressed} more like it not logged)" if suppressed else "",
        )
