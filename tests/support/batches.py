"""Kafka record batches as a broker sends them in a fetch, built with aiokafka's own builder.

aiokafka's ``DefaultRecordBatchBuilder`` writes a producer's batch (base offset 0, no control
flag); a broker's batch differs only in its base offset, which the CRC does not cover, and a
transaction marker only in its control flag, which it does (:func:`control_batch` recomputes
it). :func:`consumer_reads` is the reference reading: aiokafka's ``PartitionRecords``, as the
worker's consumer reads a fetch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.consumer.fetcher import READ_COMMITTED, READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

#: compression_type of a batch: none, gzip, snappy, lz4, zstd
CODECS = (0, 1, 2, 3, 4)
CONTROL_FLAG = 0x20
ABORT, COMMIT = 0, 1

Header = tuple[str, bytes | None]


@dataclass
class Rec:
    """A record to write: its offset delta in the batch and its fields."""

    delta: int
    timestamp: int
    value: bytes | None
    key: bytes | None = None
    headers: list[Header] = field(default_factory=list)


def batch(base_offset: int, records: Sequence[Rec], *, codec: int = 0,
          producer_id: int = -1, transactional: bool = False) -> bytes:
    """One record batch as a broker stores it, its first offset ``base_offset``."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=int(transactional),
        producer_id=producer_id, producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1, batch_size=1 << 30)
    for rec in records:
        builder.append(rec.delta, timestamp=rec.timestamp, key=rec.key, value=rec.value,
                       headers=rec.headers)
    return with_base_offset(bytes(builder.build()), base_offset)


def with_base_offset(data: bytes, base_offset: int) -> bytes:
    return struct.pack(">q", base_offset) + data[8:]


def with_crc(data: bytearray | bytes) -> bytes:
    """A batch with its CRC-32C set to match its bytes from the attributes on."""
    data = bytearray(data)
    data[17:21] = struct.pack(">I", calc_crc32c(bytes(data[21:])))
    return bytes(data)


def control_batch(offset: int, producer_id: int, marker: int, timestamp: int = 0) -> bytes:
    """A transaction marker (``ABORT`` or ``COMMIT``) of ``producer_id`` at ``offset``."""
    data = bytearray(batch(offset, [Rec(0, timestamp, struct.pack(">hi", 0, 0),
                                        key=struct.pack(">HH", 0, marker))],
                           producer_id=producer_id, transactional=True))
    attributes = struct.unpack_from(">h", data, 21)[0] | CONTROL_FLAG
    struct.pack_into(">h", data, 21, attributes)
    return with_crc(data)


@dataclass
class Read:
    """What a consumer sees of a fetch: each record's fields and where the next fetch starts."""

    records: list[tuple[int, int, int, bytes | None, bytes | None, list[Header]]]
    next_offset: int


def consumer_reads(data: bytes, fetch_offset: int, *, aborted: list[tuple[int, int]] | None = None,
                   read_committed: bool = False, check_crcs: bool = True) -> Read:
    """aiokafka's reading of a fetch (raises as aiokafka raises)."""
    partition = PartitionRecords(
        TopicPartition("t", 0), MemoryRecords(data), list(aborted or []), fetch_offset, None,
        None, check_crcs, READ_COMMITTED if read_committed else READ_UNCOMMITTED)
    records = [(r.offset, r.timestamp, r.timestamp_type, r.key, r.value, list(r.headers))
               for r in partition]
    return Read(records, partition.next_fetch_offset)
