"""The snapshot's SQLite files and their checkpoint: :class:`SnapshotStore`.

The worker runs it in a child process (:mod:`bucket_app.snapshot.process`), which imports
neither Kafka nor Faust: the changelog's records reach it raw, decoded here by
:mod:`bucket_app.snapshot.codec`. The table's schema and statements are
:mod:`bucket_app.snapshot.table`'s; what a refresh leaves on disk is a
:class:`~bucket_app.snapshot.checkpoint.Checkpoint`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from bucket_app import diskspace, identity
from bucket_app.counting.lifecycle import NEVER, Lifecycle
from bucket_app.errors import SnapshotDiverged, SnapshotError, SnapshotFull
from bucket_app.settings import Settings
from bucket_app.snapshot import lineage
from bucket_app.snapshot.checkpoint import Checkpoint, why_not_resume
from bucket_app.snapshot.codec import PartKey, PartValue, Progress, decode_records
from bucket_app.snapshot.table import (
    DELTAS,
    FINAL_COLUMN,
    LATE_COLUMN,
    RST_COLUMN,
    Statements,
    bindable,
    bound,
    create_change_table,
    create_tables,
)
from bucket_app.sql.sandbox import quote_identifier

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


def store_config(settings: Settings) -> dict[str, Any]:
    """:class:`SnapshotStore`'s arguments for ``settings``, as JSON (a child process gets them)."""
    return {"path": str(settings.snapshot_path), "table": settings.sqlite_table,
            "interval_s": settings.bucket_interval_s, "mapped": list(settings.msg_map.values()),
            "schema": dict(settings.sqlite_schema), "grace_s": settings.grace_s,
            "idle_close_s": settings.idle_close_s, "state": identity.state_id(settings),
            "changelog": identity.counts_changelog(settings)}


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
    (``<snapshot>-parts``, attached as ``side``) rather than in Python dicts, whose memory grew
    with every row (docs/performance.md).

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
        self.topic_id: str | None = None  # the changelog's topic id (snapshot.lineage)
        self._commit = 0
        self._nonce = 0
        self._conn: sqlite3.Connection | None = None
        self._sql = Statements.of(table, self.schema)
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
             now_s: float | None = None, topic_id: str | None = None) -> Checkpoint:
        """Resume the files on disk if they provably reflect one refresh of this identity
        whose offsets lie within ``changelog`` (partition -> (beginning, end) offsets) and
        that is at most ``max_age_s`` old, read from the changelog whose topic id is now
        ``topic_id`` (:mod:`bucket_app.snapshot.lineage`); otherwise :meth:`create`. Returns
        the checkpoint resumed from, or the reason for the rebuild."""
        self._acquire()
        self.topic_id = topic_id
        now = time.time() if now_s is None else now_s
        previous: dict[str, Any] | None = None
        try:
            previous = self._connect_existing()
            reason = why_not_resume(previous, self.identity, self.topic_id, changelog,
                                    max_age_s, now)
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
        create_change_table(conn)
        self._conn = conn
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
        create_tables(conn, self.table, self.schema, self.mapped)
        self._nonce = secrets.randbelow(2**31 - 1) + 1
        conn.execute(f"PRAGMA main.application_id = {self._nonce:d}")
        self._commit = 0
        # no offsets: a checkpoint that is never resumed, but keeps the generation
        with self._transaction(conn):
            self._commit_checkpoint(conn, Checkpoint(generation=generation,
                                                     refreshed_at_s=time.time()))

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
               "commit": commit, **lineage.stamp(self.topic_id)}
        del doc["resumed"], doc["reason"]
        conn.execute(f"PRAGMA main.user_version = {commit:d}")
        conn.execute("INSERT OR REPLACE INTO side.checkpoint VALUES (0, ?)", (orjson.dumps(doc),))
        conn.execute("COMMIT")
        self._commit, self.stored = commit, stored

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
            dirty = conn.execute(DELTAS).fetchall()
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
                changed |= conn.execute(self._sql.finalize, (
                    generation, bound(before.final_through), bound(final_through))).rowcount > 0
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
            cursor = conn.execute(self._sql.insert,
                                  [bindable(by_column.get(c)) for c in self._sql.order])
            conn.execute("INSERT INTO side.row VALUES (?, ?, ?, ?)",
                         (key, cursor.lastrowid, delta[0], delta[1]))
            return 1
        total = (current[0] or 0) + delta[0]
        late = (current[1] or 0) + delta[1]
        if total <= 0:
            conn.execute(self._sql.delete, (rowid,))
            conn.execute("DELETE FROM side.row WHERE k = ?", (key,))
            return -1
        conn.execute(self._sql.update, (total, late, generation, rowid))
        conn.execute("UPDATE side.row SET n = ?, l = ? WHERE k = ?", (total, late, key))
        return 0
