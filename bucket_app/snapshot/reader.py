"""Snapshot: the counts table's changelog, read in full, materialized into one SQLite table.

Every replica runs a :class:`SnapshotReader`: an aiokafka consumer outside any consumer group that
is assigned every partition of the ``counts`` changelog, so each replica's snapshot holds all
partitions, whoever owns them. Changelog records carry the full per-partition value
``[count, max_offset]`` of one window-key, or a tombstone when retention removed it
(:mod:`bucket_app.snapshot.codec`); the store sums the partitions of a key into one row. Each
refresh is applied by :class:`~bucket_app.snapshot.store.SnapshotStore` in one SQLite
transaction on a WAL-mode file, so a reader sees the previous refresh or the next one, never half
of one; each refresh bumps the generation that the seed called RST_ID. The worker's SQLite
writes run in a child process (:mod:`bucket_app.snapshot.process`), called from one thread, off
the event loop. What the web views read of it is its
:class:`~bucket_app.snapshot.state.ReaderState`.

The snapshot outlives the worker: each refresh stores with it the changelog offsets it reflects
(a :class:`~bucket_app.snapshot.checkpoint.Checkpoint`), and a restarted reader seeks to them and
reads only the changelog's tail, unless the store finds the files do not provably match this
state and changelog, in which case they are rebuilt from the beginning as before.

This module is the only one of snapshot/'s that the SQLite child must not import: it is the
Kafka side. The names re-exported below are for callers written before the split.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError

from bucket_app import diskspace, identity
from bucket_app.counting.lifecycle import Lifecycle
from bucket_app.errors import SnapshotDiverged, SnapshotError, SnapshotFull
from bucket_app.identity import COUNTS_TABLE
from bucket_app.kafka import security as kafka_security
from bucket_app.seam import clients
from bucket_app.settings import Settings
from bucket_app.snapshot.checkpoint import Checkpoint
from bucket_app.snapshot.codec import Pending, Progress, decode_records
from bucket_app.snapshot.state import ReaderState
from bucket_app.snapshot.store import SnapshotStore, store_config
from bucket_app.snapshot.thread import run_in_own_thread

__all__ = ["COUNTS_TABLE", "Checkpoint", "Pending", "Progress", "ReaderState", "SnapshotReader",
           "SnapshotStore", "changelog_topic", "decode_records", "store_config"]

log = logging.getLogger(__name__)

# changes held before a refresh is due anyway: bounds the reader's memory while it catches up
MAX_PENDING = 50_000
#: what the snapshot's writes are called in the log and /health (bucket_app.diskspace)
SNAPSHOT = "the SQLite snapshot"
# Kafka's default delete.retention.ms, used when the changelog's own cannot be read.
DEFAULT_TOMBSTONE_RETENTION_S = 86_400.0


def changelog_topic(settings: Settings) -> str:
    """Faust's changelog topic of the counts table
    (:func:`bucket_app.identity.counts_changelog`)."""
    return identity.counts_changelog(settings)


#: between two attempts to read the changelog's topic id
TOPIC_ID_RETRY_S = 0.5


async def read_topic_id(consumer: AIOKafkaConsumer, topic: str,
                        stopping: threading.Event) -> str | None:
    """``topic``'s id, asked through ``consumer``'s client until a broker answers (or until
    ``stopping``); None when the brokers have no topic ids (Kafka before 2.8) or when
    stopped first."""
    while not stopping.is_set():
        try:
            found = await clients.topic_ids(consumer, [topic])
        except IncompatibleBrokerVersion as exc:
            log.warning("snapshot: the brokers give no topic ids (%s); a recreated changelog "
                        "is recognised by its offsets only", exc)
            return None
        except (KafkaError, OSError) as exc:
            log.debug("snapshot: topic id of %s not read yet: %s", topic, exc)
        else:
            if topic in found:
                return found[topic]
        await asyncio.sleep(TOPIC_ID_RETRY_S)
    return None


class SnapshotReader:
    """Reads the counts changelog of all partitions and refreshes the SQLite snapshot."""

    def __init__(self, settings: Settings, partitions: int, store: Any) -> None:
        """``store`` is a :class:`~bucket_app.snapshot.store.SnapshotStore` or anything with its
        ``open`` and
        ``apply_records`` (the worker's is a
        :class:`~bucket_app.snapshot.process.SnapshotProcess`)."""
        self.settings = settings
        self.partitions = partitions
        self.topic = identity.counts_changelog(settings)
        self.store = store
        self.state = ReaderState(partitions)
        self.lifecycle = Lifecycle.of(settings)
        self.source = [TopicPartition(settings.topic, p) for p in range(partitions)]
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="bucket_app-snapshot")
        # set from the web server's thread, polled by the reader's loop
        self._refresh_now = threading.Event()
        self._stopping = threading.Event()

    def closing_time(self, now_s: float, progress: Mapping[int, Progress] | None = None,
                     ) -> float:
        """The event time every source partition has reached, as this snapshot knows it."""
        reached = self.state.progress if progress is None else progress
        return self.lifecycle.closing_time(reached, self.partitions, now_s,
                                           self.state.waiting(reached))

    async def in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def request_refresh(self) -> None:
        self._refresh_now.set()

    async def run_in_thread(self) -> None:
        """:meth:`run` on a thread and event loop of its own; returns or raises as it does.

        On the worker's main loop each await of the reader (a fetch, a position, a refresh,
        the source's end offsets) waited behind the batch being counted there, so counts became
        visible later than the refresh interval promised (docs/performance.md). Cancelled, it
        stops the reader.
        """
        await run_in_own_thread(self.run, self._stopping, "bucket_app-snapshot-reader")

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=list(self.settings.brokers),
            group_id=None,
            enable_auto_commit=False,
            # The worker writes the changelog without transactions (at least once, each
            # increment idempotent per source offset), so both levels read the same records
            # of it, as Kafka Streams' restore consumer does outside exactly-once. This one
            # also makes end_offsets of the source topic its high watermark: records of an
            # open transaction are lag (/health) until it ends.
            isolation_level="read_uncommitted",
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **kafka_security.client_kwargs(self.settings),
        )
        await consumer.start()
        try:
            tps = await self._partitions(consumer)
            if not tps:  # stopped before the changelog topic appeared
                return
            consumer.assign(tps)
            topic_id = await read_topic_id(consumer, self.topic, self._stopping)
            open_store = functools.partial(self.store.open, topic_id=topic_id)
            diverged = False
            while not self._stopping.is_set():
                bounds = await self._bounds(consumer, tps)
                if bounds is None:
                    return
                try:
                    checkpoint = await self.in_thread(open_store, bounds,
                                                      await self._max_age_s())
                except SnapshotError as exc:
                    if not diverged:
                        raise
                    await self._wait_for_room(exc)  # still no room to rebuild in
                    continue
                self._restore(checkpoint)
                for tp in tps:
                    if tp.partition in checkpoint.offsets:
                        consumer.seek(tp, checkpoint.offsets[tp.partition])
                    else:
                        await consumer.seek_to_beginning(tp)
                self.state.started = True
                try:
                    await self._loop(consumer, tps)
                    return
                except SnapshotDiverged as exc:
                    # a full disk took the refresh in one of the two files only: the files
                    # no longer agree, so the snapshot is rebuilt from the changelog (open
                    # sees the commit numbers differ) once there is room
                    diverged = True
                    await self._wait_for_room(exc)
        finally:
            await consumer.stop()

    async def _wait_for_room(self, exc: SnapshotError) -> None:
        """Say that the snapshot waits for disk space to be rebuilt (FULL says it once), and
        wait before the next try."""
        diskspace.FULL.failed(SNAPSHOT, str(self.store.path), exc,
                              "the snapshot is rebuilt once there is room")
        await asyncio.sleep(diskspace.RETRY_S)

    async def _bounds(self, consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition],
                      ) -> dict[int, tuple[int, int]] | None:
        """Each changelog partition's (beginning, end) offsets; None when stopped first."""
        while not self._stopping.is_set():
            with contextlib.suppress(KafkaError):
                beginnings = await consumer.beginning_offsets(tps)
                ends = await consumer.end_offsets(tps)
                return {tp.partition: (beginnings[tp], ends[tp]) for tp in tps}
            await asyncio.sleep(0.5)
        return None

    async def _max_age_s(self) -> float:
        """How old a snapshot may be and still be resumed: half the time the changelog keeps
        a tombstone (``delete.retention.ms``) after compaction reached it. A snapshot stopped
        longer than that could resume past a deletion it never read; half leaves the
        snapshot's own lag the other half."""
        try:
            retention_s = await asyncio.wait_for(self._tombstone_retention_s(), 10)
        except (KafkaError, OSError, LookupError, ValueError) as exc:  # TimeoutError too
            retention_s = DEFAULT_TOMBSTONE_RETENTION_S
            log.warning("snapshot: cannot read delete.retention.ms of %s (%s); assuming %.0f s",
                        self.topic, exc, retention_s)
        return retention_s / 2

    async def _tombstone_retention_s(self) -> float:
        admin = AIOKafkaAdminClient(bootstrap_servers=list(self.settings.brokers),
                                    request_timeout_ms=10_000,
                                    **kafka_security.client_kwargs(self.settings))
        await admin.start()
        try:
            (response,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, self.topic)])
            (resource,) = response.resources
            if resource[0]:
                raise LookupError(f"error {resource[0]}: {resource[1]}")
            for entry in resource[4]:  # (name, value, read_only, is_default, is_sensitive...)
                if entry[0] == "delete.retention.ms":
                    return int(entry[1]) / 1000
            raise LookupError("delete.retention.ms not in the topic's configuration")
        finally:
            await admin.close()

    def _restore(self, checkpoint: Any) -> None:
        """Take the reader's state from the snapshot resumed, and say what happened."""
        if not checkpoint.resumed:
            log.info("snapshot: rebuilding from the changelog: %s", checkpoint.reason)
            return
        log.info("snapshot: resuming generation %d (%d rows) at changelog offsets %s",
                 checkpoint.generation, checkpoint.rows,
                 {p: checkpoint.offsets[p] for p in sorted(checkpoint.offsets)})
        self.state.progress = dict(checkpoint.progress)
        self.state.closing_s = checkpoint.closing_s
        self.state.rows = checkpoint.rows
        self.state.refreshed_at_s = checkpoint.refreshed_at_s
        self.state.generation = checkpoint.generation

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while not self._stopping.is_set():
            with contextlib.suppress(KafkaError):
                await clients.refresh_metadata(consumer)
                found = consumer.partitions_for_topic(self.topic)
                if found:
                    return [TopicPartition(self.topic, p) for p in sorted(found)]
            await asyncio.sleep(0.5)
        return []

    async def _loop(self, consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]) -> None:
        pending = Pending()
        interval_s = self.settings.snapshot_interval_s
        last_refresh = time.monotonic()
        positions: dict[int, tuple[int, int]] = {}
        started, read, told = time.monotonic(), 0, False
        retry_at = 0.0  # after a refresh the disk had no room for
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=50_000)
            for records in batches.values():
                add = pending.add
                read += len(records)
                for record in records:
                    add(record.key, record.value)
            for tp in tps:
                position = await consumer.position(tp)
                high = consumer.highwater(tp)
                positions[tp.partition] = (position, high if high is not None else 0)
            due = (time.monotonic() - last_refresh >= interval_s or self._refresh_now.is_set()
                   or len(pending.records) >= MAX_PENDING) and time.monotonic() >= retry_at
            if due:
                self._refresh_now.clear()
                last_refresh = time.monotonic()
                batch, pending = pending, Pending()
                try:
                    await self._refresh(consumer, batch, positions)
                    diskspace.FULL.recovered(SNAPSHOT)
                except SnapshotFull as exc:
                    # rolled back: the files and their checkpoint are as before it, queries
                    # answer from them; the same records, and any read since, go in the next
                    pending = batch.then(pending)
                    retry_at = time.monotonic() + diskspace.RETRY_S
                    diskspace.FULL.failed(SNAPSHOT, str(self.store.path), exc,
                                          "queries answer from the snapshot as it is")
                if not told and self.state.caught_up:
                    told = True
                    log.info("snapshot: caught up with the changelog, %d records read in %.1f s "
                             "(generation %d, %s rows)", read, time.monotonic() - started,
                             self.state.generation, self.state.rows)

    async def _refresh(self, consumer: AIOKafkaConsumer, batch: Pending,
                       positions: Mapping[int, tuple[int, int]]) -> None:
        """Apply ``batch``, read up to ``positions``, to the store with its checkpoint."""
        progress = {**self.state.progress, **batch.progress}
        closing_s = self.closing_time(time.time(), progress)
        offsets = {p: position for p, (position, _) in positions.items()}
        self.state.generation = await self.in_thread(
            self.store.apply_records, batch.records, closing_s, offsets, progress)
        # replaced, not updated: the web server's thread reads these concurrently
        self.state.progress = progress
        self.state.closing_s = max(self.state.closing_s, closing_s)
        self.state.rows = getattr(self.store, "rows", None)
        self.state.changelog = dict(positions)
        with contextlib.suppress(KafkaError):
            ends = await consumer.end_offsets(self.source)
            self.state.source_end = {tp.partition: end for tp, end in ends.items()}
        self.state.refreshed_at_s = time.time()
