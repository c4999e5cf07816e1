"""Bulk restore: a newly assigned partition's changelog, read into RocksDB in whole fetches.

Faust's recovery hands every changelog record to the table one message at a time through its
consumer, its recovery buffer and a task switch, so a replica that takes over a partition with
a long changelog (a new replica, a new machine, a restart whose tables were lost) spent minutes
before it counted again (docs/performance.md). :func:`restore_changelog` runs first, while the
table is being assigned (Faust's ``Collection.on_rebalance``, which returns before Faust's
recovery starts): an aiokafka consumer outside the group reads each newly assigned changelog
partition from the local store's persisted offset to its end offset as the restore started, and
writes the raw records to the partition's RocksDB database in write batches, the persisted
offset with the last write of each fetch. Faust's recovery then finds its offsets at the end
and reads only what was written meanwhile.

The bytes are the changelog's (Faust's ``apply_changelog_batch`` writes the same), and records
are written in offset order with the offset they reach, so the store stays a prefix of the
changelog (:mod:`bucket_app.kafka.changelog`) whenever the restore stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP
from rocksdict import WriteBatch

from bucket_app.kafka import security as kafka_security
from bucket_app.kafka.changelog import WRITE_CHUNK
from bucket_app.kafka.recovery import RecoveryProgress
from bucket_app.seam import store as table_store
from bucket_app.settings import Settings

log = logging.getLogger(__name__)

FETCH_BYTES = 8 * 1024 * 1024


async def restore_changelog(settings: Settings, store: Any, topic: str,
                            partitions: Iterable[int],
                            progress: RecoveryProgress | None = None, name: str = "") -> int:
    """Read ``topic``'s ``partitions`` into ``store`` from its persisted offsets to their end
    offsets, telling ``progress`` what is left (as table ``name``); return the records
    written."""
    wanted = sorted(set(partitions))
    if not wanted:
        return 0
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=list(settings.brokers), group_id=None, enable_auto_commit=False,
        # written without transactions: both isolation levels read the same records of it
        isolation_level="read_uncommitted", auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_BYTES, fetch_max_bytes=FETCH_BYTES * 4,
        **kafka_security.client_kwargs(settings))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in wanted]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            persisted = store.persisted_offset(TP(topic, tp.partition))
            if persisted is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, persisted + 1)
        behind = {tp: ends[tp] - await consumer.position(tp) for tp in tps}
        written = 0
        while any(n > 0 for n in behind.values()):
            if progress is not None:
                progress.restoring(name, {tp.partition: n for tp, n in behind.items()})
            fetched = await consumer.getmany(*(tp for tp, n in behind.items() if n > 0),
                                             timeout_ms=1000)
            for tp, records in fetched.items():
                end = ends[tp]
                written += _write(store, tp.partition,
                                  [r for r in records if r.offset < end])
            behind = {tp: ends[tp] - await consumer.position(tp) for tp in tps}
        if progress is not None:
            progress.restoring(name, {})
    finally:
        await consumer.stop()
    elapsed = time.monotonic() - started
    if written:
        log.info("bucket_app: restored %s changelog records of partitions %s in %.1f s "
                 "(%s/s)", f"{written:,}", wanted, elapsed,
                 f"{written / max(elapsed, 1e-9):,.0f}")
    return written


def _write(store: Any, partition: int, records: list[Any]) -> int:
    """Write ``records`` (in offset order) to ``partition``'s database, WRITE_CHUNK a write, the
    offset of the last with the last chunk."""
    if not records:
        return 0
    db = table_store.partition_db(store, partition)
    for first in range(0, len(records), WRITE_CHUNK):
        chunk = records[first:first + WRITE_CHUNK]
        batch = WriteBatch(raw_mode=True)
        for record in chunk:
            if record.value is None:
                batch.delete(record.key)
            else:
                batch.put(record.key, record.value)
        batch.put(store.offset_key, str(chunk[-1].offset).encode())
        db.write(batch)
    return len(records)
