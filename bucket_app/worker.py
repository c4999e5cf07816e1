"""The Faust app: source topic in, windowed counts (RocksDB + changelog) out.

:func:`create_app` wires one :class:`faust.App` from :class:`~bucket_app.settings.Settings`: the
source topic (raw bytes; we decode ourselves), the tumbling-window ``counts`` table (which also
holds each source partition's progress: offset reached and event-time watermark) and the
counting agent; everything else the worker runs (snapshot reader, SQL processes, samplers, web
routes) is its :class:`~bucket_app.parts.Parts`, started and stopped with the app. The agent is
the only writer of the table; it also sweeps expired buckets with changelog tombstones, while
handling an event of the partition it sweeps, because Faust routes table writes by the current
event. Process-wide tuning (GIL switch interval, garbage collector, glibc's mmap threshold and
arenas, broker-outage log filter) is applied once, when this module loads; the heap is trimmed on a
timer (:mod:`bucket_app.allocator`).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from bucket_app import allocator, identity
from bucket_app.counting.decode import WriterSchema
from bucket_app.counting.kernel import KernelFetch, NativeKernel
from bucket_app.errors import SettingsError
from bucket_app.kafka import brokerlog, codecs
from bucket_app.kafka import security as kafka_security
from bucket_app.kafka.changelog import ChangelogSender
from bucket_app.kafka.deadletter import DeadLetterSender
from bucket_app.kafka.fetchsize import FetchSizes
from bucket_app.kafka.intake import BatchIntake
from bucket_app.kafka.recovery import RecoveryProgress
from bucket_app.kafka.registry import Reader, RegistryClient, WriterSchemas, wait_for_reader
from bucket_app.kafka.restore import restore_changelog
from bucket_app.kafka.topics import source_partitions
from bucket_app.localstate import guard_local_state
from bucket_app.parts import Parts
from bucket_app.processor import Processor
from bucket_app.seam import compat
from bucket_app.seam.app import SeamApp
from bucket_app.seam.consumer import ConsumerOptions, SeamConsumer
from bucket_app.seam.fetch import NativeReader
from bucket_app.seam.table import UnexpiringTable
from bucket_app.settings import Settings
from bucket_app.snapshot.reader import COUNTS_TABLE, changelog_topic
from bucket_app.web.starting import StartingServer

log = logging.getLogger(__name__)

#: Which code counts the source topic's records: ``native`` (the default), the compiled kernel
#: (bucket_app.counting.kernel: JSON and Avro, with or without a schema registry), or ``python``,
#: the pure-Python path end to end.
KERNEL_ENV = "BUCKET_APP_KERNEL"
KERNELS = ("native", "python")

# The web server's thread waits for the GIL while the main loop counts; CPython hands it over
# after this long (default 5 ms), and an HTTP answer needs several hand-overs, so a shorter
# interval bounds how long an answer waits without slowing the counting (docs/performance.md).
SWITCH_INTERVAL_S = 0.0005
# The broker answers a fetch once it has FETCH_MIN_BYTES for it, or after FETCH_MAX_WAIT_MS: a
# steady stream is counted in batches of up to 0.2 s, a backlog in full fetches at once. Each
# counted batch writes every window-key it touched once (RocksDB, the changelog, then the
# snapshot), so counting whatever arrived every few milliseconds would write the same keys many
# times a second. The broker's fetch wait batches without a pause in the worker: aiokafka has
# the next fetch in flight while a batch is counted, and a backlog is answered at once; a
# pause in the worker instead capped a steady stream (docs/performance.md).
# Each fetch is counted whole (``broker_max_poll_records`` is unset): records left unread keep
# aiokafka from fetching any partition of their broker for up to 0.1 s. FETCH_MAX_BYTES bounds
# a batch instead. Faust's own fetch settings and how they are set:
# bucket_app.seam.fetch.tune_fetches.
FETCH_MAX_WAIT_MS = 200
FETCH_MIN_BYTES = 2 * 1024 * 1024
# The most one fetch returns, all partitions together: the most one batch counts, and so the
# bound on the memory a batch takes. With the kernel, a backlog of few window-keys is read in
# fetches of up to LARGE_FETCH_MAX_BYTES, which write no more window-keys than a fetch of
# FETCH_MAX_BYTES can (bucket_app.kafka.fetchsize).
FETCH_MAX_BYTES = 2 * 1024 * 1024
LARGE_FETCH_MAX_BYTES = 8 * 1024 * 1024
# how often /health's view of this worker's partitions is refreshed
ASSIGNMENT_REFRESH_S = 0.25
# Allocations between young garbage collections (CPython's default is 700). A batch makes
# hundreds of thousands of short-lived records, lists and tuples; with the default they are
# promoted and full collections run often, each holding the GIL while every HTTP answer waits.
GC_YOUNG_THRESHOLD = 100_000
# RocksDB per partition database. Faust's defaults (three 64 MiB memtables and a 2 GiB block
# cache, each per database) let a worker's memory grow with its number of partitions far past
# what its live window-keys need. The block cache fills for as long as the worker runs (reads
# of keys flushed from the memtables); the live buckets are in the memtables, and the files'
# blocks in the OS page cache, so it is kept small.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 2 * 1024 * 1024,
}
# Process-wide, so once, at load, however many apps a process builds.
allocator.tune()
sys.setswitchinterval(SWITCH_INTERVAL_S)
gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
brokerlog.install()  # aiokafka's retries while a broker is down: a line every 30 s


class CountsTable(UnexpiringTable):
    """The ``counts`` table: Faust's tumbling-window Table without Faust's window expiry.

    Retention here is bucket_app's: the agent deletes expired window-keys with changelog
    tombstones, so the changelog is compact-only (see :mod:`bucket_app.seam.table` for why
    Faust's own expiry is off).

    Newly assigned partitions are restored in bulk (:mod:`bucket_app.kafka.restore`) before
    Faust's recovery, which Faust starts only once every table's ``on_rebalance`` returned.
    """

    #: set by create_app: reads changelog partitions into the store, returns records read
    restore: Callable[[set[int]], Awaitable[int]] | None = None

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP],
                           newly_assigned: set[TP], generation_id: int = 0) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        if self.restore is not None:
            topic = self.changelog_topic_name
            await self.restore({tp.partition for tp in newly_assigned if tp.topic == topic})


def counting_kernel(settings: Settings, environ: Mapping[str, str] = os.environ,
                    schemas: Mapping[int, WriterSchema] | None = None,
                    reader: Reader | None = None,
                    ) -> tuple[NativeKernel | None, str]:
    """The native kernel unless ``BUCKET_APP_KERNEL=python``, else None; and a line saying
    which kernel counts. With a schema registry, ``schemas`` is the writer schema cache and
    ``reader`` the schema they resolve to. A value other than native or python is a
    SettingsError. Native is the default because it counts exactly as the Python path does
    (the Python path is its definition, tests/unit/counting/test_kernel.py and
    test_kernel_avro.py) with no Python object per record."""
    choice = environ.get(KERNEL_ENV, KERNELS[0]).strip().lower() or KERNELS[0]
    if choice not in KERNELS:
        raise SettingsError(f"{KERNEL_ENV}={choice!r}: must be one of {', '.join(KERNELS)}")
    if choice != "native":
        return None, f"counting kernel: python ({KERNEL_ENV}=python)"
    if schemas is not None:
        kernel = NativeKernel(settings, reader=None if reader is None else reader.schema,
                              writers=schemas)
        values = "Avro" if kernel.reads_avro else "JSON"
        return kernel, (f"counting kernel: native (native/, Rust; {values} values, writer "
                        "schemas from the registry)")
    kernel = NativeKernel(settings)
    values = "Avro" if kernel.reads_avro else "JSON"
    return kernel, f"counting kernel: native (native/, Rust; {values} values)"


def native_reader(kernel: NativeKernel) -> NativeReader:
    """How the seam has ``kernel`` read a fetch: at the wall clock of the fetch, keeping each
    record's offset only when they have holes (else first and last say them all); each
    record's group is read again in the rare replay that needs it (``Grouped.count_after``)."""
    def read(data: bytes, fetch_offset: int, aborted: list[tuple[int, int]],
             read_committed: bool, check_crcs: bool) -> KernelFetch:
        return kernel.read(data, fetch_offset, time.time(), aborted=aborted,
                           read_committed=read_committed, check_crcs=check_crcs,
                           offset_gaps=True)

    return read


def quiet_debug_logging() -> None:
    """Stop building log records that no handler will write.

    At ``-l warn`` (Faust's default) Faust's worker sets the root logger to DEBUG so that its
    start-up spinner turns on every record, and leaves it there: every ``log.debug`` call in
    Faust and aiokafka then builds a LogRecord that the handlers drop, a visible share of the
    main thread while counting (docs/performance.md). This raises the root level to the lowest
    level a real handler writes.
    """
    root = logging.getLogger()
    levels = [h.level for h in root.handlers if type(h).__name__ != "SpinnerHandler"]
    if levels and root.level < min(levels):
        root.setLevel(min(levels))


class BucketApp(SeamApp):
    """A Faust app whose consumer counts the source topic through :class:`BatchIntake`, and
    that starts and stops its :class:`~bucket_app.parts.Parts` with itself."""

    intake: BatchIntake | None = None
    processor: Processor | None = None
    parts: Parts | None = None

    def equip(self, processor: Processor, parts: Parts, options: ConsumerOptions) -> None:
        """Hand the app what create_app built around it, before the worker starts it."""
        self.processor, self.parts, self.consumer_options = processor, parts, options
        parts.attach(self)

        @self.task
        async def start_parts() -> None:
            await parts.start(self)

    def on_consumer(self, consumer: SeamConsumer) -> None:
        processor, options = self.processor, self.consumer_options
        assert processor is not None and options is not None, "equip() comes first"
        sender = ChangelogSender(self, processor.unacked, processor.counts.changelog_topic_name)
        topic = processor.settings.dead_letter_topic
        dead_letters = None if topic is None else DeadLetterSender(
            self, topic, options.source_topic)
        self.intake = BatchIntake(consumer, options.source_topic, processor.count_and_write,
                                  sender, dead_letters, processor.schemas)
        self.intake.install()

    async def on_shutdown(self) -> None:
        """After the web server and every task stopped: stop the parts."""
        await super().on_shutdown()
        if self.parts is not None:
            await self.parts.stop()


def create_app(settings: Settings, partitions: int | None = None) -> faust.App:
    """Build the Faust app for ``settings``; ``partitions`` skips the Kafka probe when known."""
    compat.check()
    codecs.check()
    schemas, value_reader = None, None
    if settings.schema_registry_url is not None:
        # before the Kafka probe: wrong credentials stop start-up at once
        client = RegistryClient(settings)
        value_reader = wait_for_reader(settings, client)
        schemas = WriterSchemas(client)
        # Faust has not set up logging yet at this point of start-up: say it on stderr.
        print(f"bucket_app: {value_reader.describe()}; writer schemas from "
              f"{settings.schema_registry_url}", file=sys.stderr, flush=True)
    kernel, kernel_line = counting_kernel(settings, schemas=schemas, reader=value_reader)
    n_partitions = partitions if partitions is not None else source_partitions(
        settings, holder=lambda: StartingServer(settings.web_host, settings.web_port))
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
        # Each fetch is counted whole (see FETCH_MIN_BYTES).
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
    if table.changelog_topic_name != changelog_topic(settings):
        raise RuntimeError(f"Faust names the changelog {table.changelog_topic_name}, "
                           f"bucket_app reads {changelog_topic(settings)}")

    # the bulk restore and Faust's recovery report to one progress (log lines, /metrics)
    recovery = RecoveryProgress()

    def restore(partitions: set[int]) -> Awaitable[int]:
        return restore_changelog(settings, table.data, table.changelog_topic_name, partitions,
                                 recovery, COUNTS_TABLE)

    table.restore = restore
    processor = Processor(app, settings, counts.table, schemas, value_reader, kernel)
    parts = Parts(settings, n_partitions, processor, recovery,
                  lambda: None if app.intake is None else app.intake.degraded)
    # this app's consumer only: the committed-offset seek, fetch sizes, record batches
    app.equip(processor, parts, ConsumerOptions(
        settings.topic, FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS, FETCH_MAX_BYTES,
        settings.isolation_level, None if kernel is None else native_reader(kernel),
        None if kernel is None else FetchSizes(FETCH_MAX_BYTES, LARGE_FETCH_MAX_BYTES).after))
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
        partitions = {tp.partition for tp in revoked if tp.topic == settings.topic}
        processor.batches.forget(partitions)
        processor.unacked.forget(partitions)

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    @app.timer(ASSIGNMENT_REFRESH_S)
    async def refresh_assignment() -> None:
        processor.refresh_assignment()

    @app.timer(allocator.TRIM_INTERVAL_S)
    async def trim_heap() -> None:
        allocator.trim()

    @app.task
    async def quiet_logging() -> None:
        quiet_debug_logging()

    @app.task
    async def say_which_kernel() -> None:
        log.info("%s", kernel_line)

    @app.task
    async def freeze_start_up_objects() -> None:
        # What exists once the worker has started lives as long as it does: keep it out of
        # every full collection (see GC_YOUNG_THRESHOLD).
        gc.freeze()

    # a record counted into a bucket this replica's snapshot holds final is late
    processor.batches.closing_time = parts.reader.closing_time
    return app
