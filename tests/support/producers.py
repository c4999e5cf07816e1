"""Producers other than aiokafka, as operators' topics are written: kcat (librdkafka) and
Kafka's own Java console producer, each compressing with the codec asked for; a transactional
aiokafka producer that commits, aborts or leaves a transaction open; and the broker's own
account of how a topic's batches were written (``kafka.tools.DumpLogSegments``).

kcat comes from Debian (``scripts/test-tools.sh``, run by ``make test``); the Java producer and
the dump tool from the broker's jars in ``.kafka/lib`` (``make kafka``).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer

from tests.support import REPO
from tests.support.kafka import BROKERS

CODECS = ("gzip", "snappy", "lz4", "zstd")
KAFKA_LIB = REPO / ".kafka" / "lib"
# the local broker's partition directories (scripts/kafka.sh, port 9092)
BROKER_LOGS = REPO / ".kafka" / "data-9092" / "logs"
_BATCH_LINE = re.compile(r"^baseOffset: (\d+) lastOffset: (\d+) count: (\d+) .*"
                         r"isTransactional: (\w+) isControl: (\w+) .*compresscodec: (\w+)")

T = TypeVar("T")


def kcat_produce(topic: str, lines: Iterable[bytes], codec: str,
                 brokers: str = BROKERS) -> None:
    """Produce each line as one message with kcat (librdkafka), batches compressed by
    ``codec``; librdkafka's partitioner picks the partitions."""
    kcat = shutil.which("kcat")
    if kcat is None:
        raise AssertionError("kcat is missing: run scripts/test-tools.sh (make test does)")
    subprocess.run(
        [kcat, "-P", "-b", brokers, "-t", topic, "-z", codec, "-X", "linger.ms=20",
         "-X", "acks=all"],
        input=b"\n".join(lines) + b"\n", check=True, timeout=120, capture_output=True)


def java_produce(topic: str, lines: Iterable[bytes], codec: str,
                 brokers: str = BROKERS) -> None:
    """Produce each line as one message with Kafka's Java console producer, batches
    compressed by ``codec`` (Java's lz4, snappy and zstd libraries, as brokers use)."""
    subprocess.run(
        ["java", "-cp", f"{KAFKA_LIB}/*", "kafka.tools.ConsoleProducer",
         "--bootstrap-server", brokers, "--topic", topic, "--compression-codec", codec,
         "--producer-property", "acks=all", "--producer-property", "linger.ms=20"],
        input=b"\n".join(lines) + b"\n", check=True, timeout=120, capture_output=True)


def batches_of(topic: str, partition: int) -> list[dict[str, Any]]:
    """Every record batch of one partition as the broker stored it: offsets, count, whether
    transactional or a control batch, and its codec (read from the log segments)."""
    directory = BROKER_LOGS / f"{topic}-{partition}"
    segments = sorted(str(path) for path in Path(directory).glob("*.log"))
    if not segments:
        return []
    dump = subprocess.run(
        ["java", "-cp", f"{KAFKA_LIB}/*", "kafka.tools.DumpLogSegments", "--files",
         ",".join(segments)], check=True, timeout=120, capture_output=True, text=True)
    found = []
    for line in dump.stdout.splitlines():
        match = _BATCH_LINE.match(line)
        if match:
            base, last, count, transactional, control, codec = match.groups()
            found.append({"base": int(base), "last": int(last), "count": int(count),
                          "transactional": transactional == "true",
                          "control": control == "true", "codec": codec})
    return found


class TransactionalProducer:
    """An aiokafka producer with a ``transactional_id``, on an event loop of its own thread,
    so a test can leave a transaction open while it checks a worker."""

    def __init__(self, transactional_id: str, brokers: str = BROKERS) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="transactional-producer")
        self.thread.start()
        self.producer: AIOKafkaProducer = self._run(self._start(transactional_id, brokers))

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    @staticmethod
    async def _start(transactional_id: str, brokers: str) -> AIOKafkaProducer:
        # an open transaction outlives the checks made while it is open
        producer = AIOKafkaProducer(bootstrap_servers=brokers, transactional_id=transactional_id,
                                    enable_idempotence=True, transaction_timeout_ms=300_000)
        await producer.start()
        return producer

    def begin(self) -> None:
        self._run(self.producer.begin_transaction())

    def send(self, topic: str, values: Iterable[tuple[int, bytes]]) -> None:
        """Send ``(partition, value)`` pairs in the open transaction and wait until the brokers
        have them (so they are in the topic, behind the transaction's end)."""
        async def send_all() -> None:
            futures = [await self.producer.send(topic, value, partition=partition)
                       for partition, value in values]
            await asyncio.gather(*futures)

        self._run(send_all())

    def commit(self) -> None:
        self._run(self.producer.commit_transaction())

    def abort(self) -> None:
        self._run(self.producer.abort_transaction())

    def close(self) -> None:
        try:
            self._run(self.producer.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
