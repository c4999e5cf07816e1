"""Writes the disk refused for lack of space: one log line when it happens, one when it ends.

A full disk is not bad input and not a crash: the counting keeps what it has not written
(RocksDB writes wait in :class:`~bucket_app.kafka.changelog.Unacked`, the snapshot's refresh in
the reader) and retries, the intake stops fetching meanwhile, and queries are answered from
what is on disk. :class:`FullDisk` is where the writers say so: each writer (``what``: the
tables, the snapshot) reports its failures and its first success after them; the log gets one
line per outage and writer, not one per retry, and ``/health`` reads :meth:`FullDisk.reasons`
(503, ``degraded``) while any writer waits.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: how often a writer that failed for lack of space tries again
RETRY_S = 1.0

_NO_SPACE = ("no space left on device", "database or disk is full", "disk quota exceeded")


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or a quota) has no room: ENOSPC/EDQUOT, SQLite's
    SQLITE_FULL, or RocksDB's ``IO error: No space left on device`` (rocksdict raises a bare
    Exception with RocksDB's message)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == 13:
        return True  # SQLITE_FULL
    text = str(exc).lower()
    return any(marker in text for marker in _NO_SPACE)


@dataclass
class Outage:
    path: str
    since: float  # time.monotonic()
    error: str
    retries: int = 0


class FullDisk:
    """Writers waiting for space, by what they write (thread-safe: the snapshot's thread and
    the main loop report, the web server's thread reads)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._outages: dict[str, Outage] = {}
        self._lock = threading.Lock()

    def failed(self, what: str, path: str, exc: BaseException, then: str) -> None:
        """``what`` could not write ``path``: logged the first time of an outage only.
        ``then``: what the writer does meanwhile, for the log line."""
        with self._lock:
            outage = self._outages.get(what)
            if outage is not None:
                outage.retries += 1
                return
            self._outages[what] = Outage(path, self.clock(), str(exc))
        log.error("disk full: %s cannot write %s (%s); %s, retrying every %.0f s until there "
                  "is room", what, path, exc, then, RETRY_S)

    def recovered(self, what: str) -> None:
        """``what`` wrote again: the outage, if there was one, is over."""
        if what not in self._outages:
            return
        with self._lock:
            outage = self._outages.pop(what, None)
        if outage is not None:
            log.warning("disk has room again: %s wrote %s after %.1f s and %d retries", what,
                        outage.path, self.clock() - outage.since, outage.retries)

    def waiting(self, what: str) -> bool:
        return what in self._outages

    def reasons(self) -> list[str]:
        """One line per writer waiting for space, for ``/health``."""
        now = self.clock()
        with self._lock:
            return [f"disk full: {what} cannot write {outage.path} for {now - outage.since:.0f} s"
                    f" ({outage.error})" for what, outage in sorted(self._outages.items())]


#: the process's writers (a worker is one process)
FULL = FullDisk()
