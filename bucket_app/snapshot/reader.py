"""Snapshot: the counts table's changelog, read in full, materialized into one SQLite table.

Every replica runs a :class:`SnapshotReader`: an aiokafka consumer outside any consumer group that
is assigned every partition of the ``counts`` changelog (``read_committed``), so each replica's
snapshot holds all partitions, whoever owns them. Changelog records carry the full per-partition
value ``[count, max_offset]`` of one window-key, or a tombstone when retention removed it; the
reader sums the partitions of a key into one row. Each refresh is applied by
:class:`SnapshotStore` in one SQLite transaction on a WAL-mode file, so a reader sees the
previous refresh or the next one, never half of one; each refresh bumps the generation that the
seed called RST_ID. The worker's SQLite writes run in a child process
(:mod:`bucket_app.snapshot.process`), called from one thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bucket_app import identity
from bucket_app.counting.keys import PROGRESS_KEY
from bucket_app.counting.lifecycle import NEVER, Lifecycle
from bucket_app.kafka import security as kafka_security
from bucket_app.seam import clients
from bucket_app.settings import FINAL_COLUMN, LATE_COLUMN, RST_COLUMN, Settings
from bucket_app.snapshot.thread import run_in_own_thread
from bucket_app.sql.sandbox import quote_identifier

log = logging.getLogger(__name__)

COUNTS_TABLE = "counts"
# changes held before a refresh is due anyway: bounds the reader's memory while it catches up
MAX_PENDING = 50_000
# (source partition, mapped values, bucket start) -> count in that partition
PartKey = tuple[int, tuple[Any, ...], int]


def changelog_topic(settings: Settings) -> str:
    """Faust's changelog topic of the counts table (named by the state identity)."""
    return identity.changelog_topic(settings, COUNTS_TABLE)


def store_config(settings: Settings) -> dict[str, Any]:
    """:class:`SnapshotStore`'s arguments for ``settings``, as JSON (a child process gets them)."""
    return {"path": str(settings.snapshot_path), "table": settings.sqlite_table,
            "interval_s": settings.bucket_interval_s, "mapped": list(settings.msg_map.values()),
            "schema": dict(settings.sqlite_schema), "grace_s": settings.grace_s}


@dataclass
class Progress:
    """What the snapshot reflects of one source partition."""

    offset: int = -1
    watermark_s: float = 0.0
    seen_at_s: float = 0.0  # wall clock of the partition's last counted batch; 0: unknown


# a window-key's (count, late) in one source partition; None when retention deleted it
PartValue = tuple[int, int] | None


@dataclass
class Decoded:
    counts: dict[PartKey, PartValue] = field(default_factory=dict)
    progress: dict[int, Progress] = field(default_factory=dict)


# How a progress record's key starts (orjson's encoding of progress_key); count keys start "[[".
PROGRESS_PREFIX = orjson.dumps([PROGRESS_KEY])[:-1]


@dataclass
class Pending:
    """Changelog records read since the last refresh: the counts' latest raw key and value
    (decoded where they are applied, in the snapshot process), the progress decoded."""

    records: dict[bytes, bytes | None] = field(default_factory=dict)
    progress: dict[int, Progress] = field(default_factory=dict)

    def add(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if key.startswith(PROGRESS_PREFIX):
            decoded = Decoded()
            decode_record(key, value, decoded)
            self.progress.update(decoded.progress)
        else:
            self.records[key] = value


def decode_records(records: Iterable[tuple[bytes, bytes | None]]) -> dict[PartKey, PartValue]:
    """Count records (raw changelog key and value) as per-partition counts, None = deleted."""
    decoded = Decoded()
    for key, value in records:
        decode_record(key, value, decoded)
    return decoded.counts


def decode_record(key: bytes | None, value: bytes | None, into: Decoded) -> None:
    """Fold one changelog record into ``into``; unknown shapes are ignored with a log line."""
    if key is None:
        return
    try:
        parsed = orjson.loads(key)
        if parsed[0] == PROGRESS_KEY:
            if value is not None:
                offset, watermark, *seen_at = orjson.loads(value)
                into.progress[int(parsed[1])] = Progress(
                    int(offset), float(watermark), float(seen_at[0]) if seen_at else 0.0)
            return
        (partition, *values), (start, _end) = parsed
        count: PartValue = None
        if value is not None:
            stored = orjson.loads(value)  # [count, offset] or [count, offset, late]
            count = (int(stored[0]), int(stored[2]) if len(stored) > 2 else 0)
        into.counts[(int(partition), tuple(values), int(start))] = count
    except (orjson.JSONDecodeError, TypeError, ValueError, IndexError) as exc:
        log.warning("ignored changelog record with key %r: %s", key[:200], exc)


class SnapshotStore:
    """The SQLite file: one table of the sqlite_schema columns plus RST_ID, ``late`` and
    ``final``. Thread-confined.

    ``final`` is 1 once the bucket is final (:mod:`bucket_app.counting.lifecycle`) as of the
    closing time each refresh is given; the closing time the store has applied never goes
    back, so a final row stays final. Each refresh marks only the buckets that became final
    since the previous one (a range of the bucket_start index), and a row inserted for a bucket
    already final is inserted final. A row whose ``final`` changes gets the refresh's RST_ID,
    as one whose count changes does.

    Rows sum a window-key's counts over the source partitions, while the changelog carries each
    partition's own count; the per-partition counts and each row's rowid live in a side database
    (``<snapshot>-parts``, attached as ``side``) rather than in Python dicts, which cost about
    a kilobyte a row (docs/performance.md). Both files are rebuilt from the changelog at
    start-up, so the side file has no journal: a refresh that fails part-way stops the worker
    (see :mod:`bucket_app.snapshot.process`) rather than roll back; an in-memory journal would
    grow with every large refresh.
    """

    def __init__(self, path: str, table: str, interval_s: int, mapped: Sequence[str],
                 schema: Mapping[str, str], grace_s: float | None = None) -> None:
        self.path = Path(path)
        self.side_path = Path(f"{self.path}-parts")
        self.table = table
        self.interval_s = interval_s
        self.mapped = tuple(mapped)
        self.schema = dict(schema)
        self.lifecycle = Lifecycle(interval_s, interval_s if grace_s is None else grace_s, None)
        self.generation = 0
        self.rows = 0  # rows of the table, kept by apply (a count(*) reads them all)
        self.final_through = NEVER  # the latest bucket start marked final
        self._conn: sqlite3.Connection | None = None

    def create(self) -> None:
        """Start fresh files: the changelog is the source of truth, so nothing is kept."""
        self.close()
        for path in (self.path, self.side_path):
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{path}{suffix}").unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        columns = [f"{quote_identifier(c)} {t}" for c, t in self.schema.items()]
        columns.append(f"{RST_COLUMN} INTEGER")
        columns.append(f"{LATE_COLUMN} INTEGER NOT NULL DEFAULT 0")
        columns.append(f"{FINAL_COLUMN} INTEGER NOT NULL DEFAULT 0")
        table = quote_identifier(self.table)
        conn.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
        conn.execute(
            f"CREATE INDEX {quote_identifier(self.table + '_bucket_start')} "
            f"ON {table} (bucket_start)"
        )
        # the rows a refresh changed (/api/v1/stream, output_topic): RST_ID > the last one seen
        conn.execute(f"CREATE INDEX {quote_identifier(self.table + '_rst')} ON {table} "
                     f"({RST_COLUMN})")
        # Typical queries filter on a mapped field and a time range: one index per mapped column.
        for column in self.mapped:
            conn.execute(
                f"CREATE INDEX {quote_identifier(f'{self.table}_{column}_bucket_start')} "
                f"ON {table} ({quote_identifier(column)}, bucket_start)"
            )
        conn.execute("ATTACH DATABASE ? AS side", (str(self.side_path),))
        conn.execute("PRAGMA side.journal_mode=OFF")
        conn.execute("PRAGMA side.synchronous=OFF")
        # k is the row's key, JSON [mapped values, bucket start]; p a source partition. row.n
        # repeats the row's count as an INTEGER: the main table's count column has whatever
        # type sqlite_schema declares.
        # (l: the late count beside n)
        conn.execute("CREATE TABLE side.part (k BLOB NOT NULL, p INTEGER NOT NULL, "
                     "n INTEGER NOT NULL, l INTEGER NOT NULL, PRIMARY KEY (k, p)) WITHOUT ROWID")
        conn.execute("CREATE TABLE side.row (k BLOB PRIMARY KEY, id INTEGER NOT NULL, "
                     "n INTEGER NOT NULL, l INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute("CREATE TABLE side.change (k BLOB NOT NULL, p INTEGER NOT NULL, "
                     "n INTEGER NOT NULL, l INTEGER NOT NULL, PRIMARY KEY (k, p)) WITHOUT ROWID")
        self._conn = conn
        self.generation = 0
        self.rows = 0
        self.final_through = NEVER
        order = list(self.schema) + [RST_COLUMN, LATE_COLUMN, FINAL_COLUMN]
        placeholders = ", ".join("?" for _ in order)
        self._insert = (f"INSERT INTO main.{table} ({', '.join(map(quote_identifier, order))}) "
                        f"VALUES ({placeholders})")
        self._update = (f"UPDATE main.{table} SET count = ?, {LATE_COLUMN} = ?, "
                        f"{RST_COLUMN} = ? WHERE rowid = ?")
        self._finalize = (f"UPDATE main.{table} SET {FINAL_COLUMN} = 1, {RST_COLUMN} = ? "
                          f"WHERE bucket_start > ? AND bucket_start <= ? AND {FINAL_COLUMN} = 0")
        self._delete = f"DELETE FROM main.{table} WHERE rowid = ?"
        self._order = order

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # Per row key: the change in its summed count and late count, and its current rowid,
    # count and late count if any.
    _DELTAS = """
        SELECT d.k, d.delta, d.late_delta, r.id, r.n, r.l FROM (
            SELECT c.k AS k, sum(c.n - coalesce(o.n, 0)) AS delta,
                   sum(c.l - coalesce(o.l, 0)) AS late_delta
            FROM side.change AS c LEFT JOIN side.part AS o ON o.k = c.k AND o.p = c.p
            GROUP BY c.k
        ) AS d LEFT JOIN side.row AS r ON r.k = d.k
        WHERE d.delta != 0 OR d.late_delta != 0
    """

    def apply(self, changes: Mapping[PartKey, PartValue], closing_s: float = NEVER) -> int:
        """Apply per-partition ``(count, late)`` (None = deleted) and mark the buckets final
        at ``closing_s``, in one transaction; return the generation."""
        final_through = max(self.final_through, self.lifecycle.last_final_start(closing_s))
        if not changes and final_through == self.final_through:
            return self.generation
        assert self._conn is not None, "create() first"
        conn = self._conn
        generation = self.generation + 1
        conn.execute("BEGIN")
        try:
            conn.execute("DELETE FROM side.change")
            conn.executemany(
                "INSERT INTO side.change VALUES (?, ?, ?, ?)",
                ((orjson.dumps((values, start)), partition, *(new or (0, 0)))
                 for (partition, values, start), new in changes.items()),
            )
            dirty = conn.execute(self._DELTAS).fetchall()
            conn.execute("INSERT OR REPLACE INTO side.part SELECT k, p, n, l FROM side.change "
                         "WHERE n > 0")
            conn.execute("DELETE FROM side.part WHERE (k, p) IN "
                         "(SELECT k, p FROM side.change WHERE n <= 0)")
            added = 0
            for key, delta, late_delta, rowid, count, late in dirty:
                added += self._write_row(conn, key, (delta, late_delta), rowid, (count, late),
                                         generation, final_through)
            changed = bool(dirty)
            if final_through > self.final_through:
                changed |= conn.execute(self._finalize, (
                    generation, _bound(self.final_through), _bound(final_through))).rowcount > 0
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.final_through = final_through
        self.rows += added
        if changed:
            self.generation = generation
        return self.generation

    def apply_records(self, records: Mapping[bytes, bytes | None],
                      closing_s: float = NEVER) -> int:
        """:meth:`apply` for raw changelog records (key -> value, None = tombstone)."""
        return self.apply(decode_records(records.items()), closing_s)

    def _write_row(self, conn: sqlite3.Connection, key: bytes, delta: tuple[int, int],
                   rowid: int | None, current: tuple[int | None, int | None], generation: int,
                   final_through: float) -> int:
        """Write one row's change; return the change in the number of rows (-1, 0 or 1)."""
        if rowid is None:
            if delta[0] <= 0:
                return 0
            values, start = orjson.loads(key)
            by_column = dict(zip(self.mapped, values, strict=False))
            by_column.update(bucket_start=start, bucket_end=start + self.interval_s,
                             count=delta[0])
            by_column[RST_COLUMN] = generation
            by_column[LATE_COLUMN] = delta[1]
            by_column[FINAL_COLUMN] = int(start <= final_through)
            cursor = conn.execute(self._insert, [_bindable(by_column.get(c)) for c in self._order])
            conn.execute("INSERT INTO side.row VALUES (?, ?, ?, ?)",
                         (key, cursor.lastrowid, delta[0], delta[1]))
            return 1
        total = (current[0] or 0) + delta[0]
        late = (current[1] or 0) + delta[1]
        if total <= 0:
            conn.execute(self._delete, (rowid,))
            conn.execute("DELETE FROM side.row WHERE k = ?", (key,))
            return -1
        conn.execute(self._update, (total, late, generation, rowid))
        conn.execute("UPDATE side.row SET n = ?, l = ? WHERE k = ?", (total, late, key))
        return 0


def _bound(start_s: float) -> float:
    """A bucket start SQLite can compare with: -inf as the lowest float, +inf the highest."""
    return max(min(start_s, 1.7e308), -1.7e308)


def _bindable(value: Any) -> Any:
    """``value`` as SQLite can store it: an integer beyond 64 bits (valid JSON, which orjson
    reads) as its decimal text; binding it raised OverflowError, failing every refresh."""
    if value.__class__ is int and not -(2**63) <= value < 2**63:
        return str(value)
    return value


@dataclass
class ReaderState:
    """What the web views report about the snapshot: generation, freshness, completeness."""

    partitions: int
    generation: int = 0
    refreshed_at_s: float = 0.0
    progress: dict[int, Progress] = field(default_factory=dict)
    # changelog partition -> (next offset read, high watermark at the last fetch)
    changelog: dict[int, tuple[int, int]] = field(default_factory=dict)
    # source partition -> end offset (next offset to be written) at the last refresh
    source_end: dict[int, int] = field(default_factory=dict)
    started: bool = False
    # the closing time the last refresh marked final buckets by (bucket_app.counting.lifecycle)
    closing_s: float = NEVER
    # rows of the snapshot table after the last refresh (None: the store does not say)
    rows: int | None = None

    @property
    def caught_up(self) -> bool:
        """The snapshot holds everything the changelog held at its last fetch."""
        return self.started and len(self.changelog) == self.partitions and all(
            pos >= high for pos, high in self.changelog.values())

    def offset(self, partition: int) -> int:
        """The last source offset of ``partition`` the snapshot reflects (-1: none yet)."""
        progress = self.progress.get(partition)
        return -1 if progress is None else progress.offset

    def lag(self, partition: int) -> int | None:
        end = self.source_end.get(partition)
        return None if end is None else max(end - 1 - self.offset(partition), 0)

    @property
    def complete(self) -> bool:
        """Caught up with the changelog, and every message produced so far is counted."""
        return self.caught_up and len(self.source_end) == self.partitions and all(
            self.lag(p) == 0 for p in range(self.partitions))

    def position(self) -> dict[int, int]:
        return {p: self.offset(p) for p in range(self.partitions)}

    def reached(self, wanted: Mapping[int, int]) -> bool:
        return self.caught_up and all(self.offset(p) >= o for p, o in wanted.items())


class SnapshotReader:
    """Reads the counts changelog of all partitions and refreshes the SQLite snapshot."""

    def __init__(self, settings: Settings, partitions: int, store: Any) -> None:
        """``store`` is a :class:`SnapshotStore` or anything with its ``create`` and
        ``apply_records`` (the worker's is a
        :class:`~bucket_app.snapshot.process.SnapshotProcess`)."""
        self.settings = settings
        self.partitions = partitions
        self.topic = changelog_topic(settings)
        self.store = store
        self.state = ReaderState(partitions)
        self.lifecycle = Lifecycle.of(settings)
        self.source = [TopicPartition(settings.topic, p) for p in range(partitions)]
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="bucket_app-snapshot")
        # set from the web server's thread, polled by the reader's loop
        self._refresh_now = threading.Event()
        self._stopping = threading.Event()

    def closing_time(self, now_s: float, progress: Mapping[int, Progress] | None = None,
                     ) -> float:
        """The event time every source partition has reached, as this snapshot knows it."""
        return self.lifecycle.closing_time(
            self.state.progress if progress is None else progress, self.partitions, now_s)

    async def in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def request_refresh(self) -> None:
        self._refresh_now.set()

    async def run_in_thread(self) -> None:
        """:meth:`run` on a thread and event loop of its own; returns or raises as it does.

        On the worker's main loop each await of the reader (a fetch, a position, a refresh,
        the source's end offsets) waited behind the batch being counted there, up to a few
        hundred milliseconds each: counts became visible 0.6 s after they were written at
        60,000 msg/s, with a refresh due every 0.5 s. Cancelled, it stops the reader.
        """
        await run_in_own_thread(self.run, self._stopping, "bucket_app-snapshot-reader")

    async def run(self) -> None:
        await self.in_thread(self.store.create)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=list(self.settings.brokers),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **kafka_security.client_kwargs(self.settings),
        )
        await consumer.start()
        try:
            tps = await self._partitions(consumer)
            if not tps:  # stopped before the changelog topic appeared
                return
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self.state.started = True
            await self._loop(consumer, tps)
        finally:
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        while not self._stopping.is_set():
            with contextlib.suppress(KafkaError):
                await clients.refresh_metadata(consumer)
                found = consumer.partitions_for_topic(self.topic)
                if found:
                    return [TopicPartition(self.topic, p) for p in sorted(found)]
            await asyncio.sleep(0.5)
        return []

    async def _loop(self, consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]) -> None:
        pending = Pending()
        interval_s = self.settings.snapshot_interval_s
        last_refresh = time.monotonic()
        positions: dict[int, tuple[int, int]] = {}
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=50_000)
            for records in batches.values():
                add = pending.add
                for record in records:
                    add(record.key, record.value)
            for tp in tps:
                position = await consumer.position(tp)
                high = consumer.highwater(tp)
                positions[tp.partition] = (position, high if high is not None else 0)
            due = (time.monotonic() - last_refresh >= interval_s or self._refresh_now.is_set()
                   or len(pending.records) >= MAX_PENDING)
            if due:
                self._refresh_now.clear()
                last_refresh = time.monotonic()
                batch, pending = pending, Pending()
                progress = {**self.state.progress, **batch.progress}
                closing_s = self.closing_time(time.time(), progress)
                self.state.generation = await self.in_thread(self.store.apply_records,
                                                             batch.records, closing_s)
                # replaced, not updated: the web server's thread reads these concurrently
                self.state.progress = progress
                self.state.closing_s = max(self.state.closing_s, closing_s)
                self.state.rows = getattr(self.store, "rows", None)
                self.state.changelog = dict(positions)
                with contextlib.suppress(KafkaError):
                    ends = await consumer.end_offsets(self.source)
                    self.state.source_end = {tp.partition: end for tp, end in ends.items()}
                self.state.refreshed_at_s = time.time()
