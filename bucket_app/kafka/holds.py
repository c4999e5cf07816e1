"""The source partitions the intake holds back: those whose records need schema ids the
registry has not given yet, and all of them while a full disk refuses the tables' writes.

A held partition is paused with Faust's own pause (as table recovery uses) and, for the
registry, sought back to its batch's first record, so nothing of it is counted or acknowledged
until it resumes and its records come again: none is skipped for the outage.
:class:`Holds` keeps which partitions are held and why; :class:`bucket_app.kafka.intake.BatchIntake`
owns one and calls it around each fetch (the intake's docstring says when).
"""

from __future__ import annotations

import logging
from operator import attrgetter
from time import monotonic
from typing import Any

from faust.types import TP

from bucket_app import diskspace
from bucket_app.counting.kernel import KernelFetch
from bucket_app.kafka.changelog import ChangelogSender
from bucket_app.kafka.registry import FETCH_WAIT_S, WriterSchemas
from bucket_app.seam.consumer import SeamConsumer

log = logging.getLogger(__name__)

_VALUE = attrgetter("value")


class Holds:
    """The source partitions held back, and the reason counting waits while any are."""

    def __init__(self, consumer: SeamConsumer, topic: str, sender: ChangelogSender,
                 schemas: WriterSchemas | None) -> None:
        self.consumer = consumer
        self.app = consumer.app
        self.topic = topic
        self.sender = sender
        self.schemas = schemas
        #: source partitions paused until the registry gives these schema ids
        self.held: dict[TP, set[int]] = {}
        #: why counting waits, while partitions are held (read by /health's thread)
        self.degraded: str | None = None
        #: source partitions paused while the tables' writes wait for disk space
        self.disk_held: set[TP] = set()
        self._disk_retry_at = 0.0

    async def with_schemas(self, records: dict[TP, list[Any]], generation: int,
                            ) -> dict[TP, list[Any]] | None:
        """The fetch without the partitions whose schema ids the registry could not give
        (those are held); None when the flow stopped or the generation changed meanwhile (the
        fetch is then dropped, and Faust's seek to the committed offsets brings it again)."""
        assert self.schemas is not None
        consumer = self.consumer
        countable = consumer.active_partitions() | consumer.buffered_partitions()
        wanted: dict[TP, tuple[int, set[int]]] = {}
        for tp, batch in records.items():
            if tp.topic != self.topic or tp not in countable:
                continue
            native = batch[0] if len(batch) == 1 and isinstance(batch[0], KernelFetch) else None
            if native is not None:
                # the kernel counted only values whose ids it has plans for, all fetched: the
                # ids to fetch are among those it left to Python
                ids = self.schemas.missing(record.value for record in native.unsure)
                read = consumer.read_offset(tp)
                first = max(native.first_offset or 0, read or 0)
            else:
                fresh = after_read_offset(consumer, tp, batch)
                ids = self.schemas.missing(map(_VALUE, fresh)) if fresh else set()
                first = fresh[0].offset if fresh else 0
            if ids:
                wanted[tp] = (first, ids)
        if not wanted:
            return records
        await self.schemas.fetch(set().union(*(ids for _, ids in wanted.values())),
                                 FETCH_WAIT_S)
        if not consumer.flow_active or self.app.consumer_generation_id != generation:
            await seek_back(consumer)
            return None
        kept = dict(records)
        for tp, (first, ids) in wanted.items():
            still = ids.difference(self.schemas)
            if still:
                del kept[tp]
                await self._hold(tp, first, still)
        return kept

    async def _hold(self, tp: TP, offset: int, ids: set[int]) -> None:
        """Pause ``tp`` from ``offset`` (not counted, not acknowledged) until ``ids`` are
        fetched."""
        tp = TP(tp.topic, tp.partition)  # Faust's resume_partitions keeps what it is given
        await self.consumer.seek(tp, offset)
        self.consumer.pause_partitions({tp})
        self.held.setdefault(tp, set()).update(ids)
        self._say_degraded()

    async def release_held(self) -> None:
        """Resume the held partitions once the registry gives the ids they wait for."""
        schemas = self.schemas
        assert schemas is not None
        # Faust's stall detector would report a held partition as a hung stream every few
        # seconds: it waits on purpose (the reason is in /health)
        monitor = self.app.monitor
        if monitor is not None:
            now = monotonic()
            monitor.stream_inbound_time.update(dict.fromkeys(self.held, now))
        if not await schemas.fetch(set().union(*self.held.values()), 0):
            self._say_degraded()
            return
        tables: Any = self.app.tables  # recovery is not in TableManagerT
        if not tables.recovery.completed.is_set():
            return  # recovery resumes every active partition when it is done
        assigned = self.consumer.assignment()
        self.consumer.resume_partitions({tp for tp in self.held if tp in assigned})
        log.info("schema ids %s fetched; partitions %s resume",
                 sorted(set().union(*self.held.values())),
                 sorted(tp.partition for tp in self.held))
        self.held.clear()
        self.degraded = None

    def pause_for_disk(self) -> None:
        """Stop fetching the source while RocksDB has no room for acknowledged writes.

        Called after a fetch was counted: what aiokafka had not yet handed over is fetched
        again from its position on resume, so pausing loses nothing, and counting what was
        handed over is safe (it waits in memory, staged, like any unwritten batch)."""
        consumer = self.consumer
        source = {TP(tp.topic, tp.partition) for tp in consumer.active_partitions()
                  if tp.topic == self.topic}
        if source:
            consumer.pause_partitions(source)
            self.disk_held |= source
            self._disk_retry_at = monotonic() + diskspace.RETRY_S

    def retry_disk(self) -> None:
        """Retry the writes a full disk refused (every RETRY_S); resume the source partitions
        once they are all written."""
        unacked = self.sender.unacked
        if unacked.stalled:
            if monotonic() < self._disk_retry_at:
                return
            self._disk_retry_at = monotonic() + diskspace.RETRY_S
            # Faust's stall detector would report a paused partition as a hung stream
            monitor = self.app.monitor
            if monitor is not None:
                monitor.stream_inbound_time.update(dict.fromkeys(self.disk_held, monotonic()))
            if not unacked.retry():
                return
        if not self.disk_held:
            return
        tables: Any = self.app.tables  # recovery is not in TableManagerT
        if tables.recovery.completed.is_set():  # else recovery resumes them when done
            assigned = self.consumer.assignment()
            self.consumer.resume_partitions({tp for tp in self.disk_held if tp in assigned})
        log.info("tables written again; source partitions %s resume",
                 sorted(tp.partition for tp in self.disk_held))
        self.disk_held.clear()

    def _say_degraded(self) -> None:
        assert self.schemas is not None
        partitions = ", ".join(str(tp.partition) for tp in sorted(self.held))
        ids = ", ".join(map(str, sorted(set().union(*self.held.values()))))
        why = self.schemas.outage or "no answer yet"
        self.degraded = (f"schema registry unavailable ({why}); source "
                         f"partitions {partitions} wait for schema ids {ids}")


def after_read_offset(consumer: SeamConsumer, tp: TP, batch: list[Any]) -> list[Any]:
    """``batch`` without the records below ``tp``'s read offset: Faust drops those (they are
    fetched again after a seek)."""
    read = consumer.read_offset(tp)
    if read is None or not batch or batch[0].offset >= read:
        return batch
    return [record for record in batch if record.offset >= read]


async def seek_back(consumer: SeamConsumer) -> None:
    """Faust's seek to the committed offsets, after a fetch returned while the flow stopped."""
    try:
        await consumer.perform_seek()
    except Exception as exc:  # noqa: BLE001 - Faust's getmany logs and goes on, as here
        log.warning("exception performing seek when flow not active %r", exc)
