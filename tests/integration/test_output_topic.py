"""The output topic end to end: a worker with ``output_topic`` set, messages in, and the exact
totals rebuilt from the output topic alone (last value per key), as ClickHouse or Druid would.

Expected totals and final flags are computed here from the messages the test chose: per
(server, topic, 20 s bucket) counts, and a bucket is final once every source partition has seen
an event time past its end plus the grace (one interval).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bucket_app.snapshot.output import row_key
from tests.support import REPO
from tests.support.kafka import BROKERS, Record, create_topic, produce, unique
from tests.support.output import latest, read_all

pytestmark = pytest.mark.integration

PARTITIONS = 6
INTERVAL = 20
GRACE = INTERVAL  # the default grace: one bucket_interval


async def describe(topic: str) -> tuple[int, str | None]:
    """The topic's partition count and cleanup.policy, as the brokers have them (0 and None:
    no such topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKERS)
    await admin.start()
    try:
        (info,) = await admin.describe_topics([topic])
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {entry[0]: entry[1] for entry in configs[0].resources[0][4]}
        return len(info["partitions"] or ()), entries.get("cleanup.policy")
    finally:
        await admin.close()


def messages(rng: random.Random, n: int, first_ts: int, last_ts: int,
             ) -> list[tuple[int, str, str, int]]:
    """(partition, server, topic, event time); every partition gets the latest time once, so
    the closing time (the slowest partition's) is known."""
    found = [(rng.randrange(PARTITIONS), f"s{rng.randrange(4)}", f"t{rng.randrange(3)}",
              rng.randrange(first_ts, last_ts)) for _ in range(n - PARTITIONS)]
    found += [(p, "s0", "t0", last_ts) for p in range(PARTITIONS)]
    return found


def records(batch: list[tuple[int, str, str, int]]) -> list[Record]:
    return [Record(json.dumps({"origin_server": s, "topic": t, "timestamp": ts}).encode(), p)
            for p, s, t, ts in batch]


def expected(sent: list[tuple[int, str, str, int]]) -> dict[bytes, tuple[int, int]]:
    """(count, final) per output key, from the messages alone."""
    counts = Counter((s, t, ts - ts % INTERVAL) for _p, s, t, ts in sent)
    closing = min(max(ts for p, _s, _t, ts in sent if p == part) for part in range(PARTITIONS))
    return {row_key({"server_name": s, "topic": t}, start): (n, int(
        start + INTERVAL + GRACE <= closing)) for (s, t, start), n in counts.items()}


def rebuilt(topic: str, partitions: int) -> tuple[list[tuple[bytes, Any]], dict[bytes, Any]]:
    records_ = asyncio.run(read_all(topic, partitions))
    return records_, latest(records_)


def wait_for_totals(topic: str, partitions: int, want: dict[bytes, tuple[int, int]],
                    timeout_s: float = 30) -> tuple[list[tuple[bytes, Any]], dict[bytes, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        records_, rows = rebuilt(topic, partitions)
        got = {k: (v["count"], v["final"]) for k, v in rows.items()}
        if got == want or time.monotonic() > deadline:
            assert got == want
            return records_, rows
        time.sleep(0.5)


def test_output_topic_rebuilds_the_exact_totals(make_worker):
    source, output = unique("src"), unique("out")
    create_topic(source, PARTITIONS)
    worker = make_worker(source, extra={"output_topic": output}).start()
    partitions, policy = asyncio.run(describe(output))
    assert (partitions, policy) == (PARTITIONS, "compact")

    rng = random.Random(15)
    now = int(time.time())
    base = now - now % INTERVAL - 40 * INTERVAL
    first = messages(rng, 1500, base, base + 10 * INTERVAL)
    last = produce(source, records(first))
    worker.wait_caught_up(last)
    want_first = expected(first)
    assert 0 < sum(final for _n, final in want_first.values()) < len(want_first)
    records_first, rows = wait_for_totals(output, partitions, want_first)
    some = rows[next(iter(rows))]
    assert set(some) == {"server_name", "topic", "bucket_start", "bucket_end", "count", "late",
                         "final", "position", "version", "updated_at"}
    for key, value in rows.items():
        assert orjson.loads(key) == {"server_name": value["server_name"],
                                     "topic": value["topic"],
                                     "bucket_start": value["bucket_start"]}
        assert value["bucket_end"] == value["bucket_start"] + INTERVAL
        assert all(value["position"][str(p)] <= last.get(p, -1) for p in range(PARTITIONS))

    # Later messages: more in the open buckets of the same keys (their counts go up), and a
    # later event time in every partition (the open buckets become final).
    open_starts = sorted({orjson.loads(k)["bucket_start"] for k, (_n, final)
                          in want_first.items() if not final})
    second = [(rng.randrange(PARTITIONS), s, t, start + rng.randrange(INTERVAL))
              for s, t, start in ((f"s{rng.randrange(4)}", f"t{rng.randrange(3)}",
                                   rng.choice(open_starts)) for _ in range(400))]
    second += [(p, "s9", "t9", base + 20 * INTERVAL) for p in range(PARTITIONS)]
    last = produce(source, records(second))
    worker.wait_caught_up(last)
    want = expected(first + second)
    records_all, rows = wait_for_totals(output, partitions, want)

    grown = [k for k in want_first if want[k][0] > want_first[k][0]]
    flipped = [k for k in want_first if want_first[k][1] == 0 and want[k][1] == 1]
    assert grown and flipped
    # the same keys were updated (no new key for an existing row), the latest value winning
    assert set(want_first) <= set(want) and len(records_all) > len(records_first)
    # each key's version never decreases along the topic
    versions: dict[bytes, int] = {}
    for key, value in records_all:
        assert value is not None  # nothing is past retention here
        assert value["version"] >= versions.get(key, 0)
        versions[key] = value["version"]


def clickhouse_sql() -> list[str]:
    """The ClickHouse statements of docs/output-topic.md, in order. Its Kafka engine table is
    made a Memory table of the same columns: chDB has the Kafka engine but cannot run it
    ("Shutdown was called", chdb 4.4.0), so the test inserts what the engine would read."""
    doc = (REPO / "docs" / "output-topic.md").read_text()
    block = re.search(r"```sql\n(.*?)```", doc, re.DOTALL)
    assert block, "docs/output-topic.md has no sql block"
    text = re.sub(r"ENGINE = Kafka\s+SETTINGS[^;]*", "ENGINE = Memory", block.group(1))
    assert "ENGINE = Memory" in text
    statements = [re.sub(r"--[^\n]*", "", part).strip() for part in text.split(";")]
    return [statement for statement in statements if statement]


def test_clickhouse_reads_the_output_topic_as_the_docs_say(make_worker, tmp_path: Path):
    """Every record of the output topic, in topic order (several versions of most rows), into
    the docs' ClickHouse tables (embedded ClickHouse, chDB): the docs' FINAL query gives each
    row's latest count and final flag, equal to the worker's and to the messages' own."""
    from chdb import session  # imported here: a large library only this test needs

    source, output = unique("src"), unique("out")
    create_topic(source, PARTITIONS)
    worker = make_worker(source, extra={"output_topic": output}).start()
    rng = random.Random(24)
    now = int(time.time())
    base = now - now % INTERVAL - 40 * INTERVAL  # within the docs' query's last hour
    sent = messages(rng, 1200, base, base + 10 * INTERVAL)
    worker.wait_caught_up(produce(source, records(sent)))
    wait_for_totals(output, PARTITIONS, expected(sent))
    more = [(rng.randrange(PARTITIONS), f"s{rng.randrange(4)}", f"t{rng.randrange(3)}",
             base + 9 * INTERVAL + rng.randrange(INTERVAL)) for _ in range(300)]
    more += [(p, "s9", "t9", base + 20 * INTERVAL) for p in range(PARTITIONS)]
    sent += more
    worker.wait_caught_up(produce(source, records(more)))
    every, _ = wait_for_totals(output, PARTITIONS, expected(sent))
    assert len(every) > len(expected(sent))  # rows were published more than once

    *create, query = clickhouse_sql()
    clickhouse = session.Session(str(tmp_path / "clickhouse"))
    try:
        for statement in create:
            clickhouse.query(statement)
        lines = "\n".join(orjson.dumps(value).decode() for _key, value in every
                          if value is not None)
        clickhouse.query(f"INSERT INTO bucket_counts_queue FORMAT JSONEachRow\n{lines}")
        answer = clickhouse.query(
            "SELECT server_name, topic, toUnixTimestamp(bucket_start) AS bucket_start, count, "
            f"final FROM ({query})", "JSONEachRow").bytes().decode()
    finally:
        clickhouse.close()
    found = {row_key({"server_name": row["server_name"], "topic": row["topic"]},
                     int(row["bucket_start"])): (int(row["count"]), int(row["final"]))
             for row in map(json.loads, answer.splitlines())}
    assert found == expected(sent)
    served = {row_key({"server_name": r["server_name"], "topic": r["topic"]}, r["bucket_start"]):
              (r["count"], r["final"]) for r in worker.get("/a/default").json()}
    assert found == served
    assert sum(n for n, _ in found.values()) == len(sent)


def publishers(workers: list[Any]) -> list[Any]:
    """The replicas that say they hold source partition 0 (/health's worker.assigned)."""
    return [w for w in workers if 0 in w.health()["worker"]["assigned"]]


@pytest.mark.slow
def test_a_hand_over_of_partition_0_loses_nothing(make_worker):
    """Two replicas; the one holding partition 0 publishes. Stopping it moves partition 0 to
    the other, which publishes every row and then the later changes: still exact."""
    source, output = unique("src"), unique("out")
    create_topic(source, PARTITIONS)
    app_id = unique("app")
    workers = [make_worker(source, app_id=app_id, name=f"r{i}",
                           extra={"output_topic": output, "session_timeout": "6s"})
               for i in range(2)]
    for worker in workers:
        worker.start(wait=False)
    for worker in workers:
        worker.wait_healthy()
    rng = random.Random(16)
    now = int(time.time())
    base = now - now % INTERVAL - 40 * INTERVAL
    first = messages(rng, 1200, base, base + 10 * INTERVAL)
    last = produce(source, records(first))
    for worker in workers:
        worker.wait_caught_up(last)
    wait_for_totals(output, PARTITIONS, expected(first))
    deadline = time.monotonic() + 30
    while len(holders := publishers(workers)) != 1 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert len(holders) == 1, "exactly one replica holds partition 0"
    (old,) = holders
    (new,) = [w for w in workers if w is not old]
    old.stop()
    deadline = time.monotonic() + 60
    while publishers([new]) != [new] and time.monotonic() < deadline:
        time.sleep(0.3)
    second = messages(rng, 600, base + 8 * INTERVAL, base + 20 * INTERVAL)
    last = produce(source, records(second))
    new.wait_caught_up(last)
    wait_for_totals(output, PARTITIONS, expected(first + second))
    assert "publishing every row" in new.log_path.read_text(errors="replace")
