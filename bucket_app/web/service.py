"""The query service: what every route answers from, and the one way they run SQL.

Routes read only the SQLite snapshot (through the read-only :mod:`bucket_app.sql.sandbox`, run
in child processes by :mod:`bucket_app.sql.pool`) and the snapshot reader's in-memory state;
they never touch the Faust table, so they cannot trip Faust's "outside of stream iteration"
checks or block the agent. The worker builds the pool and the threads that wait on it, starts
and stops them (:mod:`bucket_app.parts`); the service only uses them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web as aioweb

from bucket_app.counting.counter import Counter
from bucket_app.errors import HttpError
from bucket_app.settings import Settings
from bucket_app.snapshot.reader import SnapshotReader
from bucket_app.sql.pool import EncodedResult, SqlPool
from bucket_app.web.admission import SqlAdmission
from bucket_app.web.params import DEFAULT_WAIT_MS, encode_token

# how often a request waiting for min_offsets looks at the snapshot reader's position
WAIT_POLL_S = 0.02


class Counting(Protocol):
    """What the routes read of the counting agent (:class:`bucket_app.processor.Processor`)."""

    @property
    def counter(self) -> Counter: ...

    @property
    def assignment(self) -> Mapping[str, Any]: ...


def mapped_columns(settings: Settings) -> list[str]:
    """The mapped columns, in the snapshot table's order."""
    mapped = set(settings.msg_map.values())
    return [column for column in settings.sqlite_schema if column in mapped]


@dataclass(frozen=True)
class Freshness:
    """How fresh an answer must be: the source offsets it must reflect (``min_offsets``), and
    how long to wait for them (``wait_ms``; None: not asked)."""

    wanted: Mapping[int, int] = field(default_factory=dict)
    wait_ms: int | None = None

    @classmethod
    def of(cls, args: Mapping[str, Any]) -> Freshness:
        return cls(args.get("min_offsets") or {}, args.get("wait_ms"))


class Service:
    """Settings, the snapshot reader, the agent's counters, and SQL through admission."""

    def __init__(self, settings: Settings, reader: SnapshotReader, processor: Counting,
                 sql: SqlPool, threads: Executor, processes: int,
                 degraded: Callable[[], str | None] = lambda: None) -> None:
        """``sql`` runs queries on ``processes`` children, waited on by ``threads``;
        ``degraded`` says why counting waits, if it does (/health)."""
        self.settings = settings
        self.reader = reader
        self.processor = processor
        self.sql = sql
        self.threads = threads
        self.degraded = degraded
        # A client refused is told to come back when its running query must have ended.
        self.admission = SqlAdmission(
            processes, settings.sql_client_limit, settings.sql_queue_limit,
            retry_after_s=max(1, math.ceil(settings.sql_time_limit_s)),
        )
        #: called with each SQL query's seconds in its process (bucket_app.web.metrics sets it)
        self.on_query: Callable[[float], None] = lambda seconds: None

    @property
    def mapped_columns(self) -> list[str]:
        return mapped_columns(self.settings)

    async def query(self, request: aioweb.Request, sql: str, params: Any = None, *,
                    fresh: Freshness = Freshness(), row_limit: int | None = None,
                    ) -> EncodedResult:
        """Run ``sql`` once the snapshot is ready and as ``fresh`` as the request asks.

        With ``min_offsets`` the answer waits up to ``wait_ms`` for the snapshot to reflect
        them, then gives up with 503 and Retry-After rather than answer from older data.
        Without, a snapshot not loaded yet is a 503 at once, unless ``wait_ms`` is given. Every
        query passes :class:`SqlAdmission` first (429 / 503), and holds its place while it
        waits.
        """
        client = request.remote or "unknown"
        wait_ms = DEFAULT_WAIT_MS if fresh.wait_ms is None else fresh.wait_ms
        if not fresh.wanted and fresh.wait_ms is None:
            # A replica still loading its snapshot answers 503 at once, so a client or a load
            # balancer asks another one instead of waiting (a rolling restart showed 2 s gaps).
            wait_ms = 0
        with self.admission.admit(client):
            await self.wait_for_snapshot(fresh.wanted, wait_ms)
            loop = asyncio.get_running_loop()
            result = await self.admission.run(client, lambda: loop.run_in_executor(
                self.threads, self.sql.execute, sql, params, row_limit))
            self.on_query(result.elapsed_ms / 1000)
            return result

    async def wait_for_snapshot(self, wanted: Mapping[int, int], wait_ms: int) -> None:
        state = self.reader.state
        deadline = time.monotonic() + wait_ms / 1000
        while not (state.reached(wanted) if wanted else state.caught_up or state.generation):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not wanted:
                    raise HttpError(503, "snapshot not ready yet", retry_after_s=1)
                raise HttpError(
                    503, "the snapshot has not reached the requested offsets yet",
                    retry_after_s=1, wanted={str(p): o for p, o in wanted.items()},
                    position={str(p): o for p, o in state.position().items()},
                )
            # The web server runs in its own thread and event loop: poll the reader's state.
            await asyncio.sleep(min(WAIT_POLL_S, remaining))

    def status(self) -> dict[str, Any]:
        state = self.reader.state
        counter = self.processor.counter
        return {
            "rst_id": state.generation,
            "snapshot_age_s": round(time.time() - state.refreshed_at_s, 3)
            if state.refreshed_at_s else None,
            "caught_up": state.caught_up,
            "complete": state.complete,
            # buckets ending at or before this minus grace are final (None: none is yet)
            "closing_time": state.closing_s if math.isfinite(state.closing_s) else None,
            "token": encode_token(state.position()),
            "partitions": {
                str(p): {
                    "offset": state.offset(p),
                    "watermark": state.progress[p].watermark_s if p in state.progress else None,
                    "lag": state.lag(p),
                }
                for p in range(state.partitions)
            },
            "worker": {
                **self.processor.assignment,
                "batches": counter.batches,
                "counted": counter.counted,
                "replayed": counter.replayed,
                "late": counter.late,
                "dead_letters": counter.dead_letters,
                "skipped": dict(counter.skipped),
            },
        }

    def headers(self, result: EncodedResult | None = None) -> dict[str, str]:
        state = self.reader.state
        headers = {
            "X-RST-ID": str(state.generation),
            "X-Snapshot-Caught-Up": "true" if state.caught_up else "false",
            "X-Complete": "true" if state.complete else "false",
            "X-Position-Token": encode_token(state.position()),
        }
        if result is not None:
            headers["X-Truncated"] = "true" if result.truncated else "false"
        return headers
