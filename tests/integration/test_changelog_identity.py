"""A snapshot is never resumed from a changelog that is not the one it was read from.

A worker counts a first data set and stops. Then everything but its SQLite snapshot is reset,
as an operator starting over would: the changelog and the source topic deleted and created
again, the worker's RocksDB state removed; another replica counts a second data set into the
new changelog and stops. The first worker starts again: its snapshot must hold exactly the
second data set's counts (no row of the first), and its log must say in one line why the
snapshot was rebuilt: once with the new changelog grown past every offset the old checkpoint
stored (offsets alone resumed there, mixing the two), once with it shorter. Expected counts
come from the produced messages (tests.support.kafka).
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from tests.support.kafka import (
    BROKERS,
    bulk_records,
    create_topic,
    end_offsets,
    list_topics,
    produce,
    unique,
)
from tests.support.worker import counts_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 6
REBUILT = "snapshot: rebuilding from the changelog: "


async def _recreate(topics: list[str], timeout_s: float = 60) -> None:
    """Delete ``topics`` and create them again (six partitions) once the broker let go."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKERS)
    await admin.start()
    try:
        await admin.delete_topics(topics)
        deadline = time.monotonic() + timeout_s
        for topic in topics:
            while True:
                try:
                    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
                    break
                except TopicAlreadyExistsError:  # still being deleted
                    assert time.monotonic() < deadline, f"{topic} was not deleted"
                    await asyncio.sleep(0.5)
    finally:
        await admin.close()


@pytest.mark.parametrize(("first_n", "second_n", "grown"), [
    (3_000, 18_000, True),   # the new changelog passes every stored offset
    (6_000, 600, False),     # the new changelog ends below them
])
def test_a_recreated_changelog_is_detected_and_the_snapshot_rebuilt(
        make_worker, first_n: int, second_n: int, grown: bool):
    topic = unique("lineage")
    create_topic(topic, PARTITIONS)
    app_id = unique("app")
    worker = make_worker(topic, app_id=app_id, name="a").start()
    first, old_counts = bulk_records(first_n, PARTITIONS, seed=51, prefix="old")
    worker.wait_caught_up(produce(topic, first))
    assert counts_of(worker) == old_counts
    worker.stop()
    changelog = [t for t in list_topics() if t.startswith(app_id + "-")
                 and t.endswith("-counts-changelog")]
    assert len(changelog) == 1, changelog
    stored = end_offsets(changelog[0], PARTITIONS)  # what the stopped snapshot read up to

    # started over while this worker was down: the topics recreated, its RocksDB state gone;
    # another replica counts a second data set into the new changelog, then stops
    asyncio.run(_recreate([changelog[0], topic]))
    shutil.rmtree(worker.directory / "data" / "tables")
    second, new_counts = bulk_records(second_n, PARTITIONS, seed=52, prefix="new")
    last = produce(topic, second)
    other = make_worker(topic, app_id=app_id, name="b").start()
    other.wait_caught_up(last)
    other.stop()
    now = end_offsets(changelog[0], PARTITIONS)
    if grown:  # every stored offset lies within the new changelog
        assert all(now[p] > stored[p] for p in range(PARTITIONS)), (stored, now)
    else:
        assert all(now[p] < stored[p] for p in range(PARTITIONS)), (stored, now)

    logged = len(worker.log_path.read_bytes())
    worker.start()
    worker.wait_caught_up(last)
    assert counts_of(worker) == new_counts  # not one row of the first data set
    log = worker.log_path.read_bytes()[logged:].decode(errors="replace")
    lines = [line for line in log.splitlines() if "snapshot: re" in line]
    assert len(lines) == 1 and REBUILT in lines[0], log
    assert "deleted and recreated" in lines[0] and changelog[0] in lines[0], lines[0]
    print(f"changelog offsets stored {stored}, after the new data set {now}: "
          f"{lines[0].split(REBUILT)[1]}")
