"""RowPublisher on a real SnapshotStore file and the real broker: what reaches the output topic.

Each test builds the snapshot with SnapshotStore itself, runs publication rounds by hand and
reads the topic back with a plain consumer; the expected rows are the test's own model of the
per-partition counts it applied. (The checks that need no broker are
tests/unit/snapshot/test_output.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bucket_app.snapshot.codec import Progress
from bucket_app.snapshot.output import NotPublisher, RowPublisher, row_key
from bucket_app.snapshot.state import ReaderState
from bucket_app.snapshot.store import SnapshotStore, store_config
from tests.support.kafka import BROKERS, unique
from tests.support.output import latest, read_all, settings_for

pytestmark = pytest.mark.integration

PARTITIONS = 2
INTERVAL = 20
T0 = 1_700_000_000  # a bucket start (multiple of 20)


async def create_compacted(topic: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKERS)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1,
                                            topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()


class Harness:
    """A store, the reader state a worker would have, a publisher, its producer and connection."""

    def __init__(self, tmp_path: Path, topic: str) -> None:
        self.settings = settings_for(tmp_path)
        self.store = SnapshotStore(**store_config(self.settings))
        self.store.create()
        self.state = ReaderState(PARTITIONS, started=True)
        self.state.changelog = {p: (0, 0) for p in range(PARTITIONS)}
        self.topic = topic
        self.publisher = RowPublisher(self.settings, topic, self.state, lambda: True)
        self.model: dict[tuple[int, tuple[Any, ...], int], int] = {}

    async def __aenter__(self) -> Harness:
        self.producer = self.publisher.producer()
        await self.producer.start()
        self.conn = self.publisher.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.conn.close()
        await self.producer.stop()
        self.store.close()

    def apply(self, changes: dict[tuple[int, tuple[Any, ...], int], int | None],
              closing_s: float = float("-inf"), offsets: dict[int, int] | None = None,
              watermark_s: float | None = None) -> None:
        for key, count in changes.items():
            if count is None:
                self.model.pop(key, None)
            else:
                self.model[key] = count
        self.state.generation = self.store.apply(
            {k: None if v is None else (v, 0) for k, v in changes.items()}, closing_s)
        for p, offset in (offsets or {}).items():
            mark = watermark_s if watermark_s is not None else T0
            self.state.progress = {**self.state.progress, p: Progress(offset, mark)}

    def expected(self) -> dict[bytes, int]:
        """Row totals of the model: per-partition counts summed per (mapped values, start)."""
        totals: dict[bytes, int] = {}
        for (_p, (server, topic), start), count in self.model.items():
            key = row_key({"server_name": server, "topic": topic}, start)
            totals[key] = totals.get(key, 0) + count
        return {k: v for k, v in totals.items() if v > 0}

    async def publish(self) -> int:
        return await self.publisher.publish(self.producer, self.conn)


async def test_rounds_publish_changed_rows_and_the_topic_rebuilds_the_table(tmp_path):
    topic = unique("out")
    await create_compacted(topic)
    async with Harness(tmp_path, topic) as h:
        h.apply({(0, ("a", "t"), T0): 3, (1, ("a", "t"), T0): 2, (0, ("b", "t"), T0): 1,
                 (1, ("b", None), T0 + INTERVAL): 5}, offsets={0: 9, 1: 4})
        assert await h.publish() == 3  # every row: a new publisher
        first = await read_all(topic)
        assert {k: v["count"] for k, v in latest(first).items()} == h.expected()
        value = latest(first)[row_key({"server_name": "a", "topic": "t"}, T0)]
        assert value["position"] == {"0": 9, "1": 4}
        assert value["version"] == 10 + 5
        assert (value["bucket_start"], value["bucket_end"]) == (T0, T0 + INTERVAL)
        assert (value["server_name"], value["topic"], value["final"], value["late"]) == (
            "a", "t", 0, 0)
        assert "RST_ID" not in value and isinstance(value["updated_at"], float)

        # nothing changed: nothing sent
        assert await h.publish() == 0
        # one row's count changes, one row is new: exactly those two are sent
        h.apply({(1, ("a", "t"), T0): 7, (0, ("c", "u"), T0): 1}, offsets={0: 12, 1: 9})
        assert await h.publish() == 2
        records = await read_all(topic)
        assert len(records) == len(first) + 2
        rebuilt = latest(records)
        assert {k: v["count"] for k, v in rebuilt.items()} == h.expected()
        assert rebuilt[row_key({"server_name": "a", "topic": "t"}, T0)]["count"] == 10
        assert rebuilt[row_key({"server_name": "a", "topic": "t"}, T0)]["version"] == 13 + 10


async def test_final_flips_are_published_and_a_new_publisher_sends_everything(tmp_path):
    topic = unique("out")
    await create_compacted(topic)
    async with Harness(tmp_path, topic) as h:
        h.apply({(0, ("a", "t"), T0): 1, (0, ("a", "t"), T0 + 5 * INTERVAL): 4},
                offsets={0: 4, 1: -1})
        assert await h.publish() == 2
        # the closing time passes the first bucket's end plus grace (one interval): final
        h.apply({}, closing_s=T0 + 2 * INTERVAL)
        assert await h.publish() == 1
        rebuilt = latest(await read_all(topic))
        old = row_key({"server_name": "a", "topic": "t"}, T0)
        new = row_key({"server_name": "a", "topic": "t"}, T0 + 5 * INTERVAL)
        assert (rebuilt[old]["final"], rebuilt[old]["count"]) == (1, 1)
        assert (rebuilt[new]["final"], rebuilt[new]["count"]) == (0, 4)

        # a replica that becomes the publisher sends every row again, as it now is
        before = len(await read_all(topic))
        h.publisher.reset()
        assert await h.publish() == 2
        records = await read_all(topic)
        assert len(records) == before + 2
        assert {k: (v["count"], v["final"]) for k, v in latest(records).items()} == {
            old: (1, 1), new: (4, 0)}


async def test_retention_publishes_tombstones_and_no_shrinking_counts(tmp_path):
    topic = unique("out")
    await create_compacted(topic)
    async with Harness(tmp_path, topic) as h:
        retention = h.settings.clean_interval_s
        old, live = T0, T0 + 100 * INTERVAL
        h.apply({(0, ("a", "t"), old): 2, (1, ("a", "t"), old): 3, (0, ("b", "t"), old): 1,
                 (0, ("a", "t"), live): 1}, offsets={0: 5, 1: 5})
        assert await h.publish() == 3
        # the watermarks pass the old bucket's end plus the retention in both partitions:
        # only a sweep can change it now
        mark = old + INTERVAL + retention + 1
        assert mark < live
        h.apply({(0, ("a", "t"), live): 2}, offsets={0: 6, 1: 6}, watermark_s=mark)
        assert await h.publish() == 1
        # partition 0 sweeps the old bucket: row a shrinks (3 of 5 left), row b goes
        h.apply({(0, ("a", "t"), old): None, (0, ("b", "t"), old): None})
        assert await h.publish() == 1  # b's tombstone; a's shrunken count is not sent
        records = await read_all(topic)
        # (a key's records keep their order: one key, one partition)
        b_values = [v for k, v in records if k == row_key({"server_name": "b", "topic": "t"}, old)]
        assert len(b_values) == 2 and b_values[-1] is None
        rebuilt = latest(records)
        assert rebuilt[row_key({"server_name": "a", "topic": "t"}, old)]["count"] == 5
        # partition 1 sweeps it too: a goes
        h.apply({(1, ("a", "t"), old): None})
        assert await h.publish() == 1
        rebuilt = latest(await read_all(topic))
        assert {k: v["count"] for k, v in rebuilt.items()} == h.expected() == {
            row_key({"server_name": "a", "topic": "t"}, live): 2}
        assert h.publisher.watched == {}


async def test_a_round_stops_when_partition_0_moves_on(tmp_path):
    topic = unique("out")
    await create_compacted(topic)
    async with Harness(tmp_path, topic) as h:
        h.apply({(0, ("a", "t"), T0): 1}, offsets={0: 0, 1: -1})
        leading = [False]
        h.publisher.leads = lambda: leading[0]
        with pytest.raises(NotPublisher):
            await h.publish()
        assert h.publisher.published_through == 0 and await read_all(topic) == []
        leading[0] = True
        assert await h.publish() == 1
