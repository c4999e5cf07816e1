"""Batch counting: one fetched batch of a source partition in, its table writes out.

:class:`BatchCounter` is the whole counting algorithm, with no Kafka and no Faust in it: it
classifies a batch (:mod:`~bucket_app.counting.classify`), counts each record once
(:mod:`~bucket_app.counting.counter`), keeps each source partition's progress (offset reached,
event-time watermark) in the table beside the counts, and sweeps buckets past retention. The
worker (:mod:`bucket_app.worker`) hands it aiokafka records and a per-batch table view; tests
hand it records they build and a dict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import Any

from bucket_app.counting.classify import Classifier
from bucket_app.counting.counter import Counter, KeyValues, PartitionProgress, RateLimitedLog
from bucket_app.counting.kernel import KernelFetch, NativeKernel
from bucket_app.counting.keys import PROGRESS_KEY, group_identity, progress_key
from bucket_app.counting.lifecycle import NEVER, Lifecycle
from bucket_app.errors import BadInput
from bucket_app.settings import Settings

log = logging.getLogger(__name__)

_VALUE, _OFFSET = attrgetter("value"), attrgetter("offset")

#: a partition's window-keys as stored: ``(raw key, key)``
StoredKeys = Callable[[int], Iterable[tuple[Any, Any]]]


class BatchCounter:
    """Count batches of source records into ``table``, each record exactly once."""

    def __init__(self, settings: Settings, table: KeyValues, *,
                 stored_keys: StoredKeys | None = None,
                 forget_raw: Callable[[Any], object] = lambda raw: None,
                 classifier: Classifier | None = None, kernel: NativeKernel | None = None,
                 closing_time: Callable[[float], float] = lambda now_s: NEVER,
                 clock: Callable[[], float] = time.time) -> None:
        """``stored_keys`` lists a partition's keys for the sweep (default: ``table``'s own, a
        dict's); ``forget_raw`` is told of each raw key the sweep deletes; ``closing_time``
        gives, at a wall-clock time, the event time every source partition has reached
        (:meth:`Lifecycle.closing_time`; by default none, so no bucket is final); ``clock`` is
        the wall clock (tests fix it)."""
        self.settings = settings
        self.table = table
        self.classifier = classifier or Classifier(settings)
        #: counts the fetches the native kernel read (:class:`KernelFetch`), when it runs
        self.kernel = kernel
        self.native_fetches = 0  # fetches the kernel read, counted here
        self.counter = Counter(settings)
        self.bad_log = RateLimitedLog()
        self._stored_keys = stored_keys or self._dict_keys
        self._forget_raw = forget_raw
        self.lifecycle = Lifecycle.of(settings)
        #: with a dead-letter topic: each skipped record and its reason, until taken
        self.skipped_records: list[tuple[Any, str]] | None = (
            [] if settings.dead_letter_topic else None)
        self.closing_time = closing_time
        self.clock = clock

    def forget(self, partitions: set[int]) -> None:
        """Drop in-memory progress of partitions this worker no longer owns."""
        for partition in partitions:
            self.counter.progress.pop(partition, None)

    def state(self, partition: int) -> PartitionProgress:
        """``partition``'s progress: in memory, else as stored in the table."""
        state = self.counter.progress.get(partition)
        if state is None:
            stored = self.table.get(progress_key(partition))
            state = PartitionProgress()
            if stored is not None:
                state.offset, state.watermark_s = int(stored[0]), float(stored[1])
            self.counter.progress[partition] = state
        return state

    def count_batch(self, partition: int, records: Sequence[Any] | KernelFetch,
                    table: KeyValues | None = None, reached: int | None = None) -> None:
        """Count one fetched batch of a source partition, each record exactly once.

        ``records`` are aiokafka records (``offset``, ``value``, ``timestamp``) in offset
        order, or a fetch the native kernel read (:class:`KernelFetch`, counted with
        ``kernel``); ``table`` is the partition's view of the table for this batch (default: the
        table itself). ``reached`` is the position the fetch reached when it passed offsets
        after the last record that hold nothing to count (transaction markers, records of
        aborted transactions): the partition's progress passes them too, so an offset
        reached always means "everything before it is read", whatever those offsets held.
        The table sees one read and one write per window-key per batch, then one progress
        write. A batch :meth:`Classifier.group` answers for, none of it a replay
        and none past retention, is counted per key; any other record by record.
        """
        state = self.state(partition)
        counter = self.counter
        counter.batches += 1
        counts = self.table if table is None else table
        now_s = self.clock()
        last_final_start = self.lifecycle.last_final_start(self.closing_time(now_s))
        if isinstance(records, KernelFetch):
            last = self._count_fetch(state, partition, records, counts, now_s, last_final_start)
        else:
            last = self._count_records(state, partition, records, counts, now_s,
                                       last_final_start)
        if reached is not None:
            last = max(last, reached - 1)
        if last <= state.offset:
            return
        state.offset = last
        # [offset, watermark, wall clock]: the snapshot's closing time reads all three
        counts[progress_key(partition)] = [last, max(state.watermark_s, 0.0), now_s]
        if time.monotonic() - state.last_sweep_mono >= self.settings.clean_freq_s:
            self.sweep(partition, counts)

    def _count_records(self, state: PartitionProgress, partition: int,
                       records: Sequence[Any], counts: KeyValues, now_s: float,
                       last_final_start: float) -> int:
        """Count a batch of records; return the offset of its last record that was not a
        replay."""
        counter = self.counter
        grouped = None
        if records and records[0].offset > state.offset:
            grouped = self.classifier.group(
                list(map(_VALUE, records)), list(map(_OFFSET, records)),
                lambda at: records[at].timestamp, partition, now_s)
        if grouped is not None and counter.admits_all(state, grouped):
            counter.add_grouped(counts, grouped, last_final_start)
            state.watermark_s = max(state.watermark_s, grouped.max_time_s)
            for at, exc in grouped.skipped:
                self._skip(records[at], partition, exc)
            return int(records[-1].offset)
        return self._count_each(state, partition, records, counts, now_s, last_final_start)

    def _count_fetch(self, state: PartitionProgress, partition: int, fetch: KernelFetch,
                     counts: KeyValues, now_s: float, last_final_start: float) -> int:
        """Count a fetch the native kernel read: per key, as a grouped batch, when none of it
        is a replay or past retention; else its records one by one."""
        if not self.native_fetches:
            log.info("counting kernel: first fetch read natively (partition %d)", partition)
        self.native_fetches += 1
        if self.kernel is None or fetch.first_offset is None or fetch.last_offset is None:
            return self._count_each(state, partition, fetch.unpacked(), counts, now_s,
                                    last_final_start)
        if fetch.first_offset > state.offset:
            grouped, skipped = self.kernel.grouped(fetch, partition, now_s)
            if self.counter.admits_all(state, grouped):
                self.counter.add_grouped(counts, grouped, last_final_start)
                state.watermark_s = max(state.watermark_s, grouped.max_time_s)
                for record, exc in skipped:
                    self._skip(record, partition, exc)
                return fetch.last_offset
        return self._count_each(state, partition, fetch.unpacked(), counts, now_s,
                                last_final_start)

    def _count_each(self, state: PartitionProgress, partition: int, records: Sequence[Any],
                    counts: KeyValues, now_s: float, last_final_start: float) -> int:
        """Count a batch record by record (each gets its own answer: replay, bad input, past
        retention); return the offset of the last record that was not a replay."""
        done = state.offset
        counter = self.counter
        locate = self.classifier.locate
        admit = counter.admit_at
        pending: dict[Any, tuple[Any, list[int]]] = {}
        last = done
        for record in records:
            offset = record.offset
            if offset <= done:
                counter.replayed += 1
                continue
            last = offset
            ts_ms = record.timestamp
            try:
                key, start, ts = locate(
                    record.value, partition, None if ts_ms is None else ts_ms / 1000.0, now_s)
                admit(state, start, ts, now_s)
            except BadInput as exc:
                self._skip(record, partition, exc)
                continue
            entry = pending.get(ident := group_identity(key))
            if entry is None:
                pending[ident] = (key, [offset])
            else:
                entry[1].append(offset)
        for key, offsets in pending.values():
            counter.add(counts, key, offsets, last_final_start)
        return last

    def _skip(self, record: Any, partition: int, exc: BadInput) -> None:
        """Count, log and keep (for the dead-letter topic) a record that is not counted."""
        self.counter.record_skip(exc.reason)
        self.bad_log.bad_record(exc, self.settings.topic, partition, record.offset)
        if self.skipped_records is not None:
            self.skipped_records.append((record, exc.reason))

    def take_skipped(self) -> list[tuple[Any, str]]:
        """The skipped records kept since the last call (none without a dead-letter topic)."""
        if not self.skipped_records:
            return []
        taken, self.skipped_records = self.skipped_records, []
        return taken

    def sweep(self, partition: int, table: KeyValues | None = None) -> int:
        """Delete this partition's buckets past retention, each with a changelog tombstone."""
        state = self.state(partition)
        state.last_sweep_mono = time.monotonic()
        cutoff_s = self.counter.expired_before_s(partition)
        doomed = [(raw, key) for raw, key in self._stored_keys(partition)
                  if key[0] != PROGRESS_KEY and key[1][1] < cutoff_s]
        counts = self.table if table is None else table
        for raw, key in doomed:
            del counts[(tuple(key[0]), tuple(key[1]))]
            self._forget_raw(raw)
        if doomed:
            log.info("retention removed %d buckets of partition %d ending before %.0f",
                     len(doomed), partition, cutoff_s)
        return len(doomed)

    def _dict_keys(self, partition: int) -> Iterable[tuple[Any, Any]]:
        keys = self.table.keys() if isinstance(self.table, dict) else ()
        return [(key, key) for key in keys if key[0] != PROGRESS_KEY and key[0][0] == partition]
