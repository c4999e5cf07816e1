"""Counting: classified records in, idempotent increments of window-keys out.

The :class:`Counter` applies classified records (:mod:`bucket_app.counting.classify`) to a
table-like mapping with the offset watermark that makes replays harmless: each value is
``[count, max_source_offset, late]`` and a record at or below the stored offset is skipped
(``late`` counts the records that came after the bucket was final,
:mod:`bucket_app.counting.lifecycle`; values written before it existed have two elements).
Keys carry the source partition, so a window-key lives in exactly one partition and the
watermark is exact under at-least-once delivery. :mod:`bucket_app.counting.batch` drives it
batch by batch.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any, Protocol

from bucket_app.counting.classify import Grouped
from bucket_app.counting.keys import WindowKey
from bucket_app.errors import BadInput
from bucket_app.settings import Settings

log = logging.getLogger(__name__)


class KeyValues(Protocol):
    """What counting needs of a table: the Faust table, a TableBatch, or a dict in tests."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...

    def __delitem__(self, key: Any) -> None: ...


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
        self.late = 0  # records counted into a bucket already final
        self.dead_letters = 0  # skipped records sent to the dead-letter topic

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
        as :meth:`Classifier.group` caps it)."""
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

    def add(self, table: KeyValues, key: WindowKey, offsets: list[int],
            last_final_start_s: float = float("-inf")) -> int:
        """Count the records at ``offsets`` (ascending) toward ``key``, once each.

        The stored value's second element is the highest offset counted; offsets at or below
        it were counted before (a replay after a crash or rebalance) and are skipped. One read
        and at most one write per key, however many records the batch had for it. Buckets
        starting at or before ``last_final_start_s`` are final: their records count as late.
        """
        current = table.get(key)
        done = -1 if current is None else current[1]
        fresh = len(offsets) - bisect_right(offsets, done)
        self._credit(table, key, current, len(offsets), fresh, offsets[-1],
                     key[1][0] <= last_final_start_s)
        return fresh

    def _credit(self, table: KeyValues, key: WindowKey, current: list[int] | None, n: int,
                fresh: int, last: int, late: bool) -> None:
        """Of ``n`` records for ``key``, ``fresh`` were not counted before: add them to its
        stored value (``current``), with ``last`` as its highest offset counted."""
        self.replayed += n - fresh
        if fresh:
            added_late = fresh if late else 0
            if current is None:
                table[key] = [fresh, last, added_late]
            else:
                before_late = current[2] if len(current) > 2 else 0
                table[key] = [current[0] + fresh, last, before_late + added_late]
            self.counted += fresh
            self.late += added_late

    def admits_all(self, state: PartitionProgress, grouped: Grouped) -> bool:
        """No record of ``grouped`` is past retention, however the watermark moves within
        it (it never passes the batch's latest event time)."""
        watermark_s = max(state.watermark_s, grouped.max_time_s)
        return grouped.min_start_s + self.interval_s > watermark_s - self.retention_s

    def add_grouped(self, table: KeyValues, grouped: Grouped,
                    last_final_start_s: float = float("-inf")) -> None:
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
            self._credit(table, key, current, n, fresh, grouped.lasts[index],
                         key[1][0] <= last_final_start_s)

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
