"""The worker's parts beside Faust's own services, built in one place, started with the app and
stopped with it.

:class:`Parts` builds the SQL process pool and the threads that wait on it, the snapshot reader
with its SQLite child process, the output-topic publisher, the consumer-lag and recovery
samplers, the metrics registry and the query service the routes answer from; :meth:`Parts.attach`
registers the routes (:mod:`bucket_app.web.routes`, which only answer) and the samplers on the
app. :meth:`Parts.start` runs once the app has started (after table recovery, like Faust's own
tasks), :meth:`Parts.stop` once it has stopped (after its web server and tasks): then no child
process, thread pool or SQLite handle of the worker is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from bucket_app.kafka.recovery import RECOVERY_SAMPLE_S, RecoveryProgress
from bucket_app.settings import Settings
from bucket_app.snapshot.output import RowPublisher
from bucket_app.snapshot.process import SnapshotProcess
from bucket_app.snapshot.reader import SnapshotReader, store_config
from bucket_app.sql.pool import SqlPool
from bucket_app.web import routes
from bucket_app.web.metrics import LAG_SAMPLE_S, ConsumerLag, build_registry
from bucket_app.web.service import Counting, Service

log = logging.getLogger(__name__)

# child processes running user SQL (at least sql_client_limit + 1), and as many threads
# waiting on them
SQL_PROCESSES = 2
# how long a stop waits for the reader's and the publisher's threads, together: they end at
# once with the brokers up; with the brokers gone their clients' stop can hang, and SIGTERM must
# exit within 10 s after Faust's own bounded waits (the threads are daemons: exit ends them)
THREAD_STOP_S = 1.5
READER_THREADS = ("bucket_app-snapshot-reader", "bucket_app-output")


def sql_parts(settings: Settings) -> tuple[SqlPool, ThreadPoolExecutor, int]:
    """The SQL pool (not started), the threads waiting on it, and how many of each.

    One child more than one client may occupy, so a client whose queries all run to the time
    limit always leaves a child to the others.
    """
    processes = max(SQL_PROCESSES, settings.sql_client_limit + 1)
    pool = SqlPool(processes, str(settings.snapshot_path), settings.sqlite_table,
                   row_limit=settings.sql_row_limit,
                   time_limit_ms=int(settings.sql_time_limit_s * 1000))
    return pool, ThreadPoolExecutor(processes, thread_name_prefix="bucket_app-sql"), processes


class Parts:
    """Everything the worker runs beside Faust: see the module docstring."""

    def __init__(self, settings: Settings, partitions: int, processor: Counting,
                 recovery: RecoveryProgress, degraded: Callable[[], str | None]) -> None:
        """``recovery`` is the bulk restore's progress too; ``degraded`` says why counting
        waits, if it does."""
        self.settings = settings
        self.sql, self.threads, processes = sql_parts(settings)
        self.reader = SnapshotReader(
            settings, partitions, SnapshotProcess(store_config(settings)))
        self.service = Service(settings, self.reader, processor, self.sql, self.threads,
                               processes, degraded)
        self.lag = ConsumerLag(settings.topic)
        self.recovery = recovery
        self.registry = build_registry(self.service, self.lag, recovery)
        # one publisher: the replica counting source partition 0
        self.publisher = None if settings.output_topic is None else RowPublisher(
            settings, settings.output_topic, self.reader.state,
            lambda: 0 in processor.assignment["assigned"])
        self._tasks: list[asyncio.Future[None]] = []
        self._sampling: asyncio.Future[None] | None = None

    def attach(self, app: faust.App) -> None:
        """Register the routes and the main loop's samplers on ``app``."""
        routes.register(app, self.service, self.registry)

        # Faust starts timers once the tables have recovered, so the consumer exists by then.
        @app.timer(LAG_SAMPLE_S)
        async def sample_consumer_lag() -> None:
            await self.lag.sample(app.consumer)

        async def sample_recovery() -> None:
            while not app.should_stop:
                await self.recovery.sample(app.tables.recovery, app.consumer)  # type: ignore[attr-defined]
                await app.sleep(RECOVERY_SAMPLE_S)

        async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
            # Faust starts an app's timers and tasks only once its tables have recovered, too
            # late to see the start-up recovery: this sampler starts with the first
            # assignment, before recovery, and runs until the app stops.
            self.recovery.on_assigned(app.tables.recovery)  # type: ignore[attr-defined]
            if self._sampling is None:
                self._sampling = app.add_future(sample_recovery())

        app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]

    async def start(self, app: faust.App) -> None:
        """Start the SQL processes (so the first query does not wait for a Python to start),
        the snapshot reader and the publisher, as tasks of ``app``: one that fails stops the
        worker with its error."""
        await asyncio.to_thread(self.sql.start)
        self._tasks.append(app.add_future(self.reader.run_in_thread()))
        if self.publisher is not None:
            self._tasks.append(app.add_future(self.publisher.run_in_thread()))

    async def stop(self) -> None:
        """Stop the reader and the publisher and wait for their threads, then end the
        snapshot and SQL child processes and the thread pools. Idempotent."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        deadline = time.monotonic() + THREAD_STOP_S
        for thread in threading.enumerate():
            if thread.name in READER_THREADS:
                thread.join(max(0.0, deadline - time.monotonic()))
        self.reader.store.close()
        self.reader.executor.shutdown(wait=True, cancel_futures=True)
        self.sql.close()
        self.threads.shutdown(wait=True, cancel_futures=True)
