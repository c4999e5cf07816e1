"""Integration fixtures: a real Kafka broker (``make kafka``), real workers as subprocesses.

Each test module gets fresh topic and app names, so runs never see each other's data. Workers are
started exactly as users start them, ``faust -A bucket_app worker``, with a settings file
written into the test's tmp directory; they are stopped with SIGTERM (or killed with SIGKILL by
the tests that want a crash).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

REPO = Path(__file__).resolve().parents[2]
BROKERS = os.environ.get("BUCKET_APP_TEST_BROKERS", "127.0.0.1:9092")
# The SASL_SSL broker of `make kafka-secure` (scripts/kafka-secure.sh), its CA and password.
SECURE_BROKERS = os.environ.get("BUCKET_APP_TEST_SECURE_BROKERS", "127.0.0.1:9095")
SECURE_DIR = REPO / ".kafka" / "secure"
SECURE_USER = "bucket_app"

MSG_MAP = {"origin_server": "server_name", "topic": "topic"}
SQLITE_SCHEMA = {
    "server_name": "TEXT", "topic": "TEXT", "bucket_start": "INTEGER",
    "bucket_end": "INTEGER", "count": "INTEGER",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session", autouse=True)
def kafka_broker() -> str:
    host, port = BROKERS.split(",")[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        pytest.fail(f"no Kafka broker at {BROKERS} ({exc}); run `make kafka` or `make test`")
    return BROKERS


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


@pytest.fixture(scope="session")
def secure_broker() -> SecureBroker:
    """The broker of `make kafka-secure`; fails (never skips) when it is not running."""
    host, port = SECURE_BROKERS.split(",")[0].rsplit(":", 1)
    hint = "run `make kafka-secure` (or `make test`, which starts it)"
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        pytest.fail(f"no secure Kafka broker at {SECURE_BROKERS} ({exc}); {hint}")
    cafile, password = SECURE_DIR / "ca.pem", SECURE_DIR / "password"
    for needed in (cafile, password):
        if not needed.is_file():
            pytest.fail(f"{needed} is missing; {hint}")
    return SecureBroker(SECURE_BROKERS, cafile, SECURE_USER, password.read_text().strip())


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
    """Produce and wait for every ack; return the last offset written per partition.

    ``security``: aiokafka security arguments (``SecureBroker.client()``)."""
    return asyncio.run(_produce(topic, records, brokers, security))


def end_offsets(topic: str, partitions: int) -> dict[int, int]:
    async def run() -> dict[int, int]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=BROKERS, group_id=None)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            ends = await consumer.end_offsets(tps)
            return {tp.partition: off for tp, off in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(run())


class HttpAnswer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def http(url: str, data: bytes | None = None, method: str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10) -> HttpAnswer:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return HttpAnswer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return HttpAnswer(exc.code, exc.headers, exc.read())


@dataclass
class Worker:
    """One ``faust -A bucket_app worker`` process with its own settings file."""

    directory: Path
    topic: str
    app_id: str
    partitions: int = 6
    brokers: str = BROKERS
    extra: dict[str, str] = field(default_factory=dict)
    msg_map: dict[str, str] = field(default_factory=lambda: dict(MSG_MAP))
    schema: dict[str, str] = field(default_factory=lambda: dict(SQLITE_SCHEMA))
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # extra environment variables of the worker process (BUCKET_APP_SASL_PASSWORD, say)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings_path(self) -> Path:
        return self.directory / "settings.ini"

    @property
    def log_path(self) -> Path:
        return self.directory / "worker.log"

    def write_settings(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "msg_map_schema.json").write_text(json.dumps(self.msg_map))
        (self.directory / "sqlite_schema.json").write_text(json.dumps(self.schema))
        keys = {
            "KafkaSettings": {"brokers": self.brokers, "topic": self.topic,
                              "avro_val_schema": "None", "partitions": str(self.partitions),
                              "app_id": self.app_id},
            "MsgSettings": {"bucket_interval": "20", "bucket_field": "timestamp",
                            "bucket_type": "epoch", "msg_map_schema": "msg_map_schema.json"},
            "HTTPEndpointSetting": {"sqlite_schema": "sqlite_schema.json",
                                    "sqlite_db": "snapshot.sqlite3", "sqlite_table": "default",
                                    "clean_interval": "7d", "clean_freq": "10m",
                                    "web_port": str(self.port), "snapshot_interval": "0.5s"},
        }
        for name, value in self.extra.items():
            keys[_section_of(name)][name] = value
        lines = []
        for section, values in keys.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {v}" for k, v in values.items())
            lines.append("")
        self.settings_path.write_text("\n".join(lines))

    def start(self, wait: bool = True) -> Worker:
        self.write_settings()
        env = dict(os.environ, BUCKET_APP_SETTINGS=str(self.settings_path), TZ="UTC",
                   PYTHONUNBUFFERED="1", **self.env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "bucket_app", "worker", "-l", "info",
             "--web-port", str(self.port), "--web-host", "127.0.0.1"],
            cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout_s: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.tail()}")
            try:
                answer = http(self.url + "/health", timeout=2)
                if answer.status == 200 and answer.json()["worker"]["ready"]:
                    return answer.json()
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not healthy in {timeout_s}s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def get(self, path: str) -> HttpAnswer:
        return http(self.url + path)

    def health(self) -> dict[str, Any]:
        return self.get("/health").json()

    def wait_caught_up(self, last_offsets: dict[int, int], timeout_s: float = 120) -> dict:
        """Wait until the snapshot reflects every source offset up to ``last_offsets``."""
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, (
                f"worker exited {self.proc and self.proc.returncode}:\n{self.tail()}")
            try:
                status = self.health()
            except OSError:  # still starting (or restarting) its web server
                time.sleep(0.3)
                continue
            reached = status.get("partitions", {})
            if status.get("caught_up") and all(
                reached.get(str(p), {}).get("offset", -1) >= off
                for p, off in last_offsets.items()
            ):
                return status
            time.sleep(0.3)
        raise AssertionError(f"not caught up to {last_offsets}: {status}\n{self.tail()}")


def _section_of(name: str) -> str:
    from bucket_app.settings import KEYS

    for key in KEYS:
        if key.name == name:
            return key.section
    raise KeyError(name)


@pytest.fixture
def make_worker(tmp_path: Path) -> Iterator[Any]:
    workers: list[Worker] = []

    def make(topic: str, app_id: str | None = None, name: str = "w", **kwargs: Any) -> Worker:
        worker = Worker(tmp_path / name, topic=topic, app_id=app_id or unique("app"), **kwargs)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()


class BackgroundProducer:
    """Produces ``records`` from a thread, ``chunk`` at a time with a pause between chunks."""

    def __init__(self, topic: str, records: list[Record], chunk: int = 500,
                 pause_s: float = 0.25, brokers: str = BROKERS) -> None:
        import threading

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
    import random

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
    from aiokafka import AIOKafkaConsumer

    async def read() -> list[bytes]:
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    **(security or {}))
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            values: list[bytes] = []
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    values.extend(r.value for r in records)
            return values
        finally:
            await consumer.stop()

    expected: dict[tuple, int] = {}
    seen: set[int] = set()
    for value in asyncio.run(read()):
        msg = json.loads(value)
        assert msg["i"] not in seen, f"message {msg['i']} is in the topic twice"
        seen.add(msg["i"])
        ts = msg["timestamp"]
        key = (msg["origin_server"], msg["topic"], ts - ts % 20)
        expected[key] = expected.get(key, 0) + 1
    return expected


def counts_of(worker: Worker, prefix: str = "") -> dict[tuple, int]:
    rows = worker.get("/a/default").json()
    found: dict[tuple, int] = {}
    for row in rows:
        if not (row["server_name"] or "").startswith(prefix):
            continue
        key = (row["server_name"], row["topic"], row["bucket_start"])
        assert key not in found, f"duplicate row {key}"
        found[key] = row["count"]
    return found
