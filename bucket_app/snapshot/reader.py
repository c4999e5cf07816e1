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

The snapshot outlives the worker: each refresh stores with it the changelog offsets it reflects
(a :class:`Checkpoint`), and a restarted reader seeks to them and reads only the changelog's
tail, unless :meth:`SnapshotStore.open` finds the files do not provably match this state and
changelog, in which case they are rebuilt from the beginning as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from bucket_app import diskspace, identity
from bucket_app.counting.keys import PROGRESS_KEY
from bucket_app.counting.lifecycle import NEVER, Lifecycle
from bucket_app.errors import SnapshotDiverged, SnapshotError, SnapshotFull
from bucket_app.kafka import security as kafka_security
from bucket_app.seam import clients
from bucket_app.settings import FINAL_COLUMN, LATE_COLUMN, RST_COLUMN, Settings
from bucket_app.snapshot.thread import run_in_own_thread
from bucket_app.sql.sandbox import quote_identifier

log = logging.getLogger(__name__)

COUNTS_TABLE = "counts"
# changes held before a refresh is due anyway: bounds the reader's memory while it catches up
MAX_PENDING = 50_000
#: what the snapshot's writes are called in the log and /health (bucket_app.diskspace)
SNAPSHOT = "the SQLite snapshot"
# (source partition, mapped values, bucket start) -> count in that partition
PartKey = tuple[int, tuple[Any, ...], int]
# The layout of the files and their checkpoint: a snapshot of another format is rebuilt.
SNAPSHOT_FORMAT = 1
# The side file's journal. WAL, as the snapshot's: a kept file must survive a kill mid-refresh
# (journal_mode=OFF corrupts it then), and WAL appends each refresh's pages instead of
# copying every page it changes to a rollback journal first.
SIDE_JOURNAL_MODE = "WAL"
# PRAGMA user_version is a signed 32-bit integer: commit numbers wrap below its maximum.
COMMIT_WRAP = 2**31 - 1
# How long a new writer waits for the previous one: a killed worker's snapshot process
# finishes the refresh it was applying, then sees its closed stdin and exits.
LOCK_TIMEOUT_S = 120.0
# Kafka's default delete.retention.ms, used when the changelog's own cannot be read.
DEFAULT_TOMBSTONE_RETENTION_S = 86_400.0


def changelog_topic(settings: Settings) -> str:
    """Faust's changelog topic of the counts table (named by the state identity)."""
    return identity.changelog_topic(settings, COUNTS_TABLE)


def store_config(settings: Settings) -> dict[str, Any]:
    """:class:`SnapshotStore`'s arguments for ``settings``, as JSON (a child process gets them)."""
    return {"path": str(settings.snapshot_path), "table": settings.sqlite_table,
            "interval_s": settings.bucket_interval_s, "mapped": list(settings.msg_map.values()),
            "schema": dict(settings.sqlite_schema), "grace_s": settings.grace_s,
            "idle_close_s": settings.idle_close_s, "state": identity.state_id(settings),
            "changelog": changelog_topic(settings)}


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

    def then(self, later: Pending) -> Pending:
        """These records, and ``later``'s over them (read after them)."""
        self.records.update(later.records)
        self.progress.update(later.progress)
        return self


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


@dataclass
class Checkpoint:
    """What a snapshot on disk reflects, stored with every refresh in the same transaction;
    from :meth:`SnapshotStore.open` also whether it was resumed, and why (not)."""

    generation: int = 0
    # changelog partition -> the next offset to read
    offsets: dict[int, int] = field(default_factory=dict)
    progress: dict[int, Progress] = field(default_factory=dict)
    closing_s: float = NEVER
    final_through: float = NEVER
    rows: int = 0
    refreshed_at_s: float = 0.0
    resumed: bool = False
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.generation,
                "offsets": {str(p): o for p, o in self.offsets.items()},
                "progress": {str(p): [g.offset, g.watermark_s, g.seen_at_s]
                             for p, g in self.progress.items()},
                "closing_s": _finite(self.closing_s), "final_through": _finite(self.final_through),
                "rows": self.rows, "refreshed_at_s": self.refreshed_at_s,
                "resumed": self.resumed, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Checkpoint:
        return cls(
            generation=int(doc["generation"]),
            offsets={int(p): int(o) for p, o in doc["offsets"].items()},
            progress={int(p): Progress(int(o), float(w), float(s))
                      for p, (o, w, s) in doc["progress"].items()},
            closing_s=_infinite(doc["closing_s"]), final_through=_infinite(doc["final_through"]),
            rows=int(doc["rows"]), refreshed_at_s=float(doc["refreshed_at_s"]),
            resumed=bool(doc.get("resumed", False)), reason=str(doc.get("reason", "")))


def _finite(value: float) -> float | None:
    """JSON has no -inf: NEVER is stored as null."""
    return value if math.isfinite(value) else None


def _infinite(value: float | None) -> float:
    return NEVER if value is None else float(value)


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
    a kilobyte a row (docs/performance.md).

    The files survive a restart, clean or not: each refresh stores, in the same transaction, a
    :class:`Checkpoint` of what they reflect (the next changelog offset per partition, the
    source partitions' progress, the generation, the closing time, the row count) in the side
    file, with the settings that give the rows their meaning (:attr:`identity`). Both files are
    in WAL mode, so each commits atomically, but a transaction over two WAL files is atomic per
    file only: a kill between the two commits leaves one a refresh ahead. So every commit also
    numbers itself in both files (``PRAGMA user_version`` of the snapshot, the checkpoint's
    ``commit``), and :meth:`create` ties the two files together with a random number
    (``PRAGMA application_id`` and the checkpoint's ``nonce``). :meth:`open` resumes only when
    the identity, the nonce and the commit number agree and every stored offset is still within
    the changelog; otherwise it rebuilds from nothing. Generations keep increasing across
    rebuilds (a rebuild starts above the previous file's), so an RST_ID is never reused.
    One process writes a snapshot at a time (a lock file): a killed worker's snapshot process
    finishes the refresh it was applying before its successor opens the files.
    """

    def __init__(self, path: str, table: str, interval_s: int, mapped: Sequence[str],
                 schema: Mapping[str, str], grace_s: float | None = None,
                 idle_close_s: float | None = None, state: str = "",
                 changelog: str = "") -> None:
        self.path = Path(path)
        self.side_path = Path(f"{self.path}-parts")
        self.lock_path = Path(f"{self.path}-lock")
        self.table = table
        self.interval_s = interval_s
        self.mapped = tuple(mapped)
        self.schema = dict(schema)
        grace = interval_s if grace_s is None else grace_s
        self.lifecycle = Lifecycle(interval_s, grace, idle_close_s)
        # what the rows mean: a checkpoint stored under another identity is not resumed
        self.identity: dict[str, Any] = orjson.loads(orjson.dumps({
            "format": SNAPSHOT_FORMAT, "state": state, "changelog": changelog, "table": table,
            "schema": [[c, t] for c, t in self.schema.items()], "mapped": list(self.mapped),
            "interval_s": interval_s, "grace_s": grace, "idle_close_s": idle_close_s}))
        self.stored = Checkpoint()  # what the files reflect as of the last commit
        self._commit = 0
        self._nonce = 0
        self._conn: sqlite3.Connection | None = None
        self._lock: int | None = None

    @property
    def generation(self) -> int:
        return self.stored.generation

    @property
    def rows(self) -> int:
        """Rows of the table, kept by apply (a count(*) reads them all)."""
        return self.stored.rows

    @property
    def final_through(self) -> float:
        """The latest bucket start marked final."""
        return self.stored.final_through

    # -- opening ---------------------------------------------------------------------------

    def open(self, changelog: Mapping[int, tuple[int, int]], max_age_s: float | None = None,
             now_s: float | None = None) -> Checkpoint:
        """Resume the files on disk if they provably reflect one refresh of this identity
        whose offsets lie within ``changelog`` (partition -> (beginning, end) offsets) and
        that is at most ``max_age_s`` old; otherwise :meth:`create`. Returns the checkpoint
        resumed from, or the reason for the rebuild."""
        self._acquire()
        now = time.time() if now_s is None else now_s
        previous: dict[str, Any] | None = None
        try:
            previous = self._connect_existing()
            reason = self._why_not_resume(previous, changelog, max_age_s, now)
        except (sqlite3.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            reason = f"the snapshot files cannot be read ({type(exc).__name__}: {exc})"
        if reason is None and previous is not None:
            self.stored = Checkpoint.from_json(previous)
            self.stored.resumed, self.stored.reason = True, "the checkpoint matches"
            self._commit, self._nonce = int(previous["commit"]), int(previous["nonce"])
            return replace(self.stored)
        self.create()
        return replace(self.stored, reason=reason or "no snapshot")

    def _connect_existing(self) -> dict[str, Any] | None:
        """Connect to the files if both exist; their checkpoint, or None."""
        self._disconnect()
        if not (self.path.exists() and self.side_path.exists()):
            return None
        conn = self._connect()
        found = conn.execute("SELECT 1 FROM side.sqlite_schema WHERE type = 'table' AND "
                             "name = 'checkpoint'").fetchone()
        if found is None:
            return None
        row = conn.execute("SELECT doc FROM side.checkpoint WHERE id = 0").fetchone()
        doc: dict[str, Any] | None = None if row is None else orjson.loads(row[0])
        if doc is not None:
            doc["file_commit"] = conn.execute("PRAGMA main.user_version").fetchone()[0]
            doc["file_nonce"] = conn.execute("PRAGMA main.application_id").fetchone()[0]
        return doc

    def _why_not_resume(self, doc: Mapping[str, Any] | None,
                        changelog: Mapping[int, tuple[int, int]], max_age_s: float | None,
                        now_s: float) -> str | None:
        if doc is None:
            return "no snapshot with a checkpoint on disk"
        if doc.get("identity") != self.identity:
            stored = doc.get("identity") or {}
            changed = sorted(k for k in self.identity.keys() | stored.keys()
                             if stored.get(k) != self.identity.get(k))
            return f"the snapshot was built for other settings ({', '.join(changed)} differ)"
        if (doc["file_nonce"], doc["file_commit"]) != (doc["nonce"], doc["commit"]):
            return (f"the snapshot file (commit {doc['file_commit']}) and its side file (commit "
                    f"{doc['commit']}) do not reflect the same refresh")
        offsets = {int(p): int(o) for p, o in doc["offsets"].items()}
        if set(offsets) != set(changelog):
            return (f"the snapshot reflects changelog partitions {sorted(offsets)}, the "
                    f"changelog has {sorted(changelog)}")
        for partition, offset in sorted(offsets.items()):
            beginning, end = changelog[partition]
            if not beginning <= offset <= end:
                return (f"changelog partition {partition} holds offsets [{beginning}, {end}], "
                        f"the snapshot stopped at {offset} (the changelog was recreated, or "
                        "records it had not read were deleted)")
        age_s = now_s - float(doc["refreshed_at_s"])
        if max_age_s is not None and age_s > max_age_s:
            return (f"the snapshot is {age_s:.0f} s old: the changelog may have dropped "
                    f"tombstones it has not read (resumed only within {max_age_s:.0f} s)")
        return None

    def _acquire(self) -> None:
        """Become the one writer of these files, waiting for a previous one to finish."""
        if self._lock is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise SnapshotError(f"another process writes the snapshot {self.path} "
                                        f"(it holds {self.lock_path})") from None
                time.sleep(0.05)
        self._lock = fd

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("ATTACH DATABASE ? AS side", (str(self.side_path),))
        conn.execute(f"PRAGMA side.journal_mode={SIDE_JOURNAL_MODE}")
        conn.execute("PRAGMA side.synchronous=NORMAL")
        # the refresh's changes: a temporary table, so they are never journaled in a file
        conn.execute("CREATE TEMP TABLE change (k BLOB NOT NULL, p INTEGER NOT NULL, "
                     "n INTEGER NOT NULL, l INTEGER NOT NULL, PRIMARY KEY (k, p)) WITHOUT ROWID")
        self._conn = conn
        self._prepare()
        return conn

    def _previous_generation(self) -> int:
        """The highest generation the files on disk were at (0: none readable): the
        checkpoint's, or the highest RST_ID of the table."""
        highest = self.stored.generation
        if self._conn is None and (self.path.exists() or self.side_path.exists()):
            with contextlib.suppress(sqlite3.Error):
                self._connect()
        if self._conn is None:
            return highest
        with contextlib.suppress(sqlite3.Error, orjson.JSONDecodeError, KeyError, TypeError,
                                 ValueError):
            row = self._conn.execute("SELECT doc FROM side.checkpoint WHERE id = 0").fetchone()
            if row is not None:
                highest = max(highest, int(orjson.loads(row[0])["generation"]))
        with contextlib.suppress(sqlite3.Error, TypeError, ValueError):
            table = quote_identifier(self.table)
            (rst,) = self._conn.execute(f"SELECT max({RST_COLUMN}) FROM main.{table}").fetchone()
            highest = max(highest, int(rst or 0))
        return highest

    def create(self) -> None:
        """Start fresh files, numbering generations on from the previous ones."""
        self._acquire()
        generation = self._previous_generation()
        self._disconnect()
        for path in (self.path, self.side_path):
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{path}{suffix}").unlink()
        conn = self._connect()
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
        # k is the row's key, JSON [mapped values, bucket start]; p a source partition. row.n
        # repeats the row's count as an INTEGER: the main table's count column has whatever
        # type sqlite_schema declares.
        # (l: the late count beside n)
        conn.execute("CREATE TABLE side.part (k BLOB NOT NULL, p INTEGER NOT NULL, "
                     "n INTEGER NOT NULL, l INTEGER NOT NULL, PRIMARY KEY (k, p)) WITHOUT ROWID")
        conn.execute("CREATE TABLE side.row (k BLOB PRIMARY KEY, id INTEGER NOT NULL, "
                     "n INTEGER NOT NULL, l INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute("CREATE TABLE side.checkpoint (id INTEGER PRIMARY KEY, doc BLOB NOT NULL)")
        self._nonce = secrets.randbelow(2**31 - 1) + 1
        conn.execute(f"PRAGMA main.application_id = {self._nonce:d}")
        self._commit = 0
        # no offsets: a checkpoint that is never resumed, but keeps the generation
        with self._transaction(conn):
            self._commit_checkpoint(conn, Checkpoint(generation=generation,
                                                     refreshed_at_s=time.time()))

    def _prepare(self) -> None:
        table = quote_identifier(self.table)
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

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._disconnect()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        """An explicit transaction, rolled back if its body raises; the body commits it."""
        conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # a COMMIT that failed (disk full) may have rolled back
                conn.execute("ROLLBACK")
            raise

    def _commit_checkpoint(self, conn: sqlite3.Connection, stored: Checkpoint) -> None:
        """Write ``stored`` and the next commit number to both files, commit the open
        transaction, and only then take ``stored`` as what the files reflect."""
        commit = self._commit % COMMIT_WRAP + 1
        doc = {**stored.to_json(), "identity": self.identity, "nonce": self._nonce,
               "commit": commit}
        del doc["resumed"], doc["reason"]
        conn.execute(f"PRAGMA main.user_version = {commit:d}")
        conn.execute("INSERT OR REPLACE INTO side.checkpoint VALUES (0, ?)", (orjson.dumps(doc),))
        conn.execute("COMMIT")
        self._commit, self.stored = commit, stored

    # Per row key: the change in its summed count and late count, and its current rowid,
    # count and late count if any.
    _DELTAS = """
        SELECT d.k, d.delta, d.late_delta, r.id, r.n, r.l FROM (
            SELECT c.k AS k, sum(c.n - coalesce(o.n, 0)) AS delta,
                   sum(c.l - coalesce(o.l, 0)) AS late_delta
            FROM temp.change AS c LEFT JOIN side.part AS o ON o.k = c.k AND o.p = c.p
            GROUP BY c.k
        ) AS d LEFT JOIN side.row AS r ON r.k = d.k
        WHERE d.delta != 0 OR d.late_delta != 0
    """

    def apply(self, changes: Mapping[PartKey, PartValue], closing_s: float = NEVER,
              offsets: Mapping[int, int] | None = None,
              progress: Mapping[int, Progress] | None = None) -> int:
        """Apply per-partition ``(count, late)`` (None = deleted) and mark the buckets final
        at ``closing_s``, in one transaction with the checkpoint of what the files then
        reflect: the next changelog offset per partition and the source partitions' progress
        (None: unchanged). Return the generation."""
        before = self.stored
        final_through = max(before.final_through, self.lifecycle.last_final_start(closing_s))
        offsets = before.offsets if offsets is None else dict(offsets)
        progress = before.progress if progress is None else dict(progress)
        if (not changes and final_through == before.final_through
                and offsets == before.offsets and progress == before.progress):
            return before.generation
        assert self._conn is not None, "create() or open() first"
        conn = self._conn
        try:
            return self._apply(conn, changes, before, (closing_s, final_through), offsets,
                               progress)
        except sqlite3.Error as exc:
            if not diskspace.is_full(exc):
                raise
            # Each file commits on its own (WAL): the snapshot's may have taken the refresh
            # before the side file's failed, and then a retry would count it twice.
            with contextlib.suppress(sqlite3.Error):
                committed = conn.execute("PRAGMA main.user_version").fetchone()[0]
                if committed == self._commit:
                    raise SnapshotFull(f"{self.path}: {exc}") from None
            raise SnapshotDiverged(f"{self.path}: {exc}") from None

    def _apply(self, conn: sqlite3.Connection, changes: Mapping[PartKey, PartValue],
               before: Checkpoint, closing: tuple[float, float], offsets: dict[int, int],
               progress: dict[int, Progress]) -> int:
        closing_s, final_through = closing
        generation = before.generation + 1
        with self._transaction(conn):
            conn.execute("DELETE FROM temp.change")
            conn.executemany(
                "INSERT INTO temp.change VALUES (?, ?, ?, ?)",
                ((orjson.dumps((values, start)), partition, *(new or (0, 0)))
                 for (partition, values, start), new in changes.items()),
            )
            dirty = conn.execute(self._DELTAS).fetchall()
            conn.execute("INSERT OR REPLACE INTO side.part SELECT k, p, n, l FROM temp.change "
                         "WHERE n > 0")
            conn.execute("DELETE FROM side.part WHERE (k, p) IN "
                         "(SELECT k, p FROM temp.change WHERE n <= 0)")
            added = 0
            for key, delta, late_delta, rowid, count, late in dirty:
                added += self._write_row(conn, key, (delta, late_delta), rowid, (count, late),
                                         generation, final_through)
            changed = bool(dirty)
            if final_through > before.final_through:
                changed |= conn.execute(self._finalize, (
                    generation, _bound(before.final_through), _bound(final_through))).rowcount > 0
            stored = Checkpoint(
                generation=generation if changed else before.generation, offsets=offsets,
                progress=progress, closing_s=max(before.closing_s, closing_s),
                final_through=final_through, rows=before.rows + added,
                refreshed_at_s=time.time())
            self._commit_checkpoint(conn, stored)
        return stored.generation

    def apply_records(self, records: Mapping[bytes, bytes | None],
                      closing_s: float = NEVER, offsets: Mapping[int, int] | None = None,
                      progress: Mapping[int, Progress] | None = None) -> int:
        """:meth:`apply` for raw changelog records (key -> value, None = tombstone)."""
        return self.apply(decode_records(records.items()), closing_s, offsets, progress)

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

    def waiting(self, progress: Mapping[int, Progress]) -> set[int]:
        """Source partitions with records ``progress`` does not reflect yet, or not known not
        to have any (their end is unknown): never idle (:mod:`bucket_app.counting.lifecycle`)."""
        found = set()
        for partition in range(self.partitions):
            end = self.source_end.get(partition)
            at = progress.get(partition)
            if end is None or end - 1 > (-1 if at is None else at.offset):
                found.add(partition)
        return found

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
        """``store`` is a :class:`SnapshotStore` or anything with its ``open`` and
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
        reached = self.state.progress if progress is None else progress
        return self.lifecycle.closing_time(reached, self.partitions, now_s,
                                           self.state.waiting(reached))

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
        consumer = AIOKafkaConsumer(
            bootstrap_servers=list(self.settings.brokers),
            group_id=None,
            enable_auto_commit=False,
            # The worker writes the changelog without transactions (at least once, each
            # increment idempotent per source offset), so both levels read the same records
            # of it, as Kafka Streams' restore consumer does outside exactly-once. This one
            # also makes end_offsets of the source topic its high watermark: records of an
            # open transaction are lag (/health) until it ends.
            isolation_level="read_uncommitted",
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
            bounds = await self._bounds(consumer, tps)
            if bounds is None:
                return
            checkpoint = await self.in_thread(self.store.open, bounds,
                                              await self._max_age_s())
            self._restore(checkpoint)
            for tp in tps:
                if tp.partition in checkpoint.offsets:
                    consumer.seek(tp, checkpoint.offsets[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            self.state.started = True
            await self._loop(consumer, tps)
        finally:
            await consumer.stop()

    async def _bounds(self, consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition],
                      ) -> dict[int, tuple[int, int]] | None:
        """Each changelog partition's (beginning, end) offsets; None when stopped first."""
        while not self._stopping.is_set():
            with contextlib.suppress(KafkaError):
                beginnings = await consumer.beginning_offsets(tps)
                ends = await consumer.end_offsets(tps)
                return {tp.partition: (beginnings[tp], ends[tp]) for tp in tps}
            await asyncio.sleep(0.5)
        return None

    async def _max_age_s(self) -> float:
        """How old a snapshot may be and still be resumed: half the time the changelog keeps
        a tombstone (``delete.retention.ms``) after compaction reached it. A snapshot stopped
        longer than that could resume past a deletion it never read; half leaves the
        snapshot's own lag the other half."""
        try:
            retention_s = await asyncio.wait_for(self._tombstone_retention_s(), 10)
        except (KafkaError, OSError, LookupError, ValueError) as exc:  # TimeoutError too
            retention_s = DEFAULT_TOMBSTONE_RETENTION_S
            log.warning("snapshot: cannot read delete.retention.ms of %s (%s); assuming %.0f s",
                        self.topic, exc, retention_s)
        return retention_s / 2

    async def _tombstone_retention_s(self) -> float:
        admin = AIOKafkaAdminClient(bootstrap_servers=list(self.settings.brokers),
                                    request_timeout_ms=10_000,
                                    **kafka_security.client_kwargs(self.settings))
        await admin.start()
        try:
            (response,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, self.topic)])
            (resource,) = response.resources
            if resource[0]:
                raise LookupError(f"error {resource[0]}: {resource[1]}")
            for entry in resource[4]:  # (name, value, read_only, is_default, is_sensitive...)
                if entry[0] == "delete.retention.ms":
                    return int(entry[1]) / 1000
            raise LookupError("delete.retention.ms not in the topic's configuration")
        finally:
            await admin.close()

    def _restore(self, checkpoint: Any) -> None:
        """Take the reader's state from the snapshot resumed, and say what happened."""
        if not checkpoint.resumed:
            log.info("snapshot: rebuilding from the changelog: %s", checkpoint.reason)
            return
        log.info("snapshot: resuming generation %d (%d rows) at changelog offsets %s",
                 checkpoint.generation, checkpoint.rows,
                 {p: checkpoint.offsets[p] for p in sorted(checkpoint.offsets)})
        self.state.progress = dict(checkpoint.progress)
        self.state.closing_s = checkpoint.closing_s
        self.state.rows = checkpoint.rows
        self.state.refreshed_at_s = checkpoint.refreshed_at_s
        self.state.generation = checkpoint.generation

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
        started, read, told = time.monotonic(), 0, False
        retry_at = 0.0  # after a refresh the disk had no room for
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=50_000)
            for records in batches.values():
                add = pending.add
                read += len(records)
                for record in records:
                    add(record.key, record.value)
            for tp in tps:
                position = await consumer.position(tp)
                high = consumer.highwater(tp)
                positions[tp.partition] = (position, high if high is not None else 0)
            due = (time.monotonic() - last_refresh >= interval_s or self._refresh_now.is_set()
                   or len(pending.records) >= MAX_PENDING) and time.monotonic() >= retry_at
            if due:
                self._refresh_now.clear()
                last_refresh = time.monotonic()
                batch, pending = pending, Pending()
                try:
                    await self._refresh(consumer, batch, positions)
                    diskspace.FULL.recovered(SNAPSHOT)
                except SnapshotFull as exc:
                    # rolled back: the files and their checkpoint are as before it, queries
                    # answer from them; the same records, and any read since, go in the next
                    pending = batch.then(pending)
                    retry_at = time.monotonic() + diskspace.RETRY_S
                    diskspace.FULL.failed(SNAPSHOT, str(self.store.path), exc,
                                          "queries answer from the snapshot as it is")
                if not told and self.state.caught_up:
                    told = True
                    log.info("snapshot: caught up with the changelog, %d records read in %.1f s "
                             "(generation %d, %s rows)", read, time.monotonic() - started,
                             self.state.generation, self.state.rows)

    async def _refresh(self, consumer: AIOKafkaConsumer, batch: Pending,
                       positions: Mapping[int, tuple[int, int]]) -> None:
        """Apply ``batch``, read up to ``positions``, to the store with its checkpoint."""
        progress = {**self.state.progress, **batch.progress}
        closing_s = self.closing_time(time.time(), progress)
        offsets = {p: position for p, (position, _) in positions.items()}
        self.state.generation = await self.in_thread(
            self.store.apply_records, batch.records, closing_s, offsets, progress)
        # replaced, not updated: the web server's thread reads these concurrently
        self.state.progress = progress
        self.state.closing_s = max(self.state.closing_s, closing_s)
        self.state.rows = getattr(self.store, "rows", None)
        self.state.changelog = dict(positions)
        with contextlib.suppress(KafkaError):
            ends = await consumer.end_offsets(self.source)
            self.state.source_end = {tp.partition: end for tp, end in ends.items()}
        self.state.refreshed_at_s = time.time()
