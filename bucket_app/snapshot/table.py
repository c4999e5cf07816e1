"""The snapshot's SQLite schema: the counts table, its indexes, the side file's tables, and the
statements a refresh runs on them.

The counts table has the ``sqlite_schema`` columns (the mapped ones and
:data:`~bucket_app.schema.BUCKET_COLUMNS`) plus the columns bucket_app adds,
:data:`~bucket_app.schema.ADDED_COLUMNS` (``RST_ID``, ``late``, ``final``), whose names are
declared in :mod:`bucket_app.schema` beside the others because settings refuses a mapped column
that takes one of them. :class:`~bucket_app.snapshot.store.SnapshotStore` creates and writes
these tables; nothing here holds state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bucket_app.schema import ADDED_COLUMNS, FINAL_COLUMN, LATE_COLUMN, RST_COLUMN
from bucket_app.sql.sandbox import quote_identifier

__all__ = ["ADDED_COLUMNS", "DELTAS", "FINAL_COLUMN", "LATE_COLUMN", "RST_COLUMN", "Statements",
           "bindable", "bound", "create_tables"]


def create_tables(conn: sqlite3.Connection, table_name: str, schema: Mapping[str, str],
                  mapped: Sequence[str]) -> None:
    """The counts table with its indexes in ``main``, the per-partition counts, the rows' ids
    and the checkpoint in ``side``."""
    columns = [f"{quote_identifier(c)} {t}" for c, t in schema.items()]
    columns.append(f"{RST_COLUMN} INTEGER")
    columns.append(f"{LATE_COLUMN} INTEGER NOT NULL DEFAULT 0")
    columns.append(f"{FINAL_COLUMN} INTEGER NOT NULL DEFAULT 0")
    table = quote_identifier(table_name)
    conn.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
    conn.execute(
        f"CREATE INDEX {quote_identifier(table_name + '_bucket_start')} "
        f"ON {table} (bucket_start)"
    )
    # the rows a refresh changed (/api/v1/stream, output_topic): RST_ID > the last one seen
    conn.execute(f"CREATE INDEX {quote_identifier(table_name + '_rst')} ON {table} "
                 f"({RST_COLUMN})")
    # Typical queries filter on a mapped field and a time range: one index per mapped column.
    for column in mapped:
        conn.execute(
            f"CREATE INDEX {quote_identifier(f'{table_name}_{column}_bucket_start')} "
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


def create_change_table(conn: sqlite3.Connection) -> None:
    """The refresh's changes: a temporary table, so they are never journaled in a file."""
    conn.execute("CREATE TEMP TABLE change (k BLOB NOT NULL, p INTEGER NOT NULL, "
                 "n INTEGER NOT NULL, l INTEGER NOT NULL, PRIMARY KEY (k, p)) WITHOUT ROWID")


@dataclass(frozen=True)
class Statements:
    """The writes of a refresh on the counts table; ``order`` is the insert's columns."""

    insert: str
    update: str
    finalize: str
    delete: str
    order: tuple[str, ...]

    @classmethod
    def of(cls, table_name: str, schema: Mapping[str, str]) -> Statements:
        table = quote_identifier(table_name)
        order = (*schema, *ADDED_COLUMNS)
        placeholders = ", ".join("?" for _ in order)
        return cls(
            insert=(f"INSERT INTO main.{table} ({', '.join(map(quote_identifier, order))}) "
                    f"VALUES ({placeholders})"),
            update=(f"UPDATE main.{table} SET count = ?, {LATE_COLUMN} = ?, "
                    f"{RST_COLUMN} = ? WHERE rowid = ?"),
            finalize=(f"UPDATE main.{table} SET {FINAL_COLUMN} = 1, {RST_COLUMN} = ? "
                      f"WHERE bucket_start > ? AND bucket_start <= ? AND {FINAL_COLUMN} = 0"),
            delete=f"DELETE FROM main.{table} WHERE rowid = ?",
            order=order,
        )


# Per row key: the change in its summed count and late count, and its current rowid,
# count and late count if any.
DELTAS = """
    SELECT d.k, d.delta, d.late_delta, r.id, r.n, r.l FROM (
        SELECT c.k AS k, sum(c.n - coalesce(o.n, 0)) AS delta,
               sum(c.l - coalesce(o.l, 0)) AS late_delta
        FROM temp.change AS c LEFT JOIN side.part AS o ON o.k = c.k AND o.p = c.p
        GROUP BY c.k
    ) AS d LEFT JOIN side.row AS r ON r.k = d.k
    WHERE d.delta != 0 OR d.late_delta != 0
"""


def bound(start_s: float) -> float:
    """A bucket start SQLite can compare with: -inf as the lowest float, +inf the highest."""
    return max(min(start_s, 1.7e308), -1.7e308)


def bindable(value: Any) -> Any:
    """``value`` as SQLite can store it: an integer beyond 64 bits (valid JSON, which orjson
    reads) as its decimal text; binding it raised OverflowError, failing every refresh."""
    if value.__class__ is int and not -(2**63) <= value < 2**63:
        return str(value)
    return value
