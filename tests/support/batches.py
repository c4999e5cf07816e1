"""Kafka record batches as a broker sends them in a fetch, built with aiokafka's own builder.

aiokafka's ``DefaultRecordBatchBuilder`` writes a producer's batch (base offset 0, no control
flag); a broker's batch differs only in its base offset, which the CRC does not cover, and a
transaction marker only in its control flag, which it does (:func:`control_batch` recomputes
it). :func:`consumer_reads` is the reference reading: aiokafka's ``PartitionRecords``, as the
worker's consumer reads a fetch; :func:`counts_as_locate` checks the native kernel's count of a
fetch against it and ``Classifier.locate``, record by record.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.consumer.fetcher import READ_COMMITTED, READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from bucket_app.counting.classify import Classifier
from bucket_app.counting.kernel import FetchCount, NativeKernel
from bucket_app.counting.keys import group_identity
from bucket_app.errors import BadInput

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


def record_batch(base: int, values: list[bytes], producer_id: int = -1) -> bytes:
    """One Kafka record batch (format v2) starting at offset ``base``; transactional when it
    has a producer id."""
    builder = DefaultRecordBatchBuilder(2, 0, int(producer_id >= 0), producer_id, 0,
                                        0 if producer_id >= 0 else -1, 1 << 20)
    for i, value in enumerate(values):
        builder.append(i, timestamp=1000 + i, key=None, value=value, headers=[])
    raw = bytearray(builder.build())
    raw[0:8] = struct.pack(">q", base)  # the base offset (outside the CRC)
    return bytes(raw)


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


def counts_as_locate(kernel: NativeKernel, classifier: Classifier, data: bytes,
                     fetch_offset: int, partition: int, now: float, **reading: Any) -> FetchCount:
    """Check that ``kernel``'s count of a fetch is, record by record, what aiokafka's reading
    and ``classifier.locate`` say: each record's window-key (its values' types included) or skip
    reason, each key's count and highest offset, the next fetch offset; return the count."""
    read = consumer_reads(data, fetch_offset, **reading)
    got = kernel.count(data, partition, fetch_offset, now, trace=True, **reading)
    assert (got.records, got.next_offset) == (len(read.records), read.next_offset)
    assert got.first_offset == (read.records[0][0] if read.records else None)
    assert got.last_offset == (read.records[-1][0] if read.records else None)
    assert got.trace is not None and len(got.trace) == len(read.records)
    identities = [group_identity(key) for key in got.keys]
    assert len(set(identities)) == len(identities)
    skipped = {record.position: (record, exc) for record, exc in got.skipped}
    expected: dict[Any, list[int]] = {}
    starts, times = [], []
    for at, (offset, ts_ms, ts_type, key, value, headers) in enumerate(read.records):
        try:
            want, start, ts = classifier.locate(value, partition, ts_ms / 1000.0, now)
        except BadInput as exc:
            assert got.trace[at] == -1, (value, got.keys[got.trace[at]], exc)
            record, why = skipped.pop(at)
            assert why.reason == exc.reason, (value, why, exc)
            assert (record.offset, record.timestamp, record.timestamp_type, record.key,
                    record.value, record.headers) == (offset, ts_ms, ts_type, key, value, headers)
            continue
        assert got.trace[at] >= 0, (value, want)
        assert identities[got.trace[at]] == group_identity(want), value
        tally = expected.setdefault(group_identity(want), [0, offset])
        tally[0] += 1
        tally[1] = max(tally[1], offset)
        starts.append(start)
        times.append(ts)
    assert not skipped
    assert dict(zip(identities, map(list, zip(got.counts, got.lasts, strict=True)),
                    strict=True)) == expected
    assert got.min_start_s == min(starts, default=None)
    assert got.max_time_s == max(times, default=None)
    return got


def mutate(rng: random.Random, data: bytes) -> bytes:
    """``data`` with a few random edits: bytes changed, inserted, deleted, lengths and varints
    made to lie, cut short; the first batch's CRC made to match half of the time."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out)) if out else 0
        edit = rng.randrange(6)
        if edit == 0 and out:
            out[at] = rng.randrange(256)
        elif edit == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif edit == 2:
            del out[at:at + rng.randint(1, 8)]
        elif edit == 3 and out:
            out[at:at + 1] = rng.choice([b"\xff" * 10, b"\x80" * 3, b"\x01", b"\x7f\xff\xff\xff"])
        elif edit == 4 and len(out) >= 12:
            struct.pack_into(">i", out, 8, rng.choice([-1, 0, 49, 2**31 - 1, len(out) - 12]))
        else:
            out = out[:at]
    if len(out) >= 61 and rng.random() < 0.5:
        end = 12 + max(0, min(struct.unpack_from(">i", out, 8)[0], len(out) - 12))
        out[:end] = with_crc(out[:end]) if end >= 21 else out[:end]
    return bytes(out)
