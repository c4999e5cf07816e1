"""The three-broker cluster of ``make kafka-cluster`` for tests: start and stop it, find
partition leaders and in-sync replicas, SIGKILL a node and start it again.

The cluster runs from this checkout's ``.kafka/cluster`` on its own ports (19092, 19192,
19292; controllers one above each), never the shared test broker's 9092, so killing its nodes
disturbs no other test. Nothing here imports pytest: the test modules make fixtures of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from tests.support import REPO

CLUSTER = "127.0.0.1:19092,127.0.0.1:19192,127.0.0.1:19292"
NODES = (1, 2, 3)
# C1 only: a node (re)starts sooner and compiles less on a machine the tests share; the
# script's default heaps are already small.
JVM_OPTS = "-XX:TieredStopAtLevel=1"


def script(*args: str, port: int | None = None, timeout_s: float = 240) -> None:
    """Run ``scripts/<args[0]> <args[1:]>`` from the repository (``port``: KAFKA_PORT)."""
    env = dict(os.environ)
    env.setdefault("KAFKA_OPTS", JVM_OPTS)
    if port is not None:
        env["KAFKA_PORT"] = str(port)
    subprocess.run([str(REPO / "scripts" / args[0]), *args[1:]], check=True, env=env,
                   cwd=REPO, timeout=timeout_s, stdout=subprocess.DEVNULL)


@dataclass(frozen=True)
class PartitionState:
    leader: int  # -1: no leader
    isr: tuple[int, ...]


async def _describe(topics: list[str]) -> dict[str, dict[int, PartitionState]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=CLUSTER, request_timeout_ms=5_000)
    await admin.start()
    try:
        found: dict[str, dict[int, PartitionState]] = {}
        for topic in await admin.describe_topics(topics):
            if topic["error_code"]:
                continue
            found[topic["topic"]] = {
                p["partition"]: PartitionState(p["leader"], tuple(sorted(p["isr"])))
                for p in topic["partitions"]}
        return found
    finally:
        await admin.close()


def describe(*topics: str) -> dict[str, dict[int, PartitionState]]:
    """Each of ``topics``' partitions: leader and in-sync replicas, as the cluster says."""
    return asyncio.run(_describe(list(topics)))


def pid_of(node: int) -> int:
    return int((REPO / ".kafka" / "cluster" / f"node-{node}" / "kafka.pid").read_text())


def kill(node: int) -> float:
    """SIGKILL ``node``'s JVM (no controlled shutdown, no leader hand-over); return the
    monotonic time it was killed."""
    os.kill(pid_of(node), signal.SIGKILL)
    return time.monotonic()


def wait_until(check: Any, timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    """Poll ``check()`` until it returns something true; return it, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 (a broker that is going away)
            last = exc
        else:
            if last:
                return last
        time.sleep(every_s)
    raise AssertionError(f"{what} not within {timeout_s} s (last: {last!r})")


def wait_led_without(topic: str, partitions: list[int], node: int, timeout_s: float = 60,
                     ) -> dict[int, PartitionState]:
    """Wait until each of ``partitions`` of ``topic`` has a leader other than ``node``."""
    def check() -> dict[int, PartitionState] | None:
        states = describe(topic).get(topic, {})
        if all(states.get(p) and states[p].leader not in (-1, node) for p in partitions):
            return states
        return None
    return wait_until(check, timeout_s, f"new leaders of {topic} {partitions}")  # type: ignore[no-any-return]


def wait_full_isr(*topics: str, timeout_s: float = 90) -> None:
    """Wait until every partition of ``topics`` has all three nodes in sync."""
    def check() -> bool:
        states = describe(*topics)
        return len(states) == len(topics) and all(
            state.isr == NODES for parts in states.values() for state in parts.values())
    wait_until(check, timeout_s, f"ISR of 3 for {topics}", every_s=0.5)


def create_topic_led_by(name: str, partitions: int, leader: int) -> None:
    """A topic of ``partitions`` partitions, three replicas each, ``leader`` first (so its
    leader while every node is up) and the other two nodes after it."""
    from aiokafka.admin import NewTopic

    order = [leader] + [n for n in NODES if n != leader]

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=CLUSTER)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, -1, -1, replica_assignments={
                p: order for p in range(partitions)})])
        finally:
            await admin.close()
    asyncio.run(run())


def wait_answering(workers: list[Any], timeout_s: float = 90) -> None:
    """Wait until each of ``workers`` answers ``/a/default`` with 200: healthy is not enough,
    a replica still loading its snapshot answers 503 (and a busy machine can take a while)."""
    for worker in workers:
        wait_until(lambda w=worker: w.get("/a/default").status == 200, timeout_s,
                   f"{worker.url}/a/default answering 200")


def start_replicas(make_worker: Any, topic: str) -> list[Any]:
    """Two workers of one app on the cluster (changelog replicated 3 times), healthy and
    answering."""
    app_id = f"app-{topic}"
    workers = [
        make_worker(topic, app_id=app_id, name=f"c{i}", brokers=CLUSTER,
                    extra={"replication_factor": "3", "session_timeout": "6s"})
        for i in range(2)
    ]
    for worker in workers:
        worker.start(wait=False)
    for worker in workers:
        worker.wait_healthy(timeout_s=120)
    wait_answering(workers)
    return workers
