"""Table writes of one batch: RocksDB in one write batch, the changelog in one Kafka batch.

Faust writes a table key with one RocksDB put and one changelog message, each message going
through Faust's producer buffer, its sensors and a separate ``producer.send`` before a callback
records the changelog offset in RocksDB (about 60 µs a key here). :class:`TableBatch` collects
the reads and writes the counting code makes for one partition's batch; :meth:`TableBatch.apply`
writes them to the partition's RocksDB database in ``WriteBatch``es of ``WRITE_CHUNK`` keys and
returns the changelog records, which :class:`ChangelogSender` appends to whole aiokafka batches
on Faust's own producer. The bytes are Faust's (the store's key and value encoders), so Faust's
recovery and the snapshot reader read them as if Faust had written them, and Faust's commit,
which flushes that producer before it commits source offsets, covers them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from faust.types import TP
from faust.utils.json import on_default
from rocksdict import WriteBatch

from bucket_app.seam import clients
from bucket_app.seam import store as table_store

ChangelogRecord = tuple[bytes, bytes | None]  # (key, value); None is a tombstone

_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z
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

    def __init__(self, store: Any, partition: int) -> None:
        self.store = store
        self.partition = partition
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
        else:
            raw = self.db.get(raw_key)
        return default if raw is None else self._decode_value(raw)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.writes[self._encode_key(key)] = self._encode_value(value)

    def __delitem__(self, key: Any) -> None:
        self.writes[self._encode_key(key)] = None

    def apply(self) -> list[ChangelogRecord]:
        """Write everything to RocksDB, WRITE_CHUNK keys a write; return the changelog records
        in write order."""
        if not self.writes:
            return []
        key_index = table_store.key_index(self.store)
        records = list(self.writes.items())
        # rocksdict holds the GIL through a write, which the web server's thread waits out;
        # chunks give it the lock between them.
        for first in range(0, len(records), WRITE_CHUNK):
            batch = WriteBatch(raw_mode=True)
            for raw_key, raw_value in records[first:first + WRITE_CHUNK]:
                if raw_value is None:
                    batch.delete(raw_key)
                    # Faust's store remembers every key it ever set and never forgets one
                    key_index.pop(raw_key, None)
                else:
                    batch.put(raw_key, raw_value)
                    key_index[raw_key] = self.partition
            self.db.write(batch)
        self.writes = {}
        return records


class ChangelogSender:
    """Sends changelog records as whole Kafka batches on Faust's producer."""

    def __init__(self, app: Any, store: Any, topic: str) -> None:
        self.app = app
        self.store = store
        self.topic = topic

    async def send(self, partition: int, records: Sequence[ChangelogRecord]) -> list[Any]:
        """Hand ``records`` to the producer; return the futures of their Kafka batches.

        The records are in flight when this returns; each future resolves when the brokers
        have acknowledged its batch (acks=all).
        """
        producer = clients.aiokafka_producer(self.app)
        futures = []
        batch = producer.create_batch()
        count = 0
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await self._send(producer, batch, partition, count))
                batch, count = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"changelog record of {len(key) + len(value or b'')} "
                                     "bytes does not fit in a producer batch")
            count += 1
        if count:
            futures.append(await self._send(producer, batch, partition, count))
        return futures

    async def _send(self, producer: AIOKafkaProducer, batch: Any, partition: int,
                    count: int) -> Any:
        batch.close()
        future = await producer.send_batch(batch, self.topic, partition=partition)
        tp = TP(self.topic, partition)

        def persisted(done: Any) -> None:
            # Faust's own callback does this per message: at start-up it reads the changelog
            # only past the offset the local store already holds.
            if not done.cancelled() and done.exception() is None:
                self.store.set_persisted_offset(tp, done.result().offset + count - 1)

        future.add_done_callback(persisted)
        return future
