"""The batch path without a broker: per-batch counting and Faust-compatible acknowledgement.

Counts are checked against an independent tally of the same records; the acknowledgement test
drives a real Faust consumer object (not started) and asks Faust's own commit arithmetic which
offset it would commit.
"""

from __future__ import annotations

import io
import json
import random
import sqlite3
import time
from collections import Counter as Tally
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka.consumer.fetcher import (
    READ_COMMITTED,
    READ_UNCOMMITTED,
    PartitionRecords,
)
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord
from fastavro import parse_schema, schemaless_writer
from faust.types import TP

from bucket_app import identity
from bucket_app.counting.batch import BatchCounter
from bucket_app.counting.classify import Classifier
from bucket_app.counting.keys import PROGRESS_KEY
from bucket_app.kafka.changelog import WRITE_CHUNK, TableBatch
from bucket_app.kafka.intake import BatchIntake, Counted
from bucket_app.seam import fetch
from bucket_app.settings import load
from bucket_app.snapshot.reader import SnapshotStore, store_config
from bucket_app.worker import create_app, guard_local_state
from tests.support.batches import record_batch
from tests.support.settings import SEED_INI, replace_line, write_config

TOPIC = "test"


@pytest.fixture
def settings(tmp_path: Path):
    ini = replace_line(SEED_INI, "clean_interval", "1d")
    ini = replace_line(ini, "clean_freq", "1d")
    ini = ini.replace("[HTTPEndpointSetting]\n",
                      f"[HTTPEndpointSetting]\ndata_dir = {tmp_path}/data\n")
    return load(write_config(tmp_path, ini), {})


def record(partition: int, offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(TOPIC, partition, offset, int(time.time() * 1000), 0, None, value,
                          None, 0, len(value), ())


def make_records(n: int, partition: int, seed: int) -> tuple[list[ConsumerRecord], Tally]:
    """``n`` records (a few bad) and the independent tally of what they should count."""
    rng = random.Random(seed)
    now = int(time.time())
    records, expected = [], Tally()
    for offset in range(n):
        if rng.random() < 0.02:
            records.append(record(partition, offset, b"not json"))
            continue
        server, ts = f"s-{rng.randrange(7)}", now - rng.randrange(600)
        value = json.dumps({"origin_server": server, "topic": "t", "timestamp": ts}).encode()
        records.append(record(partition, offset, value))
        expected[(server, "t", ts - ts % 20)] += 1
    return records, expected


def table_counts(table: dict) -> Tally:
    found = Tally()
    for key, value in table.items():
        if key[0] == PROGRESS_KEY:
            continue
        (_partition, server, topic), (start, _end) = key
        found[(server, topic, int(start))] += value[0]
    return found


def test_batches_count_exactly_once_however_split_and_replayed(settings):
    records, expected = make_records(3000, 2, seed=1)
    table: dict = {}
    processor = BatchCounter(settings, table)
    rng = random.Random(2)
    i = 0
    while i < len(records):  # uneven batches
        size = rng.randrange(1, 400)
        processor.count_batch(2, records[i:i + size])
        i += size
    assert table_counts(table) == expected
    assert processor.counter.skipped == {"not_json": len(records) - sum(expected.values())}

    # Redelivery after a crash: the same records again, in other batches, change nothing.
    processor.forget({2})
    processor.count_batch(2, records[:1500])
    processor.count_batch(2, records[1000:])
    assert table_counts(table) == expected
    assert table[(PROGRESS_KEY, 2)][0] == len(records) - 1


def test_replay_after_lost_progress_uses_each_keys_offset(settings):
    """The progress write is lost but the counts were written: the per-key offsets decide."""
    records, expected = make_records(500, 0, seed=3)
    table: dict = {}
    BatchCounter(settings, table).count_batch(0, records)  # type: ignore[arg-type]
    del table[(PROGRESS_KEY, 0)]
    fresh = BatchCounter(settings, table)
    fresh.count_batch(0, records)
    assert table_counts(table) == expected
    assert fresh.counter.counted == 0
    assert fresh.counter.replayed == sum(expected.values())


def odd_value(rng: random.Random, now: int, clean: bool) -> bytes:
    """A well-formed record value if ``clean``, else one that is odd about a quarter of the
    time: not JSON, not an object, a bad or missing time, a compound or missing field."""
    if clean:  # times repeat within a batch (whole seconds, and the same time as a float)
        msg: dict = {"origin_server": rng.choice(["a", "b", None]), "topic": "t",
                     "timestamp": now - rng.randrange(20) - rng.choice([0, 0.0, 0.5])}
        return json.dumps(msg).encode()
    if rng.random() < 0.05:
        return rng.choice([b"not json", b"[1, 2]", b'"text"', b"null", b"", b"7"])
    times = [now - rng.randrange(600), now - 5.5, now - 2 * 86400, now + 7200, True, None,
             "1440179085", 10**30, -(10**30)]
    fields = ["a", "b", None, 7, 2.5, True, {"z": 1}, [1]]
    msg = {"origin_server": rng.choice(fields[:3]), "topic": "t",
           "timestamp": now - rng.randrange(600)}
    if rng.random() < 0.1:
        msg["timestamp"] = rng.choice(times)
    if rng.random() < 0.05:
        del msg["timestamp"]
    if rng.random() < 0.1:
        msg["topic"] = rng.choice(fields)
    if rng.random() < 0.05:
        del msg["origin_server"]
    return json.dumps(msg).encode()


@pytest.mark.parametrize("chunk", [1000, 7])
def test_grouped_batches_count_as_record_by_record(settings, monkeypatch, chunk):
    """The whole-batch path gives the record-by-record path's table, counters and progress,
    batch after batch: clean batches, mixed ones, replays and records past retention; with
    batches in one chunk and in many."""
    monkeypatch.setattr("bucket_app.counting.classify.GROUP_CHUNK", chunk)
    rng = random.Random(11)
    now = int(time.time())
    # stretches of 500 records: clean ones, and ones where about a quarter are odd
    records = [record(3, offset, odd_value(rng, now, clean=offset // 500 % 2 == 0))
               for offset in range(6100)]
    grouped_table: dict = {}
    each_table: dict = {}
    grouped = BatchCounter(settings, grouped_table, clock=lambda: now)
    each = BatchCounter(settings, each_table, clock=lambda: now,
                        classifier=Classifier(settings, batches=False))
    whole = batches = 0
    group = grouped.classifier.group

    def counting_group(*args):
        nonlocal whole
        answer = group(*args)
        whole += answer is not None
        return answer

    grouped.classifier.group = counting_group
    i, end = 0, 6050  # the rest are counted after a lost progress write, below
    while i < end:
        # small batches are often clean (the whole-batch path), large ones rarely
        batch = records[i:min(end, i + rng.choice([1, 3, 10, 100, 400]))]
        if rng.random() < 0.1:  # a redelivery: back up and start over from memory
            batch = records[max(0, i - rng.randrange(0, 50)):min(end, i + 5)]
            for processor in (grouped, each):
                processor.forget({1, 3})
        for partition in (3, 1):  # the same records in two partitions: their own keys
            for processor in (grouped, each):
                processor.count_batch(partition, batch)
        batches += 2
        i = batch[-1].offset + 1
        assert grouped_table == each_table
        for name in ("counted", "replayed", "skipped"):
            assert getattr(grouped.counter, name) == getattr(each.counter, name), name
    assert whole > batches / 3  # and the whole-batch path did many of them
    assert set(each.counter.skipped) >= {"not_json", "bad_time", "future_time", "expired"}

    # The progress write lost after a crash, and a clean batch from inside the last one
    # counted: each key's own offset decides which of its records were counted.
    for table in (grouped_table, each_table):
        del table[(PROGRESS_KEY, 3)]
    before = whole
    for processor in (grouped, each):
        processor.forget({3})
        processor.count_batch(3, records[6020:])
    assert whole == before + 1
    assert grouped_table == each_table
    assert (grouped.counter.counted, grouped.counter.replayed) == (
        each.counter.counted, each.counter.replayed)


@pytest.mark.parametrize("chunk", [1000, 2])
@pytest.mark.parametrize("isolation", [READ_COMMITTED, READ_UNCOMMITTED])
def test_source_records_come_a_record_batch_at_a_time_as_aiokafka_would(monkeypatch, isolation,
                                                                         chunk):
    """The source topic's fetch unpacking gives aiokafka's records and fetch position: records
    below the fetch offset dropped, an aborted transaction skipped when reading committed;
    record batches read whole, in chunks, and in chunks that end with the batch."""
    monkeypatch.setattr(fetch, "DECODE_CHUNK", chunk)
    fetched = (record_batch(0, [b"a0", b"a1", b"a2", b"a3", b"a4"])
               + record_batch(5, [b"t5", b"t6", b"t7"], producer_id=77)
               + record_batch(8, [b"c8", b"c9", b"c10", b"c11"]))

    def unpack(topic: str) -> tuple[list[tuple[int, bytes]], int]:
        records = PartitionRecords(TP(topic, 0), MemoryRecords(fetched), [(77, 5)], 2,
                                   None, None, True, isolation)
        found = []
        for item in fetch.unpack_batches(records) if topic == "source" else records:
            for each in item if topic == "source" else [item]:
                found.append((each.offset, each.value))
        return found, records.next_fetch_offset

    mine, aiokafkas = unpack("source"), unpack("other")
    assert mine == aiokafkas
    skipped = {5, 6, 7} if isolation == READ_COMMITTED else set()
    assert [offset for offset, _ in mine[0]] == [o for o in range(2, 12) if o not in skipped]
    assert mine[1] == 12


def test_local_tables_of_another_app_id_or_topic_are_not_used(tmp_path, capsys):
    """Local RocksDB tables are kept for the same app_id and topic after a clean or an unclean
    stop; another app_id or topic on the same data_dir counts in tables of its own state and
    leaves the old ones as they were; an unclean stop of an earlier version, which wrote RocksDB
    before the changelog, wipes that state's tables (the changelog rebuilds them)."""
    def settings_for(app_id: str = "first", topic: str = "test"):
        ini = SEED_INI.replace("[HTTPEndpointSetting]\n",
                               f"[HTTPEndpointSetting]\ndata_dir = {tmp_path}/data\n")
        ini = ini.replace("[KafkaSettings]\n", f"[KafkaSettings]\napp_id = {app_id}\n")
        return load(write_config(tmp_path, replace_line(ini, "topic", topic)), {})

    def start(settings, clean_stop: bool = True) -> bool:
        """A worker starts (and stops); whether it found the tables it left."""
        tabledir = identity.tabledir(settings)
        found = (tabledir / "counts-0.db").exists()
        guard_local_state(settings, tabledir)
        if (tabledir / "counts-0.db").exists():
            assert (tabledir / "counts-0.db").read_text() == settings.app_id + settings.topic
        else:
            found = False
        tabledir.mkdir(parents=True, exist_ok=True)
        (tabledir / "counts-0.db").write_text(settings.app_id + settings.topic)
        if clean_stop:
            identity.running_marker(settings).unlink()
        return found

    first = settings_for()
    assert not start(first) and start(first)  # the same app_id and topic keep their tables
    assert not start(settings_for(app_id="another"))
    err = capsys.readouterr().err
    assert "app_id first -> another" in err and str(identity.tabledir(first)) in err
    assert start(settings_for(app_id="another"))
    assert not start(settings_for(app_id="another", topic="elsewhere"))
    assert start(first)  # back to the first: its tables were left untouched
    start(first, clean_stop=False)
    assert start(first)  # the tables hold only what the changelog holds: kept
    assert "recovery reads the changelog from where they stop" in capsys.readouterr().err
    # an earlier version's marker (its tables could be ahead of the changelog)
    identity.running_marker(first).write_text("a worker is running or did not stop cleanly\n")
    assert not start(first)
    assert "was an earlier version; rebuilding" in capsys.readouterr().err


def test_acknowledged_batches_commit_like_faust_acks(settings):
    app = create_app(settings, partitions=4)
    consumer = app.consumer
    intake = app.intake
    assert isinstance(intake, BatchIntake)
    assert consumer.drain == intake.drain
    tp = TP(TOPIC, 1)
    consumer._committed_offset[tp] = 10
    consumer.ack_offsets(tp, list(range(10, 20)), previous=10)
    # 20 and 21 never arrive (say, transaction markers): a gap, not a stuck commit
    consumer.ack_offsets(tp, [22, 23, 24], previous=19)
    assert consumer._new_offset(tp) == 25
    # offsets below the committed one are not acknowledged again
    consumer._committed_offset[tp] = 25
    consumer.ack_offsets(tp, [23, 24, 25, 26], previous=22)
    assert consumer._acked[tp] == [25, 26]
    assert consumer._new_offset(tp) == 27


def test_counted_batches_tell_fausts_stall_detector_the_partition_is_processed(
        settings, monkeypatch):
    """Faust logs "Stream has not started processing" for a fetching partition whose stream
    saw no event; the intake counts outside that stream, so it must say so itself."""
    app = create_app(settings, partitions=4)
    consumer, intake = app.consumer, app.intake
    tp = TP(TOPIC, 1)
    monkeypatch.setattr(consumer, "_get_active_partitions", lambda: {tp})
    records, tally = make_records(50, 1, seed=3)
    assert tp not in app.monitor.stream_inbound_time
    before = time.monotonic()
    counted, others = intake._count({tp: records}, {})
    assert [c.tp for c in counted] == [tp] and not others
    assert app.monitor.stream_inbound_time[tp] >= before
    # and the batch was counted: its changelog records hold the tally
    assert table_counts(written_by(counted[0])) == tally


def written_by(counted: Counted) -> dict:
    """A counted batch's changelog records as table keys and values."""
    keys = [json.loads(k) for k, _ in counted.changes]
    return {(PROGRESS_KEY,) if key[0] == PROGRESS_KEY else (tuple(key[0]), tuple(key[1])):
            json.loads(v) for key, (_, v) in zip(keys, counted.changes, strict=True)}


def progress_written(counted: Counted) -> list:
    """The progress values ([offset, watermark, wall clock]) a counted batch writes."""
    return [value for key, value in written_by(counted).items() if key == (PROGRESS_KEY,)]


def test_offsets_a_fetch_passes_without_records_are_read_not_counted(settings, monkeypatch):
    """A transaction's marker and an aborted transaction's records hold nothing to count: the
    fetch position past them moves the partition's progress and acknowledgements with it, so
    the commit, /health's lag and the snapshot's completeness pass them (and nothing is
    counted twice or skipped when a later record arrives)."""
    app = create_app(settings, partitions=4)
    consumer, intake = app.consumer, app.intake
    tp = TP(TOPIC, 2)
    monkeypatch.setattr(consumer, "_get_active_partitions", lambda: {tp})
    records, tally = make_records(40, 2, seed=5)  # offsets 0..39: a committed transaction
    # the fetch also passed its commit marker (40), 20 aborted records and their marker (61)
    (batch,) = intake._count({tp: records}, {tp: 62})[0]
    assert batch.offsets == [*range(40), 61] and batch.previous is None
    assert progress_written(batch)[0][0] == 61
    assert table_counts(written_by(batch)) == tally
    consumer.ack_offsets(tp, batch.offsets, batch.previous)
    assert consumer._new_offset(tp) == 62  # committed past the markers and aborted records
    # a fetch that brings only a marker (the next transaction's, say) moves progress alone
    (alone,) = intake._count({}, {tp: 70})[0]
    assert alone.offsets == [69] and alone.previous == 61
    assert progress_written(alone)[0][0] == 69
    assert list(written_by(alone)) == [(PROGRESS_KEY,)]
    # a position the partition's read offset already passed changes nothing
    assert intake._count({}, {tp: 65}) == ([], [])


def test_avro_logical_types_as_mapped_fields_reach_the_snapshot_as_text(tmp_path):
    """fastavro gives bytes, Decimal, UUID and date objects for such fields: they are counted,
    written to RocksDB and the changelog, and reach the snapshot as text (no crash loop)."""
    schema = {"type": "record", "name": "M", "fields": [
        {"name": "origin_server", "type": "bytes"},
        {"name": "topic", "type": {"type": "bytes", "logicalType": "decimal", "precision": 5,
                                   "scale": 2}},
        {"name": "timestamp", "type": "long"}]}
    (tmp_path / "m.avsc").write_text(json.dumps(schema))
    ini = replace_line(SEED_INI, "avro_val_schema", str(tmp_path / "m.avsc"))
    ini = replace_line(ini, "sqlite_db", str(tmp_path / "snap.sqlite3"))
    ini = ini.replace("[HTTPEndpointSetting]\n",
                      f"[HTTPEndpointSetting]\ndata_dir = {tmp_path}/data\n")
    settings = load(write_config(tmp_path, ini), {})
    now = int(time.time()) // 20 * 20
    values = []
    for server, price in [(b"\x00\xff", "1.50"), (b"\x00\xff", "1.50"), (b"ab", "2.00")]:
        body = io.BytesIO()
        schemaless_writer(body, parse_schema(schema),
                          {"origin_server": server, "topic": Decimal(price), "timestamp": now})
        values.append(body.getvalue())
    app = create_app(settings, partitions=4)
    changes, _ = app.processor.count_and_write(
        0, [record(0, i, v) for i, v in enumerate(values)], None)
    store = SnapshotStore(**store_config(settings))
    store.create()
    try:
        store.apply_records(dict(changes))
        with sqlite3.connect(str(tmp_path / "snap.sqlite3")) as conn:
            rows = set(conn.execute('SELECT server_name, topic, bucket_start, count '
                                    'FROM "default"'))
    finally:
        store.close()
    assert rows == {(str(b"\x00\xff"), "1.50", now, 2), (str(b"ab"), "2.00", now, 1)}


def test_table_batch_writes_the_bytes_faust_writes(settings):
    app = create_app(settings, partitions=4)
    store, unacked = app.processor.counts.data, app.processor.unacked
    changelog = TP(app.processor.counts.changelog_topic_name, 2)
    db = store._db_for_partition(2)
    key, other = ((2, "a", "t"), (1000.0, 1019.9)), ((2, "b", "t"), (1000.0, 1019.9))
    batch = TableBatch(unacked, 2)
    assert batch._encode_key is not store._encode_key  # the fast path is the one compared
    batch[key] = [3, 17]
    batch[other] = [1, 18]
    assert batch.get(key) == [3, 17]  # a batch reads its own writes
    records = batch.apply()
    # what Faust's send_changelog would serialize for the same writes, in order
    faust_bytes = [(app.serializers.dumps_key(None, k, serializer="json"),
                    app.serializers.dumps_value(None, v, serializer="json"))
                   for k, v in ((key, [3, 17]), (other, [1, 18]))]
    assert records == faust_bytes
    # staged, not written, until the brokers acknowledge the changelog records
    assert db.get(records[0][0]) is None
    assert TableBatch(unacked, 2).get(key) == [3, 17]  # the next batch reads them
    unacked.acknowledged(2, records, 41)
    assert store._decode_value(db.get(records[0][0])) == [3, 17]
    assert records[0][0] not in store._key_index  # Faust's never-forgetting index stays small
    assert store.persisted_offset(changelog) == 41
    assert unacked.view(2) == {} and unacked.pending() == 0

    batch = TableBatch(unacked, 2)
    batch[key] = [4, 19]
    del batch[other]  # retention: a tombstone
    assert batch.get(other) is None
    tombstoned = batch.apply()
    assert tombstoned == [(records[0][0], faust_bytes[0][1].replace(b"3,17", b"4,19")),
                          (records[1][0], None)]
    assert TableBatch(unacked, 2).get(other) is None  # staged tombstone hides the stored value
    unacked.acknowledged(2, tombstoned, 43)
    assert db.get(records[1][0]) is None
    assert records[1][0] not in store._key_index
    assert store.persisted_offset(changelog) == 43


def test_acknowledgements_out_of_order_write_rocksdb_in_send_order(settings):
    """RocksDB only ever holds a prefix of the changelog: a batch acknowledged before an earlier
    one waits for it, a newer staged value survives an older batch's write, and a revoked
    partition's late acknowledgements write nothing."""
    app = create_app(settings, partitions=4)
    store, unacked = app.processor.counts.data, app.processor.unacked
    changelog = TP(app.processor.counts.changelog_topic_name, 3)
    db = store._db_for_partition(3)
    key = ((3, "a", "t"), (1000.0, 1019.9))

    def stage(value):
        batch = TableBatch(unacked, 3)
        batch[key] = value
        return batch.apply()

    first, second = stage([1, 5]), stage([2, 6])
    raw_key = first[0][0]
    unacked.acknowledged(3, second, 11)
    assert db.get(raw_key) is None and store.persisted_offset(changelog) is None
    assert TableBatch(unacked, 3).get(key) == [2, 6]
    third = stage([3, 7])
    unacked.acknowledged(3, first, 10)  # both first and second land, in send order
    assert store._decode_value(db.get(raw_key)) == [2, 6]
    assert store.persisted_offset(changelog) == 11
    assert TableBatch(unacked, 3).get(key) == [3, 7]  # third still staged over the store
    unacked.forget({3})
    unacked.acknowledged(3, third, 12)  # revoked meanwhile: recovery owns the store now
    assert store._decode_value(db.get(raw_key)) == [2, 6]
    assert store.persisted_offset(changelog) == 11


def test_table_batch_larger_than_a_write_chunk_lands_whole(settings):
    app = create_app(settings, partitions=4)
    store, unacked = app.processor.counts.data, app.processor.unacked
    db = store._db_for_partition(1)
    n = 2 * WRITE_CHUNK + 7
    keys = [((1, f"s-{i}", "t"), (1000.0, 1019.9)) for i in range(n)]
    batch = TableBatch(unacked, 1)
    for i, key in enumerate(keys):
        batch[key] = [i + 1, i]
    del batch[keys[WRITE_CHUNK]]  # a tombstone in the second chunk
    records = batch.apply()
    assert len(records) == n
    unacked.acknowledged(1, records, n - 1)
    for i, key in enumerate(keys):
        raw = db.get(store._encode_key(key))
        if i == WRITE_CHUNK:
            assert raw is None
        else:
            assert store._decode_value(raw) == [i + 1, i]


def test_rocksdb_holds_only_buckets_within_retention(tmp_path):
    """Three hours of one-minute buckets through the worker's write path into real RocksDB:
    the sweep's deletes keep the partition's database to about clean_interval of buckets."""
    ini = replace_line(SEED_INI, "clean_interval", "10m")
    ini = replace_line(ini, "bucket_interval", "60")
    ini = ini.replace("[HTTPEndpointSetting]\n",
                      f"[HTTPEndpointSetting]\ndata_dir = {tmp_path}/data\n")
    settings = load(write_config(tmp_path, ini), {})
    app = create_app(settings, partitions=4)
    processor = app.processor
    start = int(time.time()) // 60 * 60 - 3 * 3600
    offset = 0
    for minute in range(180):
        records = []
        for server in ("a", "b", "c"):
            value = json.dumps({"origin_server": server, "topic": "t",
                                "timestamp": start + minute * 60 + 5}).encode()
            records.append(record(1, offset, value))
            offset += 1
        processor.counter.partition(1).last_sweep_mono = float("-inf")  # sweep every batch
        changes, _ = processor.count_and_write(1, records, None)
        assert changes  # the changelog gets the writes and the tombstones
        processor.unacked.acknowledged(1, changes, minute)
    db = processor.counts.data._db_for_partition(1)
    keys = [k for k in db.keys() if not k.startswith(b"__")]  # Faust's own offset key aside
    rows = [json.loads(k) for k in keys if b"__progress__" not in k]
    buckets = {row[1][0] for row in rows}
    assert len(buckets) <= 12  # 10 minutes of retention plus the bucket at each edge
    assert len(rows) == 3 * len(buckets)
    assert len(processor.counts.data._key_index) <= len(keys)
