"""The counting agent's side of the worker: a batch counter on the counts table, fed by the
batch intake (:mod:`bucket_app.kafka.intake`), and the view of its source partitions that
/health shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faust

from bucket_app.counting.batch import BatchCounter
from bucket_app.counting.classify import Classifier
from bucket_app.counting.decode import RegistryDecoder
from bucket_app.counting.kernel import KernelFetch, NativeKernel
from bucket_app.kafka.changelog import ChangelogRecord, TableBatch, Unacked
from bucket_app.kafka.deadletter import DeadLetter
from bucket_app.kafka.registry import Reader, WriterSchemas
from bucket_app.seam import store as table_store
from bucket_app.seam.consumer import SeamConsumer
from bucket_app.settings import Settings


class Processor:
    """The counting agent's side of the worker: a :class:`BatchCounter` on the counts table,
    fed through :class:`BatchIntake`, and the view of its source partitions /health shows."""

    def __init__(self, app: faust.App, settings: Settings, counts: Any,
                 schemas: WriterSchemas | None = None, reader: Reader | None = None,
                 kernel: NativeKernel | None = None) -> None:
        """With a schema registry, ``schemas`` caches the writer schemas (the intake fills it)
        and ``reader`` is the schema they are resolved against; ``kernel`` reads fetches of
        messages natively (the default; not with BUCKET_APP_KERNEL=python)."""
        self.app = app
        self.settings = settings
        self.counts = counts
        self.schemas = schemas
        # table writes between counting and the changelog's acknowledgement
        self.unacked = Unacked(counts.data)
        classifier = None
        if schemas is not None:
            classifier = Classifier(settings, decoder=RegistryDecoder(
                None if reader is None else reader.schema, schemas))
        self.batches = BatchCounter(
            settings, counts, classifier=classifier, kernel=kernel,
            stored_keys=lambda partition: table_store.partition_keys(counts.data, partition),
            # Faust's store remembers every key it ever set in memory and never forgets one
            forget_raw=lambda raw: table_store.key_index(counts.data).pop(raw, None))
        self.counter = self.batches.counter
        self.assignment: dict[str, Any] = {
            "ready": False, "assigned": [], "paused": [], "fetching": []}

    def refresh_assignment(self) -> None:
        """Record this worker's source partitions: assigned, paused by Faust (recovery,
        rebalance), fetching, and whether table recovery is done.

        Runs on the main event loop (a timer); the web server's thread only reads the result,
        because touching Faust's lazily created services from that thread binds them to the
        wrong event loop (the worker crashed at start-up when it did).
        """
        consumer: SeamConsumer = self.app.consumer  # type: ignore[assignment] # BucketApp's
        topic = self.settings.topic
        assigned = self._partitions_of(consumer.assignment(), topic)
        paused = self._partitions_of(consumer.paused_partitions(), topic)
        fetching = self._partitions_of(consumer.active_partitions(), topic)
        tables: Any = self.app.tables  # TableManager; recovery is not in TableManagerT
        ready = bool(tables.recovery.completed.is_set())
        self.assignment = {"ready": ready, "assigned": assigned, "paused": paused,
                           "fetching": fetching}

    @staticmethod
    def _partitions_of(tps: Any, topic: str) -> list[int]:
        return sorted(tp.partition for tp in tps if tp.topic == topic)

    def count_and_write(self, partition: int, records: Sequence[Any] | KernelFetch,
                        reached: int | None) -> tuple[list[ChangelogRecord], list[DeadLetter]]:
        """Count a batch into a :class:`TableBatch`, staged until its changelog records are
        acknowledged; returns those records and the dead letters for
        :class:`~bucket_app.kafka.intake.BatchIntake` to send. ``reached``: the fetch position,
        when the fetch passed offsets after the last record that hold none to count."""
        batch = TableBatch(self.unacked, partition)
        self.batches.count_batch(partition, records, batch, reached)
        dead = [DeadLetter(record, partition, reason)
                for record, reason in self.batches.take_skipped()]
        self.counter.dead_letters += len(dead)
        return batch.apply(), dead
