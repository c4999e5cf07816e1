"""Classification: what one record means, a window-key or the reason it is skipped.

:meth:`Classifier.locate` is the definition: decode, read the event time and the mapped fields,
name the window-key. :meth:`Classifier.group` is an optimisation of it for whole batches and
nothing more: where it answers, every record's window-key is the one ``locate`` gives it
(tests/unit/counting/test_fuzz_counting.py checks that on generated batches, bad and unusual
records included); where it is not sure of a record, it answers None and the caller locates
each record.
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass
from operator import methodcaller
from typing import Any

import orjson

from bucket_app.counting.buckets import MAX_TS_S, MIN_TS_S, FieldMap, TimeField, bucket_start
from bucket_app.counting.decode import JsonDecoder, make_decoder
from bucket_app.counting.keys import WindowKey, window
from bucket_app.errors import TimeError
from bucket_app.settings import Settings

_loads = orjson.loads


_NUMBERS = frozenset((int, float))
# Values equal in Python but not in JSON (True == 1 == 1.0): grouped apart, as the table does.
_ALIASED = frozenset((bool, int, float))
_COMPOUND = frozenset((dict, list))

#: Records decoded and grouped per C loop, which holds the interpreter lock throughout.
GROUP_CHUNK = 1000


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

    def __init__(self, settings: Settings, *, batches: bool = True) -> None:
        """``batches=False`` turns :meth:`group` off (tests compare the two ways)."""
        decoder = make_decoder(settings.avro_schema)
        self._decode = decoder.decode
        self._fields = FieldMap(settings.msg_map)
        self._time = TimeField(settings.bucket_field, settings.bucket_type)
        self._interval_s = settings.bucket_interval_s
        self._max_future_skew_s = settings.max_future_skew_s
        plain = "." not in settings.bucket_field and not any("." in p for p in self._fields.paths)
        #: whether :meth:`group` applies: JSON, epoch times, top-level fields
        self.groups_batches = batches and plain and isinstance(decoder, JsonDecoder) and (
            settings.bucket_type == "epoch")
        self._get_time = methodcaller("get", self._time.path)
        self._getters = [methodcaller("get", path) for path in self._fields.paths]

    def locate(
        self, value: bytes | None, partition: int, record_ts_s: float | None, now_s: float,
    ) -> tuple[WindowKey, int, float]:
        """Where one record counts: ``(key, bucket_start_s, event_time_s)``; raises a
        :class:`~bucket_app.errors.BadInput` subclass when the record cannot be counted."""
        msg = self._decode(value or b"")
        ts = self._time.get(msg, record_ts_s)
        if ts > now_s + self._max_future_skew_s:
            raise TimeError(
                f"event time {ts:.0f} is more than {self._max_future_skew_s:.0f} s ahead of "
                "the wall clock", reason="future_time",
            )
        start = bucket_start(ts, self._interval_s)
        key = ((partition, *self._fields.extract(msg)), window(start, self._interval_s))
        return key, start, ts

    def group(self, values: list[Any], offsets: list[int], partition: int,
              now_s: float) -> Grouped | None:
        """Group a batch by window-key as :meth:`locate` would, or None unless every record
        is one this is sure of (a JSON object, a plain number in range as its time, no
        object, array or mixed bool/int/float among a field's values).

        Decoding, field reads, type and range checks run as C loops (``map``, ``set``,
        ``min``, ``Counter``) over the batch instead of Python code per record. They run over
        GROUP_CHUNK records at a time: a C loop holds the interpreter lock from start to end,
        and over a whole fetch it would keep the web server's thread waiting.
        """
        if not self.groups_batches or not values:
            return None
        groups: list[tuple[Any, ...]] = []
        tally: Tally[tuple[Any, ...]] = Tally()  # in order of first appearance
        lasts: dict[tuple[Any, ...], int] = {}  # the last offset of each group wins
        kinds: list[set[type]] = [set() for _ in self._getters]
        min_start, max_time = MAX_TS_S, MIN_TS_S
        for first in range(0, len(values), GROUP_CHUNK):
            chunk = self._group_chunk(values[first:first + GROUP_CHUNK], now_s, kinds)
            if chunk is None:
                return None
            chunk_groups, chunk_min_start, chunk_max_time = chunk
            groups.extend(chunk_groups)
            tally.update(chunk_groups)
            lasts.update(zip(chunk_groups, offsets[first:first + GROUP_CHUNK], strict=True))
            min_start, max_time = min(min_start, chunk_min_start), max(max_time, chunk_max_time)
        interval = self._interval_s
        keys = [((partition, *group[:-1]), window(group[-1], interval)) for group in tally]
        return Grouped(keys=keys, counts=list(tally.values()), lasts=[lasts[g] for g in tally],
                       # the watermark it may move to: capped at the clock, as in admit_at
                       min_start_s=int(min_start), max_time_s=float(min(max_time, now_s)),
                       first_offset=offsets[0], _groups=groups, _offsets=offsets)

    def _group_chunk(self, values: list[Any], now_s: float, kinds: list[set[type]],
                     ) -> tuple[list[tuple[Any, ...]], int, float] | None:
        """Each record's group ``(*mapped values, bucket start)``, the earliest bucket start and
        the latest event time; None unless every record is well-formed. ``kinds`` collects
        each field's value types over the batch."""
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
        for column, seen in zip(columns, kinds, strict=True):
            seen.update(map(type, column))
            if seen & _COMPOUND or len(seen & _ALIASED) > 1:
                return None
        interval = self._interval_s
        distinct = dict.fromkeys(times)
        if len(distinct) * 4 < len(times):  # whole seconds, say: once per distinct time
            start_of = {ts: bucket_start(ts, interval) for ts in distinct}
            starts = list(map(start_of.__getitem__, times))
        else:
            starts = [int(ts // interval) * interval for ts in times]  # bucket_start, inlined
        return list(zip(*columns, starts, strict=True)), min(starts), high
