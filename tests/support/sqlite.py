"""SQLite snapshot files for tests: the snapshot table in WAL mode, as the worker writes it.

:func:`make_db` creates the table (the seed's columns and ``RST_ID``) in a real WAL-mode file
and returns the writer connection, still open, so readers see a live snapshot; the caller
closes it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from bucket_app.sql.sandbox import quote_identifier

COLUMNS = ["server_name", "topic", "bucket_start", "bucket_end", "count", "RST_ID"]
ROWS = [
    ("srv-a", "orders", 0, 60, 1, 7),
    ("srv-a", "orders", 60, 120, 3, 7),
    ("srv-b", "payments", 0, 60, 1, 8),
]


def make_db(
    path: Path, table: str, rows: Sequence[tuple[object, ...]] = ROWS
) -> sqlite3.Connection:
    """Create a WAL-mode snapshot and return the still-open writer connection."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    assert conn.execute("PRAGMA journal_mode=wal").fetchone() == ("wal",)
    conn.execute(
        f"CREATE TABLE {quote_identifier(table)} (server_name TEXT, topic TEXT,"
        " bucket_start INTEGER, bucket_end INTEGER, count INTEGER, RST_ID INTEGER)"
    )
    conn.executemany(f"INSERT INTO {quote_identifier(table)} VALUES (?, ?, ?, ?, ?, ?)", rows)
    return conn
