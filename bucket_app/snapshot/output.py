"""The output topic: the snapshot's rows as keyed JSON upserts, for ClickHouse, Druid or Pinot.

With ``output_topic`` set, one replica (the one whose worker holds source partition 0) publishes
every row of its snapshot that changed, after each refresh, to that compacted topic: the key is
the row's identity, ``{"bucket_start": ..., <mapped column>: ...}`` as JSON with sorted keys, so a
row always has the same key bytes and compaction keeps its latest value; the value is the row
(mapped columns, bucket_start, bucket_end, count, late, final) plus ``position`` (the source
offset per partition the count includes at least), ``version`` (the sum of those offsets plus
one each: it never decreases from one publication of a key to the next by one publisher) and
``updated_at`` (epoch seconds). RST_ID is left out: it numbers one replica's refreshes and means
nothing to another replica or downstream.

Invariants and their reasons:

- Changed rows are those whose RST_ID (the generation that last wrote them) exceeds the highest
  RST_ID this publisher has had acknowledged; they are read in one read transaction of the
  WAL-mode file, so one round sees one generation, never half of a refresh, and the next round
  starts exactly after it. A round whose sends fail is repeated whole: values are upserts.
- A replica that becomes the publisher (first start, or partition 0 moved to it, or back to it
  after a rebalance) waits until its snapshot has caught up with the changelog, then publishes
  every row: a hand-over loses nothing. A replica stops publishing within a poll of the
  revocation, before the rebalance hands partition 0 on; a replica cut off from the group keeps
  it until its session times out and may publish beside the new one until then, which
  ``version`` orders.
- Retention (``clean_interval``) deletes a row by per-partition tombstones, so its count first
  falls as partitions sweep it, then the row disappears. Rows past retention in every
  partition can only shrink: their updates are not published (a sink that keeps history longer
  keeps the true count); their disappearance is published as a tombstone (null value). The
  publisher learns which keys to watch from the snapshot itself: the keys of buckets near or
  past the retention edge of the fastest partition (``WATCH_AHEAD_BUCKETS`` ahead), counted per
  bucket each round; a bucket whose row count falls is compared key by key. Keys deleted while no
  replica published, or swept before this publisher watched their bucket, get no tombstone.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bucket_app import identity
from bucket_app.errors import SettingsError
from bucket_app.kafka import security as kafka_security
from bucket_app.schema import FINAL_COLUMN, LATE_COLUMN, RST_COLUMN
from bucket_app.settings import Settings
from bucket_app.snapshot.thread import run_in_own_thread
from bucket_app.sql.sandbox import quote_identifier

log = logging.getLogger(__name__)

# how often the publisher looks at the reader's generation and the worker's assignment
POLL_S = 0.1
# rows read from SQLite and handed to the producer at a time
PAGE_ROWS = 2_000
# pages whose acknowledgements may be outstanding before the next page is read
PAGES_IN_FLIGHT = 8
# How far ahead of the retention edge keys are watched for deletion, in buckets: a sweep that
# deletes a bucket the publisher had not started to watch yet would go without tombstones, so the
# edge may move this much between two rounds.
WATCH_AHEAD_BUCKETS = 10
# after a failed round, before the next try
RETRY_S = 2.0
NEVER = float("-inf")
# what the output value adds to the row's columns
VALUE_EXTRAS = ("position", "version", "updated_at")


def _bound(edge: float) -> float:
    """An edge SQLite compares with numbers: -inf as the lowest float."""
    return max(edge, -1.7e308)


def _at_or_before(start: Any, edge: float) -> bool:
    """A numeric bucket_start at or before ``edge`` (a non-numeric one never is)."""
    return isinstance(start, int | float) and start <= edge


def row_key(mapped: dict[str, Any], bucket_start: Any) -> bytes:
    """A row's output key: stable bytes for one (mapped values, bucket_start)."""
    return orjson.dumps({**mapped, "bucket_start": bucket_start}, option=orjson.OPT_SORT_KEYS)


class NotPublisher(Exception):
    """This replica stopped being the publisher during a round."""


class RowPublisher:
    """Publishes the snapshot's changed rows to ``topic`` while ``leads()`` is true.

    ``state`` is the :class:`~bucket_app.snapshot.state.ReaderState` of the replica's reader
    (generation, caught_up, progress, position()); the snapshot file is read with a read-only
    connection of this publisher's own, from its own thread (:meth:`run_in_thread`).
    """

    def __init__(self, settings: Settings, topic: str, state: Any,
                 leads: Callable[[], bool]) -> None:
        self.settings = settings
        self.topic = topic
        self.state = state
        self.leads = leads
        self.mapped = list(settings.msg_map.values())
        self.interval_s = settings.bucket_interval_s
        self.retention_s = settings.clean_interval_s
        table = quote_identifier(settings.sqlite_table)
        self.columns = [*settings.sqlite_schema, LATE_COLUMN, FINAL_COLUMN]
        others = {settings.topic, settings.dead_letter_topic, identity.counts_changelog(settings)}
        if topic in others:
            raise SettingsError(f"output_topic = {topic} is a topic bucket_app reads or writes "
                                "for another purpose; name a topic of its own")
        clash = sorted(set(self.columns) & set(VALUE_EXTRAS))
        if clash:
            raise SettingsError(f"output_topic: the column {clash[0]!r} would clash with the "
                                f"output value's own {', '.join(VALUE_EXTRAS)}; rename it in "
                                "msg_map_schema / sqlite_schema")
        listed = ", ".join(map(quote_identifier, [*self.columns, RST_COLUMN]))
        self._changed = f"SELECT {listed} FROM {table} WHERE {RST_COLUMN} > ?"
        mapped = ", ".join(map(quote_identifier, [*self.mapped, "bucket_start"]))
        self._keys_between = (f"SELECT {mapped} FROM {table} "
                              "WHERE bucket_start > ? AND bucket_start <= ?")
        self._keys_of = f"SELECT {mapped} FROM {table} WHERE bucket_start = ?"
        self._bucket_sizes = (f"SELECT bucket_start, count(*) FROM {table} "
                              "WHERE bucket_start <= ? GROUP BY bucket_start")
        self.published_through = 0  # highest RST_ID acknowledged; 0: publish every row
        self.full_done = False  # a round since this replica became the publisher succeeded
        # keys of rows in watched buckets (near or past retention): bucket_start -> keys
        self.watched: dict[Any, set[bytes]] = {}
        self.watched_through: float = NEVER
        self.unsent_tombstones: set[bytes] = set()
        self.rows_sent = 0
        self.tombstones_sent = 0
        self._stopping = threading.Event()

    # -- one round -------------------------------------------------------------------------

    def _edges(self) -> tuple[float, float]:
        """(watch buckets starting at or before this, skip updates of buckets starting at or
        before that), from the partitions' event-time watermarks the snapshot reflects."""
        marks = [p.watermark_s for p in self.state.progress.values()]
        if not marks or max(marks) <= 0:
            return NEVER, NEVER
        # bucket_end <= watermark - retention: past retention in that partition
        fastest = max(marks) - self.retention_s - self.interval_s
        watch = fastest + WATCH_AHEAD_BUCKETS * self.interval_s
        everywhere = (min(marks) - self.retention_s - self.interval_s
                      if len(marks) == self.state.partitions and min(marks) > 0 else NEVER)
        return watch, everywhere

    def _key_of_row(self, row: tuple[Any, ...]) -> bytes:
        return row_key(dict(zip(self.mapped, row[:-1], strict=True)), row[-1])

    async def publish(self, producer: AIOKafkaProducer, conn: sqlite3.Connection) -> int:
        """One round: send every row changed since the last acknowledged round, and tombstones
        for watched keys that are gone; return the rows and tombstones sent. Raises KafkaError
        (``published_through`` stays, so the next round sends the rows again) when a send
        fails; tombstones not acknowledged are sent again too."""
        position = self.state.position()  # read before the transaction: a lower bound
        extra = {"position": {str(p): o for p, o in position.items()},
                 "version": sum(o + 1 for o in position.values()),
                 "updated_at": round(time.time(), 3)}
        watch, skip_through = self._edges()
        sent = 0
        in_flight: collections.deque[list[asyncio.Future[Any]]] = collections.deque()
        highest = self.published_through
        start_at = self.columns.index("bucket_start")
        conn.execute("BEGIN")
        try:
            if watch > self.watched_through:
                bounds = (_bound(self.watched_through), _bound(watch))
                for row in conn.execute(self._keys_between, bounds):
                    self.watched.setdefault(row[-1], set()).add(self._key_of_row(row))
                self.watched_through = watch
            cursor = conn.execute(self._changed, (self.published_through,))
            while page := cursor.fetchmany(PAGE_ROWS):
                if not self.leads():
                    raise NotPublisher  # partition 0 moved on mid-round: stop sending now
                futures = []
                for row in page:
                    highest = max(highest, row[-1])
                    values = dict(zip(self.columns, row[:-1], strict=True))
                    start = row[start_at]
                    key = row_key({c: values[c] for c in self.mapped}, start)
                    if _at_or_before(start, self.watched_through):
                        self.watched.setdefault(start, set()).add(key)
                    if _at_or_before(start, skip_through):
                        continue  # only a retention sweep changes it now: it can only shrink
                    values.update(extra)
                    futures.append(await producer.send(self.topic, orjson.dumps(values), key=key))
                sent += len(futures)
                in_flight.append(futures)
                if len(in_flight) > PAGES_IN_FLIGHT:
                    await asyncio.gather(*in_flight.popleft())
            self.unsent_tombstones |= self._gone(conn)
        finally:
            conn.execute("COMMIT")
        tombstones = list(self.unsent_tombstones)
        for key in tombstones:
            in_flight.append([await producer.send(self.topic, None, key=key)])
        for futures in in_flight:
            await asyncio.gather(*futures)
        # acknowledged: the round counts
        self.published_through = highest
        self.unsent_tombstones.difference_update(tombstones)
        self.rows_sent += sent
        self.tombstones_sent += len(tombstones)
        return sent + len(tombstones)

    def _gone(self, conn: sqlite3.Connection) -> set[bytes]:
        """The watched keys whose rows the snapshot no longer has (no longer watched)."""
        if not self.watched:
            return set()
        sizes = dict(conn.execute(self._bucket_sizes, (_bound(self.watched_through),)))
        gone: set[bytes] = set()
        for start in list(self.watched):
            keys = self.watched[start]
            if sizes.get(start, 0) >= len(keys):
                continue
            present = {self._key_of_row(row) for row in conn.execute(self._keys_of, (start,))}
            gone |= keys - present
            keys &= present
            if not keys:
                del self.watched[start]
        return gone

    def reset(self) -> None:
        """Forget what was published: the next round publishes every row (a new publisher)."""
        self.published_through = 0
        self.full_done = False
        self.watched = {}
        self.watched_through = NEVER
        self.unsent_tombstones = set()

    # -- the loop --------------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        uri = self.settings.snapshot_path.resolve().as_uri() + "?mode=ro"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    def producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=list(self.settings.brokers), acks="all", enable_idempotence=True,
            linger_ms=20, max_batch_size=512 * 1024,
            **kafka_security.client_kwargs(self.settings))

    async def run(self) -> None:
        producer = self.producer()
        await producer.start()
        conn: sqlite3.Connection | None = None
        seen_generation = -1
        try:
            while not self._stopping.is_set():
                if not self.leads():
                    if self.full_done:
                        log.info("output topic %s: no longer the publisher", self.topic)
                    self.reset()
                    seen_generation = -1
                # the first round waits for the changelog: it publishes every row as it is
                elif ((self.full_done or self.state.caught_up)
                      and self.state.generation != seen_generation):
                    generation = self.state.generation
                    if conn is None:
                        conn = self.connect()
                    if not self.full_done:
                        log.info("output topic %s: publishing every row", self.topic)
                    try:
                        await self.publish(producer, conn)
                        seen_generation = generation
                        self.full_done = True
                    except NotPublisher:
                        continue  # reset at the top of the loop
                    except (KafkaError, sqlite3.Error) as exc:
                        log.warning("output topic %s: round failed, retrying in %.0f s: %s",
                                    self.topic, RETRY_S, exc)
                        await asyncio.sleep(RETRY_S)
                await asyncio.sleep(POLL_S)
        finally:
            if conn is not None:
                conn.close()
            await producer.stop()

    async def run_in_thread(self) -> None:
        """:meth:`run` on a thread and event loop of its own (off the counting loop, as the
        snapshot reader); cancelled, it stops the publisher."""
        await run_in_own_thread(self.run, self._stopping, "bucket_app-output")
