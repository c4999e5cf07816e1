"""Settings that give a count its meaning change between restarts, on the real broker.

One worker directory (settings file and data_dir) and one app_id across each restart, as a user
who edits settings.ini and restarts would have. Expected counts are computed here from the
messages the test itself chose, independently of bucket_app's code. The last tests check that
start-up names a topic that is wrong, and why, rather than blaming the brokers.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from bucket_app.errors import TopicError
from bucket_app.kafka.topics import source_partitions
from bucket_app.settings import Settings, load
from bucket_app.snapshot.reader import changelog_topic
from tests.support.kafka import BROKERS, Record, create_topic, produce, unique
from tests.support.worker import MSG_MAP, Worker, counts_of

pytestmark = pytest.mark.integration

# One app_id for the module (the same across each restart); topics are each test's own.
APP_ID = unique("settings-change")


def messages(n: int, partitions: int, seed: int, prefix: str,
             base: int | None = None) -> list[dict]:
    """``n`` JSON messages over 3 servers x 2 topics x 3 regions, spread over 10 minutes."""
    rng = random.Random(seed)
    start = base if base is not None else (int(time.time()) - 7200) // 600 * 600
    return [{"origin_server": f"{prefix}-{rng.randrange(3)}", "topic": f"t{rng.randrange(2)}",
             "region": f"{prefix}-region-{rng.randrange(3)}",
             "timestamp": start + rng.randrange(600), "i": i,
             "partition": rng.randrange(partitions)} for i in range(n)]


def send(topic: str, msgs: list[dict]) -> dict[int, int]:
    return produce(topic, [Record(json.dumps(m).encode(), m["partition"]) for m in msgs])


def expected(msgs: list[dict], interval: int, server_field: str = "origin_server") -> dict:
    """(server_name, topic, bucket_start) -> messages with that server and topic whose time is
    in [bucket_start, bucket_start + interval)."""
    found: dict[tuple, int] = {}
    for m in msgs:
        key = (m[server_field], m["topic"], m["timestamp"] - m["timestamp"] % interval)
        found[key] = found.get(key, 0) + 1
    return found


def restart(worker: Worker, **changes: object) -> str:
    """Stop ``worker``, apply ``changes`` to its settings, start it again; return what it
    logged at this start."""
    worker.stop()
    for name, value in changes.items():
        setattr(worker, name, value)
    logged = len(worker.log_path.read_bytes())
    worker.start()
    return worker.log_path.read_bytes()[logged:].decode(errors="replace")


def state_line(log: str) -> str:
    lines = [line for line in log.splitlines() if "bucket_app: counting under state" in line]
    assert len(lines) == 1, log
    return lines[0]


def topics_on_broker() -> list[str]:
    async def run() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=BROKERS)
        await admin.start()
        try:
            return await admin.list_topics()
        finally:
            await admin.close()

    return asyncio.run(run())


def first_run(make_worker, topic: str, partitions: int, msgs: list[dict],
              **kwargs: object) -> tuple[Worker, dict[int, int]]:
    """A worker of APP_ID that has counted ``msgs``, and their last offsets."""
    create_topic(topic, partitions)
    worker = make_worker(topic, app_id=APP_ID, partitions=partitions, **kwargs)
    last = send(topic, msgs)
    worker.start().wait_caught_up(last)
    return worker, last


def test_another_topic_counts_only_that_topic_and_its_own_messages(make_worker):
    """(a) Topic A, then topic B with as many partitions: exactly B's counts, each of B's
    messages counted (none taken for a replay of A's offsets); back to A: A's state again."""
    topic_a, topic_b = unique("switch-a"), unique("switch-b")
    msgs_a = messages(100, 6, seed=1, prefix="a")
    worker, last_a = first_run(make_worker, topic_a, 6, msgs_a)
    assert counts_of(worker) == expected(msgs_a, 20)
    first_log = worker.log_path.read_text()

    create_topic(topic_b, 6)
    msgs_b = messages(10, 6, seed=2, prefix="b")
    last_b = send(topic_b, msgs_b)
    log = restart(worker, topic=topic_b)
    worker.wait_caught_up(last_b)
    assert counts_of(worker) == expected(msgs_b, 20)
    health = worker.health()["worker"]
    assert (health["counted"], health["replayed"]) == (10, 0)
    # the start-up line says what changed and where the old state is, left untouched
    first_state = state_line(first_log).split()[4]
    line = state_line(log)
    assert f'topic "{topic_a}" -> "{topic_b}"' in line and first_state in line
    assert "left untouched" in line
    assert f"{first_state}-counts-changelog" in topics_on_broker()

    # back to topic A: its state is used again, nothing is counted twice or afresh
    log = restart(worker, topic=topic_a)
    worker.wait_caught_up(last_a)
    assert counts_of(worker) == expected(msgs_a, 20)
    assert worker.health()["worker"]["counted"] == 0
    assert state_line(log).split()[4] == first_state


def test_another_topic_with_another_partition_count_starts_and_counts(make_worker):
    """(b) Topic A with 6 partitions, then topic B with 3: the worker starts (no changelog
    partition mismatch) and counts B exactly."""
    topic_a, topic_b = unique("parts-a"), unique("parts-b")
    msgs_a = messages(100, 6, seed=3, prefix="a")
    worker, _ = first_run(make_worker, topic_a, 6, msgs_a)
    assert counts_of(worker) == expected(msgs_a, 20)

    create_topic(topic_b, 3)
    msgs_b = messages(50, 3, seed=4, prefix="b")
    last_b = send(topic_b, msgs_b)
    restart(worker, topic=topic_b, partitions=3)
    worker.wait_caught_up(last_b)
    assert counts_of(worker) == expected(msgs_b, 20)
    assert sorted(worker.health()["partitions"]) == ["0", "1", "2"]
    assert worker.health()["worker"]["counted"] == 50


def test_another_bucket_interval_recounts_every_bucket(make_worker):
    """(c) bucket_interval 60, then 30 on the same topic: every row counts the messages in its
    own [bucket_start, bucket_end), none is a 60 s count relabelled."""
    topic = unique("interval")
    msgs = messages(100, 6, seed=5, prefix="s")
    worker, last = first_run(make_worker, topic, 6, msgs, extra={"bucket_interval": "60"})
    assert counts_of(worker) == expected(msgs, 60)

    log = restart(worker, extra={"bucket_interval": "30"})
    worker.wait_caught_up(last)
    rows = worker.get("/a/default").json()
    for row in rows:
        assert row["bucket_end"] - row["bucket_start"] == 30
        inside = [m for m in msgs if m["origin_server"] == row["server_name"]
                  and m["topic"] == row["topic"]
                  and row["bucket_start"] <= m["timestamp"] < row["bucket_end"]]
        assert row["count"] == len(inside), row
    assert counts_of(worker) == expected(msgs, 30)
    assert sum(row["count"] for row in rows) == 100
    assert "bucket_interval 60 -> 30" in state_line(log)


def test_another_mapping_means_the_new_fields(make_worker):
    """(d) server_name mapped from origin_server, then from region: rows mean the new
    mapping, exactly."""
    topic = unique("mapping")
    msgs = messages(100, 6, seed=6, prefix="m")
    worker, last = first_run(make_worker, topic, 6, msgs)
    assert counts_of(worker) == expected(msgs, 20)

    log = restart(worker, msg_map={"region": "server_name", "topic": "topic"})
    worker.wait_caught_up(last)
    assert counts_of(worker) == expected(msgs, 20, server_field="region")
    assert "msg_map" in state_line(log)
    assert MSG_MAP == {"origin_server": "server_name", "topic": "topic"}  # fixture unchanged


def test_same_settings_restart_reuses_the_state(make_worker):
    """(e) The same settings after a clean stop: the same state, nothing counted again, and
    new messages counted on top."""
    topic = unique("same")
    msgs = messages(100, 6, seed=7, prefix="s")
    worker, last = first_run(make_worker, topic, 6, msgs)
    assert counts_of(worker) == expected(msgs, 20)
    first_log = worker.log_path.read_text()

    log = restart(worker)
    worker.wait_caught_up(last)
    assert counts_of(worker) == expected(msgs, 20)
    assert worker.health()["worker"]["counted"] == 0

    more = messages(10, 6, seed=8, prefix="s", base=msgs[0]["timestamp"] // 600 * 600)
    for i, m in enumerate(more):
        m["i"] = 100 + i
    worker.wait_caught_up(send(topic, more))
    assert counts_of(worker) == expected(msgs + more, 20)
    assert worker.health()["worker"]["counted"] == 10

    # the same state, named the same, its local tables kept rather than rebuilt
    state = state_line(first_log).split()[4]
    line = state_line(log)
    assert line.split()[4] == state and "last worker" not in line
    assert "did not stop cleanly" not in log
    assert list((worker.directory / "data" / "tables" / state).iterdir())


def settings_of(worker: Worker) -> Settings:
    worker.write_settings()
    return load(worker.settings_path, {})


def test_a_changelog_with_another_partition_count_is_named_with_what_to_do(tmp_path):
    """A changelog with fewer partitions than the source topic (a source deleted and created
    again with more) stops start-up soon with a line naming both topics and what to do, not
    as unreachable brokers after a minute."""
    topic = unique("mismatch")
    create_topic(topic, 3)
    settings = settings_of(Worker(tmp_path / "w", topic=topic, app_id=APP_ID, partitions=3))
    changelog = changelog_topic(settings)
    create_topic(changelog, 2)
    started = time.monotonic()
    with pytest.raises(TopicError) as caught:
        source_partitions(settings)
    message = str(caught.value)
    assert time.monotonic() - started < 20
    assert f"topic {changelog} has 2 partitions but the source topic {topic} has 3" in message
    assert f"--delete --topic {changelog}" in message and "app_id" in message


def test_a_topic_the_cluster_refuses_to_create_is_named_with_the_error(tmp_path):
    """The broker refuses the topic (here: a replication factor beyond its brokers): start-up
    stops at once naming the topic, the broker's error and the setting to change."""
    topic = unique("refused")
    settings = settings_of(Worker(tmp_path / "w", topic=topic, app_id=APP_ID,
                                  extra={"replication_factor": "5"}))
    started = time.monotonic()
    with pytest.raises(TopicError) as caught:
        source_partitions(settings)
    message = str(caught.value)
    assert time.monotonic() - started < 10
    assert f"cannot create topic {topic} (InvalidReplicationFactorError" in message
    assert "replication_factor = 5" in message
    assert topic not in topics_on_broker()
