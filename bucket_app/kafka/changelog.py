"""Table writes of one batch: the changelog in one Kafka batch, then RocksDB in write batches.

Faust writes a table key with one RocksDB put and one changelog message, each message going
through Faust's producer buffer, its sensors and a separate ``producer.send`` before a callback
records the changelog offset in RocksDB (about 60 µs a key here). :class:`TableBatch` collects
the reads and writes the counting code makes for one partition's batch; :meth:`TableBatch.apply`
hands them to :class:`Unacked` and returns the changelog records, which :class:`ChangelogSender`
appends to whole aiokafka batches on Faust's own producer. The bytes are Faust's (the store's key
and value encoders), so Faust's recovery and the snapshot reader read them as if Faust had
written them, and Faust's commit, which flushes that producer before it commits source offsets,
covers them.

Invariant: **the local store never holds a value the changelog does not.** A batch's writes
reach RocksDB only once the brokers have acknowledged its changelog records, in send order,
with the changelog offset they reach (Faust's persisted offset) in the same ``WriteBatch`` as
the last of them; until then reads see them in :class:`Unacked`. So after any exit, SIGKILL
included, the store is the changelog up to its persisted offset (or a prefix of the next
acknowledged batch, which the changelog repeats), and Faust's recovery, which reads the
changelog from that offset, brings it to the changelog's end: the local tables are kept, and
a restart reads only the tail (Kafka Streams' ``.checkpoint`` plays the same part).

A full disk keeps that invariant: a write RocksDB refuses for lack of space leaves its batch
staged (reads still see it, later acknowledged batches queue behind it), :attr:`Unacked.stalled`
tells the intake to stop fetching, and :meth:`Unacked.retry` writes them in order once there is
room. A crash at any point meanwhile leaves the store a prefix of the changelog, as above.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from faust.utils.json import on_default
from rocksdict import WriteBatch

from bucket_app import diskspace
from bucket_app.seam import clients
from bucket_app.seam import store as table_store

ChangelogRecord = tuple[bytes, bytes | None]  # (key, value); None is a tombstone

_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z
#: what the tables' writes are called in the log and /health (bucket_app.diskspace)
TABLES = "the counts table (RocksDB)"
# keys per RocksDB write: the web server's thread waits for the GIL at most one write
WRITE_CHUNK = 1000


def _faust_json(value: Any) -> bytes:
    """The bytes Faust's "json" serializer writes (faust.utils.json.dumps with orjson).

    Copied once: a bytes object from orjson.dumps keeps its 4 KiB write buffer whatever its
    length, and a batch's records wait in memory until the brokers acknowledge them, so
    uncopied keys and values would hold kilobytes each (docs/performance.md).
    """
    return bytes(memoryview(orjson.dumps(value, default=on_default, option=_JSON_OPTIONS)))


class TableBatch:
    """A partition's view of the table for one batch: reads see this batch's own writes."""

    def __init__(self, unacked: Unacked, partition: int) -> None:
        store = unacked.store
        self.store = store
        self.partition = partition
        self.unacked = unacked
        self.pending = unacked.view(partition)
        self.db = table_store.partition_db(store, partition)
        self._encode_key: Callable[[Any], bytes]
        self._encode_value: Callable[[Any], bytes]
        self._decode_value: Callable[[bytes], Any]
        if store.key_serializer == "json" and store.value_serializer == "json":
            # Faust's json codec is this orjson call behind a registry lookup and two wrappers
            self._encode_key = self._encode_value = _faust_json
            self._decode_value = orjson.loads
        else:
            self._encode_key, self._encode_value, self._decode_value = table_store.codec(store)
        self.writes: dict[bytes, bytes | None] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        raw_key = self._encode_key(key)
        if raw_key in self.writes:
            raw = self.writes[raw_key]
        elif raw_key in self.pending:
            raw = self.pending[raw_key]
        else:
            raw = self.db.get(raw_key)
        return default if raw is None else self._decode_value(raw)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.writes[self._encode_key(key)] = self._encode_value(value)

    def __delitem__(self, key: Any) -> None:
        self.writes[self._encode_key(key)] = None

    def apply(self) -> list[ChangelogRecord]:
        """Hand the batch's writes to :class:`Unacked`, where later batches read them until
        the brokers acknowledge them; return the changelog records in write order."""
        if not self.writes:
            return []
        records = list(self.writes.items())
        self.writes = {}
        self.unacked.stage(self.partition, records)
        return records


@dataclass(eq=False)
class _Staged:
    """One batch's changelog records, waiting for their acknowledgement."""

    records: list[ChangelogRecord]
    acked_through: int | None = None  # the changelog offset of the last one, once acknowledged


@dataclass
class _Partition:
    values: dict[bytes, bytes | None] = field(default_factory=dict)  # newest unwritten value
    queue: deque[_Staged] = field(default_factory=deque)  # in send order


class Unacked:
    """Table writes whose changelog records the brokers have not acknowledged yet, per
    partition: reads see them here; RocksDB gets them, in send order, once acknowledged."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._partitions: dict[int, _Partition] = {}
        #: partitions whose next acknowledged batch the disk had no room for
        self.stalled: set[int] = set()

    def view(self, partition: int) -> dict[bytes, bytes | None]:
        """The newest staged value of each key of ``partition`` not yet in RocksDB."""
        return self._part(partition).values

    def stage(self, partition: int, records: list[ChangelogRecord]) -> None:
        part = self._part(partition)
        part.values.update(records)
        part.queue.append(_Staged(records))

    def acknowledged(self, partition: int, records: list[ChangelogRecord],
                     last_offset: int) -> None:
        """The brokers hold ``records`` (a staged batch) through changelog ``last_offset``:
        write every batch acknowledged so far, in send order, to RocksDB."""
        part = self._partitions.get(partition)
        if part is None:
            return  # forgotten: the partition was revoked meanwhile
        for staged in part.queue:
            if staged.records is records:
                staged.acked_through = last_offset
                break
        else:
            return
        self._flush(partition, part)

    def _flush(self, partition: int, part: _Partition) -> bool:
        """Write the acknowledged batches at the head of ``part``'s queue, in send order;
        False when the disk has no room for one (it stays staged, reads still see it, and
        :meth:`retry` writes it later)."""
        while part.queue and part.queue[0].acked_through is not None:
            staged = part.queue[0]
            try:
                self._write(partition, staged)
            except Exception as exc:
                if not diskspace.is_full(exc):
                    raise
                self.stalled.add(partition)
                diskspace.FULL.failed(TABLES, str(self.store.partition_path(partition)), exc,
                                      "counting stops fetching, queries answer from the "
                                      "snapshot")
                return False
            part.queue.popleft()
            values = part.values
            for raw_key, raw_value in staged.records:
                # a later batch may have staged a newer value of the key since
                if raw_key in values and values[raw_key] is raw_value:
                    del values[raw_key]
        if partition in self.stalled:
            self.stalled.discard(partition)
            if not self.stalled:  # an acknowledgement's write may be the one that got room
                diskspace.FULL.recovered(TABLES)
        return True

    def retry(self) -> bool:
        """Try the writes a full disk refused again, in send order (RocksDB recovers from a
        full disk by itself once there is room); True once nothing waits for one."""
        for partition in sorted(self.stalled):
            part = self._partitions.get(partition)
            if part is not None:
                self._flush(partition, part)
            elif partition in self.stalled:  # revoked since: nothing of it to write
                self.stalled.discard(partition)
        if not self.stalled:
            diskspace.FULL.recovered(TABLES)
        return not self.stalled

    def forget(self, partitions: set[int]) -> None:
        """Drop what waits for ``partitions``' acknowledgements: they were revoked, and Faust's
        recovery reads the changelog from the persisted offset when one comes back, so a late
        acknowledgement must not write over what that recovery restored."""
        for partition in partitions:
            self._partitions.pop(partition, None)
            self.stalled.discard(partition)
        if not self.stalled:
            diskspace.FULL.recovered(TABLES)

    def pending(self) -> int:
        """Staged batches not yet written to RocksDB."""
        return sum(len(part.queue) for part in self._partitions.values())

    def _part(self, partition: int) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition()
        return part

    def _write(self, partition: int, staged: _Staged) -> None:
        """Write ``staged`` to RocksDB, WRITE_CHUNK keys a write, the persisted offset with the
        last chunk: a crash between chunks leaves the persisted offset before the batch, whose
        records recovery then reads again."""
        store = self.store
        db = table_store.partition_db(store, partition)
        key_index = table_store.key_index(store)
        records = staged.records
        # rocksdict holds the GIL through a write, which the web server's thread waits out;
        # chunks give it the lock between them.
        for first in range(0, len(records), WRITE_CHUNK):
            batch = WriteBatch(raw_mode=True)
            for raw_key, raw_value in records[first:first + WRITE_CHUNK]:
                if raw_value is None:
                    batch.delete(raw_key)
                    key_index.pop(raw_key, None)
                else:
                    # Not added to Faust's key index, which never forgets a key: counting reads
                    # each partition's database directly, and the index only saves Faust a
                    # lookup in every partition for a read outside an event.
                    batch.put(raw_key, raw_value)
            if first + WRITE_CHUNK >= len(records):
                batch.put(store.offset_key, str(staged.acked_through).encode())
            db.write(batch)


class ChangelogSender:
    """Sends changelog records as whole Kafka batches on Faust's producer, and has
    :class:`Unacked` write them to RocksDB once the brokers acknowledge them."""

    def __init__(self, app: Any, unacked: Unacked, topic: str) -> None:
        self.app = app
        self.unacked = unacked
        self.topic = topic

    async def send(self, partition: int, records: list[ChangelogRecord]) -> list[Any]:
        """Hand ``records`` (as :meth:`TableBatch.apply` returned them) to the producer;
        return the futures of their Kafka batches.

        The records are in flight when this returns; each future resolves when the brokers
        have acknowledged its batch (acks=all).
        """
        producer = clients.aiokafka_producer(self.app)
        futures: list[Any] = []
        counts: list[int] = []
        batch = producer.create_batch()
        count = 0
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await self._send(producer, batch, partition))
                counts.append(count)
                batch, count = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"changelog record of {len(key) + len(value or b'')} "
                                     "bytes does not fit in a producer batch")
            count += 1
        if count:
            futures.append(await self._send(producer, batch, partition))
            counts.append(count)
        if futures:
            self._write_when_acknowledged(partition, records, futures, counts)
        return futures

    def _write_when_acknowledged(self, partition: int, records: list[ChangelogRecord],
                                 futures: list[Any], counts: list[int]) -> None:
        def acknowledged(done: asyncio.Future[Any]) -> None:
            # a failed write leaves the records staged: the intake stops the worker, and the
            # changelog, not this store, says what was counted
            if done.cancelled() or done.exception() is not None:
                return
            last = max(meta.offset + n - 1 for meta, n in zip(done.result(), counts, strict=True))
            self.unacked.acknowledged(partition, records, last)

        asyncio.gather(*futures).add_done_callback(acknowledged)

    async def _send(self, producer: AIOKafkaProducer, batch: Any, partition: int) -> Any:
        batch.close()
        return await producer.send_batch(batch, self.topic, partition=partition)
