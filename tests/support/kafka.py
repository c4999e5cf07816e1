"""Kafka for tests and the benchmark: topics, producing, end offsets, ground truth, security.

Every function takes the brokers to use (the local plaintext broker of ``make kafka`` by
default) and, where a client connects, ``security``: aiokafka's security keyword arguments,
:meth:`SecureBroker.client` for the SASL_SSL broker of ``make kafka-secure``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from tests.support import REPO

BROKERS = os.environ.get("BUCKET_APP_TEST_BROKERS", "127.0.0.1:9092")
# The SASL_SSL broker of `make kafka-secure` (scripts/kafka-secure.sh), its CA and password.
SECURE_BROKERS = os.environ.get("BUCKET_APP_TEST_SECURE_BROKERS", "127.0.0.1:9095")
SECURE_DIR = REPO / ".kafka" / "secure"
SECURE_USER = "bucket_app"


def broker_error(brokers: str, timeout_s: float = 3) -> OSError | None:
    """Why the first of ``brokers`` (``host:port,...``) refuses a TCP connection, or None."""
    host, port = brokers.split(",")[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class SecureBroker:
    """How to reach the SASL_SSL broker: as aiokafka arguments, and as a worker's settings."""

    brokers: str
    cafile: Path
    username: str
    password: str = field(repr=False)

    def client(self) -> dict[str, Any]:
        """Security keyword arguments for any aiokafka client."""
        from aiokafka.helpers import create_ssl_context

        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": self.username, "sasl_plain_password": self.password,
                "ssl_context": create_ssl_context(cafile=str(self.cafile))}

    def worker_settings(self) -> dict[str, str]:
        """Worker settings (``Worker.extra``) without the password: see ``worker_env``."""
        return {"brokers": self.brokers, "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": self.username,
                "ssl_cafile": str(self.cafile)}

    def worker_env(self, password: str | None = None) -> dict[str, str]:
        """The password as users should pass it: in the environment, not the file."""
        return {"BUCKET_APP_SASL_PASSWORD": self.password if password is None else password}


async def _create_topic(name: str, partitions: int, replication: int, brokers: str,
                        security: dict[str, Any] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers, **(security or {}))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, replication)])
    finally:
        await admin.close()


def create_topic(name: str, partitions: int, replication: int = 1,
                 brokers: str = BROKERS, security: dict[str, Any] | None = None) -> None:
    asyncio.run(_create_topic(name, partitions, replication, brokers, security))


def list_topics(brokers: str = BROKERS) -> list[str]:
    async def run() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            return list(await admin.list_topics())
        finally:
            await admin.close()
    return asyncio.run(run())


@dataclass
class Record:
    value: bytes | None
    partition: int
    timestamp_ms: int | None = None
    key: bytes | None = None


async def _produce(topic: str, records: Iterable[Record], brokers: str,
                   security: dict[str, Any] | None = None) -> dict[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=5,
                                enable_idempotence=True,
                                max_batch_size=256 * 1024, **(security or {}))
    await producer.start()
    last: dict[int, int] = {}
    try:
        futures = [
            await producer.send(topic, r.value, key=r.key, partition=r.partition,
                                timestamp_ms=r.timestamp_ms)
            for r in records
        ]
        for fut in futures:
            meta = await fut
            last[meta.partition] = max(last.get(meta.partition, -1), meta.offset)
    finally:
        await producer.stop()
    return last


def produce(topic: str, records: Iterable[Record], brokers: str = BROKERS,
            security: dict[str, Any] | None = None) -> dict[int, int]:
    """Produce and wait for every ack; return the last offset written per partition."""
    return asyncio.run(_produce(topic, records, brokers, security))


def end_offsets(topic: str, partitions: int, brokers: str = BROKERS,
                security: dict[str, Any] | None = None) -> dict[int, int]:
    """The offset after the last message of each partition."""
    async def run() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None, **(security or {}))
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            ends = await consumer.end_offsets(tps)
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(run())


async def read_to_end(topic: str, partitions: int, brokers: str = BROKERS,
                      security: dict[str, Any] | None = None) -> dict[int, list[Any]]:
    """Every record of ``topic`` from its beginning to the end offsets it has when called:
    partition -> aiokafka records in offset order (with key, value, offset and headers)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **(security or {}))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: dict[int, list[Any]] = {p: [] for p in range(partitions)}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                found[tp.partition].extend(batch)
        return found
    finally:
        await consumer.stop()


def read_records(topic: str, partitions: int, expect: int, timeout_s: float = 30,
                 brokers: str = BROKERS) -> list[Any]:
    """The records of ``topic`` from its beginning, once ``expect`` arrived (or after
    ``timeout_s``): aiokafka records, with headers."""
    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            got: list[Any] = []
            deadline = time.monotonic() + timeout_s
            while len(got) < expect and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(batch)
            return got
        finally:
            await consumer.stop()

    return asyncio.run(read())


class BackgroundProducer:
    """Produces ``records`` from a thread, ``chunk`` at a time with a pause between chunks."""

    def __init__(self, topic: str, records: list[Record], chunk: int = 500,
                 pause_s: float = 0.25, brokers: str = BROKERS) -> None:
        self.brokers = brokers
        self.topic = topic
        self.records = records
        self.chunk = chunk
        self.pause_s = pause_s
        self.last: dict[int, int] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:  # reported by join()
            self.error = exc

    async def _produce(self) -> None:
        # idempotent: a retry after a leader change must not write a message twice
        producer = AIOKafkaProducer(bootstrap_servers=self.brokers, acks="all", linger_ms=5,
                                    request_timeout_ms=60_000, enable_idempotence=True)
        await producer.start()
        try:
            for i in range(0, len(self.records), self.chunk):
                futures = [
                    await producer.send(self.topic, r.value, partition=r.partition,
                                        timestamp_ms=r.timestamp_ms)
                    for r in self.records[i:i + self.chunk]
                ]
                for fut in futures:
                    meta = await fut
                    self.last[meta.partition] = max(self.last.get(meta.partition, -1),
                                                    meta.offset)
                await asyncio.sleep(self.pause_s)
        finally:
            await producer.stop()

    def start(self) -> BackgroundProducer:
        self.thread.start()
        return self

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout_s: float = 300) -> dict[int, int]:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise AssertionError("producer did not finish")
        if self.error is not None:
            raise self.error
        return self.last


def bulk_records(n: int, partitions: int, seed: int, prefix: str = "r",
                 base: int | None = None) -> tuple[list[Record], dict[tuple, int]]:
    """``n`` JSON messages over 4 servers x 3 topics x 30 buckets, shuffled, plus their counts."""
    rng = random.Random(seed)
    start = base if base is not None else (int(time.time()) - 7200) // 20 * 20
    expected: dict[tuple, int] = {}
    records = []
    for i in range(n):
        server, topic = f"{prefix}-{rng.randrange(4)}", f"t{rng.randrange(3)}"
        ts = start + rng.randrange(600)
        msg = {"origin_server": server, "topic": topic, "timestamp": ts, "i": i}
        records.append(Record(json.dumps(msg).encode(), rng.randrange(partitions)))
        key = (server, topic, ts - ts % 20)
        expected[key] = expected.get(key, 0) + 1
    return records, expected


def topic_counts(topic: str, partitions: int, brokers: str = BROKERS,
                 security: dict[str, Any] | None = None) -> dict[tuple, int]:
    """Ground truth from the topic itself: read every record back and count it, 20 s buckets.

    Also checks that no message (by its ``i`` field) is in the topic twice, so a producer
    retry cannot pass for a double count.
    """
    found = asyncio.run(read_to_end(topic, partitions, brokers, security))
    values = [r.value for records in found.values() for r in records]
    expected: dict[tuple, int] = {}
    seen: set[int] = set()
    for value in values:
        msg = json.loads(value)
        assert msg["i"] not in seen, f"message {msg['i']} is in the topic twice"
        seen.add(msg["i"])
        ts = msg["timestamp"]
        key = (msg["origin_server"], msg["topic"], ts - ts % 20)
        expected[key] = expected.get(key, 0) + 1
    return expected


def own_broker_script(action: str, port: int) -> None:
    """``scripts/kafka.sh ACTION`` for a broker of the test's own on ``port`` (never the
    shared one): start, stop, clean."""
    import subprocess  # noqa: PLC0415 - only the tests that run their own broker need it

    subprocess.run([str(REPO / "scripts" / "kafka.sh"), action], check=True, cwd=REPO,
                   env=dict(os.environ, KAFKA_PORT=str(port)), timeout=240,
                   stdout=subprocess.DEVNULL)
