"""The Faust app: source topic in, windowed counts (RocksDB + changelog) out.

:func:`create_app` wires one :class:`faust.App` from :class:`~bucket_app.settings.Settings`: the
source topic (raw bytes; we decode ourselves), the tumbling-window ``counts`` table (which also
holds each source partition's progress: offset reached and event-time watermark), the counting
agent, the changelog-to-SQLite snapshot task and the web views. The agent is the only writer of
the table; it also sweeps expired buckets with changelog tombstones, while handling an event of
the partition it sweeps, because Faust routes table writes by the current event.
"""

from __future__ import annotations

import atexit
import gc
import logging
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from itertools import chain, islice
from operator import attrgetter
from pathlib import Path
from typing import Any

import faust
from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult, PartitionRecords
from aiokafka.errors import CorruptRecordException
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from bucket_app import identity, kafka_security
from bucket_app.changelog import ChangelogRecord, ChangelogSender, TableBatch
from bucket_app.counting import (
    GROUP_CHUNK,
    Classifier,
    Counter,
    KeyValues,
    PartitionProgress,
    RateLimitedLog,
)
from bucket_app.errors import BadInput
from bucket_app.intake import BatchIntake
from bucket_app.settings import Settings
from bucket_app.snapshot import COUNTS_TABLE, PROGRESS_KEY, progress_key
from bucket_app.snapshotproc import SnapshotProcess
from bucket_app.topics import source_partitions

log = logging.getLogger(__name__)

_VALUE, _OFFSET = attrgetter("value"), attrgetter("offset")

# The web server's thread waits for the GIL while the main loop counts; CPython hands it over
# after this long (default 5 ms), and an HTTP answer needs several hand-overs. SQL over
# 1,000,000 rows while ingesting: p99 46-48 ms at 1 ms, 30 and 35 ms at 0.5 ms; the counting
# rate the same within noise (drain A/B, three runs each).
SWITCH_INTERVAL_S = 0.0005
# The broker answers a fetch once it has FETCH_MIN_BYTES for it, or after FETCH_MAX_WAIT_MS
# (see batch_fetches): a steady stream is counted in batches of up to 0.2 s, a backlog in full
# fetches at once. A batch writes each window-key it touched once, so at 120,000 msg/s 2 MiB
# batches (0.2 s) write half as often as 1 MiB ones.
FETCH_MAX_WAIT_MS = 200
FETCH_MIN_BYTES = 2 * 1024 * 1024
# The most one fetch returns, all partitions together: the most one batch counts. With 4 MiB
# the worker's peak RSS in the 1,000,000-row benchmark was 406 MB, with 2 MiB 335 MB.
FETCH_MAX_BYTES = 2 * 1024 * 1024
# how often /health's view of this worker's partitions is refreshed
ASSIGNMENT_REFRESH_S = 0.25
# Allocations between young garbage collections (CPython's default is 700). A batch makes
# hundreds of thousands of short-lived records, lists and tuples; with the default they were
# promoted and a full collection ran every 0.3-2 s, holding the GIL 50-85 ms each time
# (measured with gc.callbacks in the 1,000,000-row SQL benchmark), and every HTTP answer
# waiting on it.
GC_YOUNG_THRESHOLD = 100_000
# RocksDB per partition database. Faust's defaults (three 64 MiB memtables and a 2 GiB block
# cache, each per database) let a worker with a million live window-keys grow past 600 MB.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 * 1024 * 1024,
}


def seek_uncommitted_to_beginning(source_topic: str) -> None:
    """Make Faust's seek-to-committed re-read source partitions that have no committed offset.

    Faust drops records it fetched while a rebalance was under way and relies on seeking back
    to the committed offset afterwards; aiokafka's ``seek_to_committed`` skips a partition
    whose committed offset is missing or 0, so those records were silently lost (seen here: a
    replica that joined mid-stream never counted its partitions). Re-reading such a partition
    from its beginning is safe because counting is idempotent per source offset.
    """
    original = AIOKafkaConsumerThread.seek_to_committed

    async def seek_to_committed(self: AIOKafkaConsumerThread) -> Any:
        committed = await original(self)
        fresh = [tp for tp, offset in committed.items()
                 if not offset and tp.topic == source_topic]
        if fresh:
            await self.call_thread(self._ensure_consumer().seek_to_beginning, *fresh)
        return committed

    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


def batch_fetches(min_bytes: int, max_wait_ms: int, max_bytes: int) -> None:
    """Make the broker batch the worker's fetches: answer once ``min_bytes`` are there for the
    fetch, or after ``max_wait_ms``, with at most ``max_bytes``.

    Each counted batch writes every window-key it touched once (RocksDB, the changelog, then
    the snapshot), so counting whatever arrived every few milliseconds would write the same
    keys many times a second. The broker's fetch wait batches without a pause in the worker:
    aiokafka has the next fetch in flight while a batch is counted, and a backlog is answered
    at once. A pause in the worker instead (0.2 s between fetches, skipped behind a backlog of
    a full fetch) capped a steady stream at about 100,000 msg/s, 20,000 records per pause:
    at 120,000 msg/s the counts fell behind by 3.5 s in 20 s, with the worker at 85% of a core.

    Each fetch is counted whole (``broker_max_poll_records`` is unset): records left unread
    keep aiokafka from fetching any partition of their broker for up to 0.1 s, and with
    20,000 records a batch the worker waited for fetches 25% of the time. ``max_bytes``
    bounds a batch instead.

    Faust builds the consumer with ``fetch_max_wait_ms=1500`` (a literal, not a setting) and
    aiokafka's ``fetch_min_bytes=1`` and ``fetch_max_bytes`` of 50 MiB.
    """
    original = AIOKafkaConsumerThread._create_worker_consumer

    def create(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_min_bytes = min_bytes
        consumer._fetch_max_wait_ms = max_wait_ms
        consumer._fetch_max_bytes = max_bytes
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


def bulk_source_records(source_topic: str) -> None:
    """Let aiokafka hand over the source topic's records a Kafka record batch at a time, as it
    decoded them.

    aiokafka unpacks a fetch through a generator that yields one record at a time, each built
    into a ConsumerRecord (eleven fields, a headers tuple, two ``len`` calls) and appended to
    the result one by one; the counting code reads three fields of each. For ``source_topic``
    the generator yields each record batch's decoded records (offset, timestamp, key, value,
    headers) as one list, and ``FetchResult.getall`` extends its result with them. The batch
    checks are aiokafka's own (CRC, aborted transactions, control batches, records below the
    fetch offset), and so is the fetch position after a batch. Other topics are unchanged.

    The source topic's records are only taken whole: the worker fetches with
    ``broker_max_poll_records`` unset (see :func:`batch_fetches`), and nothing calls
    ``getone``.
    """
    unpack, getall = PartitionRecords._unpack_records, FetchResult.getall

    def unpack_batches(self: PartitionRecords) -> Any:
        if self._tp.topic != source_topic:
            yield from unpack(self)
            return
        records = self._records
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                raise CorruptRecordException(f"Invalid CRC - {self._tp}")
            if self._isolation_level == READ_COMMITTED and batch.producer_id is not None:
                self._consume_aborted_up_to(batch.base_offset)
                if batch.is_control_batch and self._contains_abort_marker(batch):
                    self._aborted_producers.discard(batch.producer_id)
                if batch.is_transactional and batch.producer_id in self._aborted_producers:
                    self.next_fetch_offset = batch.next_offset
                    continue
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            decoded = []
            # chain: aiokafka's batch raises if asked for a record after its last one
            unread = chain(batch)
            # a C loop holds the interpreter lock throughout: a thousand records at a time
            while chunk := list(islice(unread, GROUP_CHUNK)):
                decoded.extend(chunk)
            if decoded and decoded[0].offset < self.next_fetch_offset:
                start = self.next_fetch_offset
                decoded = [record for record in decoded if record.offset >= start]
            if decoded:
                self.next_fetch_offset = decoded[-1].offset + 1
                yield decoded
            self.next_fetch_offset = batch.next_offset

    def getall_batches(self: FetchResult, max_records: int | None = None) -> list[Any]:
        tp = self._topic_partition
        if tp.topic != source_topic:
            return getall(self, max_records)  # type: ignore[no-any-return]
        if max_records is not None:
            raise RuntimeError("the source topic's records are fetched whole "
                               f"(max_records={max_records})")
        if not self.check_assignment(tp) or not self.has_more():
            return []
        fetched: list[Any] = []
        for decoded in self._partition_records:
            fetched.extend(decoded)
        self._update_position()
        self._partition_records = None
        return fetched

    PartitionRecords._unpack_records = unpack_batches  # type: ignore[method-assign]
    FetchResult.getall = getall_batches  # type: ignore[method-assign]


class CountsTable(faust.Table):
    """Faust's tumbling-window Table, with Faust's own window expiry turned off.

    faust-streaming 0.15.3's compiled TumblingWindow reports ``expires == 0.0`` rather than None,
    so the stock table would push a heap entry per update (unbounded memory) and create the
    changelog with ``cleanup.policy=compact,delete`` and the broker's default retention, which
    drops buckets that were not updated for a week. Retention here is bucket_app's: the agent
    deletes expired window-keys with changelog tombstones, so the changelog is compact-only.
    """

    def _should_expire_keys(self) -> bool:
        return False

    def using_window(self, window: Any, *, key_index: bool = False) -> Any:
        wrapper = super().using_window(window, key_index=key_index)
        self._changelog_deleting = False
        return wrapper


class Processor:
    """Per-event logic of the agent: classify, count once, track progress, sweep."""

    def __init__(self, app: faust.App, settings: Settings, counts: Any) -> None:
        self.app = app
        self.settings = settings
        self.counts = counts
        self.classifier = Classifier(settings)
        self.counter = Counter(settings)
        self.bad_log = RateLimitedLog()
        self.assignment: dict[str, Any] = {
            "ready": False, "assigned": [], "paused": [], "fetching": []}

    def refresh_assignment(self) -> None:
        """Record this worker's source partitions: assigned, paused by Faust (recovery,
        rebalance), fetching, and whether table recovery is done.

        Runs on the main event loop (a timer); the web server's thread only reads the result,
        because touching Faust's lazily created services from that thread binds them to the
        wrong event loop (seen here: the worker crashed at start-up).
        """
        consumer: Any = self.app.consumer  # Faust's consumer; these sets are not in ConsumerT
        topic = self.settings.topic
        assigned = self._partitions_of(consumer.assignment(), topic)
        paused = self._partitions_of(consumer._paused_partitions, topic)
        fetching = self._partitions_of(consumer._get_active_partitions(), topic)
        tables: Any = self.app.tables  # TableManager; recovery is not in TableManagerT
        ready = bool(tables.recovery.completed.is_set())
        self.assignment = {"ready": ready, "assigned": assigned, "paused": paused,
                           "fetching": fetching}

    @staticmethod
    def _partitions_of(tps: Any, topic: str) -> list[int]:
        return sorted(tp.partition for tp in tps if tp.topic == topic)

    def forget(self, partitions: set[int]) -> None:
        """Drop in-memory progress of partitions this worker no longer owns."""
        for partition in partitions:
            self.counter.progress.pop(partition, None)

    def _state(self, partition: int) -> PartitionProgress:
        state = self.counter.progress.get(partition)
        if state is None:
            stored = self.counts.get(progress_key(partition))
            state = PartitionProgress()
            if stored is not None:
                state.offset, state.watermark_s = int(stored[0]), float(stored[1])
            self.counter.progress[partition] = state
        return state

    def count_batch(self, partition: int, records: Sequence[Any],
                    table: KeyValues | None = None) -> None:
        """Count one fetched batch of a source partition, each record exactly once.

        ``records`` are aiokafka records in offset order. ``table`` is the partition's view of
        the counts table for this batch (:class:`~bucket_app.changelog.TableBatch`, which the
        worker then applies to RocksDB and the changelog at once); by default the table itself.
        Records are grouped per window-key first, so the table sees one read and one write per
        window-key per batch, then one progress write. A batch the classifier can group whole
        (:meth:`~bucket_app.counting.Classifier.group_json_epoch`: all well-formed, none a
        replay, none past retention) is grouped in one go; any other is counted record by record.
        """
        state = self._state(partition)
        counter = self.counter
        counter.batches += 1
        counts = self.counts if table is None else table
        now_s = time.time()
        group = self.classifier.group
        grouped = None
        if group is not None and records and records[0].offset > state.offset:
            grouped = group(list(map(_VALUE, records)), list(map(_OFFSET, records)), partition,
                            now_s)
        if grouped is not None and counter.admits_all(state, grouped):
            counter.add_grouped(counts, grouped)
            state.watermark_s = max(state.watermark_s, grouped.max_time_s)
            last = records[-1].offset
        else:
            last = self._count_each(state, partition, records, counts, now_s)
            if last == state.offset:
                return
        state.offset = last
        counts[progress_key(partition)] = [last, max(state.watermark_s, 0.0)]
        if time.monotonic() - state.last_sweep_mono >= self.settings.clean_freq_s:
            self.sweep(partition, counts)

    def _count_each(self, state: PartitionProgress, partition: int, records: Sequence[Any],
                    counts: KeyValues, now_s: float) -> int:
        """Count a batch record by record (each gets its own answer: replay, bad input, past
        retention); return the offset of the last record that was not a replay."""
        done = state.offset
        counter = self.counter
        locate = self.classifier.locate
        admit = counter.admit_at
        pending: dict[Any, list[int]] = {}
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
                admit(state, start, ts)
            except BadInput as exc:
                counter.record_skip(exc.reason)
                self.bad_log.bad_record(exc, self.settings.topic, partition, offset)
                continue
            offsets = pending.get(key)
            if offsets is None:
                pending[key] = [offset]
            else:
                offsets.append(offset)
        for key, offsets in pending.items():
            counter.add(counts, key, offsets)
        return last

    def count_and_write(self, partition: int, records: Sequence[Any]) -> list[ChangelogRecord]:
        """:meth:`count_batch` into a :class:`TableBatch`, applied to RocksDB; returns the
        changelog records for :class:`~bucket_app.intake.BatchIntake` to send."""
        batch = TableBatch(self.counts.data, partition)
        self.count_batch(partition, records, batch)
        return batch.apply()

    def sweep(self, partition: int, table: KeyValues | None = None) -> int:
        """Delete this partition's buckets past retention, each with a changelog tombstone."""
        state = self._state(partition)
        state.last_sweep_mono = time.monotonic()
        cutoff_s = self.counter.expired_before_s(partition)
        doomed = [(raw, key) for raw, key in self._keys_of(partition) if key[1][1] < cutoff_s]
        key_index = self.counts.data._key_index
        counts = self.counts if table is None else table
        for raw, key in doomed:
            del counts[key]
            # Faust's store remembers every key it ever set in memory and never forgets one
            key_index.pop(raw, None)
        if doomed:
            log.info("retention removed %d buckets of partition %d ending before %.0f",
                     len(doomed), partition, cutoff_s)
        return len(doomed)

    def _keys_of(self, partition: int) -> Iterator[tuple[bytes, Any]]:
        # Faust's store has no per-partition key iterator; this reads the partition's RocksDB.
        store = self.counts.data
        db = store._db_for_partition(partition)
        for raw_key in store._visible_keys(db):
            key = store._decode_key(raw_key)
            if key[0] == PROGRESS_KEY:
                continue
            yield raw_key, (tuple(key[0]), tuple(key[1]))


def quiet_debug_logging() -> None:
    """Stop building log records that no handler will write.

    At ``-l warn`` (Faust's default) Faust's worker sets the root logger to DEBUG so that its
    start-up spinner turns on every record, and leaves it there: every ``log.debug`` call in
    Faust and aiokafka then builds a LogRecord that the handlers drop (9% of the main thread
    while counting, in a profile here). This raises the root level to the lowest level a real
    handler writes.
    """
    root = logging.getLogger()
    levels = [h.level for h in root.handlers if type(h).__name__ != "SpinnerHandler"]
    if levels and root.level < min(levels):
        root.setLevel(min(levels))


def guard_local_state(settings: Settings, tabledir: Path) -> None:
    """Say which state this worker counts under, and wipe that state's local RocksDB tables if
    its previous worker on this data_dir did not stop cleanly.

    A worker writes RocksDB at once but its changelog records later; after SIGKILL the local
    store can hold increments the changelog never got, and such a worker would never send them
    (it skips the replayed events as already counted). Starting from the changelog instead makes
    it the single truth: recovery rebuilds the store and the replay counts what it lacks.

    Local tables, marker and changelog all belong to one state (:mod:`bucket_app.identity`):
    a worker whose bound settings changed counts under another state, in another ``tabledir``,
    and leaves the old one as it was. ``<data_dir>/tables-owner`` names the state the last
    worker on this data_dir counted under, so the start-up line can say what changed.
    """
    marker = identity.running_marker(settings)
    owner = settings.data_dir / identity.OWNER_FILE
    owned_by = owner.read_text() if owner.exists() else None
    # Faust has not set up logging yet at this point of start-up: say it on stderr.
    print("bucket_app: " + identity.startup_line(settings, owned_by, COUNTS_TABLE),
          file=sys.stderr, flush=True)
    if marker.exists() and tabledir.exists():
        print(f"bucket_app: the previous worker of state {identity.state_id(settings)} on "
              f"{settings.data_dir} did not stop cleanly; rebuilding its tables from the "
              "changelog", file=sys.stderr, flush=True)
        shutil.rmtree(tabledir)
    # Faust creates the tabledir itself, but not its parents.
    tabledir.parent.mkdir(parents=True, exist_ok=True)
    owner.write_text(identity.owner_record(settings))
    marker.write_text("a worker is running or did not stop cleanly\n")

    def clean_exit() -> None:
        marker.unlink(missing_ok=True)

    atexit.register(clean_exit)


class BucketApp(faust.App):
    """A Faust app whose consumer counts the source topic through :class:`BatchIntake`."""

    intake: BatchIntake | None = None
    processor: Processor | None = None  # set by create_app
    source_topic_name: str = ""

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        processor = self.processor
        assert processor is not None, "create_app sets the processor before the worker starts"
        sender = ChangelogSender(self, processor.counts.data, processor.counts.changelog_topic_name)
        self.intake = BatchIntake(consumer, self.source_topic_name, processor.count_and_write,
                                  sender)
        self.intake.install()
        return consumer


def create_app(settings: Settings, partitions: int | None = None) -> faust.App:
    """Build the Faust app for ``settings``; ``partitions`` skips the Kafka probe when known."""
    from bucket_app import snapshot, web  # noqa: PLC0415 - they import this module's names

    n_partitions = partitions if partitions is not None else source_partitions(settings)
    seek_uncommitted_to_beginning(settings.topic)
    batch_fetches(FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS, FETCH_MAX_BYTES)
    bulk_source_records(settings.topic)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = BucketApp(
        # consumer group and changelog prefix: a new one when the bound settings change
        identity.state_id(settings),
        broker=settings.broker_url,
        # TLS / SASL for Faust's consumer, producer and the topics they create
        broker_credentials=kafka_security.faust_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        tabledir=str(identity.tabledir(settings)),
        topic_partitions=n_partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        producer_acks=-1,
        # Changelog writes go out in batches instead of one produce request per table write.
        producer_linger=0.02,
        producer_max_batch_size=512 * 1024,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 4),
        broker_commit_livelock_soft_timeout=300.0,
        stream_processing_timeout=20.0,
        # HTTP answers from its own thread and event loop, so a query does not wait behind
        # counting batches on the main loop (it only shares the GIL; see SWITCH_INTERVAL_S).
        web_in_thread=True,
        # Each fetch is counted whole (see batch_fetches).
        broker_max_poll_records=None,
        # Commit on the commit_interval timer (2.8 s) only: a commit flushes the changelog
        # producer and, when triggered by the ack count, stalls the fetch loop while it does.
        broker_commit_every=1_000_000,
        consumer_max_fetch_size=4 * 1024 * 1024,
        # No standbys (Kafka Streams' default too): a standby's changelog records share the
        # source consumer and are delivered one by one, and aiokafka sends no fetch to a broker
        # while any of its partitions has records left unread (for up to 0.1 s), so standbys
        # stalled the counting.
        # 2 workers went from 0.7x one worker to 2.5x; a failover recovers from the changelog.
        table_standby_replicas=0,
    )
    source = app.topic(
        settings.topic, key_serializer="raw", value_serializer="raw", partitions=n_partitions,
    )
    counts = app.tables.add(CountsTable(
        app, name=COUNTS_TABLE, default=None, partitions=n_partitions,
        beacon=app.tables.beacon,
        options=ROCKSDB_OPTIONS,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        help="[count, max source offset] per ((partition, *mapped values), window range); "
        "[offset, watermark] per source partition under (__progress__, partition)",
    )).tumbling(settings.bucket_interval_s)
    table: Any = counts.table  # changelog_topic_name is not in TableT
    if table.changelog_topic_name != snapshot.changelog_topic(settings):
        raise RuntimeError(f"Faust names the changelog {table.changelog_topic_name}, "
                           f"bucket_app reads {snapshot.changelog_topic(settings)}")
    processor = Processor(app, settings, counts.table)
    app.processor = processor
    app.source_topic_name = settings.topic
    guard_local_state(settings, Path(app.conf.tabledir))

    @app.agent(source, name="bucket_app.count")
    async def count(stream: faust.StreamT) -> None:
        # The agent subscribes the source topic (group membership, table recovery and changelog
        # partitions follow from it); its records reach processor.count_batch through the
        # BatchIntake installed on the consumer, so this stream stays empty.
        async for event in stream.events():
            raise RuntimeError(
                f"source record {event.message.tp}@{event.message.offset} bypassed BatchIntake")

    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        processor.forget({tp.partition for tp in revoked if tp.topic == settings.topic})

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    @app.timer(ASSIGNMENT_REFRESH_S)
    async def refresh_assignment() -> None:
        processor.refresh_assignment()

    @app.task
    async def quiet_logging() -> None:
        quiet_debug_logging()

    @app.task
    async def freeze_start_up_objects() -> None:
        # What exists once the worker has started lives as long as it does: keep it out of
        # every full collection (see GC_YOUNG_THRESHOLD).
        gc.freeze()

    reader = snapshot.SnapshotReader(
        settings, n_partitions, SnapshotProcess(snapshot.store_config(settings)))

    @app.task
    async def run_snapshot() -> None:
        await reader.run_in_thread()

    web.register(app, settings, reader, processor)
    app.bucket_processor = processor  # type: ignore[attr-defined]
    app.bucket_snapshot = reader  # type: ignore[attr-defined]
    return app
