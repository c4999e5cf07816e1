"""Broker outages in the log: aiokafka's repeated errors held back and counted, the first of
each kind and one per interval let through, and which brokers are unreachable since when."""

from __future__ import annotations

import logging

from bucket_app.kafka.brokerlog import CONNECT_FAILED, OutageLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_repeats_are_held_back_and_counted_in_the_next_line_let_through():
    clock = Clock()
    outage = OutageLog(every_s=30, quiet_s=5, clock=clock)
    logger = logging.getLogger("aiokafka.test_brokerlog")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    collect = Collect()
    logger.addHandler(collect)
    logger.addFilter(outage)
    try:
        for _ in range(140):  # one second of an unreachable broker's retries
            logger.error(CONNECT_FAILED, 1, "Connect call failed")
            logger.error("Unable to update metadata from %s", [1])
            logger.debug("debug lines are never held back %s", 1)
            clock.now += 1 / 140
        assert len(collect.lines) == 2 + 140  # the first of each kind, and every debug line
        assert set(outage.unreachable()) == {"1"}
        assert 0.99 < outage.unreachable()["1"] < 1.01
        clock.now += 30
        logger.error(CONNECT_FAILED, 1, "Connect call failed")
        assert collect.lines[-1] == ("Unable connect to node with id 1: Connect call failed "
                                     "(and 139 more like it in the last 30 s)")
        # another broker is another kind, and another outage
        logger.error(CONNECT_FAILED, 2, "Connect call failed")
        assert collect.lines[-1] == "Unable connect to node with id 2: Connect call failed"
        assert set(outage.unreachable()) == {"1", "2"}
        assert outage.unreachable()["1"] == 0.0  # 30 s without a failure ended the first
        # no failed connection for quiet_s: reachable again, a new outage starts anew
        clock.now += 6
        assert outage.unreachable() == {}
        logger.error(CONNECT_FAILED, 1, "Connect call failed")
        assert outage.unreachable() == {"1": 0.0}
    finally:
        logger.removeFilter(outage)
        logger.removeHandler(collect)
