"""Read-only user SQL over the SQLite snapshot, guarded in layers.

The snapshot module writes a WAL-mode SQLite file (and may swap it atomically); the web
views hand user SQL to :class:`SqlSandbox` here, in a child process of the worker
(:mod:`bucket_app.sql.pool`), and render the :class:`QueryResult` or the
:class:`~bucket_app.errors.HttpError` it raises. The guards
follow datasette: the connection is opened ``mode=ro`` with ``PRAGMA query_only``; a
statement check gives friendly messages (one statement, starting with SELECT, WITH, VALUES
or EXPLAIN); an authorizer enforces what the check only suggests; a progress handler
enforces a deadline; and we fetch ``row_limit + 1`` rows to report truncation. The SQL text
itself (the statement check, the quoting of the table name) is :mod:`bucket_app.sql.statement`'s,
re-exported here. Status codes: 400 for a bad or refused
statement (syntax, unknown table or column, more than one statement, not a query, bad
parameters, time limit), 403 when the authorizer denies an action (PRAGMA, ATTACH,
writes, dangerous functions), 503 when the snapshot file does not exist yet or is busy.
"""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bucket_app.errors import HttpError
from bucket_app.sql.statement import (
    SQLITE_KEYWORDS,
    check_statement,
    quote_identifier,
    quote_table_name,
)

__all__ = [
    "SQLITE_KEYWORDS",
    "json_default",
    "QueryResult",
    "SqlSandbox",
    "check_statement",
    "quote_identifier",
    "quote_table_name",
]

# Functions that reach outside the database or into SQLite's internals. Python's sqlite3
# ships without most of them, but the authorizer is the place that must not depend on that.
_DENIED_FUNCTIONS = frozenset(
    {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "fts5_tokenizer"}
)

_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)

# Authorizer action codes by name, for the denial message.
_ACTION_NAMES = {
    getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ").lower()
    for name in (
        "CREATE_INDEX CREATE_TABLE CREATE_TEMP_INDEX CREATE_TEMP_TABLE CREATE_TEMP_TRIGGER"
        " CREATE_TEMP_VIEW CREATE_TRIGGER CREATE_VIEW DELETE DROP_INDEX DROP_TABLE"
        " DROP_TEMP_INDEX DROP_TEMP_TABLE DROP_TEMP_TRIGGER DROP_TEMP_VIEW DROP_TRIGGER"
        " DROP_VIEW INSERT PRAGMA TRANSACTION UPDATE ATTACH DETACH ALTER_TABLE REINDEX"
        " ANALYZE CREATE_VTABLE DROP_VTABLE SAVEPOINT"
    ).split()
}

# action, arg1, arg2, database name, innermost trigger or view: see sqlite3_set_authorizer.
_Authorizer = Callable[[int, str | None, str | None, str | None, str | None], int]

@dataclass(slots=True)
class QueryResult:
    """The answer to one query: columns in order, rows as dicts in the same order."""

    columns: list[str]
    rows: list[dict[str, Any]]
    truncated: bool
    elapsed_ms: float


def json_default(value: Any) -> Any:
    """orjson's fallback for SQLite values JSON has no type for: BLOBs as base64 text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"cannot encode {type(value).__name__}")


# The longest string or blob a query may produce (SQLite's SQLITE_LIMIT_LENGTH).
MAX_VALUE_BYTES = 1024 * 1024

# One conversion of SQLite's printf: flags, width, precision, length, type.
_PRINTF_SPEC = re.compile(r"%([-+ 0#,!]*)(\*|\d+)?(?:\.(\*|\d+))?(l{0,2})(.?)", re.DOTALL)
_LEADING_INT = re.compile(r"\s*[-+]?\d+")


def _widest(value: Any) -> int:
    """The largest magnitude SQLite could read as an integer from a printf argument: its
    integer value, a text's leading digits or its number (conservatively, the larger)."""
    if isinstance(value, bool | int):
        return abs(int(value))
    if isinstance(value, float):
        return abs(int(value)) if value == value and abs(value) != float("inf") else 0
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return 0
    found = 0
    if match := _LEADING_INT.match(value):
        found = abs(int(match.group()))
    try:
        number = float(value)
    except ValueError:
        return found
    return max(found, _widest(number))


def printf_width(fmt: str, args: Sequence[Any]) -> int:
    """The largest width or precision ``printf(fmt, *args)`` asks for, as SQLite reads its
    format: a ``*`` takes the next argument, as does each conversion but ``%%``."""
    widest, at = 0, 0
    for match in _PRINTF_SPEC.finditer(fmt):
        _, width, precision, _, kind = match.groups()
        for part in (width, precision):
            if part == "*":
                widest = max(widest, _widest(args[at]) if at < len(args) else 0)
                at += 1
            elif part:
                widest = max(widest, int(part))
        if kind != "%":
            at += 1
    return widest


class BoundedPrintf:
    """SQLite's ``printf``/``format``, refused when a width or precision is over
    MAX_VALUE_BYTES.

    SQLite writes ``printf('%.*c', 2000000000, 'x')`` one character at a time, past the length
    limit, without ever calling the progress handler: 7-16 s in which no time limit can stop
    the query. This function replaces the built-in on the query's connection, checks the
    format and its arguments first, and has the built-in of a private in-memory connection do
    the formatting. A refusal is recorded in ``refused``: SQLite reports any exception raised
    in a function only as "user-defined function raised exception".
    """

    def __init__(self, refused: list[str]) -> None:
        self.refused = refused
        self.builtin = sqlite3.connect(":memory:", check_same_thread=False)
        self.builtin.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)

    def __call__(self, fmt: Any, *args: Any) -> Any:
        if isinstance(fmt, str):
            widest = printf_width(fmt, args)
            if widest > MAX_VALUE_BYTES:
                self.refused.append(f"a printf width or precision of {widest} (at most "
                                    f"{MAX_VALUE_BYTES}, the longest value a query may make)")
                raise ValueError(self.refused[-1])
        marks = ", ".join("?" * (1 + len(args)))
        return self.builtin.execute(f"SELECT printf({marks})", (fmt, *args)).fetchone()[0]

    def close(self) -> None:
        self.builtin.close()


def over_time_limit(sql: str, time_limit_ms: int) -> HttpError:
    """The answer to a query that ran past ``sql_time_limit``: interrupted, or killed."""
    return HttpError(400, f"query exceeded the time limit of {time_limit_ms} ms "
                     "(sql_time_limit)", sql=sql, time_limit_ms=time_limit_ms)


class SqlSandbox:
    """Runs one user query at a time against the snapshot file, read-only and time-boxed.

    ``execute`` is synchronous and opens a fresh connection per query: that is cheap, is
    safe from any thread, and always sees the latest committed data, also after the
    snapshot file has been swapped for a new one. Reading a WAL-mode file read-only needs
    its ``-shm``/``-wal`` files to exist or the directory to be writable.
    """

    def __init__(
        self, db_path: str, table: str, row_limit: int = 10000, time_limit_ms: int = 1000
    ) -> None:
        if row_limit < 0:
            raise ValueError(f"row_limit must be >= 0, not {row_limit}")
        if time_limit_ms <= 0:
            raise ValueError(f"time_limit_ms must be > 0, not {time_limit_ms}")
        self.db_path = db_path
        self.table = table
        self.row_limit = row_limit
        self.time_limit_ms = time_limit_ms

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None,
        row_limit: int | None = None,
    ) -> QueryResult:
        """Run ``sql`` with ``params``; return at most ``row_limit`` rows or raise HttpError.

        ``row_limit`` may lower the sandbox's limit for this query, never raise it.
        """
        limit = self.row_limit if row_limit is None else max(min(row_limit, self.row_limit), 0)
        check_statement(sql)
        query = quote_table_name(sql, self.table)
        if not os.path.exists(self.db_path):
            raise HttpError(503, "snapshot not ready", sql=sql, retry_after_s=1)
        denied: list[str] = []
        started = time.perf_counter()
        too_wide: list[str] = []
        printf = BoundedPrintf(too_wide)
        try:
            conn = self._connect(printf)
        except sqlite3.Error as exc:
            # The file can vanish between the check and the open while it is swapped.
            raise HttpError(503, "snapshot not ready", sql=sql, detail=str(exc),
                            retry_after_s=1) from exc
        try:
            conn.set_authorizer(self._authorizer(denied))
            # Checked every 1000 VM steps, fetching included, since rows are produced lazily.
            deadline = time.monotonic() + self.time_limit_ms / 1000
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            cursor = conn.execute(query, () if params is None else params)
            columns = [description[0] for description in cursor.description or ()]
            fetched = cursor.fetchmany(limit + 1) if columns else []
        except (sqlite3.Error, sqlite3.Warning, ValueError, TypeError, OverflowError) as exc:
            if too_wide:  # not run at all: bounded before it starts
                raise HttpError(400, f"query refused: {too_wide[0]}", sql=sql) from exc
            timed_out = time.monotonic() > deadline
            raise self._http_error(exc, sql, denied, timed_out) from exc
        finally:
            conn.close()
            printf.close()
        elapsed_ms = (time.perf_counter() - started) * 1000
        truncated = len(fetched) > limit
        # Duplicate column names (SELECT 1 AS a, 2 AS a) keep the last value in the dict;
        # ``columns`` still lists both.
        rows = [dict(zip(columns, row, strict=True)) for row in fetched[:limit]]
        return QueryResult(columns, rows, truncated, elapsed_ms)

    def _connect(self, printf: BoundedPrintf) -> sqlite3.Connection:
        uri = f"file:{urllib.parse.quote(os.path.abspath(self.db_path))}?mode=ro"
        conn = sqlite3.connect(
            uri,
            uri=True,
            check_same_thread=False,
            # Autocommit: the module must never issue BEGIN on our behalf, and a lock wait
            # happens outside the progress handler, so bound it by the time limit too.
            isolation_level=None,
            timeout=self.time_limit_ms / 1000,
        )
        # One value (string or blob) of a result may be at most this long: without it one
        # SELECT zeroblob(n) carries n bytes through the worker.
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        for name in ("printf", "format"):  # format is SQLite's other name for printf
            conn.create_function(name, -1, printf, deterministic=True)
        try:
            # Before the authorizer is installed, which would deny this PRAGMA too.
            conn.execute("PRAGMA query_only=1")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    @staticmethod
    def _authorizer(denied: list[str]) -> _Authorizer:
        def authorize(
            action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None
        ) -> int:
            if action == sqlite3.SQLITE_FUNCTION:
                # For functions the name is in arg2; arg1 is always None.
                if (arg2 or "").lower() in _DENIED_FUNCTIONS:
                    denied.append(f"the function {arg2} is not allowed")
                    return sqlite3.SQLITE_DENY
                return sqlite3.SQLITE_OK
            if action in _ALLOWED_ACTIONS:
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master" and db == "main":
                # SQLite asks this while it sets up an eponymous virtual table such as
                # json_each or pragma_table_info on first use; denying it would break
                # json_each. A real write is stopped by the statement check, by SQLite
                # itself (sqlite_master may not be modified) and by mode=ro/query_only.
                return sqlite3.SQLITE_OK
            what = _ACTION_NAMES.get(action, f"action {action}")
            target = f" {arg1}" if arg1 else ""
            denied.append(f"{what}{target} is not allowed, queries are read-only")
            return sqlite3.SQLITE_DENY

        return authorize

    def _http_error(
        self, exc: Exception, sql: str, denied: list[str], timed_out: bool
    ) -> HttpError:
        message = str(exc)
        if timed_out and "interrupted" in message:
            return over_time_limit(sql, self.time_limit_ms)
        if denied or "not authorized" in message:
            reason = denied[0] if denied else message
            return HttpError(403, f"query refused: {reason}", sql=sql)
        if "readonly database" in message:
            return HttpError(403, "query refused: the snapshot is read-only", sql=sql)
        if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return HttpError(503, "snapshot busy, try again", sql=sql, detail=message,
                             retry_after_s=1)
        if isinstance(exc, sqlite3.Error) and "unable to open database file" in message:
            return HttpError(503, "snapshot not ready", sql=sql, detail=message,
                             retry_after_s=1)
        # Syntax errors, unknown tables or columns, wrong parameters: SQLite says it best.
        return HttpError(400, message, sql=sql)
