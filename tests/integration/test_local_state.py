"""A worker's local RocksDB tables after SIGKILL: never ahead of the changelog, kept on restart.

The worker writes a batch to RocksDB only once the brokers have acknowledged its changelog
records, with the changelog offset they reach (bucket_app.kafka.changelog). These tests kill a
real worker, open its RocksDB files and read its changelog from the real broker, and check the
invariant record by record; then a restart keeps the tables and the counts are exact against
the messages the test produced.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from rocksdict import AccessType, Options, Rdict

from bucket_app import identity
from bucket_app.settings import load
from bucket_app.snapshot.reader import COUNTS_TABLE
from tests.support.kafka import (
    BackgroundProducer,
    bulk_records,
    create_topic,
    end_offsets,
    produce,
    read_to_end,
    unique,
)
from tests.support.worker import Worker, counts_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
OFFSET_KEY = b"__faust\0offset__"  # where Faust's store keeps its changelog offset


def changelog_records(topic: str, partitions: int) -> dict[int, list[tuple[int, bytes, Any]]]:
    """Every record of ``topic``: partition -> [(offset, key, value or None)] in order."""
    found = asyncio.run(read_to_end(topic, partitions))
    return {p: [(r.offset, r.key, r.value) for r in records] for p, records in found.items()}


def state_of(worker: Worker) -> tuple[Path, str]:
    """``worker``'s local tables directory and its counts changelog, from its settings file."""
    worker.write_settings()
    settings = load(worker.settings_path, {})
    tabledir = identity.tabledir(settings)
    if not tabledir.is_absolute():
        tabledir = worker.directory / tabledir
    return tabledir, identity.changelog_topic(settings, COUNTS_TABLE)


def local_tables(tabledir: Path, partitions: int) -> dict[int, dict[bytes, bytes]]:
    """Every key and value of each partition's RocksDB database, opened read-only."""
    tables = {}
    for partition in range(partitions):
        path = tabledir / f"{COUNTS_TABLE}-{partition}.db"
        if not path.exists():
            tables[partition] = {}
            continue
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            tables[partition] = dict(db.items())
        finally:
            db.close()
    return tables


def assert_prefix_of_changelog(tables: dict[int, dict[bytes, bytes]],
                               changelog: dict[int, list[tuple[int, bytes, Any]]]) -> int:
    """Each partition's store is the changelog through its persisted offset, plus at most
    values the changelog holds after it; returns how many records lie past the offsets."""
    beyond = 0
    for partition, store in tables.items():
        stored = dict(store)
        raw_offset = stored.pop(OFFSET_KEY, None)
        persisted = -1 if raw_offset is None else int(raw_offset)
        state: dict[bytes, bytes] = {}
        later: set[tuple[bytes, Any]] = set()
        for offset, key, value in changelog[partition]:
            if offset <= persisted:
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value
            else:
                later.add((key, value))
                beyond += 1
        assert changelog[partition] == [] or persisted <= changelog[partition][-1][0]
        for key in set(stored) | set(state):
            if stored.get(key) != state.get(key):
                # only a batch acknowledged after the persisted offset, written in part
                assert (key, stored.get(key)) in later, (partition, key, stored.get(key))
    return beyond


def test_sigkill_leaves_tables_a_prefix_of_the_changelog_and_restart_keeps_them(make_worker):
    topic = unique("keep")
    create_topic(topic, PARTITIONS)
    worker = make_worker(topic, partitions=PARTITIONS, extra={"session_timeout": "6s"})
    tabledir, changelog = state_of(worker)
    records, expected = bulk_records(40_000, PARTITIONS, seed=11)
    worker.start()

    # 1. killed while counting a stream: the store is a prefix of the changelog
    producer = BackgroundProducer(topic, records[:30_000], chunk=1_000, pause_s=0.05).start()
    time.sleep(3.0)
    worker.stop(signal.SIGKILL)
    producer.join()
    tables = local_tables(tabledir, PARTITIONS)
    assert sum(map(len, tables.values())) > PARTITIONS  # it had counted, and kept it
    assert_prefix_of_changelog(tables, changelog_records(changelog, PARTITIONS))

    # 2. restarted: the tables are kept, the replay counts what they lack, exactly
    worker.start()
    last = produce(topic, records[30_000:])
    worker.wait_caught_up(last, timeout_s=180)
    assert counts_of(worker) == expected
    log = worker.log_path.read_text(errors="replace")
    assert "its tables hold only what the changelog holds" in log
    assert "rebuilding its tables" not in log

    # 3. killed at rest: every acknowledged batch is in the store, through the changelog's end
    worker.stop(signal.SIGKILL)
    tables = local_tables(tabledir, PARTITIONS)
    records_now = changelog_records(changelog, PARTITIONS)
    assert assert_prefix_of_changelog(tables, records_now) == 0
    ends = end_offsets(changelog, PARTITIONS)
    assert {p: int(t[OFFSET_KEY]) for p, t in tables.items()} == {
        p: end - 1 for p, end in ends.items()}
    worker.start()
    worker.wait_caught_up(last, timeout_s=120)
    assert counts_of(worker) == expected
    assert sum(expected.values()) == 40_000


def test_a_joining_replica_restores_its_partitions_in_bulk_exactly(make_worker):
    """A new replica takes over partitions with a long changelog: it reads them into RocksDB
    in whole fetches before Faust's recovery, and both replicas answer exactly."""
    topic = unique("join")
    create_topic(topic, PARTITIONS)
    app_id = unique("app")
    first, second = (make_worker(topic, app_id=app_id, name=name, partitions=PARTITIONS,
                                 extra={"session_timeout": "6s"}) for name in ("a", "b"))
    records, expected = bulk_records(40_000, PARTITIONS, seed=12)
    first.start()
    last = produce(topic, records[:30_000])
    first.wait_caught_up(last, timeout_s=120)
    second.start()
    deadline = time.monotonic() + 90
    while not second.health()["worker"]["assigned"] and time.monotonic() < deadline:
        time.sleep(0.5)
    last = produce(topic, records[30_000:])
    for worker in (first, second):
        worker.wait_caught_up(last, timeout_s=180)
        assert counts_of(worker) == expected
    log = second.log_path.read_text(errors="replace")
    assert "restored " in log and " changelog records of partitions " in log, second.tail()
    # its tables, read back after a clean stop, are the changelog's own records
    second.stop()
    tabledir, changelog = state_of(second)
    assert_prefix_of_changelog(local_tables(tabledir, PARTITIONS),
                               changelog_records(changelog, PARTITIONS))
    assert sum(expected.values()) == 40_000
