"""Bucket lifecycle: when a bucket is final, and which records arrive after it is.

A bucket ``[start, end)`` is *final* once every source partition's event-time watermark has
passed ``end + grace``: no partition is still expected to bring events for it. With
``idle_close`` (three bucket intervals by default), a partition with nothing left to count that
counted nothing for that long (or never counted anything) no longer holds buckets open: it
stands at the wall clock instead of its watermark. A partition *waiting* (records in it not
counted yet, or not known to be) is never idle: a backlog, at start-up or after an outage,
holds buckets open until it is counted, so its records are not late. The time every partition
has reached is the *closing time*; a bucket is final when ``end + grace`` is at or before it.

Records that arrive for a bucket already final are still counted while the bucket is within
retention, and counted again as *late* in the bucket's ``late`` value, so a correction of a
final count is visible. Whether a record is late is decided when it is counted, from the
closing time this worker knows then (its snapshot of every partition's progress); the
snapshot marks a row final from the same progress, so a row counted late was final in the
snapshot of the worker that counted it, or about to be.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Protocol

from bucket_app.settings import Settings

NEVER = float("-inf")


class PartitionTime(Protocol):
    """What the closing time needs of a partition's progress."""

    watermark_s: float
    seen_at_s: float  # wall clock of its last counted batch; 0: unknown


@dataclass(frozen=True)
class Lifecycle:
    interval_s: int
    grace_s: float
    idle_close_s: float | None

    @classmethod
    def of(cls, settings: Settings) -> Lifecycle:
        return cls(settings.bucket_interval_s, settings.grace_s, settings.idle_close_s)

    def closing_time(self, progress: Mapping[int, PartitionTime], partitions: int,
                     now_s: float, waiting: Container[int] = ()) -> float:
        """The event time every one of ``partitions`` source partitions has reached;
        ``waiting``: the partitions with records not counted yet (never idle)."""
        closing = float("inf") if partitions else NEVER
        for partition in range(partitions):
            at = progress.get(partition)
            if self.idle_close_s is not None and partition not in waiting and (
                    at is None or now_s - at.seen_at_s >= self.idle_close_s):
                reached = now_s
            elif at is None:
                return NEVER
            else:
                reached = at.watermark_s
            closing = min(closing, reached)
        return closing

    def last_final_start(self, closing_s: float) -> float:
        """The latest bucket start that is final at ``closing_s`` (a start at or before it)."""
        return closing_s - self.grace_s - self.interval_s

    def is_final(self, start_s: float, closing_s: float) -> bool:
        return start_s <= self.last_final_start(closing_s)
