"""Classification: what one record means, a window-key or the reason it is skipped.

:meth:`Classifier.locate` is the definition: decode, read the event time and the mapped fields,
name the window-key. :meth:`Classifier.group` is an optimisation of it for whole batches and
nothing more: every record gets the window-key or the error ``locate`` gives it
(tests/unit/counting/test_fuzz_counting.py checks that on generated batches, bad and unusual
records included). It does the common work column by column over the batch in C loops
(``map``, ``set``, ``min``, ``Counter``), and hands each record it is not sure of - not
decodable, not an object, a time missing, unparsable, out of range or too far ahead, an object
or array as a mapped value - to ``locate``, one by one.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Any

import orjson

from bucket_app.counting.buckets import (
    MAX_TS_S,
    MIN_TS_S,
    MISSING,
    FieldMap,
    TimeField,
    bucket_start,
    lookup,
    split_path,
)
from bucket_app.counting.decode import Decoder, JsonDecoder, make_decoder
from bucket_app.counting.keys import WindowKey, window
from bucket_app.errors import BadInput, TimeError
from bucket_app.settings import Settings

_NUMBERS = frozenset((int, float))
# Values equal in Python but not in JSON (True == 1 == 1.0): grouped apart, as the table does.
_ALIASED = frozenset((bool, int, float))
_COMPOUND = frozenset((dict, list))

#: Records decoded and grouped per C loop, which holds the interpreter lock throughout.
GROUP_CHUNK = 1000


@dataclass
class Grouped:
    """A batch grouped by window-key, in order of first appearance, and its skipped records."""

    keys: list[WindowKey]
    counts: list[int]  # records of each key
    lasts: list[int]  # highest offset of each key
    min_start_s: int  # earliest bucket start of a counted record
    max_time_s: float  # latest event time of a counted record, at most the wall clock
    first_offset: int
    # (index in the batch, why) of each record that is not counted, in batch order
    skipped: list[tuple[int, BadInput]] = field(default_factory=list)
    _groups: list[Any] = field(default_factory=list)  # each counted record's group
    _offsets: list[int] = field(default_factory=list)  # and its offset
    #: gives ``(_groups, _offsets)`` when they were not kept (a fetch the kernel read)
    _trace: Callable[[], tuple[list[Any], list[int]]] | None = None

    def count_after(self, index: int, offset: int) -> int:
        """Records of key ``index`` above ``offset`` (the rare replay of a partly counted
        batch: the key's stored offset is inside this batch)."""
        if self._trace is not None:
            self._groups, self._offsets = self._trace()
            self._trace = None
        group = self._groups[self._offsets.index(self.lasts[index])]
        return sum(1 for each, at in zip(self._groups, self._offsets, strict=True)
                   if at > offset and each == group)


class Classifier:
    """Decode, read the event time and the mapped fields, and name the window-key."""

    def __init__(self, settings: Settings, *, batches: bool = True,
                 decoder: Decoder | None = None) -> None:
        """``batches=False`` turns :meth:`group` off (tests compare the two ways); ``decoder``
        replaces the one the settings make (a :class:`RegistryDecoder` with a registry)."""
        if decoder is None:
            decoder = make_decoder(settings.avro_schema)
        self._decode = decoder.decode
        # the same as decode for a value it answers, without the checks decode makes (the
        # column path makes them for the batch): orjson.loads itself for JSON
        self._bulk_decode = orjson.loads if isinstance(decoder, JsonDecoder) else decoder.decode
        self._fields = FieldMap(settings.msg_map)
        self._time = TimeField(settings.bucket_field, settings.bucket_type)
        self._interval_s = settings.bucket_interval_s
        self._max_future_skew_s = settings.max_future_skew_s
        #: whether :meth:`group` answers (else the caller locates each record)
        self.groups_batches = batches
        self._get_time = _column_reader(settings.bucket_field)
        self._getters = [_column_reader(path) for path in self._fields.paths]

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

    def group(self, values: Sequence[Any], offsets: Sequence[int],
              timestamp_of: Callable[[int], int | None], partition: int, now_s: float,
              ) -> Grouped | None:
        """Every record of a batch located as :meth:`locate` would, grouped by window-key;
        None when turned off, or when a mapped field mixes ``true``, ``1`` and ``1.0`` (equal
        keys in Python, three in the table: the caller then locates each record).

        ``timestamp_of(i)`` is record ``i``'s Kafka timestamp in ms (or None), asked only for
        the records ``locate`` decides. The loops run over
        GROUP_CHUNK records at a time: a C loop holds the interpreter lock from start to end,
        and over a whole fetch it would keep the web server's thread waiting.
        """
        if not self.groups_batches or not values:
            return None
        groups: list[tuple[Any, ...]] = []
        counted_offsets: list[int] = []
        skipped: list[tuple[int, BadInput]] = []
        kinds: list[set[type]] = [set() for _ in self._getters]
        min_start, max_time = MAX_TS_S, MIN_TS_S
        for first in range(0, len(values), GROUP_CHUNK):
            last = first + GROUP_CHUNK
            chunk = self._group_chunk(values[first:last], first, timestamp_of, partition,
                                      now_s, kinds)
            if chunk is None:
                return None
            positions, chunk_groups, chunk_min_start, chunk_max_time, chunk_skipped = chunk
            groups.extend(chunk_groups)
            if len(positions) == len(chunk_groups) == min(last, len(values)) - first:
                counted_offsets.extend(offsets[first:last])  # every record of the chunk
            else:
                counted_offsets.extend(offsets[first + at] for at in positions)
            skipped.extend((first + at, exc) for at, exc in chunk_skipped)
            min_start, max_time = min(min_start, chunk_min_start), max(max_time, chunk_max_time)
        tally: Tally[tuple[Any, ...]] = Tally(groups)  # in order of first appearance
        lasts = dict(zip(groups, counted_offsets, strict=True))  # offsets ascend: last wins
        interval = self._interval_s
        keys = [((partition, *group[:-1]), window(group[-1], interval)) for group in tally]
        return Grouped(keys=keys, counts=list(tally.values()), lasts=[lasts[g] for g in tally],
                       # the watermark it may move to: capped at the clock, as in admit_at
                       min_start_s=int(min_start),
                       max_time_s=float(min(max_time, now_s)) if groups else float("-inf"),
                       first_offset=offsets[0], skipped=skipped, _groups=groups,
                       _offsets=counted_offsets)

    def _group_chunk(self, values: Sequence[Any], first: int,
                     timestamp_of: Callable[[int], int | None], partition: int, now_s: float,
                     kinds: list[set[type]],
                     ) -> tuple[list[int], list[tuple[Any, ...]], float, float,
                                list[tuple[int, BadInput]]] | None:
        """The counted records' positions and groups ``(*mapped values, bucket start)``, the
        earliest bucket start, the latest event time and the skipped records of one chunk;
        None on a mix of bool, int and float in a field (``kinds`` collects each field's
        value types over the batch)."""
        unsure: list[int] = []
        msgs = self._decode_all(values, unsure)
        positions = list(range(len(values)))
        if unsure or not set(map(type, msgs)) <= _DICT:
            undecoded = set(unsure)
            keep = [at for at in positions if at not in undecoded and type(msgs[at]) is dict]
            unsure = sorted(set(positions) - set(keep))
            positions, msgs = keep, [msgs[at] for at in keep]
        found = self._times(self._get_time(msgs), now_s)
        columns = [get(msgs) for get in self._getters]
        # (`None in found` is a C loop; the set is built only for a chunk that has one)
        drop = {at for at, ts in enumerate(found) if ts is None} if None in found else set()
        for column in columns:
            seen = set(map(type, column))
            if seen & _COMPOUND:
                drop.update(at for at, each in enumerate(column) if type(each) in _COMPOUND)
        if drop:
            unsure.extend(positions[at] for at in drop)
            keep = [at for at in range(len(positions)) if at not in drop]
            positions = [positions[at] for at in keep]
            found = [found[at] for at in keep]
            columns = [[column[at] for at in keep] for column in columns]
        times: list[float] = found  # type: ignore[assignment] # no None left
        interval = self._interval_s
        distinct = dict.fromkeys(times)
        if len(distinct) * 4 < len(times):  # whole seconds, say: once per distinct time
            start_of = {ts: int(ts // interval) * interval for ts in distinct}
            starts = list(map(start_of.__getitem__, times))
        else:
            starts = [int(ts // interval) * interval for ts in times]  # bucket_start, inlined
        groups = list(zip(*columns, starts, strict=True))
        low, high = (min(starts), max(times)) if starts else (MAX_TS_S, MIN_TS_S)
        skipped: list[tuple[int, BadInput]] = []
        if unsure:
            located = self._locate_each(values, first, timestamp_of, sorted(unsure),
                                        partition, now_s)
            for at, answer in located:
                if isinstance(answer, BadInput):
                    skipped.append((at, answer))
                    continue
                key, start, ts = answer
                positions.append(at)
                groups.append((*key[0][1:], start))
                columns_of = key[0][1:]
                for seen, each in zip(kinds, columns_of, strict=True):
                    seen.add(type(each))
                low, high = min(low, start), max(high, ts)
            order = sorted(range(len(positions)), key=positions.__getitem__)
            positions = [positions[at] for at in order]
            groups = [groups[at] for at in order]
        for column, seen in zip(columns, kinds, strict=True):
            seen.update(map(type, column))
            if len(seen & _ALIASED) > 1:
                return None
        return positions, groups, low, high, skipped

    def _decode_all(self, values: Sequence[Any], unsure: list[int]) -> list[Any]:
        """Each value decoded; one that does not decode is None and its position in
        ``unsure``."""
        try:
            return list(map(self._bulk_decode, values))
        except (BadInput, orjson.JSONDecodeError, TypeError):
            pass
        decode = self._decode
        msgs: list[Any] = []
        for at, value in enumerate(values):
            try:
                msgs.append(decode(value))
            except BadInput:
                msgs.append(None)
                unsure.append(at)
        return msgs

    def _times(self, raw: list[Any], now_s: float) -> list[float | None]:
        """Event times of a column of time values; None where :meth:`locate` must decide (a
        missing value: the record time stands in; one that does not parse, is out of range or
        too far ahead: locate raises)."""
        latest = min(MAX_TS_S, now_s + self._max_future_skew_s)
        if self._time.bucket_type == "epoch" and set(map(type, raw)) <= _NUMBERS:
            if raw and MIN_TS_S <= min(raw) and max(raw) <= latest:
                return raw  # plain numbers in range: the common case, no parsing
        # by type and value: True == 1 == 1.0, but only 1 and 1.0 are times
        typed = list(zip(map(type, raw), raw, strict=True))
        try:
            distinct = set(typed)
        except TypeError:  # an unhashable value (list, object): parse each
            return [self._time_of(value, latest) for value in raw]
        parsed = {each: self._time_of(each[1], latest) for each in distinct}
        return list(map(parsed.__getitem__, typed))

    def _time_of(self, value: Any, latest: float) -> float | None:
        if value is None:
            return None
        try:
            ts = self._time.parse(value)
        except BadInput:
            return None
        return ts if MIN_TS_S <= ts <= latest else None

    def _locate_each(self, values: Sequence[Any], first: int,
                     timestamp_of: Callable[[int], int | None],
                     positions: list[int], partition: int, now_s: float,
                     ) -> list[tuple[int, tuple[WindowKey, int, float] | BadInput]]:
        answers: list[tuple[int, tuple[WindowKey, int, float] | BadInput]] = []
        for at in positions:
            ts_ms = timestamp_of(first + at)
            try:
                answers.append((at, self.locate(
                    values[at], partition, None if ts_ms is None else ts_ms / 1000.0, now_s)))
            except BadInput as exc:
                answers.append((at, exc))
        return answers


_DICT = frozenset((dict,))


def _column_reader(path: str) -> Callable[[list[Any]], list[Any]]:
    """A function from decoded messages to the value at ``path`` in each, as
    :func:`~bucket_app.counting.buckets.lookup` reads it, in C loops where it can."""
    parts = split_path(path)
    get = methodcaller("get", path)
    if parts is None:
        return lambda msgs: list(map(get, msgs))
    literal = methodcaller("get", path, MISSING)

    def read(msgs: list[Any]) -> list[Any]:
        if any(each is not MISSING for each in map(literal, msgs)):
            return [lookup(msg, path, parts) for msg in msgs]  # a literal dotted key
        nodes = msgs
        for part in parts:
            if set(map(type, nodes)) <= _DICT:
                nodes = list(map(methodcaller("get", part), nodes))
            else:
                nodes = [node.get(part) if isinstance(node, dict) else None for node in nodes]
        return nodes

    return read

