"""Benchmark helpers: the broker script, the pre-loaded topic, probes, kept-alive HTTP, peak RSS
and percentiles. Topics, end offsets, workers and plain HTTP are the tests' (``tests.support``)."""

from __future__ import annotations

import asyncio
import collections
import http.client
import itertools
import json
import os
import random
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.shapes import SHAPES, Shape, encode

REPO = Path(__file__).resolve().parents[1]
BUCKET_S = 60  # bucket_interval of every contender
SPAN_S = 600  # event times of the pre-loaded messages spread over 10 minutes
SERVERS = 100
TOPICS = 10
TICK_S = 0.02  # produce_steady sends one batch per partition this often

Key = tuple[str, str, int]  # (server_name, topic, bucket_start)
FLAT = SHAPES["flat"]


def kafka_script(action: str, port: int) -> None:
    env = dict(os.environ, KAFKA_PORT=str(port))
    subprocess.run([str(REPO / "scripts" / "kafka.sh"), action], env=env, check=True)


def message(i: int, rng: random.Random, base: int, n: int,
            shape: Shape = FLAT) -> tuple[bytes, bytes, Key, str | None]:
    """Message ``i`` of ``n``: (Kafka key, value in ``shape``, counting key, None), or the
    reason bucket_app skips it instead of None for a bad record (bad1), which counts nowhere.
    Event time rises with i; the key and time do not depend on the shape."""
    server, topic = f"s-{rng.randrange(SERVERS)}", f"t-{rng.randrange(TOPICS)}"
    ts = base + i * SPAN_S // n
    value, bad = encode(shape, i, server, topic, ts)
    return f"{server}|{topic}".encode(), value, (server, topic, ts - ts % BUCKET_S), bad


async def produce_all(brokers: str, topic: str,
                      messages: Iterator[tuple[bytes, bytes, int | None]],
                      compression: str | None = None) -> None:
    """Produce ``(key, value, timestamp_ms)`` messages (idempotent, acks=all, 512 KiB batches,
    compressed with ``compression`` when set)."""
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", enable_idempotence=True,
                                linger_ms=20, max_batch_size=512 * 1024,
                                request_timeout_ms=60_000, compression_type=compression)
    await producer.start()
    try:
        while chunk := list(itertools.islice(messages, 20_000)):
            await asyncio.gather(*[await producer.send(topic, value, key=key, timestamp_ms=ts)
                                   for key, value, ts in chunk])
    finally:
        await producer.stop()


def counted_messages(n: int, seed: int, expected: dict[Key, int], shape: Shape = FLAT,
                     skipped: collections.Counter[str] | None = None,
                     ) -> Iterator[tuple[bytes, bytes, int]]:
    """:func:`message` 0 to ``n`` - 1 as (Kafka key, value, record timestamp in ms), their event
    times over the last SPAN_S before 2 SPAN_S ago; each is added to ``expected`` as it goes,
    or a bad one to ``skipped`` by reason. A message without its time (bad1) counts at its
    record timestamp, which is its event time."""
    rng = random.Random(seed)
    base = (int(time.time()) - 2 * SPAN_S) // BUCKET_S * BUCKET_S
    for i in range(n):
        key, value, count_key, bad = message(i, rng, base, n, shape)
        if bad is None:
            expected[count_key] = expected.get(count_key, 0) + 1
        elif skipped is not None:
            skipped[bad] += 1
        yield key, value, (base + i * SPAN_S // n) * 1000


async def preload(brokers: str, topic: str, n: int, seed: int = 4) -> dict[Key, int]:
    """Produce ``n`` messages (keyed, idempotent, acks=all); return the expected counts."""
    expected: dict[Key, int] = {}
    await produce_all(brokers, topic, counted_messages(n, seed, expected))
    return expected


async def preload_shape(brokers: str, topic: str, n: int, shape: Shape,
                        seed: int = 4) -> tuple[dict[Key, int], dict[str, int]]:
    """:func:`preload` in ``shape``: the expected counts, and the bad records by reason."""
    expected: dict[Key, int] = {}
    skipped: collections.Counter[str] = collections.Counter()
    await produce_all(brokers, topic, counted_messages(n, seed, expected, shape, skipped),
                      shape.compression)
    return expected, dict(skipped)


# messages in one backlog batch: about 100 bytes each, well under the broker's 1 MB
BACKLOG_BATCH = 5_000


async def preload_quickly(brokers: str, topic: str, n: int, partitions: int,
                          seed: int) -> dict[Key, int]:
    """:func:`preload`'s messages, spread over the partitions in whole producer batches (and
    without record timestamps): a few seconds for 1,000,000 instead of half a minute, so that
    a worker stopped meanwhile (SIGSTOP) stays within its 15 s session timeout."""
    expected: dict[Key, int] = {}
    messages = counted_messages(n, seed, expected)
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", enable_idempotence=True,
                                max_batch_size=4 * 1024 * 1024, request_timeout_ms=60_000)
    await producer.start()
    try:
        pending = []
        for first in range(0, n, BACKLOG_BATCH):
            batch = producer.create_batch()
            for key, value, _ in itertools.islice(messages, BACKLOG_BATCH):
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise RuntimeError("backlog batch overflowed; lower BACKLOG_BATCH")
            batch.close()
            partition = first // BACKLOG_BATCH % partitions
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return expected


async def preload_distinct(brokers: str, topic: str, rows: int) -> tuple[dict[Key, int], int]:
    """Produce ``rows`` messages that are each the only one of their window-key.

    Key ``i % 1000`` (100 servers x 10 topics) in bucket ``i // 1000``, the buckets ending
    an hour ago: a snapshot of ``rows`` rows. Returns the expected counts and the first bucket.
    """
    keys = SERVERS * TOPICS
    first = (int(time.time()) - 3600) // BUCKET_S * BUCKET_S - -(-rows // keys) * BUCKET_S
    expected: dict[Key, int] = {}

    def messages() -> Iterator[tuple[bytes, bytes, int | None]]:
        for i in range(rows):
            server, topic_name = f"s-{i % keys // TOPICS}", f"t-{i % TOPICS}"
            ts = first + (i // keys) * BUCKET_S
            expected[(server, topic_name, ts)] = 1
            value = f'{{"origin_server":"{server}","topic":"{topic_name}","timestamp":{ts}}}'
            yield f"{server}|{topic_name}".encode(), value.encode(), None

    await produce_all(brokers, topic, messages())
    return expected, first


@dataclass
class Probe:
    partition: int
    offset: int
    acked: float  # time.monotonic() of the ack


# messages in one steady batch of one partition: about 60 bytes each, well under 1 MB
STEADY_BATCH_MAX = 10_000


async def produce_steady(brokers: str, topic: str, partitions: int, rate: float,
                         duration_s: float, expected: dict[Key, int]) -> list[Probe]:
    """Produce ``rate`` msg/s for ``duration_s``, in one batch per partition every TICK_S.

    Messages are like the pre-loaded ones but carry the current time. The last message of each
    batch is a probe: its offset and the time its batch was acknowledged. Batches are built
    with aiokafka's batch API from values encoded once a second (0.5 µs a message against
    1.8 µs when each was formatted, measured), so the worker keeps the cores it is measured on.
    """
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", enable_idempotence=True,
                                max_batch_size=4 * 1024 * 1024, request_timeout_ms=60_000)
    await producer.start()
    rng = random.Random(7)
    combos = [(f"s-{i}", f"t-{j}") for i in range(SERVERS) for j in range(TOPICS)]
    choices = range(len(combos))
    values: list[bytes] = []
    values_ts = -1
    probes: list[Probe] = []
    try:
        started = time.monotonic()
        sent = 0
        pending: list[Any] = []
        while (now := time.monotonic()) - started < duration_s:
            # behind schedule (the harness waited for acks or for a core), catch up in batches
            # the broker accepts (message.max.bytes, 1 MB by default)
            due = min(int((now - started + TICK_S) * rate) - sent, partitions * STEADY_BATCH_MAX)
            ts = int(time.time())
            if ts != values_ts:  # one encoded value per (server, topic) for this second
                values_ts, values = ts, [
                    f'{{"origin_server":"{server}","topic":"{topic_name}","timestamp":{ts}}}'
                    .encode() for server, topic_name in combos]
            for p in range(partitions):
                batch = producer.create_batch()
                count = due // partitions + (1 if p < due % partitions else 0)
                picked = rng.choices(choices, k=count)
                append = batch.append
                for i in picked:
                    if append(key=None, value=values[i], timestamp=None) is None:
                        raise RuntimeError("steady batch overflowed; lower TICK_S")
                for i, n in collections.Counter(picked).items():
                    key = (*combos[i], ts - ts % BUCKET_S)
                    expected[key] = expected.get(key, 0) + n
                if count:
                    batch.close()
                    pending.append((p, count, await producer.send_batch(batch, topic, partition=p)))
            sent += due
            for p, count, fut in pending:
                meta = await fut
                probes.append(Probe(p, meta.offset + count - 1, time.monotonic()))
            pending.clear()
            await asyncio.sleep(max(0.0, started + (sent / rate) - time.monotonic()))
    finally:
        await producer.stop()
    return probes


class KeepAlive:
    """GET JSON over one kept-alive HTTP connection (a poll every 20 ms otherwise costs the
    worker a TCP accept each time); reconnects after an error."""

    def __init__(self, base_url: str, timeout: float = 10) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.timeout = parsed.hostname or "127.0.0.1", parsed.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def get_json(self, path: str) -> Any:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.request("GET", path)
            response = self.conn.getresponse()
            body = response.read()
            return json.loads(body) if response.status == 200 else None
        except (OSError, http.client.HTTPException):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            for child in task.read_text().split():
                found.extend(_descendants(int(child)))
        except OSError:
            pass
    return found


def peak_rss_mb(pid: int) -> float:
    """VmHWM of ``pid`` and its descendants, summed, in MB (0 for a process that is gone)."""
    total_kb = 0
    for each in _descendants(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
        except OSError:
            pass
    return total_kb / 1024


@dataclass(frozen=True)
class CpuMark:
    """A point in time and the CPU used by then: all cores (busy and total jiffies, from
    /proc/stat) and a process tree (seconds), so that the cores a run kept busy are read
    between two marks (:meth:`cores_since`)."""

    at: float
    machine_busy: int
    machine_total: int
    tree_s: float

    @classmethod
    def now(cls, pids: list[int]) -> CpuMark:
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        jiffies = [int(x) for x in cpu]  # user nice system idle iowait irq softirq steal
        total = sum(jiffies)
        tick = os.sysconf("SC_CLK_TCK")
        tree = 0
        for pid in pids:
            for each in _descendants(pid):
                try:
                    stat = Path(f"/proc/{each}/stat").read_text()
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                tree += int(fields[11]) + int(fields[12])  # utime, stime
        return cls(time.monotonic(), total - jiffies[3] - jiffies[4], total, tree / tick)

    def cores_since(self, earlier: CpuMark) -> dict[str, float]:
        """Cores kept busy between ``earlier`` and this mark: by the whole machine (of
        ``os.cpu_count()``) and by the process tree."""
        total = self.machine_total - earlier.machine_total
        busy = (self.machine_busy - earlier.machine_busy) / total if total else 0.0
        seconds = self.at - earlier.at
        return {"machine_cores": round(busy * (os.cpu_count() or 1), 2),
                "tree_cores": round((self.tree_s - earlier.tree_s) / seconds, 2)
                if seconds > 0 else 0.0}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
