"""Batch intake: source records reach the counting code one fetched batch at a time.

Faust delivers every message through its conductor, a per-topic queue and the stream iterator
(futures for ``wait_first``, a lock, ``sleep(0)`` and four sensor hooks per message), which caps
a worker at a few thousand table updates a second. :class:`BatchIntake` replaces the body of the
consumer's fetch loop (Faust's ``Consumer._drain_messages``, through
:class:`bucket_app.seam.consumer.SeamConsumer`, which also holds every piece of Faust's consumer
state the intake reads or changes) and hands each partition's records of the
source topic to a callback as one list; records of any other topic take Faust's own path, one
message at a time, unchanged. Faust's consumer group, assignment, pause/resume during table
recovery, offset commits, tables, changelog and web stay as they are.

Rebalance safety: Faust stops the flow and changes the generation on the event loop. This loop
drops a fetch that returns while the flow is stopped (unacknowledged; Faust seeks back to the
committed offsets), and counts the source records of any other fetch without yielding to the
loop, only for partitions that are assigned and not paused at that moment, so a replica never
writes the changelog of a partition another replica may own. Records of other topics (the
changelog, for table recovery) are delivered one by one as in Faust's ``getmany``, stopping as
soon as the flow stops or the generation changes.

With a schema registry (:class:`~bucket_app.kafka.registry.WriterSchemas`), the writer schema
ids of a fetch's source records are fetched before it is counted, since the counting code only
decodes with schemas it was handed. While the registry is unavailable (or has not answered
within FETCH_WAIT_S), a partition whose batch needs an id not fetched yet is not counted: it is
sought back to the batch's first offset and paused (Faust's own pause, as table recovery uses),
and resumed once the registry gives the ids, so its records come again and are counted then,
none skipped for the outage. The ``degraded`` attribute says which partitions wait and why, for
``/health``.

A full disk pauses every source partition the same way: once RocksDB refuses an acknowledged
batch for lack of space (:attr:`~bucket_app.kafka.changelog.Unacked.stalled`), the partitions
are paused after the fetch being counted, the write is retried every
:data:`~bucket_app.diskspace.RETRY_S`, and they resume once it is written (``/health`` says
why meanwhile, from :data:`bucket_app.diskspace.FULL`).

The callback counts a batch synchronously (RocksDB written) and returns the batch's changelog
records; the intake sends them as whole Kafka batches and acknowledges the batch's offsets only
once the brokers have acknowledged those changelog batches, so a committed source offset always
has its counts in the changelog. Until then the batch's last message is in Faust's set of
unacknowledged messages, which Faust waits to empty before it gives up partitions in a
rebalance. Offsets are acknowledged the way Faust's ``Consumer.ack`` does (per offset, with gaps
recorded for offsets that never arrive), so Faust's commit logic decides what is committed.

A fetch can also pass offsets that hold no record to count: transaction markers, and the
records of aborted transactions under read_committed. The consumer reports the position such
a fetch reached (:meth:`SeamConsumer.take_positions`), and the partition's batch, even one
with no record, moves its progress and acknowledgements to it (docs/design.md, "Offsets
without records").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from time import monotonic
from typing import Any

from aiokafka.structs import ConsumerRecord
from faust.events import Event
from faust.types import TP

from bucket_app.counting.kernel import KernelFetch
from bucket_app.kafka.changelog import ChangelogRecord, ChangelogSender
from bucket_app.kafka.deadletter import DeadLetter, DeadLetterSender
from bucket_app.kafka.holds import Holds, after_read_offset, seek_back
from bucket_app.kafka.registry import WriterSchemas
from bucket_app.seam.consumer import SeamConsumer, reset_current_event, set_current_event

log = logging.getLogger(__name__)

_OFFSET = attrgetter("offset")

#: Changelog messages allowed to wait in Faust's producer buffer (the sweep's tombstones go
#: through it) before the intake stops fetching until it drains to PRODUCER_LOW.
PRODUCER_HIGH = 20_000
PRODUCER_LOW = 5_000

#: Counts one source partition's batch: (partition, records or the fetch the kernel read, the
#: position the fetch reached when past the last record, else None) in, its changelog records
#: and dead letters out.
BatchHandler = Callable[[int, Sequence[Any] | KernelFetch, int | None],
                        tuple[list[ChangelogRecord], list[DeadLetter]]]


@dataclass(frozen=True)
class Passed:
    """The last offset a fetch passed without a record to count (a transaction marker), as
    the record Faust's event for a batch is built from."""

    offset: int
    timestamp: int | None = None
    timestamp_type: int = 0
    key: bytes | None = None
    value: bytes | None = None
    checksum: int | None = None
    headers: tuple[Any, ...] = ()


@dataclass
class Counted:
    """A counted batch whose offsets are acknowledged once its changelog records are durable."""

    tp: TP
    offsets: Sequence[int]  # ascending; a range when without a hole
    previous: int | None  # the read offset before this batch (for gap detection)
    sentinel: Any  # Faust message kept in the consumer's unacknowledged set until then
    changes: list[ChangelogRecord]
    dead: list[DeadLetter]


class BatchIntake:
    """The fetch loop of one Faust consumer, with a batch path for ``topic``."""

    def __init__(self, consumer: SeamConsumer, topic: str, handle: BatchHandler,
                 sender: ChangelogSender, dead_letters: DeadLetterSender | None = None,
                 schemas: WriterSchemas | None = None) -> None:
        self.consumer = consumer
        self.app = consumer.app
        self.topic = topic
        self.handle = handle
        self.sender = sender
        self.dead_letters = dead_letters
        self.schemas = schemas
        self.holds = Holds(consumer, topic, sender, schemas)

    @property
    def degraded(self) -> str | None:
        """Why counting waits, while partitions are held (read by /health's thread)."""
        return self.holds.degraded

    def install(self) -> None:
        """Make the consumer's Fetcher run :meth:`drain` instead of Faust's per-message loop."""
        self.consumer.use_drain(self.drain)

    async def drain(self, fetcher: Any) -> None:
        consumer = self.consumer
        try:
            # The broker batches the fetches (agent.FETCH_MIN_BYTES): no pause here.
            while not consumer.loop_stopped(fetcher):
                records, _ = await consumer.next_records(1.0)
                # As in Faust's getmany: the generation is the one the fetch returned in.
                generation = self.app.consumer_generation_id
                positions = consumer.take_positions()
                holds = self.holds
                if holds.held:
                    await holds.release_held()
                if holds.disk_held or self.sender.unacked.stalled:
                    holds.retry_disk()
                if not (records or positions) or consumer.should_stop:
                    continue
                if not consumer.flow_active:
                    # Returned during a rebalance: Faust seeks back to the committed offsets.
                    await seek_back(consumer)
                    continue
                if self.schemas is not None and records:
                    ready = await holds.with_schemas(records, generation)
                    if ready is None:
                        continue
                    # a held partition is read again from its first record: its position too
                    positions = {tp: position for tp, position in positions.items()
                                 if tp in ready or tp not in records}
                    records = ready
                counted, others = self._count(records, positions)
                # every partition's changelog batch in flight at once, not one after another
                await asyncio.gather(*(self._send(done) for done in counted))
                for tp, other in others:
                    if not await self._deliver(tp, other, generation):
                        break
                await self._ebb()
                if self.sender.unacked.stalled:
                    holds.pause_for_disk()
                await consumer.commit_if_due()
        except consumer.consumer_stopped_errors:
            if self.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.app.should_stop:
                log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            log.exception("Drain messages raised: %r", exc)
            raise

    def _count(
        self, records: dict[TP, list[Any]], positions: dict[TP, int],
    ) -> tuple[list[Counted], list[tuple[TP, list[Any]]]]:
        """Count every source batch of one fetch without yielding; return them and the
        batches of other topics. ``positions``: source partitions whose fetch reached past
        their last record (see :meth:`SeamConsumer.take_positions`)."""
        consumer = self.consumer
        active = consumer.active_partitions()
        buffered = consumer.buffered_partitions()
        # Faust's stall detector reads this (set per event by its monitor); unset, it logs
        # "Stream has not started processing" errors for partitions counted here.
        monitor = self.app.monitor
        inbound = monitor.stream_inbound_time if monitor is not None else {}
        now = monotonic()
        counted, others = [], []
        for tp in {**records, **positions}:
            if tp not in active and tp not in buffered:
                continue
            batch = records.get(tp, [])
            if tp.topic != self.topic:
                others.append((tp, batch))
                continue
            done = self._count_partition(tp, batch, positions.get(tp))
            if done is not None:
                counted.append(done)
                inbound[tp] = now
        return counted, others

    def _count_partition(self, tp: TP, batch: list[Any], position: int | None,
                         ) -> Counted | None:
        """Count one partition's batch of a fetch. ``position`` (when the fetch reached past
        its last record) makes the offsets before it read: a transaction's marker and the
        records of an aborted transaction are read, never counted, and acknowledged with the
        batch, so the progress record, the committed offset and /health's lag pass them.

        With ``BUCKET_APP_KERNEL=native`` a fetch arrives as the one :class:`KernelFetch` the
        kernel read: counted as such, its offsets acknowledged like a batch's, and the batch's
        event made from its last offset (as for a batch of markers only)."""
        consumer = self.consumer
        read = consumer.read_offset(tp)
        native = batch[0] if len(batch) == 1 and isinstance(batch[0], KernelFetch) else None
        if native is not None and read is not None and (native.first_offset or 0) < read:
            batch, native = native.unpacked(), None  # fetched again after a seek: rare
        fresh: Any = native if native is not None else after_read_offset(consumer, tp, batch)
        last_record = native.last_offset if native is not None else (
            fresh[-1].offset if fresh else None)
        passed = None
        if position is not None:
            last = read if last_record is None else last_record
            if last is None or position - 1 > last:
                passed = position - 1
        if last_record is None and passed is None:
            return None
        # a fetch the kernel read hands over its offsets, not its records; offsets without a
        # hole go as a range, acknowledged as one run (bucket_app.seam.runs)
        offsets = native.record_offsets() if native is not None else _offsets(fresh)
        if passed is not None:
            offsets = _then(offsets, passed)
        event = self._event_for(tp, fresh[-1] if native is None and fresh
                                else Passed(offsets[-1]))
        consumer.hold(event.message)
        token = set_current_event(event)
        try:
            changes, dead = self.handle(tp.partition, fresh,
                                        None if passed is None else passed + 1)
        finally:
            reset_current_event(token)
        consumer.set_read_offset(tp, offsets[-1])
        return Counted(tp, offsets, read, event.message, changes, dead)

    async def _send(self, batch: Counted) -> None:
        """Send a counted batch's dead letters, then, once the brokers have them, its
        changelog records; acknowledge its offsets once those are in."""
        try:
            if batch.dead and self.dead_letters is not None:
                await self.dead_letters.send(batch.dead)
            futures = await self.sender.send(batch.tp.partition, batch.changes)
        except BaseException:
            self._release(batch)
            raise
        if not futures:
            self._settle(batch)
            return

        def done(result: asyncio.Future[Any]) -> None:
            if result.cancelled() or result.exception() is not None:
                self._release(batch)
                if self.app.should_stop:
                    return  # sends failed as the worker stops: the consumer says what
                error = result.exception() if not result.cancelled() else "cancelled"
                log.error("changelog write for %s failed, its offsets stay uncommitted: %r",
                          batch.tp, error)
                asyncio.ensure_future(self.app.crash(RuntimeError(
                    f"changelog write for {batch.tp} failed: {error!r}")))
                return
            self._settle(batch)

        asyncio.gather(*futures).add_done_callback(done)

    def _settle(self, batch: Counted) -> None:
        self.consumer.ack_offsets(batch.tp, batch.offsets, batch.previous)
        self._release(batch)

    def _release(self, batch: Counted) -> None:
        self.consumer.release(batch.sentinel)

    def _event_for(self, tp: TP, record: Any) -> Event:
        """A Faust event for a record of ``tp``: Faust routes table writes by the current one.

        Source records arrive as aiokafka decoded them (see
        :func:`bucket_app.seam.fetch.bulk_source_records`); Faust's message is built from a
        full ConsumerRecord.
        """
        key, value = record.key, record.value
        full = ConsumerRecord(
            tp.topic, tp.partition, record.offset, record.timestamp, record.timestamp_type,
            key, value, record.checksum, -1 if key is None else len(key),
            -1 if value is None else len(value), tuple(record.headers))
        message = self.consumer.to_message(tp, full)
        return Event(self.app, record.key, record.value, None, message)

    async def _deliver(self, tp: TP, batch: list[Any], generation: int) -> bool:
        """Faust's own per-message path, for records of topics other than the source.

        Like Faust's ``getmany``, it stops (returning False) as soon as the flow stops or the
        generation changes: a changelog record fetched for a standby before a rebalance and
        handed to table recovery after it would overwrite the newer value that recovery just
        restored (tests/integration/test_replicas.py lost counts without this check).
        """
        return await self.consumer.deliver(tp, batch, generation)

    async def _ebb(self) -> None:
        """Wait while Faust's producer buffer holds more than PRODUCER_HIGH changelog writes."""
        buffer = self.app.producer.buffer
        if buffer.size <= PRODUCER_HIGH:
            return
        while buffer.size > PRODUCER_LOW and not self.consumer.should_stop:
            await buffer.flush_atmost(buffer.size - PRODUCER_LOW)


def _offsets(records: Sequence[Any]) -> Sequence[int]:
    """The records' offsets: a range when they have no hole."""
    if records and records[-1].offset - records[0].offset == len(records) - 1:
        return range(records[0].offset, records[-1].offset + 1)
    return list(map(_OFFSET, records))


def _then(offsets: Sequence[int], passed: int) -> Sequence[int]:
    """``offsets`` and then ``passed`` (above them)."""
    if isinstance(offsets, range) and offsets and passed == offsets.stop:
        return range(offsets.start, passed + 1)
    return [*offsets, passed]
