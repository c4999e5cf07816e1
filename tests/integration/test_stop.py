"""SIGTERM: the worker leaves, commits and exits within 10 s, with its broker up or gone.

Each test runs its own broker (``scripts/kafka.sh`` on a port of its own), never the shared
one, and stops it under the worker. With the broker gone mid-stream the worker still exits in
time and says in one line what it counted but could not commit; the restart reads those
offsets again and the counts are exact against the messages the test produced.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.support.kafka import bulk_records, create_topic, own_broker_script, produce, unique
from tests.support.worker import Worker, counts_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = 9692
BROKER = f"127.0.0.1:{PORT}"
PARTITIONS = 4
UNCOMMITTED = "stopping with source offsets counted but not committed"


@pytest.fixture
def broker() -> Iterator[str]:
    own_broker_script("clean", PORT)
    own_broker_script("start", PORT)
    yield BROKER
    own_broker_script("clean", PORT)


def test_sigterm_exits_in_10_s_with_the_broker_up_and_gone(tmp_path, broker) -> None:
    topic = unique("stop")
    create_topic(topic, PARTITIONS, brokers=broker)
    worker = Worker(tmp_path / "w", topic=topic, app_id=unique("stop"), partitions=PARTITIONS,
                    brokers=broker)
    try:
        worker.start()
        first, expected = bulk_records(20_000, PARTITIONS, seed=41, prefix="a")
        worker.wait_caught_up(produce(topic, first, brokers=broker))
        up_s = worker.stop_timed()
        assert up_s < 10, up_s
        assert UNCOMMITTED not in worker.log_path.read_text(errors="replace")

        # a backlog the worker is counting when its only broker goes away
        backlog, more = bulk_records(300_000, PARTITIONS, seed=42, prefix="b")
        expected.update(more)
        last = produce(topic, backlog, brokers=broker)
        worker.start()
        deadline = time.monotonic() + 60
        while worker.health()["worker"]["counted"] < 30_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        own_broker_script("stop", PORT)
        counted = worker.health()["worker"]["counted"]
        time.sleep(3)
        down_s = worker.stop_timed()
        assert down_s < 10, down_s
        lines = [line for line in worker.log_path.read_text(errors="replace").splitlines()
                 if UNCOMMITTED in line]
        assert len(lines) == 1, lines
        said = {int(p): (int(c), int(k)) for p, c, k in re.findall(
            r"partition (\d+) counted through (\d+) \([^)]*\), committed through (-?\d+)",
            lines[0].replace("through none", "through -1"))}
        assert said and all(c > k for c, k in said.values()), lines[0]

        own_broker_script("start", PORT)
        worker.start()
        worker.wait_caught_up(last, timeout_s=180)
        assert counts_of(worker) == expected
        print(f"\nSIGTERM exit: {up_s:.1f} s with the broker up, {down_s:.1f} s with it down "
              f"(after {counted} of the backlog counted); restart exact over "
              f"{sum(expected.values())} messages; the line:\n{lines[0]}")
    finally:
        worker.stop()
