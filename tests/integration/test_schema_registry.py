"""Avro with a schema registry, against the real Apicurio Registry and the real broker.

Values are framed as Confluent's serializer frames them (byte 0, the writer schema's id, the
datum) by the test itself (tests.support.registry), with schemas the test registers. Every
expected count is computed here from the records the test wrote, never by bucket_app's code:
the reader default fills a field older writers lack, a renamed field is found through its alias.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.evolution import NOTE_DEFAULT, V1, V3, V4, VERSIONS
from tests.support.kafka import (
    Record,
    create_topic,
    end_offsets,
    produce,
    read_records,
    unique,
)
from tests.support.registry import (
    REGISTRY_URL,
    RegistryProcess,
    register,
    registry_error,
)
from tests.support.registry_records import (
    MSG_MAP,
    PARTITIONS,
    SQLITE_SCHEMA,
    counted,
    events,
    mixed,
)
from tests.support.worker import Worker, bucket_app, free_port

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module", autouse=True)
def schema_registry() -> str:
    exc = registry_error(REGISTRY_URL)
    if exc is not None:
        pytest.fail(f"no schema registry at {REGISTRY_URL} ({exc}); run `make "
                    "schema-registry` or `make test`")
    return REGISTRY_URL


def avro_worker(make_worker: Any, topic: str, url: str = REGISTRY_URL, name: str = "w",
                **extra: str) -> Worker:
    worker: Worker = make_worker(
        topic, name=name, partitions=PARTITIONS, msg_map=dict(MSG_MAP), schema=dict(SQLITE_SCHEMA),
        extra={"bucket_field": "ts", "schema_registry_url": url, **extra})
    return worker


def test_four_schema_versions_interleaved_are_counted_exactly(make_worker):
    topic = unique("avro-evolve")
    create_topic(topic, PARTITIONS)
    subject = f"{topic}-value"
    ids = [register(subject, version) for version in VERSIONS]  # the latest, v4, reads
    records, expected = events(ids, 6000, seed=21)
    worker = avro_worker(make_worker, topic).start()
    worker.wait_caught_up(produce(topic, records), timeout_s=180)
    assert counted(worker) == dict(expected)
    health = worker.health()
    assert health["worker"]["skipped"] == {}
    assert health["worker"]["counted"] == 6000
    log = worker.log_path.read_text()
    first = next(line for line in log.splitlines() if line.startswith("bucket_app: "))
    assert f"subject {subject} version 4 (id {ids[3]})" in first, first


def test_incompatible_and_unknown_ids_are_skipped_by_reason(make_worker):
    topic, dead = unique("avro-bad"), unique("avro-dlq")
    create_topic(topic, PARTITIONS)
    mix = mixed(topic, 2000, seed=22)
    bad, bad_id, unknown, unknown_id = mix.bad, mix.bad_id, mix.unknown, mix.unknown_id
    worker = avro_worker(make_worker, topic, dead_letter_topic=dead).start()
    worker.wait_caught_up(produce(topic, mix.records), timeout_s=180)
    assert counted(worker) == dict(mix.expected)
    health = worker.health()["worker"]
    assert health["skipped"] == {"avro_mismatch": 30, "unknown_schema": 20}
    assert health["counted"] == 2000 and health["dead_letters"] == 50
    metrics = worker.get("/metrics").body.decode()
    for reason, n in (("avro_mismatch", 30), ("unknown_schema", 20)):
        assert f'bucket_app_messages_skipped_total{{reason="{reason}"}} {n}.0' in metrics
    letters = read_records(dead, PARTITIONS, 50)
    by_reason: dict[str, set[bytes]] = {}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        by_reason.setdefault(headers["bucket_app.reason"], set()).add(letter.value)
    # the original bytes, frame and all
    assert by_reason == {"avro_mismatch": {r.value for r in bad},
                         "unknown_schema": {r.value for r in unknown}}
    log = worker.log_path.read_text()
    assert re.search(rf"offset=\d+ reason=unknown_schema: schema id {unknown_id} ", log)
    assert re.search(rf"offset=\d+ reason=avro_mismatch: .*writer schema id {bad_id} ", log)


@pytest.mark.slow
def test_a_registry_outage_pauses_and_counting_resumes_exactly(make_worker, tmp_path: Path):
    """The registry stops for 20 s while records of a schema id the worker has not fetched
    yet arrive: nothing is skipped, /health says degraded meanwhile, the counts end exact."""
    registry = RegistryProcess(free_port(), data_dir=tmp_path / "registry").start()
    try:
        topic = unique("avro-outage")
        create_topic(topic, PARTITIONS)
        subject = f"{topic}-value"
        ids = [register(subject, v1_or_v4, registry.url) for v1_or_v4 in (V1, V4)]
        ids = [ids[0], -1, -1, ids[1]]
        worker = avro_worker(make_worker, topic, registry.url).start()
        before, expected = events(ids, 1500, seed=31, versions=(0, 3))
        worker.wait_caught_up(produce(topic, before), timeout_s=120)
        assert counted(worker) == dict(expected)
        # a producer registers v3, writes with it, and then the registry goes away
        ids[2] = register(subject, V3, registry.url)
        registry.stop()
        stopped = time.monotonic()
        during, more = events(ids, 3000, seed=32, versions=(0, 2, 3))
        last = produce(topic, during)
        expected.update(more)
        seen: list[dict[str, Any]] = []
        while time.monotonic() - stopped < 20:
            seen.append(worker.health())
            time.sleep(0.5)
        degraded = [h for h in seen if h["status"] == "degraded"]
        assert degraded, seen[-1]
        assert "schema registry unavailable" in degraded[-1]["reason"]
        assert f"wait for schema ids {ids[2]}" in degraded[-1]["reason"]
        assert all(h["worker"]["skipped"] == {} for h in seen)
        registry.start()
        resumed = time.monotonic()
        worker.wait_caught_up(last, timeout_s=120)
        caught_up_s = time.monotonic() - resumed
        health = worker.health()
        assert health["status"] == "ok" and "reason" not in health
        assert health["worker"]["skipped"] == {}
        assert counted(worker) == dict(expected)
        assert health["worker"]["counted"] == 4500
        print(f"outage 20 s: {len(degraded)} of {len(seen)} /health answers degraded; "
              f"caught up {caught_up_s:.1f} s after the registry came back")
    finally:
        registry.stop()


def test_a_hung_registry_holds_only_the_partitions_that_need_it(make_worker):
    """The registry hangs (SIGSTOP: connections open, never answered) while partition 2 gets
    records of a schema id not fetched yet and partitions 0 and 1 records of ids already
    fetched: 0 and 1 are counted meanwhile, 2 waits (degraded), and all end exact."""
    registry = RegistryProcess(free_port()).start()
    try:
        topic = unique("avro-hung")
        create_topic(topic, PARTITIONS)
        subject = f"{topic}-value"
        ids = [register(subject, V1, registry.url), -1, -1, register(subject, V4, registry.url)]
        worker = avro_worker(make_worker, topic, registry.url).start()
        before, expected = events(ids, 600, seed=51, versions=(0, 3))
        worker.wait_caught_up(produce(topic, before), timeout_s=120)
        ids[2] = register(subject, V3, registry.url)
        registry.signal(signal.SIGSTOP)
        hung = time.monotonic()
        try:
            cached, more = events(ids, 900, seed=52, versions=(0, 3))
            cached = [Record(r.value, r.partition % 2) for r in cached]  # partitions 0 and 1
            fresh, newer = events(ids, 300, seed=53, versions=(2,))
            fresh = [Record(r.value, 2) for r in fresh]
            last = produce(topic, cached + fresh)
            worker.wait_caught_up({p: last[p] for p in (0, 1)}, timeout_s=60)
            counted_meanwhile_s = time.monotonic() - hung
            # partition 2's records may come in a later fetch than 0's and 1's: its hold
            # follows within the fetch's wait for the registry (FETCH_WAIT_S)
            deadline = time.monotonic() + 10
            health = worker.health()
            while health["status"] != "degraded" and time.monotonic() < deadline:
                time.sleep(0.2)
                health = worker.health()
            assert health["status"] == "degraded", health
            assert "source partitions 2 wait for schema ids" in health["reason"]
            assert health["partitions"]["2"]["offset"] < last[2]
            assert health["worker"]["skipped"] == {}
        finally:
            registry.signal(signal.SIGCONT)
        expected.update(more)
        expected.update(newer)
        worker.wait_caught_up(last, timeout_s=120)
        assert counted(worker) == dict(expected)
        health = worker.health()
        assert health["status"] == "ok" and health["worker"]["skipped"] == {}
        print(f"hung registry: partitions 0 and 1 caught up {counted_meanwhile_s:.1f} s after "
              "it hung; partition 2 after it went on")
    finally:
        registry.stop()


def test_a_wrong_registry_password_stops_start_up_naming_the_key(make_worker):
    registry = RegistryProcess(free_port(), basic_auth=("bucket", "right-password")).start()
    try:
        topic = unique("avro-auth")
        create_topic(topic, PARTITIONS)
        register(f"{topic}-value", V4, registry.url, auth=("bucket", "right-password"))
        worker = avro_worker(make_worker, topic, registry.url,
                             schema_registry_username="bucket")
        worker.env = {"BUCKET_APP_SCHEMA_REGISTRY_PASSWORD": "wrong-password"}
        started = time.monotonic()
        worker.start(wait=False)
        assert worker.proc is not None
        status = worker.proc.wait(30)
        elapsed = time.monotonic() - started
        log = worker.log_path.read_text()
        assert status == 2, log
        assert elapsed < 5, f"{elapsed:.1f} s"
        lines = [line for line in log.splitlines() if "schema_registry_password" in line]
        assert len(lines) == 1 and "HTTP 401" in lines[0], log
        assert "wrong-password" not in log
        print(f"wrong password: exit 2 after {elapsed:.2f} s: {lines[0]}")
        # the right one counts (basic auth on every request of the worker)
        right = avro_worker(make_worker, topic, registry.url, name="right",
                            schema_registry_username="bucket")
        right.env = {"BUCKET_APP_SCHEMA_REGISTRY_PASSWORD": "right-password"}
        right.start()
        v4_id = register(f"{topic}-value", V4, registry.url, auth=("bucket", "right-password"))
        records, expected = events([-1, -1, -1, v4_id], 200, seed=41, versions=(3,))
        right.wait_caught_up(produce(topic, records))
        assert counted(right) == dict(expected)
    finally:
        registry.stop()


def test_produce_registers_the_reader_and_writes_an_older_version(make_worker, tmp_path):
    """``bucket-app produce`` registers the avro_val_schema file (v4) and writes framed
    values with it; ``--schema-version 1`` writes with the subject's v1, which lacks the
    mapped ``service_name`` (left empty, with a warning) and ``note`` (the reader's default)."""
    topic = unique("avro-produce")
    create_topic(topic, PARTITIONS)
    subject = f"{topic}-value"
    v1_id = register(subject, V1)
    (tmp_path / "v4.avsc").write_text(json.dumps(V4))
    worker = avro_worker(make_worker, topic, avro_val_schema=str(tmp_path / "v4.avsc")).start()
    done = bucket_app("produce", "--count", "300", "--keys", "3", settings=worker.settings_path)
    assert done.returncode == 0, done.stderr
    older = bucket_app("produce", "--count", "200", "--keys", "3", "--schema-version", "1",
                       settings=worker.settings_path)
    assert older.returncode == 0, older.stderr
    assert f"subject {subject} version 1 (id {v1_id})" in older.stderr
    assert "'service_name' is not in the Avro schema" in older.stderr
    assert len(read_records(topic, PARTITIONS, 500)) == 500
    worker.wait_caught_up(end_offsets_of(topic))
    rows = counted(worker)
    assert sum(rows.values()) == 500 and worker.health()["worker"]["skipped"] == {}
    by_note = Counter[str]()
    for (_service, note, _), n in rows.items():
        by_note[note] += n
    # v1 has no note: the reader's default; its `service` (read as service_name through the
    # alias) is not named by the settings under that name, so produce draws one value a run
    assert by_note == {NOTE_DEFAULT: 200, "note-0": 100, "note-1": 100, "note-2": 100}
    assert len({service for service, note, _ in rows if note == NOTE_DEFAULT}) == 1
    missing = bucket_app("produce", "--count", "1", "--schema-version", "9",
                         settings=worker.settings_path)
    assert missing.returncode == 2 and f"no version 9 of subject {subject}" in missing.stderr


def end_offsets_of(topic: str) -> dict[int, int]:
    return {p: n - 1 for p, n in end_offsets(topic, PARTITIONS).items() if n}
