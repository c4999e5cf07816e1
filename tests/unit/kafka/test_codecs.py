"""Every compression codec Kafka defines is read with the pinned dependencies, through
aiokafka's own record-batch code, and a missing one stops start-up with one line naming it."""

from __future__ import annotations

import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from bucket_app.errors import MissingCodec
from bucket_app.kafka import codecs

# attribute bits of a v2 record batch (Kafka's compression.type ids)
CODEC_IDS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def test_every_codec_is_readable_with_the_pinned_dependencies():
    assert codecs.missing() == []
    codecs.check()


@pytest.mark.parametrize("name", sorted(CODEC_IDS))
def test_a_compressed_record_batch_reads_back_record_for_record(name):
    values = [b'{"origin_server": "s-%d", "timestamp": %d}' % (i % 7, 1_700_000_000 + i)
              for i in range(500)]
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=CODEC_IDS[name], is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for offset, value in enumerate(values):
        builder.append(offset, timestamp=1_700_000_000_000, key=None, value=value, headers=[])
    raw = bytes(builder.build())
    assert len(raw) < sum(map(len, values))  # really compressed
    batch = DefaultRecordBatch(raw)
    assert batch.compression_type == CODEC_IDS[name] and batch.validate_crc()
    assert [record.value for record in batch] == values


def test_a_codec_that_cannot_be_read_stops_start_up_naming_it():
    readable = {"gzip": lambda: True, "snappy": lambda: True, "lz4": lambda: False,
                "zstd": lambda: False}
    assert codecs.missing(readable) == ["lz4", "zstd"]
    with pytest.raises(MissingCodec, match=r"cannot read lz4, zstd-compressed .*cramjam"):
        codecs.check(readable)
