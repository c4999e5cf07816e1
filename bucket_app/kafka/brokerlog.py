"""Broker outages in the log: the first line of each kind, then one every 30 s with a count.

While a broker is unreachable aiokafka logs every failed connection attempt, metadata update,
fetch and coordinator request at ERROR, each retry a line: 4,163 lines in 30 s from one idle
worker here, which buried everything else the log had to say. :class:`OutageLog` is a logging
filter on aiokafka's loggers: a record of a kind (logger, message template, first argument:
usually the broker's node id) seen within the last ``every_s`` is held back and counted, and
the next one let through says how many were held back. Nothing is lost but repetition.

It also remembers which brokers failed to connect recently (aiokafka's "Unable connect to
node" line names the node id), so ``/health`` and ``/metrics`` can say a broker is
unreachable and since when; a broker is reachable again once no connection to it has failed
for ``quiet_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: a record kind seen within this long is held back and counted
EVERY_S = 30.0
#: a broker with no failed connection for this long counts as reachable again
QUIET_S = 5.0
#: aiokafka's line for a failed connection to a broker (aiokafka.client), node id first
CONNECT_FAILED = "Unable connect to node with id %s: %s"


@dataclass
class Kind:
    """One kind of record: when one was last let through, and how many held back since."""

    shown_at: float
    held: int = 0


@dataclass
class Outage:
    """A broker's current run of failed connections."""

    since: float
    last: float


class OutageLog(logging.Filter):
    """Holds back repeats of aiokafka's warnings and errors (see the module doc)."""

    def __init__(self, every_s: float = EVERY_S, quiet_s: float = QUIET_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.quiet_s = quiet_s
        self.clock = clock
        self.kinds: dict[tuple[str, str, str], Kind] = {}
        self.outages: dict[str, Outage] = {}
        # aiokafka logs from the consumer's thread and the main loop alike
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self.clock()
        args = record.args if isinstance(record.args, tuple) else ()
        first = str(args[0]) if args else ""
        with self._lock:
            if record.msg == CONNECT_FAILED and first:
                self._failed(first, now)
            key = (record.name, str(record.msg), first)
            kind = self.kinds.get(key)
            if kind is not None and now - kind.shown_at < self.every_s:
                kind.held += 1
                return False
            held = 0 if kind is None else kind.held
            self.kinds[key] = Kind(now)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last %.0f s)"
            record.args = (*args, self.every_s)
        return True

    def _failed(self, broker: str, now: float) -> None:
        outage = self.outages.get(broker)
        if outage is None or now - outage.last >= self.quiet_s:
            self.outages[broker] = Outage(now, now)
        else:
            outage.last = now

    def unreachable(self) -> dict[str, float]:
        """Broker node id -> seconds it has been unreachable, for those that are now."""
        now = self.clock()
        with self._lock:
            return {broker: now - outage.since for broker, outage in self.outages.items()
                    if now - outage.last < self.quiet_s}


# Logging is process-wide, so there is one, however many apps a process builds.
_OUTAGES = OutageLog()
_installed = False


def install() -> None:
    """Put the process's :class:`OutageLog` on every aiokafka logger there is (aiokafka's
    modules are imported by then: Faust imports them); once, however often it is called."""
    global _installed
    if not _installed:
        _installed = True
        for name in list(logging.root.manager.loggerDict):
            if name == "aiokafka" or name.startswith("aiokafka."):
                logging.getLogger(name).addFilter(_OUTAGES)


def outages() -> OutageLog:
    """The process's :class:`OutageLog`: which brokers are unreachable (/health, /metrics)."""
    return _OUTAGES
